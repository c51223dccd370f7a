"""Uncompressed AVI: frames read straight from the file, without a decoder, and written.

Archives like NBHR keep raw frames (640 x 480 x 3 bytes, 0.9 MB a frame): a frame is a byte
range of the file, so reading it is one read into memory. This module reads such files itself
instead of through OpenCV's FFmpeg backend, for two reasons measured here:
- the most common raw AVI, bottom-up 24-bit BGR as Windows capture software writes it, makes
  opencv-python-headless 5.0.0 corrupt its heap and abort on the first frame read
  (`malloc_consolidate(): invalid chunk size`; opencv/opencv#4609, open since 2013), which would
  take a worker process down with every segment of such a video;
- FFmpeg's path converts each frame (sws_scale) even where there is nothing to convert.

Supported: BI_RGB (uncompressed) video with 24 or 32 bits a pixel, bottom-up or top-down rows,
AVI 1.0 (`idx1` index) and OpenDML AVI 2.0 (`indx` super index, for files over 1 GB), or no
index at all (the `movi` lists are scanned, so a file cut short by a crash still reads up to
its last whole frame). Any other codec is left to OpenCV (read_layout returns None).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

# RIFF chunk sizes are 32 bits: an AVI 1.0 file written by RawAviWriter stays below this.
RAW_AVI_LIMIT = 2**32 - 1
_AVIIF_KEYFRAME = 0x10
_AVIF_HASINDEX = 0x10


class AviError(Exception):
    """A file that says it is an uncompressed AVI but cannot be read as one."""


@dataclass(frozen=True)
class RawLayout:
    """Where the frames of an uncompressed AVI's first video stream lie, and their shape.

    offsets, sizes: int64 (n,): file offset and length of each frame's bytes (length 0: a
        dropped frame, which repeats the one before it, as players show it).
    stride: bytes per stored row (rows are padded to a multiple of 4 bytes).
    """

    width: int
    height: int
    bits: int
    bottom_up: bool
    rate: int
    scale: int
    stride: int
    offsets: np.ndarray
    sizes: np.ndarray

    @property
    def fps(self) -> float:
        return self.rate / self.scale if self.scale else 0.0

    @property
    def n_frames(self) -> int:
        return len(self.offsets)

    @property
    def frame_bytes(self) -> int:
        return self.stride * self.height

    @property
    def codec(self) -> str:
        return f"RGB{self.bits}"


def _chunks(fh: BinaryIO, start: int, end: int):
    """(fourcc, list type or b'', data offset, data size) of each chunk in [start, end); stops
    at a header that runs past `end` (a truncated file)."""
    at = start
    while at + 8 <= end:
        fh.seek(at)
        head = fh.read(12)
        if len(head) < 8:
            return
        tag, size = head[:4], struct.unpack_from("<I", head, 4)[0]
        kind = head[8:12] if tag in (b"RIFF", b"LIST") and len(head) == 12 else b""
        yield tag, kind, at + 8, size
        at += 8 + size + (size & 1)


@dataclass
class _Stream:
    number: int
    strh: bytes
    strf: bytes
    indx: bytes | None


def _video_stream(fh: BinaryIO, hdrl_at: int, hdrl_size: int) -> _Stream | None:
    number = 0
    for tag, kind, at, size in _chunks(fh, hdrl_at + 4, hdrl_at + hdrl_size):
        if (tag, kind) != (b"LIST", b"strl"):
            continue
        parts: dict[bytes, bytes] = {}
        for t, _, a, s in _chunks(fh, at + 4, at + size):
            if t in (b"strh", b"strf", b"indx"):
                fh.seek(a)
                parts[t] = fh.read(s)
        strh = parts.get(b"strh", b"")
        if strh[:4] == b"vids" and len(strh) >= 28 and len(parts.get(b"strf", b"")) >= 40:
            return _Stream(number, strh, parts[b"strf"], parts.get(b"indx"))
        number += 1
    return None


@dataclass
class _Headers:
    stream: _Stream
    movi: list[tuple[int, int]]  # (data offset, size) of each 'movi' list
    idx1: tuple[int, int] | None  # (data offset, size) of the AVI 1.0 index, read when used
    file_size: int

    @property
    def rate(self) -> tuple[int, int]:
        """(dwRate, dwScale) of the video stream: frames per second = rate / scale."""
        scale, rate = struct.unpack_from("<II", self.stream.strh, 20)
        return rate, scale


def _headers(fh: BinaryIO) -> _Headers | None:
    """The first video stream's headers and where the frame data lies; None if not an AVI."""
    head = fh.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"AVI ":
        return None
    fh.seek(0, 2)
    file_size = fh.tell()
    stream, movi, idx1 = None, [], None
    # The first RIFF 'AVI ' holds the headers; OpenDML files continue in RIFF 'AVIX' parts.
    for tag, kind, at, size in _chunks(fh, 0, file_size):
        if tag != b"RIFF" or kind not in (b"AVI ", b"AVIX"):
            break
        for t, k, a, s in _chunks(fh, at + 4, min(file_size, at + size)):
            if (t, k) == (b"LIST", b"hdrl") and stream is None:
                stream = _video_stream(fh, a, s)
                if stream is None:
                    return None
            elif (t, k) == (b"LIST", b"movi"):
                movi.append((a, s))
            elif t == b"idx1" and idx1 is None:
                idx1 = (a, s)
    return None if stream is None else _Headers(stream, movi, idx1, file_size)


def video_rate(path: Path) -> tuple[int, int] | None:
    """(dwRate, dwScale) of an AVI's first video stream header, or None when `path` is not an
    AVI with one. FFmpeg replaces a zero rate with a guess of 25 fps, which would silently
    misplace every frame in time; reading the header lets such files fail with a clear reason."""
    with open(path, "rb") as fh:
        h = _headers(fh)
    return None if h is None else h.rate


INDEX_SOURCES = ("auto", "indx", "idx1", "scan")


def frame_index(path: Path, source: str = "auto") -> tuple[np.ndarray, np.ndarray] | None:
    """File offsets and sizes (int64 (n,) each) of the frames of an AVI's first video stream,
    from its OpenDML super index ("indx"), its AVI 1.0 index ("idx1") or by walking its
    'movi' lists ("scan"); "auto" takes the first of these the file has. None when `path` is
    not an AVI with a video stream, or lacks the index asked for."""
    if source not in INDEX_SOURCES:
        raise ValueError(f"source must be one of {INDEX_SOURCES}, got {source!r}")
    with open(path, "rb") as fh:
        h = _headers(fh)
        if h is None:
            return None
        return _frame_index(fh, h, source)


def _frame_index(fh: BinaryIO, h: _Headers, source: str) -> tuple[np.ndarray, np.ndarray] | None:
    ids = {f"{h.stream.number:02d}db".encode(), f"{h.stream.number:02d}dc".encode()}
    table = None
    if source in ("auto", "indx"):
        table = _super_index(fh, h.stream.indx)
    if table is None and source in ("auto", "idx1") and h.idx1 is not None and h.movi:
        fh.seek(h.idx1[0])
        table = _idx1_table(fh, fh.read(h.idx1[1]), ids, h.movi[0][0])
    if table is None and source in ("auto", "scan"):
        table = _scan_movi(fh, h.movi, ids, h.file_size)
    return table


def read_layout(path: Path) -> RawLayout | None:
    """The frame layout of an uncompressed AVI, or None when `path` is not one (another codec,
    or not an AVI). Raises AviError for an uncompressed AVI whose headers are broken."""
    with open(path, "rb") as fh:
        h = _headers(fh)
        if h is None:
            return None
        _, width, height, _, bits, compression = struct.unpack_from("<IiiHHI", h.stream.strf)
        if compression != 0 or bits not in (24, 32):
            return None  # compressed, palettised or 16-bit: OpenCV's decoders handle those
        if width <= 0 or height == 0:
            raise AviError(f"uncompressed AVI with a {width} x {height} frame size")
        rate, scale = h.rate
        table = _frame_index(fh, h, "auto")
        assert table is not None  # a scan always gives a table, if an empty one
        offsets, sizes = table
        return RawLayout(
            width=width,
            height=abs(height),
            bits=bits,
            bottom_up=height > 0,
            rate=rate,
            scale=scale,
            stride=(width * bits // 8 + 3) & ~3,
            offsets=offsets,
            sizes=sizes,
        )


def _super_index(fh: BinaryIO, indx: bytes | None) -> tuple[np.ndarray, np.ndarray] | None:
    """Frame offsets and sizes from an OpenDML super index and the standard indexes it points
    to (their offsets are relative to a base and point at the frame bytes themselves)."""
    if indx is None or len(indx) < 24:
        return None
    longs, _, index_type, n = struct.unpack_from("<HBBI", indx)
    if index_type != 0 or longs != 4 or n == 0:  # 0: AVI_INDEX_OF_INDEXES
        return None
    offsets, sizes = [], []
    for i in range(n):
        if 24 + 16 * (i + 1) > len(indx):
            return None
        ix_at, _, _ = struct.unpack_from("<QII", indx, 24 + 16 * i)
        fh.seek(ix_at)
        head = fh.read(32)
        if len(head) < 32:
            break  # an index past the end of a truncated file: keep what came before
        longs, _, kind, count, _, base = struct.unpack_from("<HBBI4sQ", head, 8)
        if kind != 1 or longs != 2:  # 1: AVI_INDEX_OF_CHUNKS, (offset, size) pairs
            return None
        entries = np.frombuffer(fh.read(8 * count), "<u4")
        if len(entries) < 2 * count:
            break
        offsets.append(base + entries[0::2].astype(np.int64))
        sizes.append((entries[1::2] & 0x7FFFFFFF).astype(np.int64))  # bit 31: not a key frame
    if not offsets:
        return None
    return np.concatenate(offsets), np.concatenate(sizes)


def _idx1_table(
    fh: BinaryIO, idx1: bytes, ids: set[bytes], movi_at: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Frame offsets and sizes from an AVI 1.0 index, whose offsets point at chunk headers,
    relative to the 'movi' list's type field or (some writers) to the file's start."""
    n = len(idx1) // 16
    entries = np.frombuffer(
        idx1[: 16 * n], dtype=[("id", "S4"), ("flags", "<u4"), ("offset", "<u4"), ("size", "<u4")]
    )
    video = entries[np.isin(entries["id"], list(ids))]
    if len(video) == 0:
        return None
    first = int(video["offset"][0])
    fh.seek(movi_at + first)
    base = movi_at if fh.read(4) == video["id"][0] else 0
    return base + video["offset"].astype(np.int64) + 8, video["size"].astype(np.int64)


def _scan_movi(
    fh: BinaryIO, movi: list[tuple[int, int]], ids: set[bytes], file_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Frame offsets and sizes found by walking the 'movi' lists chunk by chunk."""
    offsets, sizes = [], []

    def walk(start: int, end: int) -> None:
        for tag, kind, at, size in _chunks(fh, start, end):
            if (tag, kind) == (b"LIST", b"rec "):
                walk(at + 4, min(end, at + size))
            elif tag in ids:
                offsets.append(at)
                sizes.append(size)

    for at, size in movi:
        walk(at + 4, min(file_size, at + size))
    return np.asarray(offsets, np.int64), np.asarray(sizes, np.int64)


class RawAviReader:
    """Frames of an uncompressed AVI by index, as uint8 (H, W, 3) BGR, top row first."""

    def __init__(self, path: Path, layout: RawLayout) -> None:
        self.layout = layout
        self._fh = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        self._size = os.fstat(self._fh.fileno()).st_size
        self._buf = np.empty(layout.frame_bytes, np.uint8)
        self._last: int | None = None  # the frame now in _buf, for dropped (empty) frames

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> RawAviReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stored(self, index: int) -> int | None:
        """The stored frame that frame `index` shows (a dropped frame shows the last stored one
        before it, as a player does); None past the end or where the file is cut short (also
        where only a frame's first rows are there: a part of it is not read either)."""
        lay = self.layout
        if not 0 <= index < lay.n_frames:
            return None
        k = index
        while k >= 0 and lay.sizes[k] == 0:
            k -= 1
        if k < 0 or lay.sizes[k] < lay.frame_bytes:
            return None
        if lay.offsets[k] + lay.frame_bytes > self._size:
            return None
        return k

    def _pixels(self, rows: np.ndarray) -> np.ndarray:
        """Stored rows (n, stride) as (n, width, bytes per pixel) without their padding."""
        lay = self.layout
        return rows[:, : lay.width * lay.bits // 8].reshape(len(rows), lay.width, lay.bits // 8)

    def read(self, index: int) -> np.ndarray | None:
        """Frame `index` as a new contiguous array; None past the end or where the file is cut
        short. The bytes are read into one reused buffer, then copied out once, flipping a
        bottom-up file's rows on the way (a reversed view instead costs more downstream:
        OpenCV copies a view with a negative stride whole for every call that reads it)."""
        lay = self.layout
        k = self._stored(index)
        if k is None:
            return None
        if k != self._last:
            self._last = None
            self._fh.seek(int(lay.offsets[k]))
            if self._fh.readinto(memoryview(self._buf)) != lay.frame_bytes:
                return None
            self._last = k
        image = self._pixels(self._buf.reshape(lay.height, lay.stride))
        if lay.bits == 32:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)  # a new array
            return cv2.flip(image, 0) if lay.bottom_up else image
        return cv2.flip(image, 0) if lay.bottom_up else image.copy()

    def read_part(self, index: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray | None:
        """Frame `index` as a new full-size 4-channel array, B, G, R and a fourth byte
        nothing reads (OpenCV's warp, worker.crops.face_crop, runs about twice as fast on 4
        channels as on 3), of which only columns [x0, x1) of rows [y0, y1) are read from the
        file and set; the rest is left unset. Only the stored rows of that band are read (a
        frame's rows lie one after another in the file, bottom row first in a bottom-up file)
        and only the part is flipped. The part keeps its place in the frame, so whatever
        samples it (worker.crops.face_crop) computes exactly what it computes on the whole
        frame: a part cut out and moved to the origin, its box shifted with it, gave OpenCV's
        warp crops 1 level apart on a third of 5,000 random boxes."""
        lay = self.layout
        k = self._stored(index)
        if k is None:
            return None
        if not (0 <= x0 < x1 <= lay.width and 0 <= y0 < y1 <= lay.height):
            raise ValueError(f"part {x0},{y0}-{x1},{y1} is not inside {lay.width}x{lay.height}")
        first = lay.height - y1 if lay.bottom_up else y0  # the band's first stored row
        n = (y1 - y0) * lay.stride
        self._last = None  # the buffer no longer holds one whole frame
        self._fh.seek(int(lay.offsets[k]) + first * lay.stride)
        if self._fh.readinto(memoryview(self._buf[:n])) != n:
            return None
        part = self._pixels(self._buf[:n].reshape(y1 - y0, lay.stride))[:, x0:x1]
        frame = np.empty((lay.height, lay.width, 4), np.uint8)
        target = frame[y0:y1, x0:x1]
        if lay.bits == 24:
            if not lay.bottom_up:
                cv2.cvtColor(part, cv2.COLOR_BGR2BGRA, dst=target)
                return frame
            part = cv2.cvtColor(part, cv2.COLOR_BGR2BGRA)
        if lay.bottom_up:
            cv2.flip(part, 0, dst=target)
        else:
            target[...] = part
        return frame


class RawAviWriter:
    """Write an uncompressed AVI 1.0 (24-bit BGR; bottom-up rows by default, the layout Windows
    capture software writes) with an idx1 index; up to 4 GiB (RIFF's 32-bit sizes)."""

    def __init__(
        self, path: Path, fps: float, size: tuple[int, int], bottom_up: bool = True
    ) -> None:
        self.width, self.height = size
        self.bottom_up = bottom_up
        if self.width <= 0 or self.height <= 0 or fps <= 0:
            raise ValueError(f"need a positive size and fps, got {size} at {fps}")
        self.stride = (self.width * 3 + 3) & ~3
        self.frame_bytes = self.stride * self.height
        rate = Fraction(fps).limit_denominator(10_000)
        self._fh = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._index: list[bytes] = []
        avih = struct.pack(
            "<10I16x",
            round(1e6 / fps),
            int(self.frame_bytes * fps),
            0,
            _AVIF_HASINDEX,
            0,  # total frames: patched on close
            0,
            1,
            self.frame_bytes,
            self.width,
            self.height,
        )
        strh = (
            b"vids"
            + b"DIB "
            + struct.pack(
                "<IHHIIIIIIiI4h",
                0,
                0,
                0,
                0,
                rate.denominator,
                rate.numerator,
                0,
                0,  # length in frames: patched on close
                self.frame_bytes,
                -1,
                0,
                0,
                0,
                self.width,
                self.height,
            )
        )
        # A negative height marks top-down rows.
        rows_sign = 1 if bottom_up else -1
        strf = struct.pack(
            "<IiiHHIIiiII",
            40,
            self.width,
            rows_sign * self.height,
            1,
            24,
            0,
            self.frame_bytes,
            0,
            0,
            0,
            0,
        )
        strl = b"strl" + _chunk(b"strh", strh) + _chunk(b"strf", strf)
        hdrl = b"hdrl" + _chunk(b"avih", avih) + _chunk(b"LIST", strl)
        self._fh.write(b"RIFF\0\0\0\0AVI " + _chunk(b"LIST", hdrl))
        # Patch points: avih dwTotalFrames and strh dwLength.
        self._total_at = 12 + 12 + 8 + 16
        self._length_at = 12 + 12 + 8 + len(avih) + 12 + 8 + 32
        self._movi_at = self._fh.tell()
        self._fh.write(b"LIST\0\0\0\0movi")

    def write(self, frame_bgr: np.ndarray) -> None:
        if frame_bgr.shape != (self.height, self.width, 3) or frame_bgr.dtype != np.uint8:
            raise ValueError(
                f"frame must be uint8 ({self.height}, {self.width}, 3), got "
                f"{frame_bgr.dtype} {frame_bgr.shape}"
            )
        at = self._fh.tell()
        if at + 8 + self.frame_bytes + 16 * (len(self._index) + 1) + 8 > RAW_AVI_LIMIT:
            raise AviError("an uncompressed AVI 1.0 file cannot exceed 4 GiB; write shorter files")
        rows = cv2.flip(frame_bgr, 0) if self.bottom_up else np.ascontiguousarray(frame_bgr)
        rows = rows.reshape(self.height, self.width * 3)
        if self.stride != self.width * 3:
            rows = np.pad(rows, ((0, 0), (0, self.stride - self.width * 3)))
        self._fh.write(b"00db" + struct.pack("<I", self.frame_bytes))
        self._fh.write(np.ascontiguousarray(rows).data)
        self._index.append(
            struct.pack(
                "<4sIII", b"00db", _AVIIF_KEYFRAME, at - self._movi_at - 8, self.frame_bytes
            )
        )

    def close(self) -> None:
        fh = self._fh
        if fh.closed:
            return
        end = fh.tell()
        fh.write(_chunk(b"idx1", b"".join(self._index)))
        total = fh.tell()
        n = struct.pack("<I", len(self._index))
        for at, data in (
            (4, struct.pack("<I", total - 8)),
            (self._movi_at + 4, struct.pack("<I", end - self._movi_at - 8)),
            (self._total_at, n),
            (self._length_at, n),
        ):
            fh.seek(at)
            fh.write(data)
        fh.close()

    release = close  # cv2.VideoWriter's name for it, so either writer can be used alike

    def __enter__(self) -> RawAviWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _chunk(tag: bytes, data: bytes) -> bytes:
    return tag + struct.pack("<I", len(data)) + data + (b"\0" if len(data) & 1 else b"")
