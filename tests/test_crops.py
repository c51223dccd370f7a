"""NBHRnet input: face crops and 30-fps windows cut by timestamp."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from worker.crops import WINDOW_FRAMES, face_crop, resample_indices, windows_of
from worker.faces import Box


def test_face_crop_is_square_rgb_and_centred() -> None:
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[200:280, 300:380] = (255, 0, 0)  # a blue square in BGR
    crop = face_crop(frame, Box(300, 200, 80, 80))
    assert crop.shape == (128, 128, 3) and crop.dtype == np.uint8
    centre = crop[64, 64]
    assert tuple(centre) == (0, 0, 255)  # RGB now: blue is the last channel
    # 1.3x the box: the square fills the middle 128/1.3 = 98 px, black around it.
    assert tuple(crop[5, 5]) == (0, 0, 0)


def test_face_crop_at_the_frame_edge_keeps_scale() -> None:
    frame = np.full((480, 640, 3), 100, np.uint8)
    crop = face_crop(frame, Box(-30, -30, 100, 100))
    assert crop.shape == (128, 128, 3) and (crop == 100).all()


def test_a_bgra_frame_gives_the_bgr_frames_crop() -> None:
    # Parts of frames come as 4 channels (worker.track), which OpenCV warps faster; the crop
    # must be the one the same BGR frame gives, wherever the box is, at the edges included.
    rng = np.random.default_rng(11)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (240, 320, 3), np.uint8), (5, 5), 1.5)
    bgra = cv2.cvtColor(frame, cv2.COLOR_BGR2BGRA)
    bgra[..., 3] = rng.integers(0, 256, (240, 320), np.uint8)  # whatever the 4th byte holds
    for _ in range(300):
        side = rng.uniform(20, 260)
        box = Box(rng.uniform(-60, 300), rng.uniform(-60, 220), side, side * rng.uniform(0.8, 1.2))
        assert np.array_equal(face_crop(bgra, box), face_crop(frame, box))


@pytest.mark.parametrize(
    ("fps_in", "n_in", "n_out"), [(30, 90, 90), (25, 50, 60), (60, 120, 60), (15, 30, 60)]
)
def test_resample_by_timestamp(fps_in: float, n_in: int, n_out: int) -> None:
    idx = resample_indices(n_in, fps_in)
    assert len(idx) == n_out
    t_err = np.abs(idx / fps_in - np.arange(n_out) / 30.0)
    assert t_err.max() <= 0.5 / fps_in + 1e-9
    assert (np.diff(idx) >= 0).all() and idx[-1] < n_in


def test_windows_skip_faceless_and_hold_one_window() -> None:
    n = 200
    crops = [np.full((128, 128, 3), i % 256, np.uint8) if i != 130 else None for i in range(n)]
    out = list(windows_of(iter(crops), 30.0, n))
    assert [k for k, _ in out] == [0, 1, 2]
    assert out[0][1].shape == (WINDOW_FRAMES, 128, 128, 3) and out[0][1][0, 0, 0, 0] == 0
    assert out[1][1][0, 0, 0, 0] == 60
    assert out[2][1] is None  # frame 130 had no face
    half = list(windows_of(iter(crops), 30.0, n, hop=30))
    assert [k for k, _ in half] == list(range(5))


def test_a_job_with_nbhrnet_alone_skips_the_colour_means(face_videos) -> None:
    """The crops, face flags and frame count do not depend on whether the per-frame colour
    means (for the classical estimators) are computed."""
    from worker.process import extract_trace, init_process

    init_process()
    video = face_videos[0]
    with_colour, without = [], []
    a = extract_trace(video, 0, 45, "face", 30.0, on_crop=with_colour.append)
    b = extract_trace(video, 0, 45, "face", 30.0, on_crop=without.append, colour=False)
    assert np.isfinite(a.rgb).all() and np.isnan(b.rgb).all()
    assert len(b.rgb) == len(a.rgb) == 45 and np.array_equal(a.face, b.face)
    assert all(np.array_equal(x, y) for x, y in zip(with_colour, without, strict=True))


def test_reduced_decoding_never_starves_nbhrnets_crops(demo, tmp_path) -> None:
    """With NBHRnet, a segment decodes MJPEG no smaller than its face's crop needs: the crop's
    source square keeps at least CROP_SIZE pixels a side, so the reduced decode only does the
    area-averaging the crop's resize would do. Without a face, frames come at full size."""
    import cv2

    from worker.crops import CROP_SCALE, CROP_SIZE
    from worker.faces import DETECT_WIDTH, FaceDetector
    from worker.options import NBHRNET, ProcessingOptions
    from worker.process import crop_decode_width, extract_trace, init_process
    from worker.video import iter_frames, jpeg_scale

    init_process()
    reduced = 0
    for rec in demo.recordings:
        video = demo.root / rec.recording
        width = crop_decode_width(video, 0, DETECT_WIDTH)
        if not rec.has_face:
            assert width is None
            continue
        frame = next(iter_frames(video, 0, 1))[1]
        box = FaceDetector().detect(frame)
        assert box is not None and width is not None and width >= DETECT_WIDTH
        scale = jpeg_scale("MJPG", frame.shape[1], width)
        assert CROP_SCALE * max(box.w, box.h) / scale >= CROP_SIZE
        reduced += scale > 1
        # The crops of the reduced decode are those of the full one, but for rounding.
        full, small = [], []
        extract_trace(video, 0, 30, "face", 30.0, on_crop=full.append, colour=False)
        extract_trace(
            video, 0, 30, "face", 30.0, on_crop=small.append, colour=False, min_width=width
        )
        diff = [cv2.absdiff(a, b).mean() for a, b in zip(full, small, strict=True)]
        assert max(diff) < 6.0
    # The demo's faces are large enough for half-size frames in at least one recording.
    assert reduced >= 1
    with pytest.raises(ValueError, match="reduced-size decoding"):
        ProcessingOptions(
            estimators=(NBHRNET,), model_path="m.onnx", roi="full", decode_min_width=320
        ).validate()


def test_a_video_never_decoded_reduced_gets_no_decode_width(demo, tmp_path) -> None:
    """Uncompressed AVI is always read whole, so crop_decode_width does not spend a decode and
    a face search on it (the MJPEG original of the same frames gets its width)."""
    from worker.avi import RawAviWriter
    from worker.faces import DETECT_WIDTH
    from worker.process import crop_decode_width, init_process
    from worker.video import decodes_reduced, iter_frames, probe

    init_process()
    mjpg = next(demo.root / r.recording for r in demo.recordings if r.has_face)
    info = probe(mjpg)
    raw = tmp_path / "raw.avi"
    with RawAviWriter(raw, info.fps, (info.width, info.height)) as writer:
        for _, frame in iter_frames(mjpg, 0, 5):
            writer.write(frame)
    assert decodes_reduced(mjpg) and not decodes_reduced(raw)
    assert crop_decode_width(mjpg, 0, DETECT_WIDTH) is not None
    assert crop_decode_width(raw, 0, DETECT_WIDTH) is None
