"""The schema: migrations and models agree, upgrades are idempotent, windows are unique."""

from __future__ import annotations

import subprocess
import sys

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select

from db import queries
from db.engine import make_engine, session_scope
from db.migrate import current_revision, head_revision, upgrade
from db.models import Base, Job, Recording, Segment, Subject, Window


def test_migrations_match_models(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == [], f"models and migrations differ: {diff}"
    assert current_revision(engine) == head_revision()


def test_upgrade_is_idempotent_and_constraints_are_named(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    upgrade(engine)
    insp = inspect(engine)
    uniques = {u["name"] for u in insp.get_unique_constraints("windows")}
    assert "uq_windows_recording_id_estimator_model_key_t_start" in uniques
    fks = {f["name"] for f in insp.get_foreign_keys("segments")}
    assert "fk_segments_recording_id_recordings" in fks


def _window(rec_id: int, hr: float) -> dict:
    return {
        "recording_id": rec_id,
        "segment_id": None,
        "estimator": "pos",
        "model_key": "",
        "t_start": 0.0,
        "t_end": 10.0,
        "hr_bpm": hr,
        "quality": 3.0,
        "face_found": True,
        "face_fraction": 1.0,
        "ref_hr_bpm": 140.0,
    }


def test_processes_starting_together_on_a_new_database_all_migrate_it(db_url: str) -> None:
    """Workers brought up at once each upgrade the schema before their first task; on a new
    database they used to collide ("table ... already exists", a duplicate key in PostgreSQL's
    catalogue) in 2 to 4 of 4 processes."""
    code = "import sys; from db.engine import make_engine; from db.migrate import upgrade; "
    code += "upgrade(make_engine(sys.argv[1]))"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, db_url], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(errors)
    assert current_revision(make_engine(db_url)) == head_revision()


def test_upsert_keeps_one_row_per_window(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    with session_scope(engine) as s:
        subj = queries.get_or_create_subject(s, "infant_1")
        rec = Recording(
            subject_id=subj.id, path="/a.avi", archive_root="/", fingerprint="f1", size_bytes=1
        )
        s.add(rec)
        s.flush()
        rec_id = rec.id
        queries.upsert_windows(s, [_window(rec_id, 130.0)])
    with session_scope(engine) as s:
        queries.upsert_windows(s, [_window(rec_id, 131.5)])
    with session_scope(engine) as s:
        rows = s.scalars(select(Window)).all()
        assert len(rows) == 1
        assert rows[0].hr_bpm == 131.5
        assert queries.get_or_create_subject(s, "infant_1").id == subj.id
        assert s.scalar(select(func.count()).select_from(Subject)) == 1


def test_claim_is_exclusive(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    with session_scope(engine) as s:
        subj = queries.get_or_create_subject(s, "infant_1")
        rec = Recording(
            subject_id=subj.id,
            path="/a.avi",
            archive_root="/",
            fingerprint="f1",
            size_bytes=1,
            fps=30.0,
            n_frames=900,
        )
        job = Job(archive_root="/", executor="local", config_key="k", options={})
        s.add_all([rec, job])
        s.flush()
        seg = Segment(job_id=job.id, recording_id=rec.id, config_key="k", t_start=0, t_end=30)
        s.add(seg)
        s.flush()
        seg_id = seg.id
    with session_scope(engine) as s:
        first = queries.claim_segment(s, seg_id, "host:1", 60)
    with session_scope(engine) as s:
        second = queries.claim_segment(s, seg_id, "host:2", 60)
    assert first is not None and first.segment_id == seg_id
    assert second is None
    with session_scope(engine) as s:
        assert s.get_one(Segment, seg_id).attempts == 1
