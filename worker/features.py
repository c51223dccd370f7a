"""NBHRnet's per-frame features of a segment, encoded block by block as its crops are cut.

A segment's face crops (128x128 RGB, 49 KB each) used to wait in memory until the whole
segment was decoded: 88 MB for a 60-s segment at 30 fps. FrameFeatures takes them one at a
time instead and, as soon as 60 have arrived, normalises that block (the model's whole-window
z-scoring, model.nbhrnet.normalise_blocks) and runs the per-frame encoder on it, keeping only
the features (1 KB a frame). Blocks start at the segment's first frame, so every window on the
2-s grid is exactly one block, as in the whole-model graph.

With `overlap`, the blocks are encoded in a thread of their own while the caller goes on
decoding, tracking and cropping the next frames: OpenCV and onnxruntime release Python's lock
while they work, so the two run at once. That is for a process that has two cores to itself
(`nbhr run -j1 --threads 2`, a Celery worker of concurrency 1 on 2 cores), where it was 3-10 %
faster than both threads inside onnxruntime (worker.process._overlap); a pool with one process
per core gains nothing from it. At most MAX_PENDING blocks wait for the
encoder, so memory stays bounded when decoding runs ahead.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

import numpy as np

from model.nbhrnet import FEATURE_SIZE, normalise_window
from worker.crops import WINDOW_FRAMES

# Blocks (60 crops, 2.9 MB) that may wait for the encoder thread before the caller blocks.
MAX_PENDING = 2


class FrameFeatures:
    """Collects a segment's crops (`append`, in frame order, None for a frame without a face)
    and encodes them in blocks of WINDOW_FRAMES with `encode` (float32 (n, 3, H, W) normalised
    frames -> (n, FEATURE_SIZE)). A block with a frame without a face is not encoded. Use as a
    context manager, so that the encoder thread is stopped however the segment ends."""

    def __init__(self, encode: Callable[[np.ndarray], np.ndarray], overlap: bool = False) -> None:
        self._encode = encode
        self._block: list[np.ndarray | None] = []
        self._done: list[tuple[int, np.ndarray | Future[np.ndarray] | None]] = []
        self._pool = (
            ThreadPoolExecutor(1, thread_name_prefix="nbhrnet-encoder") if overlap else None
        )
        self.n = 0

    def __enter__(self) -> FrameFeatures:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the encoder thread: blocks not started are dropped, a running one is waited for."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def append(self, crop: np.ndarray | None) -> None:
        self._block.append(crop)
        self.n += 1
        if len(self._block) == WINDOW_FRAMES:
            self._submit()

    def _run(self, block: list[np.ndarray]) -> np.ndarray:
        return self._encode(normalise_window(np.stack(block)))

    def _submit(self) -> None:
        block, self._block = self._block, []
        if not block:
            return
        if any(crop is None for crop in block):
            self._done.append((len(block), None))
            return
        if self._pool is None:
            self._done.append((len(block), self._run(block)))
            return
        pending = [f for _, f in self._done if isinstance(f, Future) and not f.done()]
        if len(pending) >= MAX_PENDING:
            pending[0].result()  # decoding ran ahead: wait for the oldest block
        self._done.append((len(block), self._pool.submit(self._run, block)))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Every frame's features so far, float32 (n, FEATURE_SIZE) (zeros where not encoded),
        and which frames were encoded, bool (n,). Encodes the last, shorter block."""
        self._submit()
        features = np.zeros((self.n, FEATURE_SIZE), np.float32)
        encoded = np.zeros(self.n, bool)
        at = 0
        for size, part in self._done:
            if part is not None:
                features[at : at + size] = part.result() if isinstance(part, Future) else part
                encoded[at : at + size] = True
            at += size
        return features, encoded
