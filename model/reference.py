"""Reference vital-sign series (from a pulse oximeter) and their value over a window."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.bands import Band
from model.spectrum import spectral_hr

# Pulse oximeters write 0 or out-of-range values while the probe is off or searching.
PLAUSIBLE_HR = (20.0, 320.0)
PLAUSIBLE_SPO2 = (50.0, 100.0)
PLAUSIBLE = {"hr": PLAUSIBLE_HR, "spo2": PLAUSIBLE_SPO2}


@dataclass(frozen=True)
class ReferenceSeries:
    """One reference signal of a recording.

    kind: "hr" (bpm), "ppg" (arbitrary units) or "spo2" (%).
    values: float array (N,). Time axis: `times_s` (N,) seconds from the video's start, or
    regular sampling at `sample_rate_hz` from `t0_s`; with neither, a single recording-level
    mean (N == 1).
    """

    kind: str
    values: np.ndarray
    source: str
    sample_rate_hz: float | None = None
    t0_s: float = 0.0
    times_s: np.ndarray | None = None

    @property
    def is_mean(self) -> bool:
        return self.times_s is None and self.sample_rate_hz is None

    def times(self) -> np.ndarray:
        if self.times_s is not None:
            return self.times_s
        if self.sample_rate_hz is None:
            raise ValueError("a recording-level mean has no time axis")
        return self.t0_s + np.arange(len(self.values)) / self.sample_rate_hz

    def span(self, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
        """(times, values) of the samples with t0 <= t < t1."""
        t = self.times()
        sel = (t >= t0) & (t < t1)
        return t[sel], self.values[sel]

    def plausible(self, values: np.ndarray) -> np.ndarray:
        """The finite values among `values` (some of this series'), without those outside the
        plausible range of its kind (probe off or searching: 0 or out-of-range readings)."""
        v = np.asarray(values, dtype=float)
        v = v[np.isfinite(v)]
        if self.kind in PLAUSIBLE:
            lo, hi = PLAUSIBLE[self.kind]
            v = v[(v >= lo) & (v <= hi)]
        return v

    def window_mean(self, t0: float, t1: float) -> float | None:
        """Mean plausible value over [t0, t1), the recording mean, or None when not covered."""
        if self.is_mean:
            return float(self.values[0])
        v = self.plausible(self.span(t0, t1)[1])
        # Demand half the window to be covered so that edge windows are not judged on a sliver.
        rate = self.sample_rate_hz or _median_rate(self.times())
        if rate and len(v) < 0.5 * (t1 - t0) * rate:
            return None
        return float(np.mean(v)) if len(v) else None


def _median_rate(t: np.ndarray) -> float | None:
    if len(t) < 2:
        return None
    dt = np.median(np.diff(t))
    return float(1.0 / dt) if dt > 0 else None


# NBHRnet's PPG target: Gaussian smoothing (samples) and the share of the window the reference
# must cover.
PPG_SIGMA = 2.0
MIN_PPG_COVERAGE = 0.9

# Wide on purpose: the reference must not be forced into the band the estimators search.
REFERENCE_BAND = Band(30.0, 300.0)


def reference_hr(series: dict[str, ReferenceSeries], t0: float, t1: float) -> float | None:
    """Reference HR (bpm) for [t0, t1): the HR series, else the PPG's spectral peak, else None."""
    hr = series.get("hr")
    if hr is not None:
        value = hr.window_mean(t0, t1)
        if value is not None:
            return value
    ppg = series.get("ppg")
    if ppg is not None and not ppg.is_mean:
        t, v = ppg.span(t0, t1)
        rate = ppg.sample_rate_hz or _median_rate(t)
        if rate and len(v) >= 0.9 * (t1 - t0) * rate:
            if ppg.times_s is not None:
                grid = np.arange(t[0], t[-1], 1.0 / rate)
                v = np.interp(grid, t, v)
            peak = spectral_hr(v - np.mean(v), rate, REFERENCE_BAND)
            if np.isfinite(peak.hr_bpm):
                return float(peak.hr_bpm)
    return None


def ppg_target(
    ppg: ReferenceSeries, t_start: float, frames: int = 60, fps: float = 30.0
) -> np.ndarray | None:
    """The PPG target of the window starting at t_start (s), or None when it is not usable.

    NBHRnet's PPG target (NBHRNET.md), also what its predicted PPG is scored against.
    Returns float32 (frames,): the reference resampled (cubic) to the window's frame times,
    smoothed with a Gaussian of sigma PPG_SIGMA samples and min-max scaled to [0, 1]. None when
    the reference covers less than MIN_PPG_COVERAGE of the window or is flat over it.
    """
    if ppg.is_mean:
        return None
    window_s = frames / fps
    t, v = ppg.span(t_start, t_start + window_s)
    keep = np.isfinite(v)
    t, v = t[keep], v[keep]
    t, first = np.unique(t, return_index=True)
    v = v[first]
    if len(t) < 4:
        return None
    rate = ppg.sample_rate_hz or float(1.0 / np.median(np.diff(t)))
    grid = t_start + np.arange(frames) / fps
    # A gap at either end longer than a sample or two would make the spline extrapolate.
    edge = 1.5 / rate
    if len(t) < MIN_PPG_COVERAGE * window_s * rate or t[0] > grid[0] + edge:
        return None
    if t[-1] < grid[-1] - edge:
        return None
    # scipy costs 1.5 s to import; the CLI's reading commands never get here.
    from scipy.interpolate import CubicSpline
    from scipy.ndimage import gaussian_filter1d

    target = gaussian_filter1d(CubicSpline(t, v)(grid), PPG_SIGMA)
    lo, hi = float(target.min()), float(target.max())
    if not hi - lo > 1e-9 * max(1.0, abs(hi)):
        return None
    return ((target - lo) / (hi - lo)).astype(np.float32)
