"""Every read and write the rest of the code does, in one place, for SQLite and PostgreSQL alike."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Select, and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.models import (
    BeatSeries,
    Job,
    Model,
    Recording,
    RecordingState,
    Reference,
    ReferenceKind,
    Segment,
    SegmentState,
    Subject,
    Window,
    utcnow,
)
from model.reference import ReferenceSeries, reference_hr


def pack(values: np.ndarray) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def unpack(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").astype(np.float64)


# --- subjects, recordings, references -----------------------------------------------------


def get_or_create_subject(session: Session, key: str) -> Subject:
    subject = session.scalar(select(Subject).where(Subject.key == key))
    if subject is None:
        subject = Subject(key=key, meta={})
        session.add(subject)
        session.flush()
    return subject


def store_references(session: Session, recording_id: int, series: list[ReferenceSeries]) -> None:
    """Replace the reference series of a recording (one row per kind)."""
    session.execute(delete(Reference).where(Reference.recording_id == recording_id))
    for s in series:
        session.add(
            Reference(
                recording_id=recording_id,
                kind=ReferenceKind(s.kind),
                sample_rate_hz=s.sample_rate_hz,
                t0_s=s.t0_s,
                times_s=pack(s.times_s) if s.times_s is not None else None,
                values=pack(s.values),
                n=len(s.values),
                source=s.source,
            )
        )


def load_references(session: Session, recording_id: int) -> dict[str, ReferenceSeries]:
    rows = session.scalars(select(Reference).where(Reference.recording_id == recording_id))
    return {
        r.kind.value: ReferenceSeries(
            kind=r.kind.value,
            values=unpack(r.values),
            source=r.source,
            sample_rate_hz=r.sample_rate_hz,
            t0_s=r.t0_s,
            times_s=unpack(r.times_s) if r.times_s is not None else None,
        )
        for r in rows
    }


def refill_reference_hr(session: Session, recording_id: int) -> int:
    """Recompute windows.ref_hr_bpm of a recording after its references changed."""
    refs = load_references(session, recording_id)
    windows = session.scalars(select(Window).where(Window.recording_id == recording_id)).all()
    for w in windows:
        w.ref_hr_bpm = reference_hr(refs, w.t_start, w.t_end)
    session.flush()
    return len(windows)


# --- segments: claim, lease, finish ---------------------------------------------------------


@dataclass(frozen=True)
class ClaimedSegment:
    """Everything a worker needs to run a segment, read in the claiming transaction."""

    segment_id: int
    recording_id: int
    config_key: str
    t_start: float
    t_end: float
    path: str
    fps: float
    n_frames: int
    options: dict[str, Any]
    references: dict[str, ReferenceSeries]
    attempts: int = 1  # this claim included


def claim_segment(
    session: Session, segment_id: int, worker: str, lease_s: float
) -> ClaimedSegment | None:
    """Take a queued segment (or one whose lease ran out, or that `worker` itself held); None if
    it is not available.

    The conditional UPDATE is the lock: of two workers handed the same id, one gets rowcount 1.
    """
    now = utcnow()
    res = session.execute(
        update(Segment)
        .where(
            Segment.id == segment_id,
            or_(
                Segment.state == SegmentState.queued,
                and_(
                    Segment.state == SegmentState.running,
                    # Its lease ran out, or it is this very worker's (a task retried after the
                    # database went away mid-segment): one process runs one task at a time.
                    or_(Segment.lease_until < now, Segment.worker == worker),
                ),
            ),
        )
        .values(
            state=SegmentState.running,
            worker=worker,
            lease_until=now + timedelta(seconds=lease_s),
            attempts=Segment.attempts + 1,
            started_at=now,
            error=None,
        )
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:
        return None
    seg, rec, job = session.execute(
        select(Segment, Recording, Job)
        .join(Recording, Recording.id == Segment.recording_id)
        .join(Job, Job.id == Segment.job_id)
        .where(Segment.id == segment_id)
    ).one()
    if rec.status in (RecordingState.new, RecordingState.queued):
        rec.status = RecordingState.running
    return ClaimedSegment(
        segment_id=seg.id,
        recording_id=rec.id,
        config_key=seg.config_key,
        t_start=seg.t_start,
        t_end=seg.t_end,
        path=rec.path,
        fps=rec.fps or 0.0,
        n_frames=rec.n_frames or 0,
        options=job.options,
        references=load_references(session, rec.id),
        attempts=seg.attempts,
    )


def lease_wait_s(session: Session, segment_id: int) -> float | None:
    """Seconds until the segment's current lease runs out (0 when it is claimable now); None
    when the segment is finished (done or failed) or does not exist."""
    row = session.execute(
        select(Segment.state, Segment.lease_until).where(Segment.id == segment_id)
    ).one_or_none()
    if row is None or row.state in (SegmentState.done, SegmentState.failed):
        return None
    if row.state != SegmentState.running or row.lease_until is None:
        return 0.0
    return max(0.0, (_naive(row.lease_until) - _naive(utcnow())).total_seconds())


def segments_to_requeue(session: Session, job_id: int | None = None) -> list[int]:
    """Segments a broker should (again) hold a message for: queued ones (their message may have
    been lost with the broker) and running ones whose lease ran out (their worker died)."""
    now = utcnow()
    q = select(Segment.id).where(
        or_(
            Segment.state == SegmentState.queued,
            and_(Segment.state == SegmentState.running, Segment.lease_until < now),
        )
    )
    if job_id is not None:
        q = q.where(Segment.job_id == job_id)
    return list(session.scalars(q.order_by(Segment.id)))


def renew_lease(session: Session, segment_id: int, worker: str, lease_s: float) -> bool:
    res = session.execute(
        update(Segment)
        .where(Segment.id == segment_id, Segment.worker == worker)
        .values(lease_until=utcnow() + timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1


def finish_segment(
    session: Session,
    segment_id: int,
    worker: str,
    state: SegmentState,
    *,
    n_windows: int | None = None,
    video_s: float | None = None,
    error: str | None = None,
) -> Segment:
    seg = session.get_one(Segment, segment_id)
    seg.state = state
    seg.worker = worker
    seg.lease_until = None
    seg.finished_at = utcnow()
    seg.n_windows = n_windows
    seg.video_s = video_s
    seg.error = error
    session.flush()
    return seg


def upsert_windows(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert windows; a window already there (same recording, estimator, model, start) is
    overwritten, so a segment that runs twice leaves one row per window."""
    _upsert(session, Window, rows)


def upsert_beats(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert beat series (BeatSeries columns; `times_s` a float array of seconds); a series
    already there for the same recording, estimator, model and segment start is replaced."""
    _upsert(
        session,
        BeatSeries,
        [r | {"times_s": np.asarray(r["times_s"], "<f8").tobytes()} for r in rows],
    )


def _upsert(session: Session, table: type[Window] | type[BeatSeries], rows: list[dict]) -> None:
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[dialect]
    stmt = insert(table)
    keys = ["recording_id", "estimator", "model_key", "t_start"]
    updated = [k for k in rows[0] if k not in keys]
    stmt = stmt.on_conflict_do_update(
        index_elements=keys, set_={k: getattr(stmt.excluded, k) for k in updated}
    )
    # Batches keep each statement below the engines' bound-parameter limits.
    for i in range(0, len(rows), 500):
        session.execute(stmt, rows[i : i + 500])


def add_recording_note(session: Session, recording_id: int, note: str) -> None:
    rec = session.get_one(Recording, recording_id)
    if rec.note != note:
        rec.note = note if not rec.note else f"{rec.note}; {note}"


def refresh_recording_status(session: Session, recording_id: int, config_key: str) -> None:
    """Recording is done when all its segments of this configuration are, failed when one
    failed (with that segment's reason), running otherwise."""
    states = session.execute(
        select(Segment.state, Segment.error, Segment.t_start)
        .where(Segment.recording_id == recording_id, Segment.config_key == config_key)
        .order_by(Segment.t_start)
    ).all()
    rec = session.get_one(Recording, recording_id)
    failed = [(t, err) for st, err, t in states if st == SegmentState.failed]
    if failed:
        rec.status = RecordingState.failed
        t, err = failed[0]
        rec.error = err if len(states) == 1 else f"segment at {t:.0f} s: {err}"
    elif states and all(st == SegmentState.done for st, _, _ in states):
        faces = dict(
            session.execute(
                select(Window.face_found, func.count())
                .where(Window.recording_id == recording_id, Window.face_found.is_not(None))
                .group_by(Window.face_found)
            ).all()
        )
        if faces.get(False) and not faces.get(True):
            rec.status = RecordingState.failed
            rec.error = (
                f"no face found in any of its {faces[False]} windows (also tried brightened and "
                "rotated frames); if the skin region is known, use --roi full or --roi X,Y,W,H"
            )
            return
        rec.status = RecordingState.done
        rec.error = None
    else:
        rec.status = RecordingState.running


# --- planning ------------------------------------------------------------------------------


def segments_of(session: Session, recording_id: int, config_key: str) -> list[Segment]:
    return list(
        session.scalars(
            select(Segment)
            .where(Segment.recording_id == recording_id, Segment.config_key == config_key)
            .order_by(Segment.t_start)
        )
    )


def job_segment_ids(session: Session, job_id: int) -> list[int]:
    return list(session.scalars(select(Segment.id).where(Segment.job_id == job_id)))


# --- status --------------------------------------------------------------------------------


def state_counts(session: Session, column: Any) -> dict[str, int]:
    """Rows per state of a state column (Recording.status or Segment.state)."""
    q: Select = select(column, func.count()).group_by(column)
    counts = {state: 0 for state in ("queued", "running", "done", "failed")}
    for state, n in session.execute(q):
        counts[state.value] = n
    return counts


def failures(session: Session, limit: int = 50) -> list[dict[str, str]]:
    rows = session.execute(
        select(Recording.path, Recording.error)
        .where(Recording.status == RecordingState.failed)
        .order_by(Recording.path)
        .limit(limit)
    )
    return [{"recording": p, "error": e or ""} for p, e in rows]


@dataclass(frozen=True)
class RecordingRow:
    id: int
    subject: str
    path: str
    status: str
    duration_s: float | None
    error: str | None
    note: str | None
    reference_source: str | None


def recording_rows(session: Session, subject: str | None = None) -> list[RecordingRow]:
    """Every registered recording (of `subject`), with its state, sorted by subject and path."""
    q = (
        select(
            Recording.id,
            Subject.key,
            Recording.path,
            Recording.status,
            Recording.duration_s,
            Recording.error,
            Recording.note,
            Recording.reference_source,
        )
        .join(Subject, Subject.id == Recording.subject_id)
        .order_by(Subject.key, Recording.path)
    )
    if subject is not None:
        q = q.where(Subject.key == subject)
    return [
        RecordingRow(rid, subj, path, status.value, dur, err, note, ref)
        for rid, subj, path, status, dur, err, note, ref in session.execute(q)
    ]


def window_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Window)) or 0


def processing_speed(session: Session) -> dict[str, float | None]:
    """Video seconds per wall second over finished segments, overall and for the last job."""
    job_id = session.scalar(select(func.max(Job.id)))
    out: dict[str, float | None] = {"video_s": 0.0, "wall_s": None, "video_s_per_s": None}
    if job_id is None:
        return out
    video_s, t0, t1 = session.execute(
        select(
            func.sum(Segment.video_s), func.min(Segment.started_at), func.max(Segment.finished_at)
        ).where(Segment.job_id == job_id, Segment.state == SegmentState.done)
    ).one()
    out["video_s"] = float(video_s or 0.0)
    if t0 is not None and t1 is not None:
        wall = (_naive(t1) - _naive(t0)).total_seconds()
        out["wall_s"] = wall
        out["video_s_per_s"] = out["video_s"] / wall if wall > 0 else None
    return out


def worker_stats(session: Session, job_id: int | None = None) -> list[dict[str, Any]]:
    """Per worker (host:pid) over its finished segments (of `job_id`, or of all jobs): segments,
    video seconds and windows it processed, seconds it spent on them, and its throughput in
    video seconds per busy second."""
    q = select(
        Segment.worker, Segment.video_s, Segment.n_windows, Segment.started_at, Segment.finished_at
    ).where(Segment.worker.is_not(None), Segment.state == SegmentState.done)
    if job_id is not None:
        q = q.where(Segment.job_id == job_id)
    per: dict[str, dict[str, Any]] = {}
    for worker, video_s, n_windows, t0, t1 in session.execute(q):
        w = per.setdefault(
            worker,
            {
                "worker": worker,
                "host": worker.rsplit(":", 1)[0],
                "segments": 0,
                "video_s": 0.0,
                "windows": 0,
                "busy_s": 0.0,
            },
        )
        w["segments"] += 1
        w["video_s"] += float(video_s or 0.0)
        w["windows"] += int(n_windows or 0)
        if t0 is not None and t1 is not None:
            w["busy_s"] += max(0.0, (_naive(t1) - _naive(t0)).total_seconds())
    for w in per.values():
        w["video_s_per_busy_s"] = w["video_s"] / w["busy_s"] if w["busy_s"] > 0 else None
    return [per[k] for k in sorted(per)]


def job_progress(session: Session, job_id: int | None = None) -> dict[str, Any] | None:
    """Progress of `job_id` (default: the latest job): segments by state, video seconds done
    and left, throughput since its first segment started (video s per wall s) and the ETA in
    seconds at that rate (None until a segment is done, 0 when nothing is left)."""
    job_id = job_id or session.scalar(select(func.max(Job.id)))
    if job_id is None:
        return None
    rows = session.execute(
        select(
            Segment.state,
            Segment.t_start,
            Segment.t_end,
            Segment.video_s,
            Segment.started_at,
            Segment.finished_at,
            Segment.worker,
        ).where(Segment.job_id == job_id)
    ).all()
    counts = {state.value: 0 for state in SegmentState}
    done_s = left_s = 0.0
    starts, ends = [], []
    hosts: set[str] = set()
    for state, a, b, video_s, started, finished, worker in rows:
        counts[SegmentState(state).value] += 1
        if state == SegmentState.done:
            done_s += float(video_s or (b - a))
            if worker is not None:
                hosts.add(worker.rsplit(":", 1)[0])
        elif state != SegmentState.failed:
            left_s += b - a
        if started is not None:
            starts.append(_naive(started))
        if finished is not None:
            ends.append(_naive(finished))
    # Wall time so far, or, once nothing is left, up to the last segment's end.
    end = _naive(utcnow()) if left_s > 0 or not ends else max(ends)
    elapsed = (end - min(starts)).total_seconds() if starts else None
    rate = done_s / elapsed if elapsed and done_s > 0 else None
    eta = 0.0 if left_s == 0 else (left_s / rate if rate else None)
    return {
        "job_id": job_id,
        "segments": counts,
        "video_s_done": done_s,
        "video_s_left": left_s,
        "elapsed_s": elapsed,
        "video_s_per_s": rate,
        "eta_s": eta,
        "hosts": len(hosts),
    }


def _naive(t: datetime) -> datetime:
    # SQLite returns naive datetimes (stored as UTC), PostgreSQL aware ones: compare as naive UTC.
    return t if t.tzinfo is None else t.astimezone(UTC).replace(tzinfo=None)


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowRow:
    subject: str
    recording: str
    recording_id: int
    estimator: str
    model_key: str
    t_start: float
    t_end: float
    hr_bpm: float | None
    quality: float | None
    face_found: bool | None
    ref_hr_bpm: float | None
    ppg_r: float | None


def window_rows(
    session: Session,
    subject: str | None = None,
    recording: str | None = None,
    estimator: str | None = None,
    model_key: str | None = None,
) -> list[WindowRow]:
    """Windows joined with their recording and subject; `recording` matches the path's end
    (so a file name or a relative path both work)."""
    q = (
        select(
            Subject.key,
            Recording.path,
            Recording.id,
            Window.estimator,
            Window.model_key,
            Window.t_start,
            Window.t_end,
            Window.hr_bpm,
            Window.quality,
            Window.face_found,
            Window.ref_hr_bpm,
            Window.ppg_r,
        )
        .join(Recording, Recording.id == Window.recording_id)
        .join(Subject, Subject.id == Recording.subject_id)
        .order_by(Subject.key, Recording.path, Window.estimator, Window.t_start)
    )
    if subject is not None:
        q = q.where(Subject.key == subject)
    if recording is not None:
        q = q.where(or_(Recording.path == recording, Recording.path.like(f"%/{recording}")))
    if estimator is not None:
        q = q.where(Window.estimator == estimator)
    if model_key is not None:
        q = q.where(Window.model_key == model_key)
    return [WindowRow(*row) for row in session.execute(q)]


@dataclass(frozen=True)
class BeatRow:
    """Every beat one estimator (one model version of it) found in one recording."""

    subject: str
    recording: str
    recording_id: int
    estimator: str
    model_key: str
    times_s: np.ndarray  # float (B,), seconds, increasing


def beat_rows(
    session: Session,
    subject: str | None = None,
    recording: str | None = None,
    estimator: str | None = None,
) -> list[BeatRow]:
    """Beat series joined per recording, estimator and model, in time order; `recording`
    matches the path's end as in window_rows."""
    q = (
        select(
            Subject.key,
            Recording.path,
            Recording.id,
            BeatSeries.estimator,
            BeatSeries.model_key,
            BeatSeries.times_s,
        )
        .join(Recording, Recording.id == BeatSeries.recording_id)
        .join(Subject, Subject.id == Recording.subject_id)
        .order_by(
            Subject.key, Recording.path, BeatSeries.estimator, BeatSeries.model_key,
            BeatSeries.t_start,
        )
    )  # fmt: skip
    if subject is not None:
        q = q.where(Subject.key == subject)
    if recording is not None:
        q = q.where(or_(Recording.path == recording, Recording.path.like(f"%/{recording}")))
    if estimator is not None:
        q = q.where(BeatSeries.estimator == estimator)
    grouped: dict[tuple, list[np.ndarray]] = {}
    for subj, path, rid, est, key, blob in session.execute(q):
        grouped.setdefault((subj, path, rid, est, key), []).append(np.frombuffer(blob, "<f8"))
    return [BeatRow(*head, np.unique(np.concatenate(parts))) for head, parts in grouped.items()]


def recordings_with_reference(session: Session) -> list[tuple[int, str, str]]:
    """(recording_id, path, subject) of every recording that has an HR or PPG reference."""
    q = (
        select(Recording.id, Recording.path, Subject.key)
        .join(Subject, Subject.id == Recording.subject_id)
        .where(
            Recording.id.in_(
                select(Reference.recording_id).where(
                    Reference.kind.in_([ReferenceKind.hr, ReferenceKind.ppg])
                )
            )
        )
        .order_by(Recording.path)
    )
    return [tuple(r) for r in session.execute(q)]


def estimators_present(session: Session) -> list[tuple[str, str]]:
    """Every (estimator, model_key) that has windows, sorted."""
    q = select(Window.estimator, Window.model_key).distinct()
    return sorted(tuple(r) for r in session.execute(q))


# --- model registry ------------------------------------------------------------------------


def register_model(
    session: Session,
    name: str,
    version: str,
    path: str,
    sha256: str,
    input_spec: dict[str, Any],
    trained_on: str | None = None,
    metrics: dict[str, Any] | None = None,
) -> Model:
    """Add a model version; ValueError (readable) if the name:version or the file is taken."""
    clash = session.scalar(
        select(Model).where(
            or_(and_(Model.name == name, Model.version == version), Model.sha256 == sha256)
        )
    )
    if clash is not None:
        raise ValueError(
            f"already registered as {clash.name}:{clash.version} ({clash.sha256[:16]})"
        )
    model = Model(
        name=name,
        version=version,
        path=path,
        sha256=sha256,
        key=sha256[:16],
        input_spec=input_spec,
        trained_on=trained_on,
        metrics=metrics or {},
    )
    session.add(model)
    session.flush()
    return model


def list_models(session: Session) -> list[Model]:
    return list(session.scalars(select(Model).order_by(Model.name, Model.created_at)))


def model_by_ref(session: Session, ref: str) -> Model | None:
    """A registered model by 'name:version'."""
    name, sep, version = ref.rpartition(":")
    if not sep:
        return None
    return session.scalar(select(Model).where(Model.name == name, Model.version == version))


def model_by_sha(session: Session, sha256: str) -> Model | None:
    return session.scalar(select(Model).where(Model.sha256 == sha256))


def model_labels(session: Session) -> dict[str, str]:
    """model_key -> 'name:version' for every registered model."""
    return {m.key: f"{m.name}:{m.version}" for m in list_models(session)}
