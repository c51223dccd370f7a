"""Face detection on a real photograph, retries on rotated/dark frames, smooth tracking."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from worker.faces import Box, FaceDetector, FaceTracker, _weights_at, region_mean, skin_mean


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    """The public-domain astronaut photograph as a 640x480 BGR frame, face near the middle."""
    rgb = data.astronaut()[0:384, 64:448]
    frame = cv2.resize(rgb, (480, 480))
    canvas = np.full((480, 640, 3), 90, np.uint8)
    canvas[:, 80:560] = frame
    return cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)


def test_face_found_upright(detector: FaceDetector, portrait: np.ndarray) -> None:
    box = detector.detect(portrait)
    assert box is not None
    assert 200 < box.cx < 440 and 60 < box.cy < 300
    assert 80 < box.w < 300


@pytest.mark.parametrize("angle", [60, -90])
def test_rotated_face_found_by_retry(
    detector: FaceDetector, portrait: np.ndarray, angle: float
) -> None:
    upright = detector.detect(portrait)
    rot = cv2.getRotationMatrix2D((320, 240), angle, 1.0)
    turned = cv2.warpAffine(portrait, rot, (640, 480), borderMode=cv2.BORDER_REPLICATE)
    assert detector.detect(turned, full=False) is None or detector.last_angle != 0.0
    box = detector.detect(turned)
    assert box is not None
    expected = rot @ np.array([upright.cx, upright.cy, 1.0])
    assert abs(box.cx - expected[0]) < 40 and abs(box.cy - expected[1]) < 40


def test_dark_face_found_by_brightening(detector: FaceDetector, portrait: np.ndarray) -> None:
    dark = (portrait.astype(np.float32) * 0.12).astype(np.uint8)
    assert detector.detect(dark) is not None


def test_no_face_in_blanket(detector: FaceDetector) -> None:
    rng = np.random.default_rng(0)
    blanket = cv2.GaussianBlur(rng.integers(150, 220, (480, 640, 3), dtype=np.uint8), (9, 9), 3)
    assert detector.detect(blanket) is None


def test_tracker_interpolates_and_never_falls_back_to_full_frame(
    detector: FaceDetector, portrait: np.ndarray
) -> None:
    tracker = FaceTracker(detector, fps=30.0)
    blank = np.full_like(portrait, 80)
    frames = [portrait] * 45 + [blank] * 75
    out = []
    for i, f in enumerate(frames):
        out += tracker.push(i, f)
    out += tracker.flush()
    assert [i for i, _, _ in out] == list(range(len(frames)))
    boxes = [b for _, _, b in out]
    assert all(b is not None for b in boxes[:45])
    # The face is held for about a second after it vanished, then reported missing.
    assert boxes[-1] is None
    assert sum(b is None for b in boxes) >= 30
    steps = [abs(a.cx - b.cx) for a, b in zip(boxes[:44], boxes[1:45], strict=True)]
    assert max(steps) < 5.0


def test_detection_near_the_last_box_then_in_the_whole_frame(
    detector: FaceDetector, portrait: np.ndarray
) -> None:
    full = detector.detect(portrait, full=False)
    assert full is not None
    # Near the last box (given a little off, as a moving face leaves it): the same face.
    off = Box(full.x + 0.15 * full.w, full.y - 0.1 * full.h, full.w, full.h)
    near = detector.detect(portrait, full=False, near=off)
    assert near is not None and near.iou(full) > 0.6
    # The face moved 200 px to the left: nothing in the square around the last box, so only
    # the whole-frame search finds it, and it does.
    shifted = np.full_like(portrait, 90)
    shifted[:, :280] = portrait[:, 200:480]
    gray = cv2.cvtColor(
        cv2.resize(shifted, (320, 240), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY
    )
    assert detector._detect_near(gray, Box(*(v / 2 for v in off.astuple()))) is None
    moved = detector.detect(shifted, full=False, near=off)
    assert moved is not None and abs(moved.cx - (full.cx - 200)) < 0.2 * full.w


def _grey_320(frame_bgr: np.ndarray) -> np.ndarray:
    small = cv2.resize(frame_bgr, (320, 240), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)


def test_each_filter_alone_finds_what_it_finds_among_all_five(
    detector: FaceDetector, portrait: np.ndarray
) -> None:
    filters = detector._filters
    assert filters is not None and [f.num_detectors for f in filters] == [1] * 5
    winners = set()
    for angle in (0, -20, 25):  # upright: the frontal filter; tilted: the tilted ones
        rot = cv2.getRotationMatrix2D((320, 240), angle, 1.0)
        gray = _grey_320(cv2.warpAffine(portrait, rot, (640, 480), borderMode=cv2.BORDER_REPLICATE))
        found = detector._detect_gray(gray, 0)
        assert found
        score, box, k = max(found, key=lambda f: f[0])
        alone = detector._detect_gray(gray, 0, filters[k])
        assert [(s, b) for s, b, _ in alone] == [(s, b) for s, b, j in found if j == k]
        assert (score, box) in [(s, b) for s, b, _ in alone]
        winners.add(k)
    assert len(winners) == 3  # three different filters were tried alone


def test_the_near_search_tries_the_last_filter_then_all(
    detector: FaceDetector, portrait: np.ndarray
) -> None:
    rot = cv2.getRotationMatrix2D((320, 240), -20, 1.0)
    tilted = cv2.warpAffine(portrait, rot, (640, 480), borderMode=cv2.BORDER_REPLICATE)
    gray = _grey_320(tilted)
    _, box, k = max(detector._detect_gray(gray, 0), key=lambda f: f[0])
    assert k != 0  # a tilted face: not the frontal filter's
    for last in (k, 0):  # the filter that found it, then one that finds nothing there
        detector.last_filter = last
        near = detector._detect_near(gray, box)
        assert near == box and detector.last_filter == k

    # A box of the one filter that hardly overlaps the last box is left to all five to judge.
    class Counted:
        def __init__(self, detector: object) -> None:
            self.detector, self.runs = detector, 0

        def run(self, *args: object) -> object:
            self.runs += 1
            return self.detector.run(*args)

    far = Box(box.x + 0.6 * box.w, box.y, box.w, box.h)  # IoU 0.25 with the face's box
    detector.last_filter = None
    by_five = detector._detect_near(gray, far)  # all five, in the square around `far`
    assert by_five is not None and by_five.iou(box) > 0.6
    one, five = Counted(detector._filters[k]), Counted(detector._detector)
    detector._filters[k], detector._detector = one, five
    try:
        detector.last_filter = k
        assert detector._detect_near(gray, box) == box
        assert (one.runs, five.runs) == (1, 0)
        assert detector._detect_near(gray, far) == by_five
        assert (one.runs, five.runs) == (2, 1)
    finally:
        detector._filters[k], detector._detector = one.detector, five.detector
    # On a full frame, the whole-frame search records its winner too.
    detector.last_filter, detector.last_angle = None, 0.0
    assert detector.detect(tilted, full=False) is not None and detector.last_filter == k


def test_saved_weights_are_read_only_where_they_end_the_file() -> None:
    with pytest.raises(ValueError):
        _weights_at(bytes([1, 1, 0x81, 3, 0x81, 1, 1, 2]), 0)  # a vector cut short
    with pytest.raises(ValueError):
        _weights_at(bytes([1, 1, 0x81, 1, 0x81, 1, 1, 2, 1, 3, 9]), 0)  # bytes after the last
    assert _weights_at(bytes([1, 1, 0x81, 1, 0x81, 1, 1, 2, 1, 3]), 0) == [(2, 10)]


def test_skin_mean_ignores_non_skin(portrait: np.ndarray) -> None:
    box = Box(260, 60, 120, 140)
    m = skin_mean(portrait, box)
    assert np.all(np.isfinite(m)) and m[0] > m[2]  # skin is redder than it is blue
    grey = np.full_like(portrait, 128)
    assert np.all(np.isnan(skin_mean(grey, box)))
    assert np.allclose(region_mean(grey, None), 128)


def test_box_parse_errors() -> None:
    assert Box.parse("10,20,30,40") == Box(10, 20, 30, 40)
    with pytest.raises(ValueError, match="X,Y,W,H"):
        Box.parse("10,20,30")
    with pytest.raises(ValueError, match="W,H > 0"):
        Box.parse("10,20,0,40")
