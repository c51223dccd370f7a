"""Decoding only the face's part of an MJPEG frame (worker._jpegpart, libjpeg-turbo): the part
is the picture the whole decode gives, the rows below it are never written, bad data is an
error and not a crash, and tracked MJPEG frames read in parts give the one-pass way's boxes and
crops. The extension is optional for users (setup.py); CI must have built it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import missing
from worker.crops import crop_region, face_crop
from worker.faces import FaceDetector, skin_mean
from worker.track import tracked_frames
from worker.video import PART_DECODING, MjpegPackets, iter_frames


@pytest.fixture(scope="module")
def decode_part():
    if not PART_DECODING:
        missing(
            "worker._jpegpart was not built (needs a C compiler and libjpeg headers)",
            "worker._jpegpart not built here",
        )
    from worker._jpegpart import decode_part

    return decode_part


def _packets(path: Path, n: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    assert cap.set(cv2.CAP_PROP_FORMAT, -1)
    out = [cap.read()[1].reshape(-1) for _ in range(n)]
    cap.release()
    return out


@pytest.mark.parametrize("scale", [1, 2])
def test_a_part_is_the_whole_decodes_picture_and_nothing_below_it(
    decode_part, face_videos: list[Path], scale: int
) -> None:
    flag = cv2.IMREAD_COLOR if scale == 1 else cv2.IMREAD_REDUCED_COLOR_2
    for packet in _packets(face_videos[0], 5):
        whole = cv2.imdecode(packet, flag)
        h, w = whole.shape[:2]
        x0, y0, x1, y1 = w // 4 + 3, h // 3 + 1, w // 2 + 5, 2 * h // 3 - 2
        out = np.full_like(whole, 7)
        decode_part(packet, scale, x0, y0, x1, y1, out)
        part, ref = out[y0:y1, x0:x1].astype(int), whole[y0:y1, x0:x1]
        # Two builds of libjpeg-turbo (the system's and OpenCV's): equal within a level or two.
        assert np.abs(part - ref).max() <= 3 and np.abs(part - ref).mean() < 0.1
        assert (out[y1:] == 7).all()  # decoding stopped at the part's last row
        assert (out[:y0] == 7).all()  # the rows above were skipped, not written
        assert (out[y0:y1, : max(0, x0 - 16)] == 7).all()  # columns left of the part's MCUs
        assert (out[y0:y1, x1 + 16 :] == 7).all()


@pytest.mark.parametrize("scale", [1, 2])
def test_a_four_channel_buffer_gets_the_same_pixels_as_bgra(
    decode_part, face_videos: list[Path], scale: int
) -> None:
    for packet in _packets(face_videos[0], 3):
        h, w, _ = cv2.imdecode(packet, cv2.IMREAD_REDUCED_COLOR_2 if scale == 2 else 1).shape
        x0, y0, x1, y1 = w // 4, h // 4, w // 2, h // 2
        bgr, bgra = np.zeros((h, w, 3), np.uint8), np.zeros((h, w, 4), np.uint8)
        decode_part(packet, scale, x0, y0, x1, y1, bgr)
        decode_part(packet, scale, x0, y0, x1, y1, bgra)
        assert np.array_equal(bgra[..., :3], bgr)  # the same rows and columns, the same pixels
        assert (bgra[y0:y1, x0:x1, 3] == 255).all() and (bgra[:y0] == 0).all()


def test_bad_data_and_a_wrong_buffer_are_errors(decode_part, face_videos: list[Path]) -> None:
    packet = _packets(face_videos[0], 1)[0]
    whole = cv2.imdecode(packet, cv2.IMREAD_COLOR)
    out = np.empty_like(whole)
    with pytest.raises(ValueError, match="JPEG|SOI"):
        decode_part(b"not a jpeg at all", 1, 0, 0, 10, 10, out)
    with pytest.raises(ValueError, match="decodes to 640x480"):
        decode_part(packet, 1, 0, 0, 10, 10, np.empty((240, 320, 3), np.uint8))
    with pytest.raises(ValueError, match="decodes to 640x480"):
        decode_part(packet, 1, 0, 0, 10, 10, np.empty((480, 640, 2), np.uint8))
    with pytest.raises(ValueError, match="scale"):
        decode_part(packet, 3, 0, 0, 10, 10, out)
    # A JPEG cut short decodes as far as it goes (libjpeg pads the rest), as imdecode does.
    cut = packet[: len(packet) // 2].copy()
    decode_part(cut, 1, 0, 0, 640, 480, out)
    assert np.abs(out[:40].astype(int) - whole[:40]).mean() < 0.1
    # A region outside the image is clipped to it.
    decode_part(packet, 1, 600, 470, 900, 900, out)
    assert np.abs(out[470:, 600:].astype(int) - whole[470:, 600:]).max() <= 3


@pytest.mark.parametrize(("start", "stop", "min_width"), [(0, 480, None), (37, 251, 320)])
def test_tracked_mjpeg_parts_give_the_one_pass_boxes_and_crops(
    decode_part, face_videos: list[Path], start: int, stop: int, min_width: int | None
) -> None:
    path = face_videos[0]
    detector = FaceDetector()
    whole = list(tracked_frames(path, start, stop, 30.0, detector, min_width))
    parts = list(tracked_frames(path, start, stop, 30.0, detector, min_width, part=True))
    assert [(i, b) for i, _, b in parts] == [(i, b) for i, _, b in whole]
    assert [i for i, _, _ in parts] == list(range(start, stop))
    with_box = [(w, p, b) for (_, w, b), (_, p, _) in zip(whole, parts, strict=True) if b]
    assert len(with_box) == stop - start
    for w, p, box in with_box:
        assert np.abs(face_crop(p, box).astype(int) - face_crop(w, box)).mean() < 0.1
        assert np.allclose(skin_mean(p, box), skin_mean(w, box), atol=0.05, equal_nan=True)
    x0, y0, x1, y1 = crop_region(with_box[0][2], w.shape[1], w.shape[0])
    assert (x1 - x0) * (y1 - y0) < 0.6 * w.shape[0] * w.shape[1]  # a part, not the frame


def test_a_packet_libjpeg_rejects_is_decoded_by_ffmpeg(
    decode_part, face_videos: list[Path]
) -> None:
    path = face_videos[0]
    packets = MjpegPackets.open(path, 10, 12, None)
    assert packets is not None
    got = list(packets)
    assert [i for i, _ in got] == [10, 11]
    first = packets.decode(10, got[0][1])
    assert first is not None and packets.shape == (480, 640, 3)
    # Garbage where frame 11's JPEG should be: the frame comes from FFmpeg's decoder instead.
    # A part comes as BGRA, from FFmpeg too.
    frame = packets.decode(11, np.frombuffer(b"\xff\xd8garbage", np.uint8), (0, 0, 64, 64))
    ffmpeg = next(iter_frames(path, 11, 12))[1]
    assert frame is not None and frame.shape == (*ffmpeg.shape[:2], 4)
    assert np.abs(frame[..., :3].astype(int) - ffmpeg).mean() < 1.5


def test_bench_reports_tracking_whole_frames_and_parts(face_videos: list[Path]) -> None:
    from nbhr.bench import bench_tracking

    out = bench_tracking(face_videos[:1], {face_videos[0]: 320}, pairs=1)
    assert out["ms_per_frame_whole"] > 0 and out["ms_per_frame_parts"] > 0
    assert out["speedup"] == pytest.approx(out["ms_per_frame_whole"] / out["ms_per_frame_parts"])
    assert out["part_decoder_built"] is PART_DECODING
    if PART_DECODING:  # MJPEG: what reading the frames down to the face costs at the least
        assert out["ms_per_frame_entropy_floor"] > out["ms_per_frame_entropy_above_face"] > 0


def test_the_entropy_floor_bounds_the_pipeline_ratio(decode_part, face_videos, tmp_path) -> None:
    from nbhr.bench import _with_floor, bench_entropy_floor
    from worker.avi import RawAviWriter

    video = face_videos[0]
    boxes = {i: b for i, _, b in tracked_frames(video, 0, 90, 30.0, FaceDetector(), part=True)}
    floors = bench_entropy_floor([video], {video: None}, {video: boxes})
    assert floors is not None
    # Reading down to the face's last row costs more than down to its first: the face's own
    # rows lie between, and the demo's faces fill a good part of the frame's height.
    above, floor = floors["ms_per_frame_entropy_above_face"], floors["ms_per_frame_entropy_floor"]
    assert 0 < above < 0.9 * floor
    # Uncompressed frames have no entropy-coded data: no floor.
    raw = tmp_path / "raw.avi"
    frames = [frame for _, frame in iter_frames(face_videos[0], 0, 30)]
    height, width, _ = frames[0].shape
    with RawAviWriter(raw, 30.0, (width, height)) as writer:
        for frame in frames:
            writer.write(frame)
    assert bench_entropy_floor([raw], None, {raw: {}}) is None
    overhead = {"video_s": 10.0, "inference_cpu_s": 0.6, "ratio": 1.4}
    tracking = {
        "ms_per_frame_entropy_floor": 0.5,
        "ms_per_frame_entropy_above_face": 0.1,
        "ms_per_frame_parts": 1.2,
    }
    got = _with_floor(overhead, tracking)
    # 300 frames at 0.5 ms: 0.15 s on top of 0.6 s of inference; at 1.2 ms, 0.36 s; the
    # face's rows alone, 0.4 ms, 0.12 s.
    assert got["ratio_floor_entropy"] == pytest.approx(1.25)
    assert got["ratio_floor_face_rows"] == pytest.approx(1.2)
    assert got["ratio_tracking"] == pytest.approx(1.6)
    assert got["ratio"] == 1.4
    raw = _with_floor(overhead, {"ms_per_frame_whole": 1.0, "ms_per_frame_parts": 0.3})
    assert raw == overhead | {"ratio_tracking": pytest.approx(1.15)}  # no floor: not MJPEG
    # `nbhr bench` without --json prints them beside the ratio.
    from nbhr.cli import _placed

    assert _placed(got) == (
        " (decode+track+crop alone 1.60x, entropy floor 1.25x, the face's rows alone 1.20x)"
    )
    assert _placed(overhead) == ""


def test_frames_without_a_face_are_not_decoded_in_parts(decode_part, demo) -> None:
    """The empty cot: only its detection frames (2 Hz) are decoded; the frames between them,
    which have no box, come as None, with the boxes (none) of the one-pass way."""
    empty = next(demo.root / r.recording for r in demo.recordings if not r.has_face)
    detector = FaceDetector()
    whole = list(tracked_frames(empty, 0, 150, 30.0, detector))
    parts = list(tracked_frames(empty, 0, 150, 30.0, detector, part=True))
    assert [(i, b) for i, _, b in parts] == [(i, b) for i, _, b in whole]
    assert all(b is None for _, _, b in parts)
    decoded = [i for i, f, _ in parts if f is not None]
    assert decoded == list(range(0, 150, 15))  # the detection frames, whole
    assert all(np.array_equal(parts[i][1], whole[i][1]) for i in decoded)
