"""Training windows from real decoding of a small synthetic archive: shapes, targets, the
workers' crop path, subject-wise splits, the on-disk cache and every loader."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d

from nbhr.demo import DemoSummary, write_demo_archive
from training.data import (
    Window,
    WindowCache,
    db_windows,
    nbhr_windows,
    subject_split,
    synthetic_windows,
    ubfc_windows,
)
from worker.crops import face_crop, windows_of
from worker.faces import FaceDetector
from worker.track import tracked_frames
from worker.video import probe

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> DemoSummary:
    root = tmp_path_factory.mktemp("train_demo")
    return write_demo_archive(root, subjects=2, seconds=6.0, seed=3, recordings_per_subject=1)


@pytest.fixture(scope="module")
def windows(archive: DemoSummary) -> list[Window]:
    return list(nbhr_windows(archive.root))


def _csv(archive: DemoSummary, recording: str) -> np.ndarray:
    rec = next(r for r in archive.recordings if str(archive.root / r.recording) == recording)
    return np.loadtxt(archive.root / rec.ppg, delimiter=",")


def _fake(subject: str, n: int = 1) -> list[Window]:
    return [
        Window(
            subject,
            f"{subject}.avi",
            2.0 * i,
            np.zeros((60, 128, 128, 3), np.uint8),
            np.zeros(60, np.float32),
            150.0,
        )
        for i in range(n)
    ]


def test_nbhr_windows_shapes_targets_and_subjects(
    archive: DemoSummary, windows: list[Window]
) -> None:
    # Two 6-s face recordings give three 2-s windows each; the blanket recording gives none.
    assert len(windows) == 6
    faceless = {str(archive.root / r.recording) for r in archive.recordings if not r.has_face}
    assert not faceless & {w.recording for w in windows}
    subjects = {str(archive.root / r.recording): r.subject for r in archive.recordings}
    for w in windows:
        assert w.subject == subjects[w.recording]
        assert w.frames.shape == (60, 128, 128, 3) and w.frames.dtype == np.uint8
        assert w.ppg.shape == (60,) and w.ppg.dtype == np.float32
        assert w.ppg.min() == 0.0 and w.ppg.max() == 1.0
        data = _csv(archive, w.recording)
        rows = slice(round(w.t_start * 60), round(w.t_start * 60) + 120)
        assert abs(w.hr_bpm - data[rows, 1].mean()) < 3.0
        assert 90.0 <= w.hr_bpm <= 200.0
        # The target is the reference wave at the frame times, smoothed with sigma 2 samples.
        truth = gaussian_filter1d(data[rows, 0][::2], 2.0)
        assert np.corrcoef(truth, w.ppg)[0, 1] > 0.99


def test_crops_come_from_the_workers_crop_path(windows: list[Window]) -> None:
    first = windows[0]
    video = Path(first.recording)
    info = probe(video)

    def crops():
        for _, frame, box in tracked_frames(video, 0, info.n_frames, info.fps, FaceDetector()):
            yield None if box is None else face_crop(frame, box)

    expected = [w for _, w in windows_of(crops(), info.fps, info.n_frames)]
    got = [w.frames for w in windows if w.recording == first.recording]
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_subject_split_keeps_subjects_apart_and_is_deterministic() -> None:
    ws = [w for s in ("a", "b", "c", "d", "e") for w in _fake(s, 3)]
    train, val = subject_split(ws, val_fraction=0.4, seed=1)
    assert len(train) + len(val) == len(ws)
    assert not {w.subject for w in train} & {w.subject for w in val}
    assert len({w.subject for w in val}) == 2
    again = subject_split(ws, val_fraction=0.4, seed=1)
    assert [w.subject for w in again[1]] == [w.subject for w in val]
    # Two subjects and a small fraction still leave one for validation.
    train, val = subject_split(_fake("a") + _fake("b"), val_fraction=0.01)
    assert len(train) == len(val) == 1
    with pytest.raises(ValueError, match="at least 2 subjects"):
        subject_split(_fake("a", 4))


def test_window_cache_round_trip(tmp_path: Path, windows: list[Window]) -> None:
    cache = WindowCache.write(tmp_path / "cache", iter(windows))
    again = WindowCache.open(tmp_path / "cache")
    assert len(cache) == len(again) == len(windows)
    assert again.subjects == [w.subject for w in windows]
    for w, c in zip(windows, again, strict=True):
        assert isinstance(c.frames, np.memmap)
        np.testing.assert_array_equal(c.frames, w.frames)
        np.testing.assert_array_equal(c.ppg, w.ppg)
        assert (c.subject, c.recording, c.t_start) == (w.subject, w.recording, w.t_start)
        assert c.hr_bpm == pytest.approx(w.hr_bpm, abs=1e-3)
    assert again[-1].t_start == windows[-1].t_start
    with pytest.raises(FileNotFoundError):
        WindowCache.open(tmp_path / "nothing")


def test_ubfc_windows(tmp_path: Path, archive: DemoSummary) -> None:
    rec = next(r for r in archive.recordings if r.has_face)
    folder = tmp_path / "DATASET_2" / "subject7"
    folder.mkdir(parents=True)
    shutil.copy(archive.root / rec.recording, folder / "vid.avi")
    data = np.loadtxt(archive.root / rec.ppg, delimiter=",")
    t = np.arange(len(data)) / 60.0
    lines = [" ".join(f"{x:.6e}" for x in col) for col in (data[:, 0], data[:, 1], t)]
    (folder / "ground_truth.txt").write_text("\n".join(lines) + "\n")
    ws = list(ubfc_windows(tmp_path))
    assert len(ws) == 3
    for w in ws:
        assert w.subject == "subject7"
        first = round(w.t_start * 60)
        assert abs(w.hr_bpm - data[first : first + 120, 1].mean()) < 3.0
        assert w.ppg.min() == 0.0 and w.ppg.max() == 1.0


def test_db_windows(tmp_path: Path, archive: DemoSummary, windows: list[Window]) -> None:
    url = f"sqlite:///{tmp_path / 'nbhr.sqlite'}"
    cmd = [sys.executable, "-m", "nbhr", "run", str(archive.root), "--db", url]
    cmd += ["--estimator", "green", "--window-s", "2", "--hop-s", "2", "-j", "1", "--json"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ws = list(db_windows(url))
    assert sorted((w.recording, w.t_start, w.subject) for w in ws) == sorted(
        (w.recording, w.t_start, w.subject) for w in windows
    )


def test_synthetic_windows_write_once(tmp_path: Path) -> None:
    ws = list(synthetic_windows(tmp_path, subjects=2, seconds=2.5, seed=1))
    assert len(ws) == 4 and {w.subject for w in ws} == {"infant_001", "infant_002"}
    mtime = (tmp_path / "manifest.csv").stat().st_mtime_ns
    assert len(list(synthetic_windows(tmp_path, subjects=2, seconds=2.5, seed=1))) == 4
    assert (tmp_path / "manifest.csv").stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="another directory"):
        next(synthetic_windows(tmp_path, subjects=3, seconds=2.5, seed=1))


def test_parallel_preparation_gives_the_same_archive_and_windows(
    tmp_path: Path, archive: DemoSummary, windows: list[Window]
) -> None:
    """--jobs only changes how fast data are prepared: the same files and the same windows."""
    parallel = write_demo_archive(
        tmp_path / "p", subjects=2, seconds=6.0, seed=3, recordings_per_subject=1, jobs=2
    )
    for a, b in zip(archive.recordings, parallel.recordings, strict=True):
        assert a.recording == b.recording and a.mean_hr_bpm == b.mean_hr_bpm
        assert (archive.root / a.ppg).read_bytes() == (parallel.root / b.ppg).read_bytes()
        assert (archive.root / a.recording).read_bytes() == (
            parallel.root / b.recording
        ).read_bytes()
    again = list(nbhr_windows(archive.root, jobs=2))
    assert [(w.recording, w.t_start) for w in again] == [(w.recording, w.t_start) for w in windows]
    assert all(np.array_equal(a.frames, b.frames) for a, b in zip(again, windows, strict=True))
    assert all(np.array_equal(a.ppg, b.ppg) for a, b in zip(again, windows, strict=True))
