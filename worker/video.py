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
_JPEG_REDUCED = {
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


def jpeg_scale(codec: str, width: int, min_width: int | None) -> int:
    """The divisor at which iter_frames decodes a video: the largest of JPEG_SCALES that keeps
    frames at least `min_width` pixels wide, for MJPEG only (other codecs cannot decode at a
    reduced size); 1 when min_width is None."""
    if min_width is None or codec.strip().upper() not in _JPEG_CODECS:
        return 1
    return next((k for k in JPEG_SCALES if width // k >= min_width), 1)


def decodes_reduced(path: Path) -> bool:
    """Whether iter_frames can decode this video at a reduced size (its min_width): MJPEG read
    through OpenCV can; uncompressed AVI (read by worker.avi) and other codecs come whole."""
    if raw_layout(path) is not None:
        return False
    cap = open_capture(path)
    try:
        return _fourcc(cap).strip().upper() in _JPEG_CODECS
    finally:
        cap.release()


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
        scale = jpeg_scale(_fourcc(cap), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), min_width)
        if start > 0:
            cap.set(cv2.CAP_PROP_POS_FRAMES, start)
            pos = int(cap.get(cv2.CAP_PROP_POS_FRAMES))
            if pos != start:
                # Seeking was not frame-exact for this codec: decode forward from the start.
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                for _ in range(start):
                    if not cap.grab():
                        return
        # The compressed packets themselves (each a whole JPEG), decoded here at 1/scale.
        if scale > 1 and not cap.set(cv2.CAP_PROP_FORMAT, -1):
            scale = 1
        for index in range(start, stop):
            ok, frame = cap.read()
            if not ok or frame is None:
                return
            if scale > 1:
                packet = frame
                frame = cv2.imdecode(packet.reshape(-1), _JPEG_REDUCED[scale])
                if frame is None:
                    return  # a packet that is not a JPEG: the stream ends here, as on a bad read
            yield index, frame
    finally:
        cap.release()
