"""Rhythm hints from a recording's series of window heart rates: bradycardia and tachycardia
episodes with their duration.

Neonatal thresholds by default (bradycardia below 100 bpm, tachycardia above 180 bpm); both
are parameters, as is the shortest episode worth reporting. Windows usually overlap (10-s
windows every 2 s), so each window stands for the `hop` seconds around its centre: an
episode of n consecutive windows lasts n x hop seconds, and one window's dip is a hop long,
not a window long.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEONATAL_BRADY_BPM = 100.0
NEONATAL_TACHY_BPM = 180.0


@dataclass(frozen=True)
class Episode:
    """A run of consecutive windows beyond a threshold.

    kind: "bradycardia" or "tachycardia".
    t_start / t_end: seconds from the recording's start (window centres -/+ half a hop).
    extreme_bpm: the lowest (bradycardia) or highest (tachycardia) window HR in the run.
    n_windows: windows in the run.
    """

    kind: str
    t_start: float
    t_end: float
    extreme_bpm: float
    n_windows: int

    @property
    def duration_s(self) -> float:
        return self.t_end - self.t_start


def episodes(
    t_start: np.ndarray,
    t_end: np.ndarray,
    hr_bpm: np.ndarray,
    brady_bpm: float = NEONATAL_BRADY_BPM,
    tachy_bpm: float = NEONATAL_TACHY_BPM,
    min_duration_s: float = 0.0,
) -> list[Episode]:
    """Bradycardia (HR < brady_bpm) and tachycardia (HR > tachy_bpm) episodes, in time order.

    t_start, t_end: float arrays (N,), seconds, one analysis window each (any order; equal
        lengths and a regular hop are expected, as the workers write them).
    hr_bpm: float array (N,); nan where the window has no estimate. A window without an
        estimate, or a gap of more than one hop between windows, ends an episode: nothing is
        claimed about time that was not measured.
    min_duration_s: shorter episodes are not reported.
    """
    t0 = np.asarray(t_start, dtype=float)
    t1 = np.asarray(t_end, dtype=float)
    hr = np.asarray(hr_bpm, dtype=float)
    if not (t0.shape == t1.shape == hr.shape) or t0.ndim != 1:
        raise ValueError("t_start, t_end and hr_bpm must be 1-D arrays of equal length")
    if brady_bpm >= tachy_bpm:
        raise ValueError(f"bradycardia threshold {brady_bpm} must be below {tachy_bpm}")
    if len(hr) == 0:
        return []
    order = np.argsort(t0)
    t0, t1, hr = t0[order], t1[order], hr[order]
    centres = (t0 + t1) / 2
    steps = np.diff(t0)
    hop = float(np.median(steps)) if len(steps) else float(t1[0] - t0[0])
    out: list[Episode] = []
    for kind, beyond in (
        ("bradycardia", np.isfinite(hr) & (hr < brady_bpm)),
        ("tachycardia", np.isfinite(hr) & (hr > tachy_bpm)),
    ):
        run: list[int] = []
        for i in range(len(hr) + 1):
            joined = i < len(hr) and beyond[i] and (not run or t0[i] - t0[run[-1]] <= hop * 1.5)
            if joined:
                run.append(i)
                continue
            if run:
                start, end = centres[run[0]] - hop / 2, centres[run[-1]] + hop / 2
                values = hr[run]
                extreme = values.min() if kind == "bradycardia" else values.max()
                if end - start >= min_duration_s:
                    out.append(Episode(kind, float(start), float(end), float(extreme), len(run)))
            run = [i] if i < len(hr) and beyond[i] else []
    return sorted(out, key=lambda e: e.t_start)
