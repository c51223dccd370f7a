"""Decoding: probing real files and frame-exact seeking (segments start mid-video)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from worker.video import VideoError, iter_frames, probe


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
