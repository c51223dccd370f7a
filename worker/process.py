"""The per-segment processing function: the one unit of work that every executor runs.

`process_segment(engine, segment_id)` is called by the local process pool and by the Celery
task; it needs only ids, claims the segment with a lease, decodes its frames once,
tracks the face, runs every requested estimator on every window, and writes all windows of the
segment plus the segment's new state in one transaction.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from db import queries
from db.engine import session_scope
from db.models import SegmentState
from model.classical import make_estimator
from model.hrv import PulseTrack
from model.nbhrnet import NBHRNetRunner, normalise_window, stitched_ppg_hr
from model.reference import ppg_target, reference_hr
from model.spectrum import spectral_hr
from worker.crops import (
    CROP_SCALE,
    CROP_SIZE,
    MODEL_FPS,
    WINDOW_FRAMES,
    face_crop,
    resample_indices,
    windows_of,
)
from worker.faces import Box, FaceDetector, region_mean, skin_mean
from worker.features import FrameFeatures
from worker.options import NBHRNET, NBHRNET_PPG, NBHRNET_WINDOW_S, ProcessingOptions, WindowGrid
from worker.outcome import SegmentOutcome
from worker.track import tracked_frames
from worker.video import VideoError, decodes_reduced, iter_frames

# A running segment's lease: renewed every RENEW_EVERY_S while it runs, so a dead worker's
# segment is free again at most LEASE_S after its last renewal (NBHR_LEASE_S overrides).
LEASE_S = float(os.environ.get("NBHR_LEASE_S", "120"))
# A segment whose worker vanished this many times (killed, crashed, out of memory) fails
# instead of taking down one more worker (NBHR_MAX_ATTEMPTS overrides).
MAX_ATTEMPTS = int(os.environ.get("NBHR_MAX_ATTEMPTS", "3"))
NBHRNET_BATCH = 2
RENEW_EVERY_S = min(30.0, LEASE_S / 4)
# How far past a segment's span its beats are taken from its own pulse (see _compute_windows).
BEAT_LEAD_S = 2.0
# A window counts as having a face when the face was tracked in at least this share of frames.
MIN_FACE_FRACTION = 0.8


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# onnxruntime intra-op threads of this process's NBHRnet sessions (init_process sets it).
_MODEL_THREADS = 1
# Directories this process may read videos under (resolved); None: no restriction.
_ARCHIVE_ROOTS: tuple[Path, ...] | None = None


def init_process(model_threads: int = 1, archive_roots: Sequence[str | Path] | None = None) -> None:
    """Per-process set-up for pool and Celery workers: one OpenCV thread (its own pool would
    fight the other worker processes for the same cores), `model_threads` onnxruntime threads
    for NBHRnet (processes x threads should not exceed the cores; with more than one, NBHRnet's
    encoder also runs beside the decoding, see _overlap), and the archive roots it may read
    under (None: anywhere)."""
    global _MODEL_THREADS, _ARCHIVE_ROOTS
    if model_threads < 1:
        raise ValueError(f"model_threads must be >= 1, got {model_threads}")
    _MODEL_THREADS = model_threads
    _ARCHIVE_ROOTS = (
        None if archive_roots is None else tuple(Path(r).resolve() for r in archive_roots)
    )
    nbhrnet_runner.cache_clear()
    cv2.setNumThreads(1)


def _overlap() -> bool:
    """Whether NBHRnet's frames are encoded in a thread beside the decoding
    (worker.features.FrameFeatures): in a process given more than one thread (init_process),
    which has a core for each. `nbhr run -j1 --threads 2` on 6 x 60 s of the demo archive (AMD
    EPYC, AVX2, 2 cores), side by side: 39.6, 40.1, 37.8 and 36.5 s wall this way against 41.0
    and 41.4 s with both threads inside onnxruntime (before FrameFeatures); 57-61 s with one
    thread. A pool of one process per core (the default) is faster still and does not use it."""
    return _MODEL_THREADS > 1


@lru_cache(maxsize=1)
def face_detector() -> FaceDetector:
    """One detector per process, created on first use (never at import time)."""
    return FaceDetector()


@lru_cache(maxsize=4)
def nbhrnet_runner(
    path: str, sha256: str, precision: str = "fp32", int8_sha256: str | None = None
) -> NBHRNetRunner:
    """One onnxruntime model per file, precision and process, opened on first use."""
    runner = NBHRNetRunner(
        Path(path), threads=_MODEL_THREADS, precision=precision, spin=not _overlap()
    )
    if runner.sha256 != sha256:
        raise ValueError(f"model file {path} changed since the job was planned (SHA-256 differs)")
    if precision == "int8" and runner.int8_sha256 != int8_sha256:
        raise ValueError(
            f"the int8 encoder of {path} changed since the job was planned (SHA-256 differs)"
        )
    return runner


def _crop(frame: np.ndarray, box: Box | None, found: bool, roi: str) -> np.ndarray | None:
    if roi == "face":
        return face_crop(frame, box) if found and box is not None else None
    if box is not None:  # a fixed box: the region itself, squashed to the model's input
        x0, y0 = int(max(0, box.x)), int(max(0, box.y))
        frame = frame[y0 : int(box.y + box.h), x0 : int(box.x + box.w)]
        if frame.size == 0:
            return None
    small = cv2.resize(frame, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_BGR2RGB)


@dataclass(frozen=True)
class Trace:
    """Per-frame features of a run of consecutive frames.

    rgb: float (T, 3) mean skin (or ROI) colour, RGB 0-255, NaN where no face.
    face: bool (T,) face tracked in the frame (all True for a user-fixed ROI).
    first: index of the first frame.
    """

    rgb: np.ndarray
    face: np.ndarray
    first: int


_NO_COLOUR = np.full(3, np.nan)


def extract_trace(
    path: Path,
    start: int,
    stop: int,
    roi: str,
    fps: float,
    renew: Callable[[], None] | None = None,
    on_crop: Callable[[np.ndarray | None], None] | None = None,
    colour: bool = True,
    min_width: int | None = None,
) -> Trace:
    """Decode frames [start, stop) once and reduce each to its mean ROI colour.

    on_crop: when given, called with each frame's 128x128 RGB crop for NBHRnet, in frame order
    (None where there is no face), from the same decode and the same boxes (a list's append, or
    worker.features.FrameFeatures.append to encode them as they come).
    colour: False skips the per-frame colour means (Trace.rgb is NaN), for a job whose only
    estimator is NBHRnet, which reads the crops alone.
    min_width: decode MJPEG at a reduced size no narrower than this (worker.video.iter_frames);
    only for --roi face or full, whose results do not depend on the frame's pixel size.
    """
    rgb: list[np.ndarray] = []
    face: list[bool] = []
    last_renew = time.monotonic()

    def keep(frame: np.ndarray, box: Box | None, found: bool) -> None:
        if not colour:
            rgb.append(_NO_COLOUR)
        elif roi == "face":
            rgb.append(skin_mean(frame, box) if box is not None else np.full(3, np.nan))
        else:
            rgb.append(region_mean(frame, box))
        face.append(found)
        if on_crop is not None:
            on_crop(_crop(frame, box, found, roi))

    fixed = None if roi in ("face", "full") else Box.parse(roi)
    if roi == "face":
        frames = tracked_frames(path, start, stop, fps, face_detector(), min_width, part=True)
    else:
        frames = (
            (index, frame, fixed) for index, frame in iter_frames(path, start, stop, min_width)
        )
    for _, frame, box in frames:
        keep(frame, box, roi != "face" or box is not None)
        if renew is not None and time.monotonic() - last_renew > RENEW_EVERY_S:
            renew()
            last_renew = time.monotonic()
    if not rgb:
        return Trace(np.empty((0, 3)), np.empty(0, dtype=bool), start)
    rgb_arr = np.vstack(rgb)
    face_arr = np.asarray(face, dtype=bool)
    # A fixed region that produced NaNs (box outside the frame) has no usable pixels.
    if roi != "face" and colour:
        face_arr &= np.isfinite(rgb_arr).all(axis=1)
    return Trace(rgb_arr, face_arr, start)


def crop_decode_width(path: Path, frame: int, min_width: int) -> int | None:
    """The narrowest frame width (at least `min_width`) at which NBHRnet's face crops still
    come from as many pixels as they have (CROP_SIZE), judged by the face in frame `frame`
    decoded at full size: a reduced JPEG decode is then an area-average the crop's own
    INTER_AREA resize would have made anyway. None (full size) when that frame shows no face,
    and, without decoding or detecting anything, for a video that is never decoded at a
    reduced size (worker.video.decodes_reduced: 7 ms a segment on an uncompressed 640x480
    AVI, 90 ms where its first frame has no face and the detector's whole cascade runs).
    """
    if not decodes_reduced(path):
        return None
    frames = list(iter_frames(path, frame, frame + 1))
    if not frames:
        return None
    image = frames[0][1]
    box = face_detector().detect(image, full=True)
    if box is None:
        return None
    side = CROP_SCALE * max(box.w, box.h)  # source pixels of the crop at full size
    return max(min_width, int(np.ceil(image.shape[1] * CROP_SIZE / side)))


def process_segment(engine: Engine, segment_id: int, worker: str | None = None) -> SegmentOutcome:
    """Run one segment end to end; never raises for bad input (the error is stored). Raises
    sqlalchemy.exc.DBAPIError when the database fails, leaving the segment to its lease."""
    worker = worker or worker_id()
    with session_scope(engine) as s:
        claimed = queries.claim_segment(s, segment_id, worker, LEASE_S)
    if claimed is None:
        return SegmentOutcome(segment_id, "skipped")
    if claimed.attempts > MAX_ATTEMPTS:
        return _fail(
            engine,
            segment_id,
            worker,
            f"gave up after {claimed.attempts - 1} attempts: the worker running it was lost each "
            "time (killed, crashed or out of memory)",
        )
    try:
        check_readable(Path(claimed.path))
        rows, beats, video_s, note = _compute_windows(engine, claimed, worker)
    except VideoError as exc:
        return _fail(engine, segment_id, worker, str(exc))
    except DBAPIError:
        raise  # the database, not the input: the caller retries (Celery) or stops (local run)
    except Exception as exc:  # noqa: BLE001 - any bug must end as a stored, readable reason
        return _fail(engine, segment_id, worker, f"{type(exc).__name__}: {exc}")
    with session_scope(engine) as s:
        queries.upsert_windows(s, rows)
        queries.upsert_beats(s, beats)
        queries.finish_segment(
            s, segment_id, worker, SegmentState.done, n_windows=len(rows), video_s=video_s
        )
        if note:
            queries.add_recording_note(s, claimed.recording_id, note)
        queries.refresh_recording_status(s, claimed.recording_id, claimed.config_key)
    return SegmentOutcome(segment_id, "done", n_windows=len(rows), video_s=video_s)


def check_readable(path: Path) -> None:
    """Raise VideoError unless `path`, with every symbolic link resolved, lies under one of
    this process's archive roots."""
    if _ARCHIVE_ROOTS is None:
        return
    real = path.resolve()
    if not any(real.is_relative_to(root) for root in _ARCHIVE_ROOTS):
        via = f" (through a symbolic link to {real})" if real != path.absolute() else ""
        raise VideoError(
            f"refused to read {path}{via}: outside this worker's archive roots "
            f"({', '.join(map(str, _ARCHIVE_ROOTS))}; NBHR_ARCHIVE_ROOTS)"
        )


def _fail(engine: Engine, segment_id: int, worker: str, reason: str) -> SegmentOutcome:
    with session_scope(engine) as s:
        seg = queries.finish_segment(s, segment_id, worker, SegmentState.failed, error=reason)
        queries.refresh_recording_status(s, seg.recording_id, seg.config_key)
    return SegmentOutcome(segment_id, "failed", error=reason)


def _compute_windows(
    engine: Engine, seg: queries.ClaimedSegment, worker: str
) -> tuple[list[dict], list[dict], float, str | None]:
    """The segment's windows and beat series (rows for queries.upsert_windows / upsert_beats),
    the video seconds read, and a note on the recording (a truncated file) or None."""
    opts = ProcessingOptions.from_json(seg.options)
    plan = WindowGrid.for_video(seg.fps, seg.n_frames, opts, opts.plan_window_s)
    grid = WindowGrid.for_video(seg.fps, seg.n_frames, opts)  # the classical windows
    k0, k1 = plan.index_at(seg.t_start), plan.index_at(seg.t_end)
    first, _ = plan.frames(k0)
    classical = [n for n in opts.estimators if n != NBHRNET]
    # Classical windows, and NBHRnet's stitched-PPG spans, are window_s long: decode to the end
    # of the last one that starts in this segment.
    spans = range(k0, min(k1, grid.n_windows))
    last_end = grid.frames(spans[-1])[1] if spans else 0
    stop = min(seg.n_frames, max(plan.frames(k1 - 1)[1], last_end))

    def renew() -> None:
        with session_scope(engine) as s:
            queries.renew_lease(s, seg.segment_id, worker, LEASE_S)

    net = _NetInput(opts, seg.fps) if NBHRNET in opts.estimators else None
    min_width = opts.decode_min_width
    if net is not None and min_width is not None:
        min_width = crop_decode_width(Path(seg.path), first, min_width)
    with net if net is not None else nullcontext():
        trace = extract_trace(
            Path(seg.path),
            first,
            stop,
            opts.roi,
            seg.fps,
            renew,
            None if net is None else net.append,
            colour=bool(classical),
            min_width=min_width,
        )
        net_windows = net.windows() if net is not None else []
    n_read = len(trace.rgb)
    note = None
    if first + n_read < stop:
        end_s = (first + n_read) / seg.fps
        note = (
            f"video ends at {end_s:.1f} s but its header says {seg.n_frames / seg.fps:.1f} s "
            "(truncated?); windows after the end were not estimated"
        )
        if n_read == 0:
            raise VideoError(f"no frame could be decoded from {seg.t_start:.1f} s on (truncated?)")
    estimators = [make_estimator(n, opts.band) for n in classical]
    tracks = {est.name: PulseTrack(first, n_read, seg.fps) for est in estimators}
    rows: list[dict] = []
    for k in spans if classical else ():
        a, b = grid.frames(k)
        if b - first > n_read:
            break
        rgb = trace.rgb[a - first : b - first]
        face = trace.face[a - first : b - first]
        frac = float(face.mean())
        t0, t1 = a / seg.fps, b / seg.fps
        ref = reference_hr(seg.references, t0, t1)
        has_face = frac >= MIN_FACE_FRACTION
        for est in estimators:
            hr, quality = None, None
            if has_face:
                e, raw = est.analyse(rgb, seg.fps)
                if raw is not None:
                    tracks[est.name].add(a, raw)
                if np.isfinite(e.hr_bpm):
                    hr, quality = float(e.hr_bpm), float(e.quality)
            rows.append(
                {
                    "recording_id": seg.recording_id,
                    "segment_id": seg.segment_id,
                    "estimator": est.name,
                    "model_key": "",
                    "t_start": round(t0, 6),
                    "t_end": round(t1, 6),
                    "hr_bpm": hr,
                    "quality": quality,
                    "face_found": has_face if opts.roi == "face" else None,
                    "face_fraction": frac if opts.roi == "face" else None,
                    "ref_hr_bpm": ref,
                    "ppg_r": None,
                }
            )
    # A segment's pulse is unreliable near its first frame (one tapered window covers it) and
    # runs on past its span (its last windows end window - hop later). So it owns the beats of
    # its span moved `lead` later: the first segment from the video's start, the last up to
    # its end. Neighbours share the boundary, so no beat is lost or stored twice.
    lead = min(BEAT_LEAD_S, max(0.0, opts.window_s - opts.hop_s) / 2)
    beats_from = seg.t_start + lead if seg.t_start > 0 else 0.0
    beats_to = seg.t_end + lead if k1 < plan.n_windows else seg.n_frames / seg.fps
    beats = [
        _beat_row(seg, name, "", track.beats(opts.band, beats_from, beats_to), beats_to)
        for name, track in tracks.items()
    ]
    if net is not None:
        span_s = [(a / seg.fps, b / seg.fps) for a, b in map(grid.frames, spans)]
        net_rows, track = _nbhrnet_rows(seg, opts, net_windows, net.n, first / seg.fps, span_s)
        rows += net_rows
        net_beats = track.beats(opts.band, beats_from, beats_to)
        beats.append(_beat_row(seg, NBHRNET_PPG, opts.model_key, net_beats, beats_to))
    video_s = n_read / seg.fps
    return rows, beats, video_s, note


def _beat_row(
    seg: queries.ClaimedSegment, estimator: str, model_key: str, times: np.ndarray, to_s: float
) -> dict:
    return {
        "recording_id": seg.recording_id,
        "segment_id": seg.segment_id,
        "estimator": estimator,
        "model_key": model_key,
        "t_start": round(seg.t_start, 6),
        "t_end": round(to_s, 6),
        "n": len(times),
        "times_s": times,
    }


def _nbhrnet_rows(
    seg: queries.ClaimedSegment,
    opts: ProcessingOptions,
    windows: list[_NetWindow],
    n_crops: int,
    crops_start_s: float,
    spans: list[tuple[float, float]],
) -> tuple[list[dict], PulseTrack]:
    """NBHRnet's 2-s windows (`windows`, from _NetInput: 60 crops at 30 fps, every
    opts.nbhrnet_hop_s) that start in the segment, and its second estimate over each (start,
    end) span in `spans`: the HR of its PPG output stitched over the span
    (`model.nbhrnet.stitched_ppg_hr`, from the windows on the 2-s grid). The segment's
    `n_crops` crops start at `crops_start_s` (the segment's start) and may run past the
    segment's end, to cover the last span. Also returns its PPG output on the 2-s grid, the
    windows joined end to end, as a PulseTrack to find beats in."""
    chunks: list[tuple[float, np.ndarray | None]] = []  # (start s, PPG or None without a face)
    track = PulseTrack(
        round(crops_start_s * MODEL_FPS),
        int(round(n_crops / seg.fps * MODEL_FPS)),
        MODEL_FPS,
        taper_s=0.0,
    )
    rows = []
    for first, value, wave in windows:
        start = crops_start_s + first / MODEL_FPS
        end = start + WINDOW_FRAMES / MODEL_FPS
        quality, r = None, None
        if wave is not None:
            quality = float(spectral_hr(wave - wave.mean(), MODEL_FPS, opts.band).snr_db)
            r = _ppg_r(wave, seg.references, start)
        if first % WINDOW_FRAMES == 0:
            chunks.append((start, wave))
            if wave is not None:
                track.add(round(start * MODEL_FPS), wave)
        if start >= seg.t_end - 1e-9:
            continue  # decoded only for a span; the next segment writes this window
        has_face = value is not None
        rows.append(
            _nbhrnet_row(seg, opts, NBHRNET, start, end, value, quality, has_face) | {"ppg_r": r}
        )
    for t0, t1 in spans:
        inside = [w for s, w in chunks if s >= t0 - 1e-6 and s + NBHRNET_WINDOW_S <= t1 + 1e-6]
        covered = len(inside) * NBHRNET_WINDOW_S >= (t1 - t0) - 1e-6
        has_face = covered and all(w is not None for w in inside)
        value, quality = None, None
        if has_face:
            value, quality = stitched_ppg_hr(inside, MODEL_FPS, opts.band)
        rows.append(_nbhrnet_row(seg, opts, NBHRNET_PPG, t0, t1, value, quality, has_face))
    return rows, track


# (first 30-fps frame of the window, HR in bpm, PPG (60,)); HR and PPG None without a face.
_NetWindow = tuple[int, float | None, np.ndarray | None]


def _framewise_windows(
    runner: NBHRNetRunner, features: np.ndarray, encoded: np.ndarray, hop: int
) -> list[_NetWindow]:
    """Windows every `hop` frames cut from every frame's CNN features, computed once
    (worker.features.FrameFeatures: float32 (n, FEATURE_SIZE), and bool (n,) where encoded).

    Frames are normalised in 60-frame blocks (model.nbhrnet.normalise_blocks), so a window on
    the 2-s grid gets exactly the whole-window normalisation the model was trained with, and its
    result equals the whole-model graph's. A block with a frame without a face is not encoded,
    and a window that touches it has no estimate.
    """
    firsts = list(range(0, len(features) - WINDOW_FRAMES + 1, hop))
    usable = [k for k in firsts if encoded[k : k + WINDOW_FRAMES].all()]
    if usable:
        hr, ppg = runner.run_head(np.stack([features[k : k + WINDOW_FRAMES] for k in usable]))
    out: dict[int, tuple[float, np.ndarray]] = {
        k: (float(hr[i]), ppg[i]) for i, k in enumerate(usable)
    }
    return [(k, *out.get(k, (None, None))) for k in firsts]


class _NetInput:
    """Where a segment's crops go for NBHRnet (`append`, in frame order), and its windows once
    they are all in (`windows`). Use as a context manager around the decoding.

    A model with encoder/head halves (or any hop other than 2 s, which needs them) on a 30-fps
    video: each 60-crop block is encoded as soon as it is complete (worker.features), in a
    thread of its own beside the decoding when this process has more than one thread
    (init_process), and only the features are kept. At another frame rate the crops are kept
    until the end, resampled to 30 fps, then encoded the same way; a whole-model graph alone
    takes whole windows of crops.
    """

    def __init__(self, opts: ProcessingOptions, fps: float) -> None:
        self.runner = nbhrnet_runner(
            opts.model_path, opts.model_sha256, opts.nbhrnet_precision, opts.model_int8_sha256
        )
        self.hop = round(opts.nbhrnet_hop_s * MODEL_FPS)
        self.fps = fps
        self.framewise = self.runner.framewise or self.hop != WINDOW_FRAMES
        if self.framewise:
            self.runner.require_framewise()  # a hop other than 2 s needs them: readable failure
        self._crops: list[np.ndarray | None] = []
        self._features: FrameFeatures | None = None
        if self.framewise and fps == MODEL_FPS:
            self._features = FrameFeatures(self.runner.encode_frames, overlap=_overlap())

    def __enter__(self) -> _NetInput:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._features is not None:
            self._features.close()

    @property
    def n(self) -> int:
        """Crops appended so far (at the video's frame rate)."""
        return self._features.n if self._features is not None else len(self._crops)

    def append(self, crop: np.ndarray | None) -> None:
        if self._features is not None:
            self._features.append(crop)
        else:
            self._crops.append(crop)

    def windows(self) -> list[_NetWindow]:
        if not self.framewise:
            return _whole_windows(self.runner, self._crops, self.fps)
        features = self._features
        if features is None:
            features = FrameFeatures(self.runner.encode_frames)
            for i in resample_indices(len(self._crops), self.fps):
                features.append(self._crops[i])
        return _framewise_windows(self.runner, *features.result(), self.hop)


def _whole_windows(
    runner: NBHRNetRunner, crops: list[np.ndarray | None], fps: float
) -> list[_NetWindow]:
    """Windows every 2 s through the whole-model graph, one normalised window at a time (for a
    model exported without its encoder/head companions)."""
    firsts, batch = [], []
    for k, window in windows_of(iter(crops), fps, len(crops)):
        firsts.append((k * WINDOW_FRAMES, window is not None))
        if window is not None:
            batch.append(normalise_window(window))
    # Batches above 2 windows barely help on CPU but cost ~260 MB of activations per window.
    if batch:
        hr, ppg = runner.predict(np.stack(batch), batch_size=NBHRNET_BATCH)
    out, i = [], 0
    for first, has_face in firsts:
        if has_face:
            out.append((first, float(hr[i]), ppg[i]))
            i += 1
        else:
            out.append((first, None, None))
    return out


def _nbhrnet_row(
    seg: queries.ClaimedSegment,
    opts: ProcessingOptions,
    estimator: str,
    start: float,
    end: float,
    value: float | None,
    quality: float | None,
    has_face: bool,
) -> dict:
    return {
        "recording_id": seg.recording_id,
        "segment_id": seg.segment_id,
        "estimator": estimator,
        "model_key": opts.model_key,
        "t_start": round(start, 6),
        "t_end": round(end, 6),
        "hr_bpm": value,
        "quality": quality if quality is None or np.isfinite(quality) else None,
        "face_found": has_face if opts.roi == "face" else None,
        "face_fraction": (1.0 if has_face else 0.0) if opts.roi == "face" else None,
        "ref_hr_bpm": reference_hr(seg.references, start, end),
        "ppg_r": None,
    }


def _ppg_r(predicted: np.ndarray, references: dict, start: float) -> float | None:
    """Pearson r of a predicted PPG (60,) with the reference PPG target of its window."""
    ref = references.get("ppg")
    target = ppg_target(ref, start, len(predicted), MODEL_FPS) if ref is not None else None
    if target is None or np.std(predicted) < 1e-9:
        return None
    return float(np.corrcoef(predicted, target)[0, 1])
