"""SQLAlchemy 2.0 models: the schema that every engine (SQLite, PostgreSQL) shares.

Constraint names follow NAMING_CONVENTION so that Alembic migrations and the models agree
exactly on both engines.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON}


class RecordingState(enum.StrEnum):
    """Lifecycle of a recording: registered, waiting for work, being processed, finished."""

    new = "new"
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"


class SegmentState(enum.StrEnum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"


class ReferenceKind(enum.StrEnum):
    """What a reference series measures: heart rate (bpm), PPG waveform, SpO2 (%)."""

    hr = "hr"
    ppg = "ppg"
    spo2 = "spo2"


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # Stored as plain strings with a named CHECK so SQLite and PostgreSQL hold the same thing.
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda e: [m.value for m in e],
    )


class Subject(Base):
    __tablename__ = "subjects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(255), unique=True)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)

    recordings: Mapped[list[Recording]] = relationship(back_populates="subject")


class Recording(Base):
    """One video file, identified by its content fingerprint (not its path)."""

    __tablename__ = "recordings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id"), index=True)
    path: Mapped[str] = mapped_column(Text, index=True)
    archive_root: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    fps: Mapped[float | None] = mapped_column(Float)
    n_frames: Mapped[int | None] = mapped_column(Integer)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    duration_s: Mapped[float | None] = mapped_column(Float)
    status: Mapped[RecordingState] = mapped_column(
        _enum(RecordingState, "recording_state"), default=RecordingState.new, index=True
    )
    error: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)
    reference_source: Mapped[str | None] = mapped_column(Text)
    reference_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    subject: Mapped[Subject] = relationship(back_populates="recordings")


class Reference(Base):
    """A reference vital-sign series of one recording, stored as float32 arrays.

    `times_s` (seconds from the start of the video) is NULL for a regularly sampled series
    (then `sample_rate_hz` and `t0_s` define the time axis) and for a single mean value
    (one sample, no rate: the recording-level mean from a reference table).
    """

    __tablename__ = "references"
    __table_args__ = (UniqueConstraint("recording_id", "kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    recording_id: Mapped[int] = mapped_column(ForeignKey("recordings.id", ondelete="CASCADE"))
    kind: Mapped[ReferenceKind] = mapped_column(_enum(ReferenceKind, "reference_kind"))
    sample_rate_hz: Mapped[float | None] = mapped_column(Float)
    t0_s: Mapped[float] = mapped_column(Float, default=0.0)
    times_s: Mapped[bytes | None] = mapped_column(LargeBinary)
    values: Mapped[bytes] = mapped_column(LargeBinary)
    n: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(Text)


class Job(Base):
    """One invocation of `nbhr run` (or `enqueue`) that planned work."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    archive_root: Mapped[str] = mapped_column(Text)
    executor: Mapped[str] = mapped_column(String(32))
    config_key: Mapped[str] = mapped_column(String(64), index=True)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Segment(Base):
    """A slice [t_start, t_end) of a recording's video: the unit of work a worker runs.

    The segment owns the windows that START inside it; it reads frames up to
    t_end + window - hop so that its last windows are complete.
    """

    __tablename__ = "segments"
    __table_args__ = (
        UniqueConstraint("recording_id", "config_key", "t_start"),
        Index("ix_segments_state_lease_until", "state", "lease_until"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    recording_id: Mapped[int] = mapped_column(ForeignKey("recordings.id", ondelete="CASCADE"))
    config_key: Mapped[str] = mapped_column(String(64))
    t_start: Mapped[float] = mapped_column(Float)
    t_end: Mapped[float] = mapped_column(Float)
    state: Mapped[SegmentState] = mapped_column(
        _enum(SegmentState, "segment_state"), default=SegmentState.queued
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    worker: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)
    n_windows: Mapped[int | None] = mapped_column(Integer)
    video_s: Mapped[float | None] = mapped_column(Float)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Window(Base):
    """One HR estimate: an estimator applied to [t_start, t_end) of a recording.

    `model_key` is '' for classical estimators, so the unique key never holds a NULL
    (NULLs are distinct in unique constraints). `face_found` is NULL when the user fixed
    the region of interest (`--roi full` or a box) and no face tracking took place.
    """

    __tablename__ = "windows"
    __table_args__ = (
        UniqueConstraint("recording_id", "estimator", "model_key", "t_start"),
        Index("ix_windows_estimator_recording_id", "estimator", "recording_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    recording_id: Mapped[int] = mapped_column(ForeignKey("recordings.id", ondelete="CASCADE"))
    segment_id: Mapped[int | None] = mapped_column(
        ForeignKey("segments.id", ondelete="SET NULL"), index=True
    )
    estimator: Mapped[str] = mapped_column(String(32))
    model_key: Mapped[str] = mapped_column(String(128), default="")
    t_start: Mapped[float] = mapped_column(Float)
    t_end: Mapped[float] = mapped_column(Float)
    hr_bpm: Mapped[float | None] = mapped_column(Float)
    quality: Mapped[float | None] = mapped_column(Float)
    face_found: Mapped[bool | None] = mapped_column(Boolean)
    face_fraction: Mapped[float | None] = mapped_column(Float)
    ref_hr_bpm: Mapped[float | None] = mapped_column(Float)
    # NBHRnet only: Pearson r of its PPG output with the reference PPG over the window.
    ppg_r: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class BeatSeries(Base):
    """Beat times an estimator's pulse signal gave in one segment: those in [t_start, t_end)
    (the segment's span), seconds from the start of the video, float64 in `times_s`.

    For the classical estimators the pulse is their windows' pulses overlap-added; for NBHRnet
    (estimator `nbhrnet_ppg`) its PPG output on the 2-s grid. `n` is the number of beats.
    """

    __tablename__ = "beats"
    __table_args__ = (UniqueConstraint("recording_id", "estimator", "model_key", "t_start"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    recording_id: Mapped[int] = mapped_column(ForeignKey("recordings.id", ondelete="CASCADE"))
    segment_id: Mapped[int | None] = mapped_column(
        ForeignKey("segments.id", ondelete="SET NULL"), index=True
    )
    estimator: Mapped[str] = mapped_column(String(32))
    model_key: Mapped[str] = mapped_column(String(128), default="")
    t_start: Mapped[float] = mapped_column(Float)
    t_end: Mapped[float] = mapped_column(Float)
    n: Mapped[int] = mapped_column(Integer)
    times_s: Mapped[bytes] = mapped_column(LargeBinary)


class Model(Base):
    """A registered NBHRnet ONNX file: windows name it by `key` (its SHA-256 prefix)."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    key: Mapped[str] = mapped_column(String(128), unique=True)
    path: Mapped[str] = mapped_column(Text)
    input_spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    trained_on: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
