"""The demo archive: NBHR layout, readable MJPG videos, findable faces, exact reference PPG."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import cv2
import dlib
import numpy as np
import pytest

from model.synthetic import extract_beats, load_beat_templates
from nbhr.demo import PPG_RATE_HZ, DemoSummary, write_demo_archive

SECONDS = 10.0
FPS = 30.0


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
def detector() -> dlib.fhog_object_detector:
    return dlib.get_frontal_face_detector()


def read_frames(path: Path) -> tuple[float, np.ndarray]:
    """fps and all frames, uint8 (T, H, W, 3) BGR, as OpenCV decodes them."""
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return fps, np.asarray(frames)


def faces(detector: dlib.fhog_object_detector, frame: np.ndarray) -> list[dlib.rectangle]:
    """Face boxes in full-frame pixels; HOG on the frame halved to 320 px, upsampled once."""
    small = cv2.resize(frame, (frame.shape[1] // 2, frame.shape[0] // 2), cv2.INTER_AREA)
    rects = detector(cv2.cvtColor(small, cv2.COLOR_BGR2RGB), 1)
    return [dlib.rectangle(2 * r.left(), 2 * r.top(), 2 * r.right(), 2 * r.bottom()) for r in rects]


def load_ppg(root: Path, rec: str) -> np.ndarray:
    return np.loadtxt(root / rec, delimiter=",", ndmin=2)


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
        [float(v) for v in first]  # no header row
        ppg = load_ppg(archive.root, rec.ppg)
        assert ppg.shape == (round(SECONDS * PPG_RATE_HZ), 3)
        assert np.all((ppg[:, 1] >= 90) & (ppg[:, 1] <= 200))
        assert np.all((ppg[:, 2] >= 94) & (ppg[:, 2] <= 100))
        assert np.ptp(ppg[:, 0]) > 0.5
        assert ppg[:, 1].mean() == pytest.approx(rec.mean_hr_bpm, abs=1e-3)


def test_videos_decode_at_30_fps(archive: DemoSummary) -> None:
    for rec in archive.recordings:
        cap = cv2.VideoCapture(str(archive.root / rec.recording))
        assert cap.get(cv2.CAP_PROP_FOURCC) == cv2.VideoWriter_fourcc(*"MJPG")
        assert cap.get(cv2.CAP_PROP_FRAME_WIDTH) == 640
        assert cap.get(cv2.CAP_PROP_FRAME_HEIGHT) == 480
        cap.release()
        fps, frames = read_frames(archive.root / rec.recording)
        assert fps == FPS
        assert frames.shape == (round(SECONDS * FPS), 480, 640, 3)


def test_face_found_only_where_there_is_one(
    archive: DemoSummary, detector: dlib.fhog_object_detector
) -> None:
    for rec in archive.recordings:
        cap = cv2.VideoCapture(str(archive.root / rec.recording))
        for index in (0, 140, 299):
            cap.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, frame = cap.read()
            assert ok
            found = faces(detector, frame)
            if rec.has_face:
                assert len(found) == 1, (rec.recording, index)
                assert 140 <= found[0].width() <= 280
            else:
                assert found == [], (rec.recording, index)
        cap.release()


def test_pulse_survives_compression(
    archive: DemoSummary, detector: dlib.fhog_object_detector
) -> None:
    for rec in archive.recordings:
        if not rec.has_face:
            continue
        fps, frames = read_frames(archive.root / rec.recording)
        box = faces(detector, frames[0])[0]
        green = frames[:, box.top() : box.bottom(), box.left() : box.right(), 1].mean(axis=(1, 2))
        green = green - np.polyval(
            np.polyfit(np.arange(len(green)), green, 2), np.arange(len(green))
        )
        power = np.abs(np.fft.rfft(green * np.hanning(len(green)), 8192)) ** 2
        bpm = np.fft.rfftfreq(8192, 1.0 / fps) * 60.0
        band = (bpm > 80) & (bpm < 220)
        peak_bpm = bpm[band][np.argmax(power[band])]
        assert peak_bpm == pytest.approx(rec.mean_hr_bpm, abs=5.0), rec.recording


def test_ppg_is_made_of_real_beats(archive: DemoSummary) -> None:
    templates = load_beat_templates()
    ppg = load_ppg(archive.root, archive.recordings[0].ppg)[:, 0]
    beats, _, periods = extract_beats(ppg, PPG_RATE_HZ)
    expected = SECONDS * archive.recordings[0].mean_hr_bpm / 60.0
    assert len(beats) >= 0.6 * expected
    best = np.array([max(np.corrcoef(b, t)[0, 1] for t in templates) for b in beats])
    assert np.all(best > 0.95)
    # A PPG beat rises to its systolic peak in well under half the beat; a sine takes half.
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
            size=(320, 240),
            recordings_per_subject=1,
        )
        return [(summary.root / r.ppg).read_bytes() for r in summary.recordings]

    first = reference(5, "a")
    assert reference(5, "b") == first
    assert reference(6, "c") != first
