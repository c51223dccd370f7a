"""Bad input, each case a real file: a clear reason per recording, nothing lost or doubled."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from sqlalchemy import func, select

from db.engine import make_engine, session_scope
from db.models import Recording, Window
from tests.helpers import nbhr, nbhr_json


def _write_avi(
    path: Path, frames: int, size: tuple[int, int] = (160, 120), value: int = 90
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, size)
    rng = np.random.default_rng(frames)
    for _ in range(frames):
        w.write(np.clip(value + rng.normal(0, 3, (size[1], size[0], 3)), 0, 255).astype(np.uint8))
    w.release()
    return path


def _zero_fps(src: Path, dst: Path) -> Path:
    """Copy an AVI and set its video stream rate to 0 in the stream header."""
    data = bytearray(src.read_bytes())
    at = data.find(b"strh")
    struct.pack_into("<II", data, at + 28, 1, 0)  # dwScale=1, dwRate=0
    dst.write_bytes(bytes(data))
    return dst


@pytest.fixture
def bad_archive(demo_archive: Path, face_videos: list[Path], tmp_path: Path) -> Path:
    root = tmp_path / "bad archive"
    (root / "junk").mkdir(parents=True)
    (root / "junk" / "random.avi").write_bytes(np.random.default_rng(1).bytes(50_000))
    (root / "junk" / "notes.mp4").write_text("this is a text file, not a video\n")
    _write_avi(root / "junk" / "zero_frames.avi", 0)
    blank = _write_avi(root / "junk" / "blank_wall.avi", 360)
    blank.with_suffix(".csv").write_text("time_s,hr_bpm\n0,120\n6,121\n12,122\n")
    _zero_fps(_write_avi(tmp_path / "src.avi", 60), root / "junk" / "zero_fps.avi")
    face_src = face_videos
    ppg_src = demo_archive / "PPG" / f"{face_src[0].stem}.csv"
    # A good recording under a path with spaces and non-ASCII letters, with its reference.
    good = root / "Säugling 1" / "Aufnahme früh.avi"
    good.parent.mkdir()
    shutil.copy(face_src[0], good)
    lines = ppg_src.read_text().splitlines()
    sidecar = ["time_s,ppg,hr_bpm,spo2"] + [f"{i / 60:.4f},{line}" for i, line in enumerate(lines)]
    good.with_suffix(".csv").write_text("\n".join(sidecar) + "\n")
    # Truncated: the second half of a face recording is missing.
    data = face_src[1].read_bytes()
    (root / "truncated.avi").write_bytes(data[: len(data) // 2])
    # A reference with non-numbers (NBHR layout) and a video with no reference at all.
    nbhr_dir = root / "nbhr"
    (nbhr_dir / "video").mkdir(parents=True)
    (nbhr_dir / "PPG").mkdir()
    copy = bytearray(face_src[0].read_bytes())
    copy[-100:] = b"\2" * 100
    (nbhr_dir / "video" / "20190101_000000.avi").write_bytes(bytes(copy))
    (nbhr_dir / "PPG" / "20190101_000000.csv").write_text("0.5,140,97\n0.6,n/a,97\n")
    lonely = bytearray(face_src[0].read_bytes())
    lonely[-100:] = b"\1" * 100
    (nbhr_dir / "video" / "20190101_010000.avi").write_bytes(bytes(lonely))
    # Unreadable: a broken link (root reads everything, so chmod alone proves nothing).
    os.symlink(root / "gone.avi", root / "junk" / "broken_link.avi")
    if os.geteuid() != 0:
        locked = _write_avi(root / "junk" / "locked.avi", 30)
        locked.chmod(0)
    return root


def _recordings(db_url: str) -> dict[str, Recording]:
    with session_scope(make_engine(db_url)) as s:
        return {Path(r.path).name: r for r in s.scalars(select(Recording))}


def test_every_bad_input_ends_with_a_reason(bad_archive: Path, db_url: str) -> None:
    out = nbhr("run", bad_archive, "--db", db_url, "--window-s", "6", "--hop-s", "2")
    assert out.returncode == 0
    recs = _recordings(db_url)
    expect = {
        "random.avi": "not a video",
        "notes.mp4": "not a video",
        "zero_frames.avi": "no decodable frames",
        "zero_fps.avi": "0 fps",
        "broken_link.avi": "broken symbolic link",
        "blank_wall.avi": "no face found",
    }
    if os.geteuid() != 0:
        expect["locked.avi"] = "cannot read file"
    for name, reason in expect.items():
        assert recs[name].status.value == "failed", (name, recs[name].error)
        assert reason in recs[name].error, (name, recs[name].error)
    good = recs["Aufnahme früh.avi"]
    assert good.status.value == "done" and good.reference_error is None
    trunc = recs["truncated.avi"]
    assert trunc.status.value == "done" and "truncated" in trunc.note
    bad_ref = recs["20190101_000000.avi"]
    assert bad_ref.status.value == "done"
    assert "'n/a' is not a number" in bad_ref.reference_error
    assert recs["20190101_010000.avi"].reference_error.startswith("no reference found")

    status = nbhr_json("status", "--db", db_url, "--json")
    reasons = {Path(f["recording"]).name: f["error"] for f in status["failures"]}
    assert set(reasons) == set(expect)

    results = nbhr_json("results", "--db", db_url, "--format", "json", "--level", "recording")
    good_rows = [r for r in results if r["recording"].endswith("Aufnahme früh.avi")]
    assert good_rows and all(r["hr_bpm"] is not None for r in good_rows)
    assert all(r["ref_hr_bpm"] is not None for r in good_rows)

    with session_scope(make_engine(db_url)) as s:
        n_windows = s.scalar(select(func.count()).select_from(Window))
    again = nbhr("run", bad_archive, "--db", db_url, "--window-s", "6", "--hop-s", "2")
    assert "nothing to do" in again.stdout
    with session_scope(make_engine(db_url)) as s:
        assert s.scalar(select(func.count()).select_from(Window)) == n_windows
        assert s.scalar(select(func.count()).select_from(Recording)) == len(recs)


def test_unreachable_database_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a.avi").write_bytes(b"x")
    out = nbhr("run", tmp_path, "--db", "postgresql+psycopg://nobody@127.0.0.1:9/none", check=False)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot connect to database" in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'x.sqlite'}"
    cases = [
        (["--hr-range", "200-90"], "invalid heart-rate band"),
        (["--estimator", "magic"], "unknown estimator 'magic'"),
        (["--roi", "1,2,3"], "X,Y,W,H"),
        (["--segment-s", "61", "--hop-s", "2"], "multiple of --hop-s"),
        (["--db", "nonsense://"], "database"),
    ]
    for extra, message in cases:
        out = nbhr("run", tmp_path, "--db", db, *extra, check=False)
        assert out.returncode != 0, extra
        assert message in out.stderr, (extra, out.stderr)
        assert "Traceback" not in out.stderr
    missing = nbhr("run", tmp_path / "nope", "--db", db, check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
