"""NBHRnet inference: an exported ONNX model behind a small callable class (numpy + onnxruntime,
no torch), and the per-window normalisation its input needs."""

from __future__ import annotations

import hashlib
import time
from functools import cached_property
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from model.bands import Band
from model.spectrum import bandpass, spectral_hr

try:  # built by setup.py where a C compiler is (optional: OpenCV does the same work, slower)
    from model._zscore import zscore as _zscore
except ImportError:  # pragma: no cover - depends on the build
    _zscore = None

# Whether normalise_window z-scores uint8 crops in C (model._zscore) rather than with OpenCV.
ZSCORE_BUILT = _zscore is not None

# The model that ships with nbhr, trained with this project's own code (training/) on synthetic
# neonatal video only: model/MODEL_CARD.md says on what, how well, and its limits.
BUNDLED_MODEL = Path(__file__).parent / "data" / "nbhrnet.onnx"
BUNDLED_NAME = "nbhrnet"
BUNDLED_VERSION = "1"
# The version its int8 encoder (int8_encoder_path) is registered under: a new one whenever that
# file changes, so that a database holding an earlier one's windows keeps the two apart.
# "1-int8" was the stride-1 ReLU student (until 2026-12-01); "1-int8.2" the stride-2 one.
BUNDLED_INT8_VERSION = "1-int8.2"
BUNDLED_CARD = Path(__file__).parent / "data" / "nbhrnet.json"


def companion_paths(path: Path) -> tuple[Path, Path]:
    """Where an exported model's encoder and head halves live: X.onnx -> X.encoder.onnx,
    X.head.onnx (training.export writes them)."""
    path = Path(path)
    return path.with_suffix(".encoder.onnx"), path.with_suffix(".head.onnx")


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, hex, read in 1 MB blocks: how model files are identified."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def int8_encoder_path(path: Path) -> Path:
    """Where an exported model's int8 encoder lives: X.onnx -> X.encoder.int8.onnx
    (training.quantize writes it)."""
    return Path(path).with_suffix(".encoder.int8.onnx")


def relu_encoder_path(path: Path) -> Path:
    """Where an exported model's ReLU-distilled encoder lives: X.onnx -> X.encoder.relu.onnx
    (training.distill writes it; training.quantize quantises it in place of X.encoder.onnx)."""
    return Path(path).with_suffix(".encoder.relu.onnx")


# Precisions of the per-frame encoder a runner can use: "fp32" is the exported encoder, "int8"
# its static quantisation (training.quantize).
PRECISIONS = ("fp32", "int8")


# Per-frame CNN features the encoder half of an export outputs (model.nbhrnet companions).
FEATURE_SIZE = 256
# FLOPs (2 x multiply-adds) of the encoder's convolutions per 128x128 frame: what
# training.nbhrnet.conv_flops_per_frame counts (a test keeps the two equal), here without torch.
CONV_FLOPS_PER_FRAME = 481_296_384

# Frames per onnxruntime call of the per-frame encoder (NBHRNetRunner.encode_frames). Each
# call's activations (about 11 MB a frame at int8) pass through the caches: one frame's fit
# in the shared L3 cache beside another process's, four frames' do not. On the AMD Zen 5
# machine (2026-12-01, docs/performance.md), 60-frame blocks of int8 encoding took 0.91-0.97
# CPU ms a frame at 1 frame a call against 0.92-1.08 at 4 in one process, and 0.94-0.98
# against 1.03-1.10 with two processes encoding at once; the features are the same bits at
# any batch. `nbhr bench` compares the two (`nbhrnet.encoder_batch`).
ENCODER_BATCH = 1

# Below this standard deviation (in 0-255 levels) a colour channel is flat over the whole window:
# it is mapped to zeros instead of dividing its sensor noise up to unit variance.
MIN_CHANNEL_STD = 1e-3


def normalise_window(frames_rgb: np.ndarray) -> np.ndarray:
    """One window of face crops as NBHRnet takes it.

    frames_rgb: uint8 array (T, H, W, 3), RGB, 0-255 (NBHRnet: T = 60 frames at 30 fps,
        H = W = 128).
    Returns float32 (T, 3, H, W), channels first, each colour channel z-scored with its mean and
    standard deviation over all frames and pixels of the window (a channel whose standard
    deviation is below MIN_CHANNEL_STD comes out as zeros).
    uint8 crops go through model._zscore where it was built (two passes: exact integer sums,
    then every frame's planes written as x * (1 / std) - mean / std in float32), else through
    OpenCV (_normalise_opencv); the two agree to float32 rounding (tests/test_nbhrnet.py).
    Other dtypes take numpy (_normalise_any).
    """
    frames = np.ascontiguousarray(frames_rgb)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames_rgb must be (T, H, W, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        return _normalise_any(frames)
    if _zscore is None or frames.size == 0:
        return _normalise_opencv(frames)
    t, h, w, _ = frames.shape
    out = np.empty((t, 3, h, w), np.float32)
    _zscore(frames, t, MIN_CHANNEL_STD, out)
    return out


def _normalise_opencv(frames: np.ndarray) -> np.ndarray:
    """normalise_window for C-contiguous uint8 frames, with OpenCV: its mean and standard
    deviation accumulate in float64, the colour planes are split apart in one pass, and each
    is written as (x - mean) / std in float32 straight into its place in the channels-first
    output (about 25x faster than numpy, which cost workers 1.2 ms a frame: 0.04 ms a frame on
    the AMD machines, 0.09-0.13 on the Intel one; model._zscore took half of that or less in
    the pipeline on the Zen 5, docs/performance.md)."""
    t, h, w, _ = frames.shape
    out = np.empty((t, 3, h, w), np.float32)
    if frames.size == 0:
        return out
    flat = frames.reshape(t * h, w, 3)
    mean, std = (v.ravel() for v in cv2.meanStdDev(flat))
    scale = 1.0 / np.maximum(std, MIN_CHANNEL_STD)
    rows = out.reshape(t, 3, h * w)  # rows[:, c]: channel c of every frame, a strided 2-D view
    for c, plane in enumerate(cv2.split(flat)):
        plane = plane.reshape(t, h * w)
        shift = float(-mean[c] * scale[c])
        cv2.addWeighted(plane, float(scale[c]), plane, 0.0, shift, dst=rows[:, c], dtype=cv2.CV_32F)
    return out


def _normalise_any(frames: np.ndarray) -> np.ndarray:
    """normalise_window for frames of another dtype than uint8, in numpy."""
    x = frames.astype(np.float32)
    # float64 accumulators: float32 sums over ~10^6 pixels would cost digits of the mean.
    mean = x.mean(axis=(0, 1, 2), dtype=np.float64)
    std = x.std(axis=(0, 1, 2), dtype=np.float64)
    x -= mean.astype(np.float32)
    x *= (1.0 / np.maximum(std, MIN_CHANNEL_STD)).astype(np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def normalise_blocks(frames_rgb: np.ndarray, block: int = 60) -> np.ndarray:
    """Frames normalised block by block: each run of `block` consecutive frames (the last may be
    shorter) goes through normalise_window on its own.

    A frame's normalised value then depends only on its block, not on which window it is later
    cut into, so its CNN features can be computed once and shared by overlapping windows. A
    window that coincides with a block gets exactly what normalise_window gives it; one that
    straddles two blocks sees each part scaled by its own block's statistics.
    frames_rgb: uint8 (n, H, W, 3). Returns float32 (n, 3, H, W).
    """
    frames = np.asarray(frames_rgb)
    parts = [normalise_window(frames[i : i + block]) for i in range(0, len(frames), block)]
    if not parts:
        return np.zeros((0, 3, *frames.shape[1:3]), np.float32)
    return np.concatenate(parts)


def _hr_and_ppg(
    session: Any, input_name: str, x: np.ndarray, batch_size: int, frames: int
) -> tuple[np.ndarray, np.ndarray]:
    """Run a session whose outputs are "ppg" and "hr" over x in chunks of batch_size along the
    first axis; returns (hr (N,), ppg (N, frames))."""
    hr_parts, ppg_parts = [], []
    for start in range(0, len(x), batch_size):
        chunk = np.ascontiguousarray(x[start : start + batch_size])
        ppg, hr = session.run(["ppg", "hr"], {input_name: chunk})
        hr_parts.append(hr)
        ppg_parts.append(ppg)
    if not hr_parts:
        return np.zeros(0, np.float32), np.zeros((0, frames), np.float32)
    return np.concatenate(hr_parts), np.concatenate(ppg_parts)


class NBHRNetRunner:
    """An exported NBHRnet (training.export.export_onnx) run with onnxruntime on the CPU.

    path: the .onnx file.
    threads: intra-op threads of the session (one worker process per core wants 1).
    precision: "fp32" or "int8": which encoder encode_frames runs; int8 needs the int8
        companion (int8_encoder_path) made from this very file.
    spin: whether those threads spin between operators, onnxruntime's default (quicker hand-offs);
        False for a process that decodes in another thread beside inference
        (worker.features), whose core the spinning would take: `nbhr run -j1 --threads 2` on
        6 x 60 s of the demo archive (AMD EPYC, AVX2, 2 cores) took 37.8 and 36.5 s wall
        without spinning, 39.8 and 40.6 s with it (alternating runs).
    The session is created on first use, not here, so that a runner can be built before a worker
    process forks and each process then opens its own. One runner per process, called by one
    thread at a time (worker.features encodes in its own thread, then the head runs after it).
    """

    def __init__(
        self, path: Path, threads: int = 1, precision: str = "fp32", spin: bool = True
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        self.path = Path(path)
        self.threads = threads
        self.spin = spin
        self.precision = precision
        self._session: Any = None
        # CPU seconds spent inside onnxruntime for this runner (encode_frames, run_head,
        # predict), so a benchmark can split a real run into inference and the rest (exact with
        # one thread; with more, the process's CPU time while inference ran, see _clock).
        self.inference_cpu_s = 0.0

    @cached_property
    def sha256(self) -> str:
        """SHA-256 of the model file, hex: identifies which model produced an estimate."""
        return file_sha256(self.path)

    def _clock(self) -> float:
        # With one intra-op thread onnxruntime computes on the calling thread, so that thread's
        # CPU time is inference alone even while another thread decodes; with more, its pool's
        # threads count too, and only the process's time holds them.
        return time.thread_time() if self.threads == 1 else time.process_time()

    def _open(self, path: Path, mem_pattern: bool = True) -> Any:
        # Imported here so that importing this module stays cheap for workers that only run
        # the classical estimators.
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        if not self.spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_mem_pattern = mem_pattern
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def _get_session(self) -> Any:
        # The whole graph without onnxruntime's memory pattern: the pattern, planned on a first
        # run, asks the arena on the second for one block the size of all that run's
        # activations, which the arena holds beside the first run's: 8 windows at once took
        # RSS from 2.8 to 4.8 GB on their second run, 0.8 GB for 1 window (2.6 and 0.66 GB
        # without it), at the same speed (best of 5 alternating runs of 2 windows: 0.428
        # against 0.437 CPU s a window, AMD Zen 4) and to the same outputs. The per-frame
        # encoder's and the head's inputs are small; they keep it.
        if self._session is None:
            self._session = self._open(self.path, mem_pattern=False)
        return self._session

    @cached_property
    def _halves(self) -> tuple[Any, Any] | None:
        """Sessions of the encoder and head companions, or None when they are missing or were
        exported from another model (their nbhr.parent_sha256 is not this file's hash)."""
        paths = companion_paths(self.path)
        if not all(p.is_file() for p in paths):
            return None
        sessions = tuple(self._open(p) for p in paths)
        for session in sessions:
            meta = session.get_modelmeta().custom_metadata_map
            if meta.get("nbhr.parent_sha256") != self.sha256:
                return None
        return sessions

    @cached_property
    def _int8(self) -> tuple[Any, str] | None:
        """(session, SHA-256) of the int8 encoder made from this model, or None when there is
        none (missing, or quantised from another model: its nbhr.parent_sha256 differs)."""
        path = int8_encoder_path(self.path)
        if not path.is_file():
            return None
        session = self._open(path)
        if session.get_modelmeta().custom_metadata_map.get("nbhr.parent_sha256") != self.sha256:
            return None
        return session, file_sha256(path)

    @property
    def int8_sha256(self) -> str | None:
        """SHA-256 of this model's int8 encoder (int8_encoder_path), None when it has none."""
        return None if self._int8 is None else self._int8[1]

    def _int8_encoder(self) -> Any:
        if self._int8 is None:
            raise ValueError(
                f"{self.path.name} has no int8 encoder ({int8_encoder_path(self.path).name}) "
                "made from it: run `nbhr quantize` on it"
            )
        return self._int8[0]

    @property
    def framewise(self) -> bool:
        """Whether frames can be encoded once and windows cut from their features at any hop
        (encode_frames, run_head): the model's encoder and head halves are beside it."""
        return self._halves is not None

    def require_framewise(self) -> tuple[Any, Any]:
        """The encoder and head sessions; ValueError (readable) when the model has none."""
        if self._halves is None:
            names = ", ".join(p.name for p in companion_paths(self.path))
            raise ValueError(
                f"{self.path.name} has no encoder/head companions ({names}) from the same "
                "export: export it again with `nbhr export-onnx`"
            )
        return self._halves

    def encode_frames(self, frames: np.ndarray, batch_size: int = ENCODER_BATCH) -> np.ndarray:
        """CNN features of each frame: float32 (n, 3, H, W), normalised (normalise_window or
        normalise_blocks) -> float32 (n, 256). batch_size frames per call bound the memory:
        onnxruntime keeps the largest batch's activations, about 9 MB a frame at fp32 and 11 MB
        at int8 (measured peak RSS of a process that encodes: 193 MB at batch 4, 409 MB at 30,
        fp32), while larger batches run no faster on the CPU (ENCODER_BATCH). The runner's
        precision picks the fp32 encoder or its int8 quantisation. Raises ValueError without
        the companions that needs."""
        encoder, _ = self.require_framewise()
        if self.precision == "int8":
            encoder = self._int8_encoder()
        x = np.asarray(frames, dtype=np.float32)
        t0 = self._clock()
        parts = [
            encoder.run(["features"], {"frames": np.ascontiguousarray(x[i : i + batch_size])})[0]
            for i in range(0, len(x), batch_size)
        ]
        self.inference_cpu_s += self._clock() - t0
        return np.concatenate(parts) if parts else np.zeros((0, FEATURE_SIZE), np.float32)

    def run_head(self, features: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Heart rate and PPG of windows of frame features: float32 (N, T, 256) ->
        (hr_bpm (N,), ppg (N, T)), as predict gives for the same windows' frames."""
        _, head = self.require_framewise()
        x = np.asarray(features, dtype=np.float32)
        t0 = self._clock()
        out = _hr_and_ppg(head, "features", x, batch_size, x.shape[1] if x.ndim == 3 else 0)
        self.inference_cpu_s += self._clock() - t0
        return out

    def predict(self, windows: np.ndarray, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Heart rate and PPG of each window.

        windows: float32 array (N, T, 3, H, W), each window from normalise_window; T, H, W as the
            model was exported (60, 128, 128).
        batch_size: windows per onnxruntime call; bounds memory, which grows by about 260 MB
            per window in a batch (peak RSS of a script that ran a batch twice: 0.66 GB at
            batch 1, 2.6 GB at batch 8), while batching gains little speed on the CPU.
        Returns hr_bpm: float32 (N,), beats per minute; ppg: float32 (N, T), arbitrary units >= 0.
        """
        session = self._get_session()
        expected = tuple(session.get_inputs()[0].shape[1:])
        x = np.asarray(windows, dtype=np.float32)
        if x.ndim != 5 or x.shape[1:] != expected:
            raise ValueError(f"windows must be (N, *{expected}), got {x.shape}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        t0 = self._clock()
        out = _hr_and_ppg(session, "frames", x, batch_size, expected[0])
        self.inference_cpu_s += self._clock() - t0
        return out

    def describe(self) -> dict[str, Any]:
        """The model's input and output spec and its embedded metadata, for the registry.

        Raises ValueError when the file is not an NBHRnet export (wrong input or outputs).
        """
        try:
            session = self._get_session()
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own error types
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{self.path.name} is not an ONNX model: {reason}") from None
        inputs = {
            i.name: [d if isinstance(d, int) else str(d) for d in i.shape]
            for i in session.get_inputs()
        }
        outputs = {
            o.name: [d if isinstance(d, int) else str(d) for d in o.shape]
            for o in session.get_outputs()
        }
        if list(inputs) != ["frames"] or set(outputs) != {"ppg", "hr"}:
            raise ValueError(
                f"{self.path.name} is not an NBHRnet export: inputs {list(inputs)}, "
                f"outputs {sorted(outputs)} (expected frames -> ppg, hr)"
            )
        meta = dict(session.get_modelmeta().custom_metadata_map)
        return {"inputs": inputs, "outputs": outputs, "metadata": meta}


def stitched_ppg_hr(
    waves: list[np.ndarray], fps: float, band: Band
) -> tuple[float | None, float | None]:
    """(HR in bpm, SNR in dB) of consecutive NBHRnet PPG outputs (each (T,), sampled at fps)
    joined into one signal; (None, None) when it has no peak in `band`.

    Each output is z-scored before joining (the model's scale and offset are per window), so
    the spectrum of the joined signal resolves the rate far more finely than one 2-s window."""
    parts = [(w - w.mean()) / w.std() if w.std() > 1e-9 else np.zeros_like(w) for w in waves]
    peak = spectral_hr(bandpass(np.concatenate(parts), fps, band), fps, band)
    if not np.isfinite(peak.hr_bpm):
        return None, None
    return float(peak.hr_bpm), float(peak.snr_db)
