"""Face crops for NBHRnet: square 128x128 RGB crops, resampled to 30 fps by timestamp.

The workers and the training data loaders both cut windows with these functions, so a model
never sees crops made differently from the ones it was trained on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import cv2
import numpy as np

from worker.faces import Box

CROP_SIZE = 128
MODEL_FPS = 30.0
WINDOW_FRAMES = 60
# The detector's box runs from the brows to the chin; widen it so forehead and cheeks are in.
CROP_SCALE = 1.3


def face_crop(frame_bgr: np.ndarray, box: Box, size: int = CROP_SIZE) -> np.ndarray:
    """Square crop around a face, resized: uint8 (size, size, 3), RGB, from a BGR or BGRA frame
    (OpenCV warps 4 channels about twice as fast as 3: 0.06 against 0.12 ms a crop, Intel
    Xeon; the B, G and R it gives are the same, tests/test_crops.py).

    The square is CROP_SCALE times the larger box side, centred on the box; parts outside the
    frame are filled by replicating the border (so a face at the edge keeps its scale).
    """
    side = CROP_SCALE * max(box.w, box.h)
    half = side / 2
    # An affine map crops, pads and resizes in one pass, with sub-pixel placement. warpAffine
    # samples bilinearly whatever it is asked (INTER_AREA, asked for here before, gave the same
    # pixels on 300 random maps), so bilinear is what is asked.
    scale = size / side
    m = np.array([[scale, 0.0, -(box.cx - half) * scale], [0.0, scale, -(box.cy - half) * scale]])
    crop = cv2.warpAffine(
        frame_bgr, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return cv2.cvtColor(crop, cv2.COLOR_BGRA2RGB if crop.shape[2] == 4 else cv2.COLOR_BGR2RGB)


def crop_region(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the pixels of a width x height frame that `face_crop` may read for
    `box` (its square, a margin for the bilinear neighbours, and the frame's edge pixels that
    the border replicates), which also hold the box itself. Never empty."""
    half = CROP_SCALE * max(box.w, box.h) / 2
    x0 = min(max(math.floor(box.cx - half) - 2, 0), width - 1)
    y0 = min(max(math.floor(box.cy - half) - 2, 0), height - 1)
    x1 = max(min(math.ceil(box.cx + half) + 3, width), x0 + 1)
    y1 = max(min(math.ceil(box.cy + half) + 3, height), y0 + 1)
    return x0, y0, x1, y1


def resample_indices(n_in: int, fps_in: float, fps_out: float = MODEL_FPS) -> np.ndarray:
    """For each output sample at fps_out, the index of the nearest input frame at fps_in.

    A 25-fps recording gives each 30-fps slot the frame closest in time (some repeat); a
    60-fps one drops every other frame. Returns int array (n_out,), n_out = floor of the
    input's duration times fps_out.
    """
    n_out = int(np.floor(n_in / fps_in * fps_out + 1e-9))
    t_out = np.arange(n_out) / fps_out
    return np.minimum(np.rint(t_out * fps_in).astype(int), n_in - 1)


class WindowCutter:
    """windows_of's work a crop at a time, for a caller that is handed the crops (a callback
    such as worker.process.extract_trace's on_crop) instead of iterating over them.

    fps_in, n_in, hop: as windows_of. push(crop), for each of the n_in crops in frame order,
    returns the windows that crop completes (none, one, or more where a slot repeats it), as
    windows_of yields them; it holds one window's crops, never the whole video.
    """

    def __init__(self, fps_in: float, n_in: int, hop: int = WINDOW_FRAMES) -> None:
        if not 0 < hop <= WINDOW_FRAMES:
            raise ValueError(f"hop must be 1..{WINDOW_FRAMES} output frames, got {hop}")
        self._pick = resample_indices(n_in, fps_in)
        self._hop = hop
        self._buf: list[np.ndarray | None] = []
        self._k = 0  # the next window's number
        self._want = 0  # next output sample to fill
        self._index = 0  # of the next crop

    def push(self, crop: np.ndarray | None) -> list[tuple[int, np.ndarray | None]]:
        out = []
        while self._want < len(self._pick) and self._pick[self._want] == self._index:
            self._buf.append(crop)
            self._want += 1
            if len(self._buf) == WINDOW_FRAMES:
                usable = all(c is not None for c in self._buf)
                out.append((self._k, np.stack(self._buf) if usable else None))
                self._k += 1
                self._buf = self._buf[self._hop :]
        self._index += 1
        return out


def windows_of(
    crops: Iterable[np.ndarray | None], fps_in: float, n_in: int, hop: int = WINDOW_FRAMES
) -> Iterator[tuple[int, np.ndarray | None]]:
    """Cut a stream of per-frame crops (None where no face) into NBHRnet windows.

    crops: n_in items in frame order, each uint8 (128, 128, 3) RGB or None.
    Yields (k, window) for the window starting at output sample k*hop: uint8
    (WINDOW_FRAMES, 128, 128, 3), or None when any of its frames has no face.
    Only full windows are yielded; memory holds one window, never the whole video.
    """
    cutter = WindowCutter(fps_in, n_in, hop)
    for crop in crops:
        yield from cutter.push(crop)
