"""The demo archive: NBHR layout, readable MJPG videos, findable faces, exact reference PPG."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import dlib
import numpy as np
import pytest

from model.synthetic import extract_beats, load_beat_templates
from nbhr.demo import PPG_RATE_HZ, DemoSummary, write_demo_archive

SECONDS = 10.0
FPS = 30.0
N_FRAMES = round(SECONDS * FPS)
SAMPLED = (0, N_FRAMES // 2, N_FRAMES - 1)
SHRINK = 4  # every frame is kept at 1/4 size (block means) so the module holds ~50 MB, not 800


@dataclass(frozen=True)
class Decoded:
    """One video as OpenCV reads it back.

    Attributes:
        fps: CAP_PROP_FPS.
        fourcc: CAP_PROP_FOURCC as an int.
        frames: number of frames decoded.
        sampled: full-size uint8 (H, W, 3) BGR frames at the indices in SAMPLED.
        small: uint8 (T, H/SHRINK, W/SHRINK, 3), every frame shrunk by area averaging.
    """

    fps: float
    fourcc: int
    frames: int
    sampled: dict[int, np.ndarray]
    small: np.ndarray


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> DemoSummary:
    return write_demo_archive(
        tmp_path_factory.mktemp("demo"),
        subjects=2,
        seconds=SECONDS,
        seed=3,
        recordings_per_subject=1,
        fps=FPS,
    )


@pytest.fixture(scope="module")
def decoded(archive: DemoSummary) -> dict[str, Decoded]:
    out = {}
    for rec in archive.recordings:
        cap = cv2.VideoCapture(str(archive.root / rec.recording))
        fps, fourcc = cap.get(cv2.CAP_PROP_FPS), int(cap.get(cv2.CAP_PROP_FOURCC))
        sampled, small = {}, []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if len(small) in SAMPLED:
                sampled[len(small)] = frame
            size = (frame.shape[1] // SHRINK, frame.shape[0] // SHRINK)
            small.append(cv2.resize(frame, size, interpolation=cv2.INTER_AREA))
        cap.release()
        out[rec.recording] = Decoded(fps, fourcc, len(small), sampled, np.asarray(small))
    return out


@pytest.fixture(scope="module")
def detector() -> dlib.fhog_object_detector:
    return dlib.get_frontal_face_detector()


def faces(detector: dlib.fhog_object_detector, frame: np.ndarray) -> list[dlib.rectangle]:
    """Face boxes in full-frame pixels; HOG on the frame halved to 320 px, upsampled once."""
    small = cv2.resize(frame, (frame.shape[1] // 2, frame.shape[0] // 2), cv2.INTER_AREA)
    rects = detector(cv2.cvtColor(small, cv2.COLOR_BGR2RGB), 1)
    return [dlib.rectangle(2 * r.left(), 2 * r.top(), 2 * r.right(), 2 * r.bottom()) for r in rects]


def load_ppg(archive: DemoSummary, ppg: str) -> np.ndarray:
    """float (N, 3): PPG (template units), HR (bpm), SpO2 (%) per 1/60 s."""
    return np.loadtxt(archive.root / ppg, delimiter=",", ndmin=2)


def test_layout_and_manifest(archive: DemoSummary) -> None:
    root = archive.root
    with open(root / "manifest.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["recording", "subject"]
    assert rows[1:] == [[r.recording, r.subject] for r in archive.recordings]
    assert len(archive.recordings) == 3
    assert archive.subjects == ("infant_001", "infant_002")
    assert [r.has_face for r in archive.recordings].count(False) == 1
    for rec in archive.recordings:
        rec_id = Path(rec.recording).stem
        assert re.fullmatch(r"\d{8}_\d{6}", rec_id)
        assert rec.recording == f"video/{rec_id}.avi"
        assert rec.ppg == f"PPG/{rec_id}.csv"
        assert (root / rec.recording).is_file()
        assert (root / rec.ppg).is_file()
    ids = [Path(r.recording).stem for r in archive.recordings]
    assert ids == sorted(set(ids))


def test_ppg_csv_format(archive: DemoSummary) -> None:
    for rec in archive.recordings:
        first = (archive.root / rec.ppg).read_text().splitlines()[0].split(",")
        assert len(first) == 3
        [float(v) for v in first]  # a header row would not parse
        ppg = load_ppg(archive, rec.ppg)
        assert ppg.shape == (round(SECONDS * PPG_RATE_HZ), 3)
        assert np.all((ppg[:, 1] >= 90) & (ppg[:, 1] <= 200))
        assert np.all((ppg[:, 2] >= 94) & (ppg[:, 2] <= 100))
        assert np.ptp(ppg[:, 0]) > 0.5
        assert ppg[:, 1].mean() == pytest.approx(rec.mean_hr_bpm, abs=1e-3)


def test_videos_decode_as_30_fps_mjpg(archive: DemoSummary, decoded: dict[str, Decoded]) -> None:
    for rec in archive.recordings:
        video = decoded[rec.recording]
        assert video.fourcc == cv2.VideoWriter_fourcc(*"MJPG")
        assert video.fps == FPS
        assert video.frames == N_FRAMES
        assert video.sampled[0].shape == (480, 640, 3)


def test_face_found_only_where_there_is_one(
    archive: DemoSummary, decoded: dict[str, Decoded], detector: dlib.fhog_object_detector
) -> None:
    for rec in archive.recordings:
        for index, frame in decoded[rec.recording].sampled.items():
            found = faces(detector, frame)
            if rec.has_face:
                assert len(found) == 1, (rec.recording, index)
                assert 140 <= found[0].width() <= 280
            else:
                assert found == [], (rec.recording, index)


def test_pulse_survives_compression(
    archive: DemoSummary, decoded: dict[str, Decoded], detector: dlib.fhog_object_detector
) -> None:
    for rec in archive.recordings:
        if not rec.has_face:
            continue
        video = decoded[rec.recording]
        box = faces(detector, video.sampled[0])[0]
        top, bottom = box.top() // SHRINK, box.bottom() // SHRINK
        left, right = box.left() // SHRINK, box.right() // SHRINK
        green = video.small[:, top:bottom, left:right, 1].mean(axis=(1, 2))
        k = np.arange(len(green))
        green = green - np.polyval(np.polyfit(k, green, 2), k)
        power = np.abs(np.fft.rfft(green * np.hanning(len(green)), 8192)) ** 2
        bpm = np.fft.rfftfreq(8192, 1.0 / video.fps) * 60.0
        band = (bpm > 80) & (bpm < 220)
        peak_bpm = bpm[band][np.argmax(power[band])]
        assert peak_bpm == pytest.approx(rec.mean_hr_bpm, abs=5.0), rec.recording


def test_ppg_is_made_of_real_beats(archive: DemoSummary) -> None:
    templates = load_beat_templates()
    rec = archive.recordings[0]
    beats, _, _ = extract_beats(load_ppg(archive, rec.ppg)[:, 0], PPG_RATE_HZ)
    assert len(beats) >= 0.6 * SECONDS * rec.mean_hr_bpm / 60.0
    best = np.array([max(np.corrcoef(b, t)[0, 1] for t in templates) for b in beats])
    assert np.all(best > 0.95)
    # A PPG beat reaches its systolic peak early in the beat; a sine takes half the beat.
    assert np.all(np.argmax(beats, axis=1) < 0.35 * beats.shape[1])
    sine = -np.cos(2 * np.pi * np.arange(templates.shape[1]) / templates.shape[1])
    assert max(np.corrcoef(sine, t)[0, 1] for t in templates) < 0.8


def test_seed_reproduces_reference(tmp_path: Path) -> None:
    def reference(seed: int, name: str) -> list[bytes]:
        summary = write_demo_archive(
            tmp_path / name,
            subjects=1,
            seconds=2.0,
            seed=seed,
            recordings_per_subject=1,
            size=(320, 240),
        )
        return [(summary.root / r.ppg).read_bytes() for r in summary.recordings]

    first = reference(5, "a")
    assert reference(5, "b") == first
    assert reference(6, "c") != first


def test_demo_command_lists_what_it_wrote_as_json(tmp_path: Path) -> None:
    from tests.helpers import nbhr_json

    out = nbhr_json(
        "demo", tmp_path / "a", "--subjects", "1", "--recordings", "1", "--seconds", "12", "--json"
    )
    assert out["root"] == str(tmp_path / "a") and Path(out["manifest"]).is_file()
    assert sorted(r["has_face"] for r in out["recordings"]) == [False, True]
    for r in out["recordings"]:
        assert (tmp_path / "a" / r["recording"]).is_file() and r["subject"] == "infant_001"
        assert 80 <= r["mean_hr_bpm"] <= 240


def test_killed_demo_ends_its_worker_processes(tmp_path: Path) -> None:
    """`kill` (SIGTERM) on `nbhr demo --jobs 2` while both processes render: the command ends,
    and so do they, instead of rendering on unwatched (and then waiting forever for work from
    a parent that is gone, as they did)."""
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import pool_processes

    cmd = [sys.executable, "-m", "nbhr", "demo", tmp_path / "a", "--subjects", "2"]
    proc = subprocess.Popen(
        [*cmd, "--seconds", "120", "--jobs", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while len(list((tmp_path / "a" / "video").glob("*.avi"))) < 2:  # both are writing
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the demo wrote nothing"
        time.sleep(0.05)
    workers = pool_processes(proc.pid)
    assert len(workers) == 2
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
