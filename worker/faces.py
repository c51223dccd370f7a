"""Face detection and tracking: where the skin is in each frame.

The detector is dlib's HOG frontal face detector, which is compiled into the dlib-bin wheel
(no model file, nothing downloaded). It runs at about 2 Hz on a downscaled grey frame; boxes
between detections are interpolated, so the region of interest moves smoothly instead of
jumping twice a second (a 2 Hz jump would put an artefact at 120 bpm, inside the neonatal band).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

DETECT_WIDTH = 320
# A face found at the previous detection is looked for first in a square around it (the box
# widened by NEAR_MARGIN of its side on each side), cut from the same downscaled grey frame the
# whole-frame search uses, at a corner on its 8-px HOG cell grid, and first with the one HOG
# filter that found it there (_filters_apart). The square's edges change the HOG features of
# the cells beside them, so its box is close to the whole-frame search's, not the same: on the
# 354 detection frames of 6 face videos of the demo archive (the square cut around the last
# whole-frame box, all five filters), IoU 0.69-1.00 (mean 0.84), 5 px apart on average in the
# 320-px grey frame, the same box on 4. A run cut into segments, each starting with a
# whole-frame search, so places its boxes a little differently near each segment's start than
# one run through. On the demo archive's 640x480 frames: 2.6 instead of 5.0 ms a detection
# with all five filters (AMD machine; 2.4 instead of 6.8 on an Intel one), and 1.9 instead of
# 3.2 ms with the one filter against all five (Intel Xeon).
NEAR_MARGIN = 0.35
# The overlap (IoU) with the last box above which FaceTracker blends a new box into it, and
# above which the near search takes the box of the last face's filter alone.
NEAR_OVERLAP = 0.3
_HOG_CELL = 8
# Rotations (degrees) tried when the upright frame has no face: newborns lie at any angle.
RETRY_ANGLES = (-30.0, 30.0, -60.0, 60.0, -90.0, 90.0)


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in full-frame pixel coordinates (float, for smooth tracking)."""

    x: float
    y: float
    w: float
    h: float

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        return self.y + self.h / 2

    def iou(self, other: Box) -> float:
        ix = max(0.0, min(self.x + self.w, other.x + other.w) - max(self.x, other.x))
        iy = max(0.0, min(self.y + self.h, other.y + other.h) - max(self.y, other.y))
        inter = ix * iy
        union = self.w * self.h + other.w * other.h - inter
        return inter / union if union > 0 else 0.0

    def blend(self, other: Box, a: float) -> Box:
        """(1 - a) * self + a * other, coordinate-wise."""
        return Box(*(s + a * (o - s) for s, o in zip(self.astuple(), other.astuple(), strict=True)))

    def astuple(self) -> tuple[float, float, float, float]:
        return (self.x, self.y, self.w, self.h)

    @classmethod
    def parse(cls, text: str) -> Box:
        """Parse 'X,Y,W,H' (pixels); ValueError with a readable message otherwise."""
        parts = text.split(",")
        try:
            x, y, w, h = (float(p) for p in parts)
        except ValueError:
            raise ValueError(f"expected X,Y,W,H in pixels, got {text!r}") from None
        if w <= 0 or h <= 0 or x < 0 or y < 0:
            raise ValueError(f"box {text!r} needs X,Y >= 0 and W,H > 0")
        return cls(x, y, w, h)


def _dlib_int(data: bytes, at: int) -> tuple[int, int]:
    """An integer as dlib serialises it, at data[at]: a control byte (its low 4 bits the number
    of bytes that follow, its high bit the sign), then the magnitude, little-endian. Returns
    (value, the position after it); ValueError where the control byte cannot be one."""
    if at >= len(data):
        raise ValueError("the bytes end before the integer")
    control = data[at]
    size = control & 0x0F
    if size > 8 or at + 1 + size > len(data):
        raise ValueError("not a dlib integer")
    value = int.from_bytes(data[at + 1 : at + 1 + size], "little")
    return (-value if control & 0x80 else value), at + 1 + size


def _weights_at(data: bytes, at: int) -> list[tuple[int, int]]:
    """The (start, end) of each weight vector in a saved dlib object detector whose count of
    vectors is at data[at], when the vectors run from there exactly to the end of the file.
    dlib saves an object detector as a version, its scanner's settings and its overlap test,
    then that count and each vector: its rows and columns, negated, then each element as
    two integers (mantissa and exponent). ValueError where the bytes do not read so."""
    count, at = _dlib_int(data, at)
    if not 1 <= count <= 16:
        raise ValueError("not a count of filters")
    spans = []
    for _ in range(count):
        start = at
        rows, at = _dlib_int(data, at)
        cols, at = _dlib_int(data, at)
        if rows >= 0 or cols != -1:
            raise ValueError("not a column vector")
        for _ in range(-rows * 2):
            _, at = _dlib_int(data, at)
        spans.append((start, at))
    if at != len(data):
        raise ValueError("the vectors do not end the file")
    return spans


def _filters_apart(detector: Any) -> list[Any] | None:
    """Each HOG filter of a dlib object detector as a detector of its own, or None where its
    saved form is not the one _weights_at reads (another dlib). The frontal face detector has
    five (a frontal face, turned left, turned right, tilted either way) and runs all five in
    every search: searching near the last box with only the filter that found the face there
    costs 1.9 instead of 3.2 ms on the demo archive's frames (Intel Xeon)."""
    import dlib

    try:
        with tempfile.TemporaryDirectory() as tmp:
            whole = Path(tmp) / "detector.svm"
            detector.save(str(whole))
            data = whole.read_bytes()
            # The settings before the count vary in length (50 bytes in dlib 20.0): look for
            # it in the first few KB, not through the 155 KB of weights.
            for at in range(min(len(data), 4096)):
                try:
                    spans = _weights_at(data, at)
                except ValueError:
                    continue
                if len(spans) != detector.num_detectors:
                    return None
                filters = []
                for k, (start, end) in enumerate(spans):
                    one = Path(tmp) / f"filter{k}.svm"
                    one.write_bytes(data[:at] + b"\x01\x01" + data[start:end])  # a count of 1
                    filters.append(dlib.fhog_object_detector(str(one)))
                return filters
    except (OSError, RuntimeError):  # no temporary folder to write in, or dlib refused it
        return None
    return None


class FaceDetector:
    """dlib HOG frontal detector with retries on brightened and rotated frames."""

    def __init__(self) -> None:
        import dlib  # heavy import, deferred so that importing this module stays cheap

        self._detector = dlib.get_frontal_face_detector()
        self._filters = _filters_apart(self._detector)
        self._clahe = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(8, 8))
        self.last_angle = 0.0
        # Which of the detector's filters gave the last upright detection (None before one).
        self.last_filter: int | None = None

    def _detect_gray(
        self, gray: np.ndarray, upsample: int, detector: Any = None
    ) -> list[tuple[float, Box, int]]:
        """(score, box, filter) of each face `detector` (default: all five filters) finds."""
        if detector is None:
            detector = self._detector
        rects, scores, filters = detector.run(gray, upsample, 0.0)
        return [
            (float(s), Box(r.left(), r.top(), r.width(), r.height()), int(k))
            for r, s, k in zip(rects, scores, filters, strict=True)
        ]

    def _best(
        self, gray: np.ndarray, upsample: int, detector: Any = None, at: tuple[int, int] = (0, 0)
    ) -> tuple[float, Box, int] | None:
        """The most confident of _detect_gray's faces, its box moved by `at` (the corner of
        `gray` in a larger frame), or None."""
        found = self._detect_gray(gray, upsample, detector)
        if not found:
            return None
        score, box, k = max(found, key=lambda f: f[0])
        return score, Box(at[0] + box.x, at[1] + box.y, box.w, box.h), k

    def _rotated(self, gray: np.ndarray, angle: float, upsample: int) -> Box | None:
        h, w = gray.shape
        centre = (w / 2, h / 2)
        rot = cv2.getRotationMatrix2D(centre, angle, 1.0)
        turned = cv2.warpAffine(gray, rot, (w, h), borderMode=cv2.BORDER_REPLICATE)
        found = self._best(turned, upsample)
        if found is None:
            return None
        _, box, _ = found
        # Map the box centre back; keep the size (an upright box around a tilted face).
        inv = cv2.invertAffineTransform(rot)
        cx, cy = inv @ np.array([box.cx, box.cy, 1.0])
        side = max(box.w, box.h)
        return Box(cx - side / 2, cy - side / 2, side, side)

    def _detect_near(self, gray: np.ndarray, near: Box) -> Box | None:
        """The most confident upright face in the part of `gray` around `near` (both in the
        grey frame's pixels), or None. Looked for first with the filter that found the last
        face alone (_filters_apart), then with all of them: the box is the one all of them
        give whenever that filter still scores highest. The one filter's box is taken only
        where it overlaps `near` as the tracker's blending asks (NEAR_OVERLAP): anything else
        in the square is left to all five to judge."""
        h, w = gray.shape
        reach = max(near.w, near.h) * (0.5 + NEAR_MARGIN)
        x0 = max(0, int(near.cx - reach) // _HOG_CELL * _HOG_CELL)
        y0 = max(0, int(near.cy - reach) // _HOG_CELL * _HOG_CELL)
        x1, y1 = min(w, int(np.ceil(near.cx + reach))), min(h, int(np.ceil(near.cy + reach)))
        if x1 - x0 < 80 or y1 - y0 < 80:
            return None  # smaller than dlib's 80-px window: nothing to scan
        part = np.ascontiguousarray(gray[y0:y1, x0:x1])
        if self._filters is not None and self.last_filter is not None:
            found = self._best(part, 0, self._filters[self.last_filter], (x0, y0))
            if found is not None and found[1].iou(near) > NEAR_OVERLAP:
                return found[1]  # the same filter found the same face again
        found = self._best(part, 0, at=(x0, y0))
        if found is None:
            return None
        _, box, self.last_filter = found
        return box

    def detect(
        self, frame_bgr: np.ndarray, full: bool = True, near: Box | None = None
    ) -> Box | None:
        """Find the most confident face in a BGR frame, or None.

        full=False tries only the upright frame and the last angle that worked (cheap);
        full=True adds upsampling, contrast enhancement and rotations before giving up.
        near: where the face was at the last detection (a tracker's box): an upright face is
        looked for around it first (NEAR_MARGIN), then in the whole frame as above.
        """
        h, w = frame_bgr.shape[:2]
        scale = DETECT_WIDTH / w if w > DETECT_WIDTH else 1.0
        small = cv2.resize(frame_bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        if near is not None and self.last_angle == 0.0 and near.w > 0 and near.h > 0:
            box = self._detect_near(gray, Box(*(v * scale for v in near.astuple())))
            if box is not None:
                return Box(box.x / scale, box.y / scale, box.w / scale, box.h / scale)
        attempts: list[tuple[np.ndarray, float, int]] = [(gray, self.last_angle, 0)]
        if full:
            bright = self._clahe.apply(gray)
            attempts += [(gray, 0.0, 1), (bright, 0.0, 1)]
            attempts += [(bright, a, 0) for a in RETRY_ANGLES if a != self.last_angle]
        for image, angle, upsample in attempts:
            if angle == 0.0:
                found = self._best(image, upsample)
                box = None
                if found is not None:
                    _, box, self.last_filter = found
            else:
                box = self._rotated(image, angle, upsample)
            if box is not None:
                self.last_angle = angle
                return Box(box.x / scale, box.y / scale, box.w / scale, box.h / scale)
        return None


class FaceTracker:
    """Boxes for every frame from detections at about `detect_hz`.

    Feed frames in order with `push`; it returns frames whose box is settled, as
    (index, frame, box-or-None), delayed by one detection interval so that each box can be
    interpolated between the detections before and after it. Call `flush` at the end.
    A face missing for longer than `hold_s` yields None (no face), never the whole frame.
    """

    def __init__(
        self,
        detector: FaceDetector,
        fps: float,
        detect_hz: float = 2.0,
        hold_s: float = 1.0,
        smoothing: float = 0.5,
    ) -> None:
        self.detector = detector
        self.interval = max(1, round(fps / detect_hz))
        self.hold = max(1, math.ceil(hold_s * detect_hz))
        self.smoothing = smoothing
        self._pending: list[tuple[int, np.ndarray]] = []
        self._prev: Box | None = None  # smoothed box at the previous detection
        self._misses = 0
        self._full_misses = 0
        self._n = 0

    def _observe(self, frame: np.ndarray) -> Box | None:
        # After repeated failures of the full retry cascade (e.g. an empty cot), run it only
        # every fourth detection so that face-less recordings stay cheap.
        full = self._full_misses < 3 or self._full_misses % 4 == 0
        box = self.detector.detect(frame, full=full, near=self._prev)
        if box is None:
            self._misses += 1
            if full:
                self._full_misses += 1
            return self._prev if self._misses <= self.hold else None
        self._misses = 0
        self._full_misses = 0
        if self._prev is not None and self._prev.iou(box) > NEAR_OVERLAP:
            box = self._prev.blend(box, self.smoothing)
        return box

    def observe(self, frame: np.ndarray) -> Box | None:
        """One detection on its own (what push does on every `interval`-th frame): the
        settled box of this frame, for a caller that reads only the detection frames first
        and places the frames between them with `between`."""
        box = self._observe(frame)
        self._prev = box
        return box

    @staticmethod
    def between(prev: Box | None, nxt: Box | None, i: int, n: int) -> Box | None:
        """The box of the i-th of n frames from a detection with box `prev` up to the next one
        (box `nxt`): interpolated, held where the next detection found nothing, None where
        there was no face at `prev`."""
        if prev is None:
            return None
        if nxt is None:
            return prev
        return prev.blend(nxt, i / n)

    def push(self, index: int, frame: np.ndarray) -> list[tuple[int, np.ndarray, Box | None]]:
        out: list[tuple[int, np.ndarray, Box | None]] = []
        if self._n % self.interval == 0:
            box = self._observe(frame)
            out = self._release(box)
            self._prev = box
        self._pending.append((index, frame))
        self._n += 1
        return out

    def _release(self, nxt: Box | None) -> list[tuple[int, np.ndarray, Box | None]]:
        prev, pending = self._prev, self._pending
        self._pending = []
        n = len(pending)
        return [
            (index, frame, self.between(prev, nxt, i, n))
            for i, (index, frame) in enumerate(pending)
        ]

    def flush(self) -> list[tuple[int, np.ndarray, Box | None]]:
        return self._release(self._prev)


def _clip(frame: np.ndarray, box: Box) -> np.ndarray | None:
    h, w = frame.shape[:2]
    x0, y0 = int(max(0, box.x)), int(max(0, box.y))
    x1, y1 = int(min(w, box.x + box.w)), int(min(h, box.y + box.h))
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    return frame[y0:y1, x0:x1]


def _shrink(crop: np.ndarray, side: int = 96) -> np.ndarray:
    # Averages barely change when the crop is area-downscaled first; this keeps per-frame
    # cost flat however large the face or the frame.
    if crop.shape[0] * crop.shape[1] > side * side:
        return cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)
    return crop


def region_mean(frame_bgr: np.ndarray, box: Box | None) -> np.ndarray:
    """Mean RGB (0-255, float (3,)) of a region the user fixed: `box`, or the whole frame.

    Used only for --roi full or --roi X,Y,W,H; no skin test, the user vouches for the region.
    """
    crop = frame_bgr if box is None else _clip(frame_bgr, box)
    if crop is None:
        return np.full(3, np.nan)
    b, g, r, _ = cv2.mean(_shrink(crop))
    return np.array([r, g, b], dtype=np.float64)


def skin_mean(frame_bgr: np.ndarray, face: Box) -> np.ndarray:
    """Mean RGB (0-255, float (3,)) of the skin pixels of a face, NaNs when there are too few;
    from a BGR frame, or a BGRA one (worker.track's parts).

    The face box is shrunk to the central face (dropping hair and background at its edges)
    and pixels outside a broad YCrCb skin range (eyes, brows, nostrils) are ignored.
    """
    inner = Box(face.x + 0.15 * face.w, face.y + 0.1 * face.h, 0.7 * face.w, 0.85 * face.h)
    crop = _clip(frame_bgr, inner)
    if crop is None:
        return np.full(3, np.nan)
    if crop.shape[2] == 4:  # BGRA (worker.track's parts)
        crop = cv2.cvtColor(crop, cv2.COLOR_BGRA2BGR)
    crop = _shrink(crop)
    ycrcb = cv2.cvtColor(crop, cv2.COLOR_BGR2YCrCb)
    mask = cv2.inRange(ycrcb, (0, 133, 77), (255, 173, 127))
    if cv2.countNonZero(mask) < 0.1 * mask.size:
        return np.full(3, np.nan)
    b, g, r, _ = cv2.mean(crop, mask=mask)
    return np.array([r, g, b], dtype=np.float64)
