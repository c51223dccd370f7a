"""The whole job on a synthetic archive, on SQLite and PostgreSQL, through the real CLI."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

from sqlalchemy import func, select

from db.engine import make_engine, session_scope
from db.models import Job, Segment, Window
from tests.helpers import nbhr, nbhr_json
from worker.options import CLASSICAL

N_EST = len(CLASSICAL)


def _counts(db_url: str) -> tuple[int, int, int]:
    with session_scope(make_engine(db_url)) as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) for t in (Window, Segment, Job))  # type: ignore[return-value]


def test_run_status_results_evaluate_rerun_and_add(
    demo_archive: Path, face_videos: list[Path], db_url: str, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    shutil.copytree(demo_archive, archive)
    out = nbhr("run", archive, "--db", db_url, "--workers", "2")
    assert "3 videos: 3 new" in out.stdout
    assert "per-subject HR" in out.stdout

    status = nbhr_json("status", "--db", db_url, "--json")
    assert status["recordings"] == {"queued": 0, "running": 0, "done": 2, "failed": 1}
    assert status["segments"]["done"] == 3 and status["segments"]["failed"] == 0
    assert len(status["failures"]) == 1 and "no face found" in status["failures"][0]["error"]
    assert status["windows"] > 0 and status["video_s_per_s"] > 0

    windows = nbhr_json("results", "--db", db_url, "--format", "json")
    # 16-s recordings, 10-s windows every 2 s: 4 windows, 4 estimators, 3 recordings.
    assert len(windows) == 4 * N_EST * 3 == status["windows"]
    face = [w for w in windows if w["face_found"]]
    assert len(face) == 2 * 4 * N_EST
    assert all(w["hr_bpm"] is not None and w["ref_hr_bpm"] is not None for w in face)
    assert all(w["hr_bpm"] is None for w in windows if not w["face_found"])

    subjects = nbhr_json("results", "--db", db_url, "--level", "subject", "--format", "json")
    assert {r["subject"] for r in subjects} >= {"infant_001", "infant_002"}
    text = nbhr("results", "--db", db_url, "--level", "recording", "--format", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 3 * N_EST and "hr_bpm" in rows[0]

    ev = nbhr_json("evaluate", "--db", db_url, "--estimator", "pos", "--level", "window", "--json")
    assert ev["estimator"] == "pos" and ev["level"] == "window"
    overall = ev["overall"]
    assert set(overall) == {
        "n",
        "coverage",
        "mae",
        "rmse",
        "mape",
        "pearson_r",
        "ba_bias",
        "ba_loa_low",
        "ba_loa_high",
        "within_5bpm",
        "within_10pct",
    }
    assert overall["n"] == 8 and 0 < overall["coverage"] < 1  # the face-less one has no HR
    assert overall["mae"] < 5.0, overall  # synthetic pulse at a known rate
    both = nbhr_json("evaluate", "--db", db_url, "--level", "subject", "--json")
    assert [e["estimator"] for e in both] == sorted(CLASSICAL)

    # The same command again: no work, no new row anywhere.
    before = _counts(db_url)
    again = nbhr("run", archive, "--db", db_url, "--workers", "2")
    assert "nothing to do" in again.stdout
    assert _counts(db_url) == before

    # One new video: only it is processed.
    newcomer = archive / "video" / "20200101_000000.avi"
    src = face_videos[0]
    data = bytearray(src.read_bytes())
    data[-200:] = b"\0" * 200  # different content (the tail is past the last frame data)
    newcomer.write_bytes(bytes(data))
    added = nbhr_json("run", archive, "--db", db_url, "--json")
    assert added["new"] == 1 and added["segments_run"] == 1
    assert _counts(db_url)[0] == before[0] + 4 * N_EST


def test_reduced_decoding_costs_less_and_changes_little(demo_archive: Path, tmp_path: Path) -> None:
    """`--decode reduced` (the default) reads the demo's 640x480 MJPEG at 320x240 straight from
    the JPEG decoder; the face is found in the same windows and POS reads the same rates."""
    runs = {}
    for decode in ("reduced", "full"):
        url = f"sqlite:///{tmp_path / f'{decode}.sqlite'}"
        nbhr("run", demo_archive, "--db", url, "--estimator", "pos", "--decode", decode)
        rows = nbhr_json("results", "--db", url, "--format", "json")
        runs[decode] = {(r["recording"], r["t_start"]): r for r in rows}
        with session_scope(make_engine(url)) as s:
            options = s.scalars(select(Job.options)).one()
        assert options["decode_min_width"] == (320 if decode == "reduced" else None)
    reduced, full = runs["reduced"], runs["full"]
    assert reduced.keys() == full.keys() and len(full) == 3 * 4
    for key, row in full.items():
        assert reduced[key]["face_found"] == row["face_found"]
        if row["hr_bpm"] is not None:
            assert abs(reduced[key]["hr_bpm"] - row["hr_bpm"]) < 1.0
    # NBHRnet's face crops and a fixed box keep full-size frames, so the option does not apply.
    url = f"sqlite:///{tmp_path / 'box.sqlite'}"
    nbhr("run", demo_archive, "--db", url, "--estimator", "pos", "--roi", "10,10,100,100")
    with session_scope(make_engine(url)) as s:
        assert s.scalars(select(Job.options)).one()["decode_min_width"] is None
