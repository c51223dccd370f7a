"""Frames with face boxes: the detections-first way for uncompressed AVI gives exactly the boxes
and frames of the one-pass way, on a real rendered video, also where the face leaves the view
and where the file is cut short; reading only the part around each box gives exactly the crops
and skin colours of the whole frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from worker.avi import RawAviWriter
from worker.crops import crop_region, face_crop
from worker.faces import FaceDetector, skin_mean
from worker.track import tracked_frames
from worker.video import iter_frames, probe


@pytest.fixture(scope="module")
def raw_video(face_videos: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo face video copied frame by frame into an uncompressed AVI, its last 2 s an empty
    grey frame (the face gone: held for a second, then no box)."""
    src = face_videos[0]
    info = probe(src)
    path = tmp_path_factory.mktemp("raw") / "face.avi"
    frames = [f for _, f in iter_frames(src, 0, 300)]
    frames += [np.full_like(frames[0], 90)] * 60
    with RawAviWriter(path, info.fps, (info.width, info.height)) as writer:
        for f in frames:
            writer.write(f)
    return path


def _both(path: Path, start: int, stop: int) -> tuple[list, list]:
    ways = []
    for random_access in (False, True):
        out = tracked_frames(path, start, stop, 30.0, FaceDetector(), None, random_access)
        ways.append(list(out))
    return ways[0], ways[1]


@pytest.mark.parametrize(("start", "stop"), [(0, 360), (37, 251), (300, 360)])
def test_detections_first_gives_the_one_pass_boxes(raw_video: Path, start: int, stop: int) -> None:
    one_pass, first = _both(raw_video, start, stop)
    assert [i for i, _, _ in first] == [i for i, _, _ in one_pass] == list(range(start, stop))
    assert [b for _, _, b in first] == [b for _, _, b in one_pass]
    assert all(np.array_equal(a, b) for (_, a, _), (_, b, _) in zip(first, one_pass, strict=True))
    boxes = [b for _, _, b in first]
    if start == 0:
        assert all(b is not None for b in boxes[:300]) and boxes[-1] is None


def test_a_file_cut_short_ends_both_ways_alike(raw_video: Path, tmp_path: Path) -> None:
    data = raw_video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 2 // 3])  # the index and the last third are gone
    one_pass, first = _both(cut, 0, 360)
    assert 200 < len(first) == len(one_pass) < 360
    assert [b for _, _, b in first] == [b for _, _, b in one_pass]
    # Read in parts, it ends at the same frame with the same boxes.
    parts = list(tracked_frames(cut, 0, 360, 30.0, FaceDetector(), part=True))
    assert [(i, b) for i, _, b in parts] == [(i, b) for i, _, b in first]


@pytest.mark.parametrize(("start", "stop"), [(0, 360), (37, 251)])
def test_parts_around_the_box_give_the_whole_frames_crops(
    raw_video: Path, start: int, stop: int
) -> None:
    whole = list(tracked_frames(raw_video, start, stop, 30.0, FaceDetector()))
    parts = list(tracked_frames(raw_video, start, stop, 30.0, FaceDetector(), part=True))
    assert [(i, b) for i, _, b in parts] == [(i, b) for i, _, b in whole]
    with_box = [(w, p, b) for (_, w, b), (_, p, _) in zip(whole, parts, strict=True) if b]
    assert len(with_box) > 100
    for w, p, box in with_box:
        assert np.array_equal(face_crop(p, box), face_crop(w, box))
        assert np.array_equal(skin_mean(p, box), skin_mean(w, box), equal_nan=True)
        x0, y0, x1, y1 = crop_region(box, w.shape[1], w.shape[0])
        assert (x1 - x0) * (y1 - y0) < 0.5 * w.shape[0] * w.shape[1]  # a part, not the frame
    # Frames without a box (the face gone at the end) come whole.
    without = [(w, p) for (_, w, b), (_, p, _) in zip(whole, parts, strict=True) if b is None]
    assert len(without) == (30 if start == 0 else 0)
    assert all(np.array_equal(p, w) for w, p in without)
