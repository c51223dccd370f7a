"""Recording and subject levels compare estimate and reference over the same windows."""

from __future__ import annotations

import pytest

from db import queries
from db.engine import make_engine, session_scope
from db.migrate import upgrade
from db.models import Recording
from nbhr import analysis


def _add_recording(s, subject_id: int, name: str, windows: list[tuple]) -> None:
    rec = Recording(
        subject_id=subject_id,
        path=f"/a/{name}",
        archive_root="/a",
        fingerprint=name,
        size_bytes=1,
    )
    s.add(rec)
    s.flush()
    queries.upsert_windows(
        s,
        [
            {
                "recording_id": rec.id,
                "segment_id": None,
                "estimator": "pos",
                "model_key": "",
                "t_start": float(i),
                "t_end": i + 10.0,
                "hr_bpm": hr,
                "quality": 5.0,
                "face_found": hr is not None,
                "face_fraction": 1.0 if hr else 0.0,
                "ref_hr_bpm": ref,
            }
            for i, (hr, ref) in enumerate(windows)
        ],
    )


def test_subject_reference_ignores_recordings_without_estimates(db_url: str) -> None:
    """A regression: the subject's reference averaged in a face-less recording's reference
    (here 180 bpm) that its estimate never saw, and reported a 20-bpm error that was not."""
    engine = make_engine(db_url)
    upgrade(engine)
    with session_scope(engine) as s:
        subj = queries.get_or_create_subject(s, "infant_1")
        _add_recording(s, subj.id, "a.avi", [(120.0, 121.0), (122.0, 121.0), (121.0, 121.0)])
        _add_recording(s, subj.id, "b.avi", [(None, 180.0), (None, 180.0)])
    with session_scope(engine) as s:
        (row,) = analysis.results(s, level="subject")
        ev = analysis.evaluate(s, "pos", level="subject")
        rec_ev = analysis.evaluate(s, "pos", level="recording")
    assert row["hr_bpm"] == pytest.approx(121.0)
    assert row["ref_hr_bpm"] == pytest.approx(121.0)
    assert row["coverage"] == pytest.approx(3 / 5)
    assert ev["overall"]["mae"] == pytest.approx(0.0)
    # At recording level the face-less recording counts against coverage, not against error.
    assert rec_ev["overall"]["n"] == 1 and rec_ev["overall"]["coverage"] == pytest.approx(0.5)
