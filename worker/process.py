"""The per-segment processing function: the one unit of work that every executor runs.

`process_segment(engine, segment_id)` is called by the local process pool today and by the
Celery task later; it needs only ids, claims the segment with a lease, decodes its frames once,
tracks the face, runs every requested estimator on every window, and writes all windows of the
segment plus the segment's new state in one transaction.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from sqlalchemy import Engine

from db import queries
from db.engine import session_scope
from db.models import SegmentState
from model.classical import make_estimator
from model.reference import reference_hr
from worker.faces import Box, FaceDetector, FaceTracker, region_mean, skin_mean
from worker.options import ProcessingOptions, WindowGrid
from worker.video import VideoError, iter_frames

LEASE_S = 600.0
RENEW_EVERY_S = 30.0
# A window counts as having a face when the face was tracked in at least this share of frames.
MIN_FACE_FRACTION = 0.8


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def init_process() -> None:
    """Per-process set-up for pool and Celery workers."""
    # OpenCV's own thread pool would fight the other worker processes for the same cores.
    cv2.setNumThreads(1)


@lru_cache(maxsize=1)
def face_detector() -> FaceDetector:
    """One detector per process, created on first use (never at import time)."""
    return FaceDetector()


@dataclass(frozen=True)
class SegmentOutcome:
    segment_id: int
    state: str  # done | failed | skipped (another worker holds it or it is finished)
    n_windows: int = 0
    video_s: float = 0.0
    error: str | None = None


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


def extract_trace(
    path: Path,
    start: int,
    stop: int,
    roi: str,
    fps: float,
    renew: Callable[[], None] | None = None,
) -> Trace:
    """Decode frames [start, stop) once and reduce each to its mean ROI colour."""
    rgb: list[np.ndarray] = []
    face: list[bool] = []
    last_renew = time.monotonic()

    def keep(frame: np.ndarray, box: Box | None, found: bool) -> None:
        if roi == "face":
            rgb.append(skin_mean(frame, box) if box is not None else np.full(3, np.nan))
        else:
            rgb.append(region_mean(frame, box))
        face.append(found)

    fixed = None if roi in ("face", "full") else Box.parse(roi)
    tracker = FaceTracker(face_detector(), fps) if roi == "face" else None
    for index, frame in iter_frames(path, start, stop):
        if tracker is None:
            keep(frame, fixed, True)
        else:
            for _, f, box in tracker.push(index, frame):
                keep(f, box, box is not None)
        if renew is not None and time.monotonic() - last_renew > RENEW_EVERY_S:
            renew()
            last_renew = time.monotonic()
    if tracker is not None:
        for _, f, box in tracker.flush():
            keep(f, box, box is not None)
    if not rgb:
        return Trace(np.empty((0, 3)), np.empty(0, dtype=bool), start)
    rgb_arr = np.vstack(rgb)
    face_arr = np.asarray(face, dtype=bool)
    # A fixed region that produced NaNs (box outside the frame) has no usable pixels.
    if roi != "face":
        face_arr &= np.isfinite(rgb_arr).all(axis=1)
    return Trace(rgb_arr, face_arr, start)


def process_segment(engine: Engine, segment_id: int, worker: str | None = None) -> SegmentOutcome:
    """Run one segment end to end; never raises for bad input (the error is stored)."""
    worker = worker or worker_id()
    with session_scope(engine) as s:
        claimed = queries.claim_segment(s, segment_id, worker, LEASE_S)
    if claimed is None:
        return SegmentOutcome(segment_id, "skipped")
    try:
        rows, video_s, note = _compute_windows(engine, claimed, worker)
    except VideoError as exc:
        return _fail(engine, segment_id, worker, str(exc))
    except Exception as exc:  # noqa: BLE001 - any bug must end as a stored, readable reason
        return _fail(engine, segment_id, worker, f"{type(exc).__name__}: {exc}")
    with session_scope(engine) as s:
        queries.upsert_windows(s, rows)
        queries.finish_segment(
            s, segment_id, worker, SegmentState.done, n_windows=len(rows), video_s=video_s
        )
        if note:
            queries.add_recording_note(s, claimed.recording_id, note)
        queries.refresh_recording_status(s, claimed.recording_id, claimed.config_key)
    return SegmentOutcome(segment_id, "done", n_windows=len(rows), video_s=video_s)


def _fail(engine: Engine, segment_id: int, worker: str, reason: str) -> SegmentOutcome:
    with session_scope(engine) as s:
        seg = queries.finish_segment(s, segment_id, worker, SegmentState.failed, error=reason)
        queries.refresh_recording_status(s, seg.recording_id, seg.config_key)
    return SegmentOutcome(segment_id, "failed", error=reason)


def _compute_windows(
    engine: Engine, seg: queries.ClaimedSegment, worker: str
) -> tuple[list[dict], float, str | None]:
    opts = ProcessingOptions.from_json(seg.options)
    grid = WindowGrid.for_video(seg.fps, seg.n_frames, opts)
    k0, k1 = grid.index_at(seg.t_start), grid.index_at(seg.t_end)
    first, _ = grid.frames(k0)
    _, stop = grid.frames(k1 - 1)

    def renew() -> None:
        with session_scope(engine) as s:
            queries.renew_lease(s, seg.segment_id, worker, LEASE_S)

    trace = extract_trace(Path(seg.path), first, stop, opts.roi, seg.fps, renew)
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
    estimators = [make_estimator(name, opts.band) for name in opts.estimators]
    rows: list[dict] = []
    for k in range(k0, k1):
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
                e = est.estimate(rgb, seg.fps)
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
                }
            )
    video_s = n_read / seg.fps
    return rows, video_s, note
