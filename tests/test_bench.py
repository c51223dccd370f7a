"""`nbhr bench DIR` takes a sample, not an archive: it reads its DIR 7 times over (more than 20
with --model) and holds each MJPEG video's packets while it times them, so a DIR holding
more video than --max-video-min (default 15 minutes) is refused before anything is read."""

from __future__ import annotations

from pathlib import Path

import pytest

from nbhr.bench import archive_video_min
from tests.helpers import nbhr


def test_bench_refuses_a_dir_with_more_video_than_its_limit(demo_archive: Path) -> None:
    # The demo archive: three 16-s recordings, 0.8 min.
    proc = nbhr("bench", demo_archive, "--max-video-min", "0.5", "--json", check=False)
    assert proc.returncode == 1
    assert "holds 0.8 min of video, more than --max-video-min 0.5" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""  # refused before any measurement


def test_archive_minutes_count_what_can_be_read(demo_archive: Path, tmp_path: Path) -> None:
    assert archive_video_min(demo_archive) == pytest.approx(3 * 16 / 60)
    sample = tmp_path / "sample"
    (sample / "video").mkdir(parents=True)
    video = next((demo_archive / "video").glob("*.avi"))
    (sample / "video" / video.name).symlink_to(video)
    (sample / "video" / "broken.avi").write_bytes(b"RIFF" + b"\0" * 60)
    assert archive_video_min(sample) == pytest.approx(16 / 60)
