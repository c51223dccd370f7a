"""Plan recordings into segments for one processing configuration, and pick what must run.

A recording already processed with the same options is left alone, so running the same
command twice does nothing the second time (and writes no row); segments left queued or
orphaned by a run that died are picked up again.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import queries
from db.models import Job, Recording, RecordingState, Segment, SegmentState, utcnow
from worker.options import ProcessingOptions, WindowGrid


@dataclass(frozen=True)
class Plan:
    job_id: int | None
    segment_ids: list[int]
    recordings: int
    video_s: float


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _orphaned(seg: Segment) -> bool:
    """A running segment whose holder is gone: lease expired, or a dead process on this host."""
    if seg.lease_until is not None:
        lease = seg.lease_until
        now = utcnow() if lease.tzinfo is not None else utcnow().replace(tzinfo=None)
        if lease < now:
            return True
    host, _, pid = (seg.worker or "").rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid))


def _runnable(seg: Segment, retry_failed: bool) -> bool:
    if seg.state == SegmentState.queued:
        return True
    if seg.state == SegmentState.running:
        return _orphaned(seg)
    return seg.state == SegmentState.failed and retry_failed


def plan_job(
    session: Session,
    archive_root: str,
    recording_ids: list[int],
    opts: ProcessingOptions,
    executor: str,
    retry_failed: bool = False,
) -> Plan:
    """Create (if there is work) a job and the segments it runs; return the ids to execute."""
    key = opts.config_key
    todo: list[Segment] = []
    new_segments: list[tuple[Recording, float, float]] = []
    touched: list[Recording] = []
    video_s = 0.0
    for rec in session.scalars(select(Recording).where(Recording.id.in_(recording_ids))):
        if rec.status == RecordingState.failed and rec.fps is None:
            continue  # failed at probe: nothing to run until the file changes
        existing = queries.segments_of(session, rec.id, key)
        if not existing:
            grid = WindowGrid.for_video(rec.fps, rec.n_frames, opts, opts.plan_window_s)
            spans = grid.segments(opts.segment_s, opts.hop_s)
            if not spans:
                rec.status = RecordingState.failed
                rec.error = (
                    f"video is {rec.duration_s:.1f} s long, shorter than one "
                    f"{opts.plan_window_s:g}-s window"
                )
                continue
            new_segments += [(rec, a, b) for a, b in spans]
            touched.append(rec)
            video_s += rec.duration_s or 0.0
            continue
        pending = [s for s in existing if _runnable(s, retry_failed)]
        if pending:
            todo += pending
            touched.append(rec)
            video_s += sum(s.t_end - s.t_start for s in pending)
    if not todo and not new_segments:
        return Plan(None, [], 0, 0.0)
    job = Job(archive_root=archive_root, executor=executor, config_key=key, options=opts.to_json())
    session.add(job)
    session.flush()
    for seg in todo:
        if seg.state == SegmentState.failed:
            seg.attempts = 0  # a deliberate retry starts a fresh attempt budget
        seg.job_id = job.id
        seg.state = SegmentState.queued
        seg.lease_until = None
    for rec, a, b in new_segments:
        session.add(Segment(job_id=job.id, recording_id=rec.id, config_key=key, t_start=a, t_end=b))
    for rec in touched:
        rec.status = RecordingState.queued
        rec.error = None
    session.flush()
    ids = queries.job_segment_ids(session, job.id)
    return Plan(job.id, ids, len(touched), video_s)
