"""Uncompressed AVI read straight from the file (worker.avi): every index kind, both row orders,
truncated and dropped frames, and agreement with FFmpeg on the files FFmpeg reads safely."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from worker.avi import RawAviReader, RawAviWriter, frame_index, read_layout
from worker.video import VideoError, iter_frames, probe


def _frames(n: int, size: tuple[int, int] = (64, 48), seed: int = 0) -> list[np.ndarray]:
    """Distinct frames with structure in both directions (a row flip or a shifted row shows)."""
    w, h = size
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def _write(path: Path, frames: list[np.ndarray], bottom_up: bool = True) -> Path:
    h, w = frames[0].shape[:2]
    with RawAviWriter(path, 30.0, (w, h), bottom_up=bottom_up) as writer:
        for f in frames:
            writer.write(f)
    return path


def _chunk(tag: bytes, data: bytes) -> bytes:
    return tag + struct.pack("<I", len(data)) + data + b"\0" * (len(data) & 1)


def _opendml(path: Path, parts: list[list[np.ndarray | None]], bits: int = 32) -> None:
    """An OpenDML (AVI 2.0) file built by hand: top-down BGRA rows, one RIFF per part (the first
    'AVI ', the rest 'AVIX'), each with its own 'ix00' standard index and no idx1, so only the
    super index or a scan finds the frames; None writes an empty chunk (a dropped frame)."""
    h, w = next(f for p in parts for f in p if f is not None).shape[:2]
    frame_bytes = w * h * bits // 8
    strh = b"vids" + struct.pack(
        "<4sIHHIIIIIIiI4h", b"\0" * 4, 0, 0, 0, 0, 1, 25, 0, 0, 0, -1, 0, 0, 0, w, h
    )
    strf = struct.pack("<IiiHHIIiiII", 40, w, -h, 1, bits, 0, frame_bytes, 0, 0, 0, 0)
    indx_at_in_file = None  # the super index's entries are patched once the ix00 are placed
    n_parts = len(parts)
    indx = struct.pack("<HBBI4s12x", 4, 0, 0, n_parts, b"00db") + b"\0" * (16 * n_parts)
    strl = b"strl" + _chunk(b"strh", strh) + _chunk(b"strf", strf) + _chunk(b"indx", indx)
    hdrl = b"hdrl" + _chunk(b"avih", b"\0" * 56) + _chunk(b"LIST", strl)
    out = bytearray()
    entries = []
    for k, part in enumerate(parts):
        riff_at = len(out)
        out += b"RIFF\0\0\0\0" + (b"AVI " if k == 0 else b"AVIX")
        if k == 0:
            out += _chunk(b"LIST", hdrl)
            indx_at_in_file = out.find(b"indx") + 8 + 24
        movi_at = len(out)
        out += b"LIST\0\0\0\0movi"
        base, offsets, sizes = movi_at, [], []
        for f in part:
            data = b"" if f is None else cv2.cvtColor(f, cv2.COLOR_BGR2BGRA).tobytes()
            offsets.append(len(out) + 8 - base)
            sizes.append(len(data))
            out += _chunk(b"00db", data)
        struct.pack_into("<I", out, movi_at + 4, len(out) - movi_at - 8)
        ix = struct.pack("<HBBI4sQI", 2, 0, 1, len(part), b"00db", base, 0)
        ix += b"".join(struct.pack("<II", o, s) for o, s in zip(offsets, sizes, strict=True))
        entries.append((len(out), len(ix) + 8, len(part)))
        out += _chunk(b"ix00", ix)
        struct.pack_into("<I", out, riff_at + 4, len(out) - riff_at - 8)
    for i, (at, size, n) in enumerate(entries):
        struct.pack_into("<QII", out, indx_at_in_file + 16 * i, at, size, n)
    path.write_bytes(bytes(out))


def test_bottom_up_bgr24_round_trips_bit_exactly_with_idx1_and_scan_agreeing(
    tmp_path: Path,
) -> None:
    frames = _frames(20, (66, 50))  # 66 * 3 = 198 bytes a row: padded to 200
    path = _write(tmp_path / "raw.avi", frames)
    layout = read_layout(path)
    assert layout is not None and layout.bottom_up and layout.stride == 200
    assert (layout.width, layout.height, layout.n_frames, layout.fps) == (66, 50, 20, 30.0)
    idx1, scan = frame_index(path, "idx1"), frame_index(path, "scan")
    assert frame_index(path, "indx") is None  # AVI 1.0: no super index
    assert np.array_equal(idx1[0], scan[0]) and np.array_equal(idx1[1], scan[1])
    with RawAviReader(path, layout) as reader:
        for i, f in enumerate(frames):
            assert np.array_equal(reader.read(i), f)
        assert reader.read(20) is None
    info = probe(path)
    assert (info.codec, info.width, info.height, info.n_frames) == ("RGB24", 66, 50, 20)
    # Segments start mid-video: a start index reads the same frames as reading through.
    assert [i for i, _ in iter_frames(path, 17, 99)] == [17, 18, 19]
    assert all(np.array_equal(f, frames[i]) for i, f in iter_frames(path, 5, 9))


def test_ffmpeg_reads_the_writers_top_down_file_as_written(tmp_path: Path) -> None:
    """An independent reader of the writer's output: OpenCV's FFmpeg backend (safe on top-down
    rows; bottom-up ones crash it, which is why worker.avi exists)."""
    frames = _frames(12, (64, 48), seed=1)
    path = _write(tmp_path / "td.avi", frames, bottom_up=False)
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(30.0)
    got = []
    while (frame := cap.read()[1]) is not None:
        got.append(frame)
    cap.release()
    assert len(got) == 12 and all(np.array_equal(a, b) for a, b in zip(got, frames, strict=True))
    assert all(np.array_equal(f, frames[i]) for i, f in iter_frames(path, 0, 12))


def test_opendml_super_index_bgra_and_dropped_frames(tmp_path: Path) -> None:
    frames = _frames(9, (40, 30), seed=2)
    path = tmp_path / "odml.avi"
    _opendml(path, [frames[:4], [frames[4], None, frames[6], frames[7], frames[8]]])
    assert frame_index(path, "idx1") is None
    indx, scan = frame_index(path, "indx"), frame_index(path, "scan")
    assert len(indx[0]) == 9 and np.array_equal(indx[0], scan[0])
    assert np.array_equal(indx[1], scan[1]) and indx[1][5] == 0
    layout = read_layout(path)
    assert layout.bits == 32 and not layout.bottom_up and layout.fps == 25.0
    got = dict(iter_frames(path, 0, 9))
    assert sorted(got) == list(range(9))
    for i in range(9):
        # The dropped frame 5 shows frame 4 again, as a player shows it.
        assert np.array_equal(got[i], frames[4 if i == 5 else i])


@pytest.mark.parametrize("bottom_up", [True, False])
def test_a_part_of_a_frame_is_read_in_place(tmp_path: Path, bottom_up: bool) -> None:
    frames = _frames(6, (66, 50), seed=4)
    path = _write(tmp_path / "part.avi", frames, bottom_up)
    layout = read_layout(path)
    with RawAviReader(path, layout) as reader:
        for i, (x0, y0, x1, y1) in enumerate([(0, 0, 66, 50), (5, 7, 31, 29), (65, 49, 66, 50)]):
            part = reader.read_part(i, x0, y0, x1, y1)
            assert part.shape == (*frames[i].shape[:2], 4)  # B, G, R and a padding byte
            assert np.array_equal(part[y0:y1, x0:x1, :3], frames[i][y0:y1, x0:x1])
        # A whole frame read after a part is whole again (the buffer held only the band).
        assert np.array_equal(reader.read(2), frames[2])
        with pytest.raises(ValueError, match="not inside"):
            reader.read_part(0, 10, 10, 70, 20)
        assert reader.read_part(6, 0, 0, 5, 5) is None


def test_parts_of_bgra_and_dropped_frames(tmp_path: Path) -> None:
    frames = _frames(5, (40, 30), seed=5)
    path = tmp_path / "odml.avi"
    _opendml(path, [[frames[0], frames[1], None, frames[3], frames[4]]])
    with RawAviReader(path, read_layout(path)) as reader:
        for i in range(5):
            part = reader.read_part(i, 3, 4, 25, 21)
            assert np.array_equal(part[4:21, 3:25, :3], frames[1 if i == 2 else i][4:21, 3:25])


def test_a_file_cut_short_reads_up_to_its_last_whole_frame(tmp_path: Path) -> None:
    frames = _frames(10, (64, 48), seed=3)
    path = _write(tmp_path / "cut.avi", frames)
    data = path.read_bytes()
    frame_bytes = 64 * 3 * 48
    # Cut inside frame 7's bytes: the index at the end and frames 7-9 are gone.
    cut = data.find(b"00db", data.find(b"movi")) + 8 + 7 * (frame_bytes + 8) + 1000
    path.write_bytes(data[:cut])
    layout = read_layout(path)
    assert layout.n_frames == 8  # frame 7's header is there, its bytes are not all there
    got = list(iter_frames(path, 0, 10))
    assert [i for i, _ in got] == list(range(7))
    assert all(np.array_equal(f, frames[i]) for i, f in got)
    with RawAviReader(path, layout) as reader:
        # Frame 7's bottom 5 rows are in the file (stored first); a part of them is not read
        # either: a frame is there whole or not at all, whichever way it is read.
        assert reader.read_part(6, 0, 45, 64, 48) is not None
        assert reader.read_part(7, 0, 45, 64, 48) is None


def test_other_files_are_left_to_opencv_and_broken_rates_are_refused(
    tmp_path: Path, face_videos: list[Path]
) -> None:
    assert read_layout(face_videos[0]) is None  # MJPG: OpenCV decodes it
    not_avi = tmp_path / "x.avi"
    not_avi.write_bytes(b"RIFF\x04\0\0\0WAVE")
    assert read_layout(not_avi) is None
    path = _write(tmp_path / "zero_rate.avi", _frames(3))
    data = bytearray(path.read_bytes())
    strh = data.find(b"strh") + 8
    struct.pack_into("<I", data, strh + 24, 0)  # dwRate = 0
    path.write_bytes(bytes(data))
    with pytest.raises(VideoError, match="cannot be placed in time"):
        probe(path)
