"""Beats and heart-rate variability from a pulse signal: systolic peak times, cleaned beat
intervals, SDNN and RMSSD.

A camera's pulse (rPPG, or NBHRnet's PPG output) is noisier than a contact PPG, so intervals
are cleaned the usual way before any statistic: an interval outside the population's heart-rate
band, or more than MAX_DEVIATION from the median of its neighbours, is an artefact (a missed or
an extra beat) and is dropped. RMSSD uses only successive differences of two kept intervals
that share a beat. At 30 fps a peak time is refined to a fraction of a frame by a parabola
through the peak and its neighbours, yet a camera's beat times stay jittery by several ms: the
RMSSD of a video pulse is an upper bound more than a measurement (compare it with the
reference's, as `nbhr hrv` does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.bands import Band
from model.spectrum import bandpass, spectral_hr

# Kept intervals lie within this fraction of the median of their neighbours (the 20 % rule of
# HRV artefact editing).
MAX_DEVIATION = 0.2
# Neighbours on each side whose median an interval is compared with.
NEIGHBOURS = 5
# Peaks closer than this share of the run's dominant period are one beat (the higher wins).
MIN_PERIOD_SHARE = 0.6
# A prominence below this many standard deviations of the run is noise, not a beat.
MIN_PROMINENCE_SD = 0.3
# Seconds of taper at each end of a window's pulse before windows are overlap-added.
TAPER_S = 1.0
# Below this summed taper a sample of an overlap-added pulse is not covered firmly enough.
MIN_WEIGHT = 0.3
# A run of finite samples shorter than this many seconds holds too few beats to time.
MIN_RUN_S = 1.5


@dataclass(frozen=True)
class HRV:
    """Variability of one series of beats.

    n_beats: beats given; n_intervals: intervals kept after cleaning; n_rejected: dropped.
    mean_ibi_ms, sdnn_ms (s.d. of kept intervals, ddof=1), rmssd_ms (root mean square of
    successive differences of kept, adjacent intervals): milliseconds; nan when too few.
    hr_bpm: 60000 / mean_ibi_ms. covered_s: seconds spanned by the kept intervals.
    """

    n_beats: int
    n_intervals: int
    n_rejected: int
    mean_ibi_ms: float
    sdnn_ms: float
    rmssd_ms: float
    hr_bpm: float
    covered_s: float


class PulseTrack:
    """One continuous pulse signal from the pulses of overlapping analysis windows.

    Each window's pulse is detrended, scaled to unit standard deviation and tapered (Tukey,
    TAPER_S at each end, where a window's own filtering is least reliable) before it is added
    at its place; the sum is divided by the summed taper. Samples that no window covered
    firmly (summed taper below MIN_WEIGHT) are nan, so beats are never looked for there.

    first: frame index of sample 0; n: samples; fps: Hz; taper_s: 0 for windows that abut
    rather than overlap (each keeps its full weight).
    """

    def __init__(self, first: int, n: int, fps: float, taper_s: float = TAPER_S) -> None:
        self.first, self.fps, self.taper_s = first, fps, taper_s
        self._sum = np.zeros(n)
        self._weight = np.zeros(n)

    def add(self, start: int, pulse: np.ndarray) -> None:
        """pulse: float array (L,) of the window whose first frame index is `start`."""
        from scipy.signal import detrend
        from scipy.signal.windows import tukey

        x = detrend(np.asarray(pulse, dtype=float))
        sd = x.std()
        if not np.isfinite(sd) or sd <= 0:
            return
        a = start - self.first
        b = min(a + len(x), len(self._sum))
        if a < 0 or b <= a:
            raise ValueError(f"window at frame {start} lies outside this track")
        taper = tukey(len(x), min(1.0, 2 * self.taper_s * self.fps / len(x)))
        self._sum[a:b] += (taper * x / sd)[: b - a]
        self._weight[a:b] += taper[: b - a]

    def signal(self) -> np.ndarray:
        """float array (n,): the combined pulse, unit-free; nan where not covered."""
        out = np.full(len(self._sum), np.nan)
        firm = self._weight >= MIN_WEIGHT
        out[firm] = self._sum[firm] / self._weight[firm]
        return out

    def beats(self, band: Band, t_from: float, t_to: float) -> np.ndarray:
        """Beat times (detect_beats) of the combined pulse in [t_from, t_to), seconds."""
        t = detect_beats(self.signal(), self.fps, band, t0_s=self.first / self.fps)
        return t[(t >= t_from) & (t < t_to)]


def detect_beats(pulse: np.ndarray, fps: float, band: Band, t0_s: float = 0.0) -> np.ndarray:
    """Beat times of a pulse signal.

    pulse: float array (T,) sampled at fps (Hz), larger = more blood volume, not yet filtered;
        nan where nothing was measured (each finite run is handled on its own, and runs
        shorter than MIN_RUN_S are skipped).
    t0_s: time of sample 0, seconds.
    Returns float array (B,), seconds, increasing.

    Two passes per run. Beats are found on the run band-passed around `band` (the fundamental
    alone, which noise disturbs least): peaks closer than MIN_PERIOD_SHARE of the run's
    dominant period are one beat, and a peak must stand MIN_PROMINENCE_SD standard deviations
    above its surroundings. They are timed on the run band-passed up to the third harmonic,
    which keeps the beat's shape (the fundamental alone moves peaks by tens of ms when
    intervals alternate): each beat moves to the highest sample of that signal within a
    quarter period, refined by a parabola to a fraction of a sample. This is exact to about a
    millisecond on a clean pulse at 30 fps; noise moves the peaks and inflates SDNN and RMSSD.
    """
    from scipy.signal import find_peaks  # scipy is slow to import; see model.spectrum

    x = np.asarray(pulse, dtype=float)
    finite = np.isfinite(x)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], finite.astype(int), [0]])))
    beats: list[np.ndarray] = []
    for a, b in zip(edges[::2], edges[1::2], strict=True):
        if b - a < MIN_RUN_S * fps or np.ptp(x[a:b]) <= 0:
            continue
        narrow = _unit(bandpass(x[a:b], fps, band))
        hr = spectral_hr(narrow, fps, band).hr_bpm
        period = fps * 60.0 / (hr if np.isfinite(hr) else band.hi_bpm)  # samples
        peaks, _ = find_peaks(
            narrow,
            distance=max(1, int(MIN_PERIOD_SHARE * period)),
            prominence=MIN_PROMINENCE_SD,
        )
        if len(peaks) == 0:
            continue
        wide = _unit(bandpass(x[a:b], fps, band, harmonics=3))
        beats.append(t0_s + (a + _align(wide, peaks, period)) / fps)
    return np.concatenate(beats) if beats else np.empty(0)


def _align(wide: np.ndarray, peaks: np.ndarray, period: float) -> np.ndarray:
    """Peak positions (samples, float) moved to the highest sample of `wide` within a quarter
    period of each, refined by a parabola through it and its neighbours."""
    reach = max(1, int(round(period / 4)))
    out = np.empty(len(peaks))
    for i, p in enumerate(peaks):
        lo, hi = max(0, p - reach), min(len(wide), p + reach + 1)
        k = lo + int(np.argmax(wide[lo:hi]))
        shift = 0.0
        if 0 < k < len(wide) - 1:
            y0, y1, y2 = wide[k - 1], wide[k], wide[k + 1]
            denom = y0 - 2 * y1 + y2
            shift = float(np.clip(0.5 * (y0 - y2) / denom, -0.5, 0.5)) if denom < 0 else 0.0
        out[i] = k + shift
    # Two close beats can climb to the same peak of the wide signal.
    return np.unique(out)


def _unit(x: np.ndarray) -> np.ndarray:
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else x - x.mean()


def clean_intervals(beats_s: np.ndarray, band: Band) -> tuple[np.ndarray, np.ndarray]:
    """Beat intervals and which of them are kept.

    beats_s: float array (B,), beat times in seconds, increasing.
    Returns (ibi_s, kept): float array (B-1,) of intervals in seconds and bool array (B-1,).
    An interval is kept when it lies inside `band` (60/hi_bpm to 60/lo_bpm s) and within
    MAX_DEVIATION of the median of the in-band intervals among its NEIGHBOURS on each side.
    """
    t = np.asarray(beats_s, dtype=float)
    if t.ndim != 1 or (len(t) > 1 and np.any(np.diff(t) <= 0)):
        raise ValueError("beats_s must be a 1-D array of increasing times")
    ibi = np.diff(t)
    in_band = (ibi >= 60.0 / band.hi_bpm) & (ibi <= 60.0 / band.lo_bpm)
    kept = np.zeros(len(ibi), dtype=bool)
    for i in np.flatnonzero(in_band):
        lo, hi = max(0, i - NEIGHBOURS), min(len(ibi), i + NEIGHBOURS + 1)
        near = ibi[lo:hi][in_band[lo:hi]]
        med = float(np.median(near))
        kept[i] = abs(ibi[i] - med) <= MAX_DEVIATION * med
    return ibi, kept


def hrv(beats_s: np.ndarray, band: Band) -> HRV:
    """SDNN, RMSSD and mean interval of a series of beats (clean_intervals first)."""
    t = np.asarray(beats_s, dtype=float)
    if len(t) < 2:
        nan = float("nan")
        return HRV(len(t), 0, 0, nan, nan, nan, nan, 0.0)
    ibi, kept = clean_intervals(t, band)
    ms = 1000.0 * ibi[kept]
    pairs = kept[:-1] & kept[1:]
    diffs = 1000.0 * (ibi[1:] - ibi[:-1])[pairs]
    mean = float(ms.mean()) if len(ms) else float("nan")
    return HRV(
        n_beats=len(t),
        n_intervals=int(kept.sum()),
        n_rejected=int((~kept).sum()),
        mean_ibi_ms=mean,
        sdnn_ms=float(ms.std(ddof=1)) if len(ms) > 1 else float("nan"),
        rmssd_ms=float(np.sqrt(np.mean(diffs**2))) if len(diffs) else float("nan"),
        hr_bpm=60000.0 / mean if np.isfinite(mean) else float("nan"),
        covered_s=float(ibi[kept].sum()),
    )
