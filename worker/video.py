"""Open, probe and decode video files with OpenCV, turning every failure into a readable reason."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from worker.avi import AviError, RawAviReader, RawLayout, read_layout, video_rate

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".m4v")


class VideoError(Exception):
    """A video cannot be used; str(error) is a one-line reason for the user."""


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    n_frames: int
    width: int
    height: int
    codec: str

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.fps


def _fourcc(cap: cv2.VideoCapture) -> str:
    code = int(cap.get(cv2.CAP_PROP_FOURCC))
    text = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4))
    return text if text.isprintable() and text.strip() else "unknown"


def _size(cap: cv2.VideoCapture) -> tuple[int, int]:
    return int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)


def unreadable_reason(path: Path, exc: OSError) -> str:
    """A one-line reason why `path` could not be read."""
    if path.is_symlink() and not path.exists():
        return f"broken symbolic link (target {os.readlink(path)!s} does not exist)"
    if path.is_dir():
        return "is a directory, not a video file"
    return f"cannot read file: {exc.strerror or exc}"


def _check_readable(path: Path) -> None:
    # OpenCV reports every problem as "could not open"; find the real cause first.
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise VideoError(unreadable_reason(path, exc)) from None
    if not head:
        raise VideoError("empty file (0 bytes)")


def open_capture(path: Path) -> cv2.VideoCapture:
    _check_readable(path)
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        raise VideoError("not a video that OpenCV/FFmpeg can open (corrupt or not a video file)")
    return cap


def raw_layout(path: Path) -> RawLayout | None:
    """The frame layout of an uncompressed AVI (read by worker.avi, not by OpenCV), or None for
    any other video; VideoError for an uncompressed AVI with broken headers."""
    _check_readable(path)
    try:
        return read_layout(path)
    except AviError as exc:
        raise VideoError(str(exc)) from None
    except OSError as exc:
        raise VideoError(unreadable_reason(path, exc)) from None


def _probe_raw(path: Path, layout: RawLayout) -> VideoInfo:
    if not 0 < layout.fps <= 1000:  # a zero rate or scale gives 0
        raise VideoError(
            f"video header gives a rate of {layout.rate}/{layout.scale} fps; frames cannot be "
            "placed in time"
        )
    with RawAviReader(path, layout) as reader:
        if reader.read(0) is None:
            raise VideoError(
                f"no decodable frames (uncompressed AVI with {layout.n_frames} indexed frames; "
                "empty or truncated)"
            )
    return VideoInfo(
        fps=layout.fps,
        n_frames=layout.n_frames,
        width=layout.width,
        height=layout.height,
        codec=layout.codec,
    )


def probe(path: Path) -> VideoInfo:
    """Read the header and the first frame; raise VideoError when the video is unusable."""
    layout = raw_layout(path)
    if layout is not None:
        return _probe_raw(path, layout)
    cap = open_capture(path)
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        n_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        codec = _fourcc(cap)
        ok, frame = cap.read()
        if not ok or frame is None:
            raise VideoError(
                f"no decodable frames (header says {n_frames} frames; zero-frame or corrupt video)"
            )
        rate = video_rate(path)
        if rate is not None and (rate[0] == 0 or rate[1] == 0):
            fps = 0.0
        if not np.isfinite(fps) or fps <= 0 or fps > 1000:
            raise VideoError(f"video header gives {fps:g} fps; frames cannot be placed in time")
        if n_frames <= 0:
            # Some containers carry no frame count: count by grabbing (no decode cost).
            n_frames = 1
            while cap.grab():
                n_frames += 1
        height, width = frame.shape[:2]
        return VideoInfo(fps=fps, n_frames=n_frames, width=width, height=height, codec=codec)
    finally:
        cap.release()


# JPEG decoders can scale by 1/2, 1/4 or 1/8 while decoding (they drop high DCT frequencies
# instead of computing them and filtering them away): cheaper than decoding and resizing.
JPEG_SCALES = (8, 4, 2)
_JPEG_CODECS = ("MJPG", "MJPEG", "JPEG", "AVRN")  # FourCCs whose every frame is one JPEG
_JPEG_FLAGS = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


try:  # the optional C extension (setup.py): decodes a JPEG's part only, with libjpeg-turbo
    from worker._jpegpart import decode_part as _decode_part
except ImportError:  # not built (no compiler or no libjpeg headers): whole frames only
    _decode_part = None

PART_DECODING = _decode_part is not None


def _scaled_shape(size: tuple[int, int], scale: int, channels: int = 3) -> tuple[int, int, int]:
    """The (height, width, channels) of a (width, height) frame decoded at 1/scale: libjpeg
    rounds each side up."""
    width, height = size
    return -(-height // scale), -(-width // scale), channels


def decode_jpeg(
    packet: np.ndarray,
    scale: int,
    size: tuple[int, int],
    part: tuple[int, int, int, int] | None = None,
    channels: int = 3,
) -> np.ndarray | None:
    """One JPEG (a 1-D uint8 array) decoded at 1/scale, BGR (or BGRA with channels=4, alpha
    255), or None when it cannot be.
    size: the video's (width, height). With worker._jpegpart, into a new array of the scaled
    size: cv2.imdecode decodes the same pixels with the same library but takes fresh memory
    for its work on every call (418 page faults for a 640x480 frame against 1), which in
    this project's virtual machines made it the slowest of three ways (a 640x480 frame of the
    demo archive, median of 6 passes over 300: imdecode 2.1-2.6 ms, FFmpeg's decoder
    1.3-1.6, worker._jpegpart 1.2-1.3). part: (x0, y0, x1, y1) in the scaled frame's pixels:
    only rows [y0, y1), at least over columns [x0, x1), are decoded and set, the rest of the
    array is left unset (libjpeg skips the rows above and the columns beside, and stops after
    the last row). The whole frame by cv2.imdecode where the extension is not built or cannot
    decode the JPEG at `size`."""
    if _decode_part is not None:
        frame = np.empty(_scaled_shape(size, scale, channels), np.uint8)
        x0, y0, x1, y1 = part or (0, 0, frame.shape[1], frame.shape[0])
        try:
            _decode_part(packet, scale, x0, y0, x1, y1, frame)
            return frame
        except ValueError:
            pass
    frame = cv2.imdecode(packet, _JPEG_FLAGS[scale])
    return _with_channels(frame, channels)


def _with_channels(frame: np.ndarray | None, channels: int) -> np.ndarray | None:
    """A BGR frame as BGRA (alpha 255) when channels is 4, else as it is."""
    if frame is None or channels == 3:
        return frame
    return cv2.cvtColor(frame, cv2.COLOR_BGR2BGRA)


def _is_jpeg_codec(codec: str) -> bool:
    return codec.strip().upper() in _JPEG_CODECS


def jpeg_scale(codec: str, width: int, min_width: int | None) -> int:
    """The divisor at which iter_frames decodes a video: the largest of JPEG_SCALES that keeps
    frames at least `min_width` pixels wide, for MJPEG only (other codecs cannot decode at a
    reduced size); 1 when min_width is None."""
    if min_width is None or not _is_jpeg_codec(codec):
        return 1
    return next((k for k in JPEG_SCALES if width // k >= min_width), 1)


def decodes_reduced(path: Path) -> bool:
    """Whether iter_frames can decode this video at a reduced size (its min_width): MJPEG read
    through OpenCV can; uncompressed AVI (read by worker.avi) and other codecs come whole."""
    if raw_layout(path) is not None:
        return False
    cap = open_capture(path)
    try:
        return _is_jpeg_codec(_fourcc(cap))
    finally:
        cap.release()


def _seek(cap: cv2.VideoCapture, start: int) -> bool:
    """Put `cap` at frame `start`; False when the video ends before it."""
    if start <= 0:
        return True
    cap.set(cv2.CAP_PROP_POS_FRAMES, start)
    if int(cap.get(cv2.CAP_PROP_POS_FRAMES)) == start:
        return True
    # Seeking was not frame-exact for this codec: decode forward from the start.
    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
    return all(cap.grab() for _ in range(start))


def _decoded(path: Path, start: int, stop: int, scale: int) -> Iterator[tuple[int, np.ndarray]]:
    """Frames [start, stop) decoded by FFmpeg, area-resized to 1/scale when scale > 1."""
    cap = open_capture(path)
    try:
        if not _seek(cap, start):
            return
        for index in range(start, stop):
            ok, frame = cap.read()
            if not ok or frame is None:
                return
            if scale > 1:  # to the size libjpeg's scaling gives
                height, width, _ = _scaled_shape((frame.shape[1], frame.shape[0]), scale)
                frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
            yield index, frame
    finally:
        cap.release()


class MjpegPackets:
    """An MJPEG video's frames [start, stop) as their compressed packets (each a whole JPEG,
    read without decoding), to be decoded by the caller, whole or only a part (`decode`), at
    1/scale (jpeg_scale of min_width). `open` returns None for a video
    that is not MJPEG, whose packets OpenCV cannot hand out, whose first packet libjpeg cannot
    decode, or when the part decoder was not built: such a video is read by iter_frames."""

    def __init__(
        self,
        path: Path,
        cap: cv2.VideoCapture,
        scale: int,
        start: int,
        stop: int,
        first: np.ndarray,
        size: tuple[int, int],
    ) -> None:
        self.path = path
        self.scale = scale
        self.size = size  # the video's (width, height)
        self.shape = _scaled_shape(size, scale)  # of a decoded frame
        self._cap = cap
        self._start = start
        self._stop = stop
        self._first = first  # frame `start`'s packet, read by open

    @classmethod
    def open(cls, path: Path, start: int, stop: int, min_width: int | None) -> MjpegPackets | None:
        if _decode_part is None or raw_layout(path) is not None:
            return None
        cap = open_capture(path)
        codec, size = _fourcc(cap), _size(cap)
        scale = jpeg_scale(codec, size[0], min_width)
        if not (_is_jpeg_codec(codec) and _seek(cap, start)):
            cap.release()
            return None
        ok = cap.set(cv2.CAP_PROP_FORMAT, -1)
        got, first = cap.read() if ok else (False, None)
        if not got or first is None or decode_jpeg(first.reshape(-1), 8, size) is None:
            cap.release()
            return None
        return cls(path, cap, scale, start, stop, first.reshape(-1), size)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        """(index, packet): packet a 1-D uint8 array, the frame's JPEG."""
        try:
            if self._start < self._stop:
                yield self._start, self._first
            for index in range(self._start + 1, self._stop):
                ok, packet = self._cap.read()
                if not ok or packet is None:
                    return
                yield index, packet.reshape(-1)
        finally:
            self._cap.release()

    def decode(
        self, index: int, packet: np.ndarray, part: tuple[int, int, int, int] | None = None
    ) -> np.ndarray | None:
        """The frame at 1/scale as iter_frames gives it: whole, BGR, or, with `part`
        ((x0, y0, x1, y1) in the decoded frame's pixels), only that part set (decode_jpeg),
        BGRA: the face crop's warp (worker.crops.face_crop) runs about twice as fast on 4
        channels as on 3 and gives the same pixels. The whole frame from FFmpeg's decoder
        where libjpeg rejects the packet; None where neither can decode it."""
        channels = 3 if part is None else 4
        frame = decode_jpeg(packet, self.scale, self.size, part, channels)
        if frame is None:
            frame = next((f for _, f in _decoded(self.path, index, index + 1, self.scale)), None)
            frame = _with_channels(frame, channels)
        return frame


def iter_frames(
    path: Path, start: int, stop: int, min_width: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (frame_index, frame) for frame indices in [start, stop).

    frame: uint8 array (H, W, 3), BGR as OpenCV decodes it (callers convert what they need,
    so that no full-frame colour conversion is paid for frames that are only averaged).
    min_width: when given, MJPEG frames are decoded straight to a reduced size (jpeg_scale) no
    narrower than this; callers then work in those frames' pixels. Other codecs, and MJPEG
    without it, come at full size.
    Stops early, without error, where the file ends before `stop` (truncated video).
    Uncompressed AVI is read straight from the file (worker.avi), at full size.
    """
    layout = raw_layout(path)
    if layout is not None:
        with RawAviReader(path, layout) as reader:
            for index in range(start, min(stop, layout.n_frames)):
                frame = reader.read(index)
                if frame is None:
                    return
                yield index, frame
        return
    cap = open_capture(path)
    try:
        codec = _fourcc(cap)
        size = _size(cap)
        scale = jpeg_scale(codec, size[0], min_width)
        if not _seek(cap, start):
            return
        # MJPEG: the compressed packets themselves (each a whole JPEG), decoded here at
        # 1/scale (decode_jpeg); at full size without worker._jpegpart, FFmpeg's decoder,
        # cheaper here than cv2.imdecode (decode_jpeg).
        packets = (
            _is_jpeg_codec(codec)
            and (scale > 1 or _decode_part is not None)
            and cap.set(cv2.CAP_PROP_FORMAT, -1)
        )
        if not packets and scale > 1:
            cap.release()
            yield from _decoded(path, start, stop, scale)  # FFmpeg, then resized
            return
        for index in range(start, stop):
            ok, frame = cap.read()
            if not ok or frame is None:
                return
            if packets:
                image = decode_jpeg(frame.reshape(-1), scale, size)
                if image is None:
                    # A packet libjpeg cannot read (a JPEG variant it lacks): FFmpeg's own
                    # decoder takes over from this frame on.
                    cap.release()
                    yield from _decoded(path, index, stop, scale)
                    return
                frame = image
            yield index, frame
    finally:
        cap.release()
