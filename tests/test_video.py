"""Decoding: probing real files and frame-exact seeking (segments start mid-video)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from worker.video import VideoError, iter_frames, jpeg_scale, probe


def test_probe_real_mpeg4_clip(shared_data: Path) -> None:
    info = probe(shared_data / "bias_eval" / "India_video37_forehead.avi")
    assert (info.fps, info.n_frames, info.width, info.height) == (15.0, 570, 200, 200)
    assert info.duration_s == pytest.approx(38.0)


@pytest.mark.parametrize("which", ["mpeg4", "mjpg"])
def test_seeking_gives_the_same_frames_as_reading_through(
    which: str, shared_data: Path, face_videos: list[Path]
) -> None:
    path = (
        shared_data / "bias_eval" / "Sierra_Leone_video42_leftcheek.avi"
        if which == "mpeg4"
        else face_videos[0]
    )
    n = probe(path).n_frames
    through = [f for _, f in iter_frames(path, 0, n)]
    assert len(through) == n
    for start in (1, 137, n // 2, n - 5):
        seeked = list(iter_frames(path, start, start + 5))
        assert [i for i, _ in seeked] == list(range(start, start + 5))
        assert all(np.array_equal(f, through[i]) for i, f in seeked)


def test_reading_past_the_end_stops_quietly(face_videos: list[Path]) -> None:
    n = probe(face_videos[0]).n_frames
    assert len(list(iter_frames(face_videos[0], n - 3, n + 50))) == 3


def test_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    with pytest.raises(VideoError, match="empty file"):
        probe(empty)


def test_jpeg_scale_keeps_frames_at_least_as_wide_as_asked() -> None:
    assert jpeg_scale("MJPG", 640, 320) == 2
    assert jpeg_scale("MJPG", 1920, 320) == 4
    assert jpeg_scale("mjpg", 2560, 320) == 8
    assert jpeg_scale("MJPG", 600, 320) == 1  # half would be narrower than asked
    assert jpeg_scale("FMP4", 1920, 320) == 1  # MPEG-4 cannot decode at a reduced size
    assert jpeg_scale("MJPG", 1920, None) == 1


def test_reduced_mjpeg_decoding_is_a_downscaled_frame_and_seeks_exactly(
    face_videos: list[Path], shared_data: Path
) -> None:
    path = face_videos[0]
    info = probe(path)
    assert (info.codec.upper(), info.width) == ("MJPG", 640)
    full = [f for _, f in iter_frames(path, 0, 40)]
    small = [f for _, f in iter_frames(path, 0, 40, min_width=320)]
    assert len(small) == 40 and small[0].shape == (240, 320, 3)
    for a, b in zip(full, small, strict=True):
        area = cv2.resize(a, (320, 240), interpolation=cv2.INTER_AREA)
        # The JPEG decoder's own 1/2 scaling: the same picture within a grey level or two.
        assert np.abs(area.astype(int) - b).mean() < 2.0
    # Not a cheap copy of the first frame: the video moves.
    assert not np.array_equal(small[0], small[-1])
    through = [f for _, f in iter_frames(path, 0, info.n_frames, min_width=320)]
    for start in (1, 137, info.n_frames - 5):
        seeked = list(iter_frames(path, start, start + 5, min_width=320))
        assert [i for i, _ in seeked] == list(range(start, start + 5))
        assert all(np.array_equal(f, through[i]) for i, f in seeked)
    # Another codec comes at full size whatever is asked.
    clip = shared_data / "bias_eval" / "India_video37_forehead.avi"
    assert next(iter_frames(clip, 0, 1, min_width=100))[1].shape == (200, 200, 3)


def test_full_size_mjpeg_is_decoded_from_its_packets_like_ffmpeg_decodes_it(
    face_videos: list[Path],
) -> None:
    """MJPEG at full size comes from libjpeg-turbo (worker.video.decode_jpeg on each packet)
    where worker._jpegpart is built, else from FFmpeg's decoder: the same pictures within
    rounding (their IDCTs and colour conversions differ); and FFmpeg's path
    (worker.video._decoded, which takes over from a packet libjpeg rejects) gives frames of
    the size libjpeg's scaling would, with the same picture."""
    from worker.video import PART_DECODING, _decoded

    path = face_videos[0]
    packets = [f for _, f in iter_frames(path, 10, 40)]
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    cap.set(cv2.CAP_PROP_POS_FRAMES, 10)
    ffmpeg = [cap.read()[1] for _ in range(30)]
    cap.release()
    assert len(packets) == 30 and packets[0].shape == ffmpeg[0].shape == (480, 640, 3)
    for a, b in zip(packets, ffmpeg, strict=True):
        assert np.abs(a.astype(int) - b).mean() < 1.5
        # Two decoders where the extension is built: this really is libjpeg's picture.
        assert np.array_equal(a, b) is not PART_DECODING
    fallback = list(_decoded(path, 10, 40, 2))
    assert [i for i, _ in fallback] == list(range(10, 40))
    small = [f for _, f in iter_frames(path, 10, 40, min_width=320)]
    for (_, a), b in zip(fallback, small, strict=True):
        assert a.shape == b.shape == (240, 320, 3)
        assert np.abs(a.astype(int) - b).mean() < 2.0
