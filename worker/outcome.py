"""What running one segment came to, as the executors hand it back.

A module of its own, light to import: a pool's main process unpickles every outcome, and
should not import worker.process (and with it scipy.signal, half a second) for it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SegmentOutcome:
    segment_id: int
    state: str  # done | failed | skipped (another worker holds it or it is finished)
    n_windows: int = 0
    video_s: float = 0.0
    error: str | None = None
