"""A video's frames with their tracked face boxes, read the cheapest way the file allows.

FaceTracker places each frame's box between two detections (2 Hz), so a frame's box is known
only once the next detection is made. Read in one pass, every frame waits in memory for it:
half a second of frames, 14 MB at 640x480, by the time they are cropped long gone from the
CPU's caches. Where any frame can be read at random for the price of reading it (uncompressed
AVI, worker.avi), the detection frames are read first and every frame is then handed on with
its box the moment it is read, while it is still in cache: measured on 640x480 raw frames
(AMD machine), 0.17 instead of 0.32 ms a frame for reading and cropping. Both ways give the
same boxes (tests/test_track.py). A caller that only crops the face can ask for just the
part of each frame around its box: the rows of that band (about half the rows of the demo's
640x480 frames) are all that is read, and only the part is flipped. MJPEG frames wait for
their boxes as their compressed packets, and only the face's part of each is then decoded
(worker._jpegpart): 0.33-0.41 instead of 0.93-1.06 ms a 640x480 frame of the demo archive
(Intel Xeon; the whole frame decoded by the same library).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from worker.avi import RawAviReader
from worker.crops import crop_region
from worker.faces import Box, FaceDetector, FaceTracker
from worker.video import MjpegPackets, iter_frames, raw_layout


def tracked_frames(
    path: Path,
    start: int,
    stop: int,
    fps: float,
    detector: FaceDetector,
    min_width: int | None = None,
    random_access: bool = True,
    part: bool = False,
) -> Iterator[tuple[int, np.ndarray | None, Box | None]]:
    """(index, frame, face box or None) for frames [start, stop) in order, as
    worker.video.iter_frames decodes them (min_width as there) and FaceTracker places the
    boxes. random_access=False forces the one-pass way for every file (for comparison).
    part: for a caller that only crops the face and averages its skin: of a frame with a box
    only the pixels that worker.crops.face_crop and worker.faces.skin_mean read for that box
    (worker.crops.crop_region) are read or decoded and set, the rest of the array is left
    unset: the face's rows of an uncompressed AVI (read at random), the face's part of each
    MJPEG frame (_tracked_packets, where worker._jpegpart is built). Such a part comes in a
    4-channel array, B, G, R and a byte nothing reads: face_crop warps 4 channels about twice
    as fast as 3, to the same crop. A frame without a box comes whole (BGR) from an AVI, and
    as None (not decoded at all) from MJPEG."""
    tracker = FaceTracker(detector, fps)
    layout = raw_layout(path) if random_access else None
    packets = (
        MjpegPackets.open(path, start, stop, min_width)
        if part and random_access and layout is None
        else None
    )
    if packets is not None:
        yield from _tracked_packets(packets, tracker)
        return
    if layout is None:
        for index, frame in iter_frames(path, start, stop, min_width):
            yield from tracker.push(index, frame)
        yield from tracker.flush()
        return
    stop = min(stop, layout.n_frames)
    step = tracker.interval
    with RawAviReader(path, layout) as reader:
        boxes = []  # the settled box at each detection frame start, start + step, ...
        for index in range(start, stop, step):
            frame = reader.read(index)
            if frame is None:
                break  # the file ends here: the frames before it keep the last box (flush)
            boxes.append(tracker.observe(frame))
        for index in range(start, stop):
            k, i = divmod(index - start, step)
            if k == len(boxes):
                return  # the file ends before this detection frame, so before this frame
            nxt = boxes[k + 1] if k + 1 < len(boxes) else boxes[k]
            box = FaceTracker.between(boxes[k], nxt, i, step)
            if part and box is not None:
                frame = reader.read_part(index, *crop_region(box, layout.width, layout.height))
            else:
                frame = reader.read(index)
            if frame is None:
                return
            yield index, frame, box


def _tracked_packets(
    packets: MjpegPackets, tracker: FaceTracker
) -> Iterator[tuple[int, np.ndarray | None, Box | None]]:
    """tracked_frames(part=True) for MJPEG: each detection frame is decoded whole and searched;
    the frames up to the next one wait as their packets (a JPEG each, 28 KB at 640x480 in the
    demo archive, instead of 0.9 MB decoded) until that detection places their boxes, then
    only the part of each that crop_region names for its box is decoded (MjpegPackets.decode,
    BGRA), and nothing of a frame without a box (None). The boxes are
    those of the one-pass way: the same detections on the same frames, interpolated the same
    way (FaceTracker.between)."""
    step = tracker.interval
    height, width, _ = packets.shape
    # The frames since the last detection: (index, whole frame or packet), the first whole.
    pending: list[tuple[int, np.ndarray]] = []
    box: Box | None = None  # at the last detection
    ended = False  # a frame nothing could decode: the stream ends there

    def release(nxt: Box | None) -> Iterator[tuple[int, np.ndarray | None, Box | None]]:
        nonlocal ended
        for i, (index, data) in enumerate(pending):
            here = FaceTracker.between(box, nxt, i, step)
            if i == 0:
                frame: np.ndarray | None = data
            elif here is None:
                yield index, None, None
                continue
            else:
                frame = packets.decode(index, data, crop_region(here, width, height))
                if frame is None:
                    ended = True
                    return
            yield index, frame, here

    for n, (index, packet) in enumerate(packets):
        if n % step:
            pending.append((index, packet))
            continue
        frame = packets.decode(index, packet)
        if frame is None:
            break  # nothing can decode it: the stream ends here, as in iter_frames
        nxt = tracker.observe(frame)
        yield from release(nxt)
        if ended:
            return
        pending, box = [(index, frame)], nxt
    yield from release(box)
