"""Static int8 quantisation of an exported NBHRnet's per-frame encoder, calibrated on face crops
cut by the workers' own path (decode, track, crop, resample, normalise).

Why static and per-channel: the encoder is all 3x3 convolutions, and onnxruntime runs an int8
QLinearConv (uint8 activations x int8 weights) with the CPU's VNNI dot-product instructions.
Dynamic quantisation would re-measure every activation's range at run time; per-tensor weight
scales would let the widest output channel set the step of every other one.

What is quantised: the ReLU student of the encoder (FILE.encoder.relu.onnx, training.distill)
when the model has one, else the exported encoder (FILE.encoder.onnx). The student quantises
whole: each ReLU fuses into its int8 convolution, and only its first convolution (whose input,
the normalised frame, carries a pulse of a few hundredths of its spread, finer than 256 levels
resolve) and the final average pool stay in float. Before it is quantised its channel ranges
are equalised on the calibration frames (training.distill.equalise_ranges, exact in float):
that cut its int8 features' error by a factor of five. The exported encoder's per-channel PReLU and
BatchNorm after it have no int8 kernels, so its int8 version leaves int8 at every layer.

The exported encoder's weights are quantised to 7 bits (onnxruntime's reduce_range). On a
CPU without VNNI (AVX2 only), onnxruntime multiplies uint8 activations by int8 weights with
VPMADDUBSW, which adds two products into 16 bits and saturates when both are large; its
activations (after PReLU, zero point mid-range) hit that often. Measured on an AMD EPYC with
AVX2 and no VNNI, int8 against fp32 features of 270 calibration frames of the demo archive
(`nbhr demo --subjects 6 --seconds 30 --seed 2026`, 3 face videos, every 10th frame): cosine
mean 0.73 (min 0.32) with 8-bit weights, 0.996 (min 0.94) with 7-bit ones (minmax ranges).
The equalised ReLU student keeps 8 bits: the shipped one gives cosine 0.999 (min 0.997) on
360 face frames of the same archive on that CPU.

The result, FILE.encoder.int8.onnx beside FILE.onnx, replaces FILE.encoder.onnx in workers that
run at int8 precision (model.nbhrnet.NBHRNetRunner). Needs the `onnx` package, and torch to
equalise a ReLU student (both in the `train` extra).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.nbhrnet import (
    companion_paths,
    file_sha256,
    int8_encoder_path,
    normalise_window,
    relu_encoder_path,
)

# Frames per calibration batch (the encoder's activations are ~4 MB a frame).
CALIBRATION_BATCH = 30
# Frames whose activations set the student's channel ranges (equalise_ranges keeps every
# layer's activations of them in memory: about 7 MB a frame).
EQUALISE_FRAMES = 64
# Activation ranges from this percentile of |x| (and its mirror), not the extremes: one
# saturated pixel in one frame would otherwise widen a layer's step for every frame.
CALIBRATION_PERCENTILE = 99.99


@dataclass(frozen=True)
class Calibration:
    """Normalised frames the quantiser measures activation ranges on.

    frames: float32 (n, 3, 128, 128), as NBHRNetRunner.encode_frames takes them.
    sources: the videos they came from.
    """

    frames: np.ndarray
    sources: tuple[str, ...]


class _Enough(Exception):
    """A video has given calibration_frames every frame it can use."""


class _Blocks:
    """calibration_frames' work on one video, a crop at a time (extract_trace's on_crop, in
    frame order, None where there is no face): the crops cut into 60-frame blocks at 30 fps
    from the first (worker.crops.WindowCutter; it resamples by the `n_in` frames asked for, so
    a file that ends sooner can lose the last 30-fps slot it has, which resampling what was
    read would repeat from its last frame), each block with a face in every frame normalised
    on its own (as normalise_blocks normalises it), and every `stride`-th of those blocks'
    frames kept, counted over all of them. Holds one block of crops (2.9 MB) and what it
    keeps; raises _Enough once it keeps `limit` frames, so that the rest of the video is not
    read."""

    def __init__(self, n_in: int, fps: float, stride: int, limit: int) -> None:
        from worker.crops import WindowCutter

        self._cutter = WindowCutter(fps, n_in)
        self._stride = stride
        self._limit = limit
        self._good = 0  # frames in the face-only blocks so far
        self.kept: list[np.ndarray] = []

    def append(self, crop: np.ndarray | None) -> None:
        for _, block in self._cutter.push(crop):
            if block is None:  # a frame without a face
                continue
            first = -self._good % self._stride  # the block's first frame at a multiple of stride
            # A copy of the frames kept, so that the block's other frames are freed.
            self.kept.extend(normalise_window(block)[first :: self._stride].copy())
            self._good += len(block)
        if len(self.kept) >= self._limit:
            raise _Enough


def calibration_frames(
    videos: Sequence[Path],
    roi: str = "face",
    max_frames: int = 600,
    stride: int = 6,
    seconds: float | None = None,
) -> Calibration:
    """Face crops of `videos` through the workers' path: every `stride`-th 30-fps frame of the
    60-frame blocks with a face in every frame, normalised block by block as workers do, up to
    `max_frames` frames spread over the videos in turn (each video's earliest first). A video
    is read only until it has given `max_frames` frames (no more of it could be used), and only
    one block of its crops is held at a time, so a long recording costs no more memory than a
    short one. seconds: read only each video's first `seconds` (None: as far as needed).
    ValueError when a video cannot be read or none has a face."""
    from worker.process import extract_trace
    from worker.video import VideoError, probe

    per_video: list[list[np.ndarray]] = []
    sources: list[str] = []
    for path in videos:
        try:
            info = probe(path)
            stop = info.n_frames
            if seconds is not None:
                stop = min(stop, math.ceil(seconds * info.fps))
            blocks = _Blocks(stop, info.fps, stride, max_frames)
            with contextlib.suppress(_Enough):  # the video gave all it can
                extract_trace(path, 0, stop, roi, info.fps, on_crop=blocks.append, colour=False)
        except VideoError as exc:
            raise ValueError(f"{path}: {exc}") from None
        if blocks.kept:
            per_video.append(blocks.kept)
            sources.append(str(path))
    if not per_video:
        raise ValueError("no calibration video has a 2-s stretch with a face in every frame")
    # Round-robin over the videos, so that a cap keeps every video represented.
    order = sorted(
        ((i, v) for v, frames in enumerate(per_video) for i in range(len(frames))),
        key=lambda iv: iv[0],
    )[:max_frames]
    frames = np.stack([per_video[v][i] for i, v in order])
    return Calibration(np.ascontiguousarray(frames, dtype=np.float32), tuple(sources))


def quantize_encoder(model: Path, calibration: Calibration, method: str = "percentile") -> Path:
    """Write the int8 encoder of the exported model at `model` (its FILE.encoder.onnx must be
    beside it) to FILE.encoder.int8.onnx and return that path.

    method: "percentile" (activation ranges from CALIBRATION_PERCENTILE) or "minmax" (the
    observed extremes; quicker, used by tests). The source is FILE.encoder.relu.onnx when it
    exists (module docstring). The file's metadata carries the parent model's SHA-256
    ("nbhr.parent_sha256", as the fp32 companions do), the fp32 encoder's, which encoder was
    quantised ("nbhr.encoder": "relu-distilled" or "exported") and a line on the calibration.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"percentile": CalibrationMethod.Percentile, "minmax": CalibrationMethod.MinMax}
    if method not in methods:
        raise ValueError(f"method must be one of {', '.join(methods)}, not {method!r}")
    model = Path(model)
    encoder, _ = companion_paths(model)
    if not encoder.is_file():
        raise ValueError(f"{model.name} has no encoder companion {encoder.name}: export it again")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[np.ndarray] = iter(
                calibration.frames[i : i + CALIBRATION_BATCH]
                for i in range(0, len(calibration.frames), CALIBRATION_BATCH)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"frames": batch}

    student = relu_encoder_path(model)
    distilled = student.is_file()
    source = student if distilled else encoder
    if distilled:
        meta = {p.key: p.value for p in onnx.load(str(student)).metadata_props}
        if meta.get("nbhr.parent_sha256") != file_sha256(model):
            raise ValueError(f"{student.name} was distilled from another model: run nbhr distill")
    out = int8_encoder_path(model)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "encoder.prepared.onnx"
        if distilled:
            source = _equalised_student(student, calibration.frames, Path(tmp))
        # Shape inference and graph folding first, as onnxruntime recommends before quantising.
        quant_pre_process(str(source), str(prepared))
        scope = {}
        if distilled:
            nodes = onnx.load(str(prepared)).graph.node
            first_conv = next(n.name for n in nodes if "frames" in n.input)
            scope = {"op_types_to_quantize": ["Conv", "Concat", "Relu"]}
            scope["nodes_to_exclude"] = [first_conv]
        quantize_static(
            str(prepared),
            str(out),
            Reader(),
            # QOperator: QLinearConv nodes outright, rather than Q/DQ pairs left to fusion.
            quant_format=QuantFormat.QOperator,
            per_channel=True,
            # 7-bit weights for the exported encoder: see the module docstring.
            reduce_range=not distilled,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            extra_options={"CalibPercentile": CALIBRATION_PERCENTILE},
            **scope,
        )
    graph = onnx.load(str(out))
    props = {
        "nbhr.parent_sha256": file_sha256(model),
        "nbhr.encoder_sha256": file_sha256(encoder),
        "nbhr.precision": "int8",
        "nbhr.encoder": "relu-distilled" if distilled else "exported",
        "nbhr.calibration": (
            f"{len(calibration.frames)} normalised face-crop frames from "
            f"{len(calibration.sources)} videos; {method} activation ranges; "
            f"per-channel {'int8' if distilled else '7-bit'} weights, uint8 activations (QOperator)"
        ),
    }
    onnx.helper.set_model_props(graph, props)
    onnx.save(graph, str(out))
    return out


def _equalised_student(student: Path, frames: np.ndarray, folder: Path) -> Path:
    """The student with equalised channel ranges (training.distill.equalise_ranges), written
    to `folder`; needs torch."""
    from training.distill import equalise_ranges, student_from_onnx, write_encoder

    module = student_from_onnx(student)
    step = max(1, len(frames) // EQUALISE_FRAMES)
    equalise_ranges(module, frames[::step][:EQUALISE_FRAMES], CALIBRATION_PERCENTILE)
    out = folder / "student.equalised.onnx"
    write_encoder(module, out, {})
    return out
