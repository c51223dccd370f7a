"""Synthetic neonatal heart-rate curves and PPG waves built from real recorded pulse shapes.

Used by the demo archive and, later, to make training data. Pure numpy/scipy.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
from scipy.interpolate import CubicSpline, PchipInterpolator
from scipy.signal import find_peaks

BEAT_SAMPLES = 64
"""Samples per beat template, spanning one beat from foot to (excluding) the next foot."""

_TEMPLATE_FILE = "ppg_beats.csv"
_TEMPLATE_META_COLUMNS = 3  # source, onset_frame, period_frames


def extract_beats(
    ppg: np.ndarray, fps: float, n_samples: int = BEAT_SAMPLES, min_corr: float = 0.9
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut a contact PPG recording into foot-to-foot beats and normalise their shape.

    A foot is the minimum just before a systolic upstroke (refined to sub-sample precision
    by a parabola through the minimum and its neighbours). Each beat is resampled to
    ``n_samples`` points by a cubic spline, its linear foot-to-foot trend removed (so a beat
    starts and ends at the same level and beats can be concatenated) and scaled to [0, 1].
    Beats much shorter or longer than the median, or unlike the median shape, are dropped as
    artefacts.

    Args:
        ppg: float array (T,), PPG waveform sampled at ``fps``, larger = more blood volume.
        fps: sample rate of ``ppg`` in Hz.
        n_samples: samples per returned template.
        min_corr: minimum Pearson correlation with the median template for a beat to be kept.

    Returns:
        templates: float array (B, n_samples) in [0, 1]; sample k is at phase k / n_samples.
        onsets: float array (B,), foot position of each kept beat, in samples of ``ppg``.
        periods: float array (B,), foot-to-foot duration of each kept beat, in samples.
    """
    x = np.asarray(ppg, dtype=float)
    slope = np.gradient(x)
    # Upstrokes are the steepest rises; adult and infant beats are > 0.25 s apart.
    ups, _ = find_peaks(slope, height=0.3 * np.percentile(slope, 99), distance=int(0.25 * fps))
    if len(ups) < 3:
        return np.empty((0, n_samples)), np.empty(0), np.empty(0)
    search = max(2, int(0.4 * np.median(np.diff(ups))))
    feet = []
    for u in ups:
        lo = max(1, u - search)
        if lo >= u:
            continue
        i = lo + int(np.argmin(x[lo : u + 1]))
        if i + 1 >= len(x):
            continue
        curv = x[i - 1] - 2 * x[i] + x[i + 1]
        shift = 0.5 * (x[i - 1] - x[i + 1]) / curv if curv > 0 else 0.0
        feet.append(i + float(np.clip(shift, -0.5, 0.5)))
    feet = np.asarray(feet)
    spline = CubicSpline(np.arange(len(x)), x)
    phase = np.linspace(0.0, 1.0, n_samples + 1)
    beats, onsets, periods = [], [], []
    for a, b in zip(feet[:-1], feet[1:], strict=True):
        y = spline(a + (b - a) * phase)
        y = y - (y[0] + (y[-1] - y[0]) * phase)
        y = y[:-1]
        span = y.max() - y.min()
        if span > 0:
            beats.append((y - y.min()) / span)
            onsets.append(a)
            periods.append(b - a)
    beats, onsets, periods = np.asarray(beats), np.asarray(onsets), np.asarray(periods)
    if len(beats) == 0:
        return np.empty((0, n_samples)), onsets, periods
    typical = np.median(periods)
    reference = np.median(beats, axis=0)
    corr = np.array([np.corrcoef(b, reference)[0, 1] for b in beats])
    keep = (np.abs(periods / typical - 1.0) < 0.25) & (corr >= min_corr)
    return beats[keep], onsets[keep], periods[keep]


def write_beat_templates(sources: Sequence[Path], out: Path, fps: float = 30.0) -> int:
    """Extract beats from the ``ppg`` column of each CSV in ``sources`` and write the table.

    The output has a header ``source,onset_frame,period_frames,s00..s63`` and one row per beat;
    it is how ``model/data/ppg_beats.csv`` was made (see ``model/data/NOTICE.md``).

    Args:
        sources: CSV files with a header containing a ``ppg`` column, one row per frame.
        out: CSV file to write.
        fps: sample rate of the sources in Hz.

    Returns:
        number of beats written.
    """
    rows = []
    for path in sources:
        with open(path, newline="") as f:
            ppg = np.array([float(r["ppg"]) for r in csv.DictReader(f)])
        templates, onsets, periods = extract_beats(ppg, fps)
        for tpl, onset, period in zip(templates, onsets, periods, strict=True):
            rows.append([Path(path).name, f"{onset:.3f}", f"{period:.3f}"])
            rows[-1] += [f"{v:.5f}" for v in tpl]
    with open(out, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(
            ["source", "onset_frame", "period_frames"] + [f"s{k:02d}" for k in range(BEAT_SAMPLES)]
        )
        writer.writerows(rows)
    return len(rows)


@lru_cache(maxsize=1)
def load_beat_templates() -> np.ndarray:
    """The shipped real PPG beat templates.

    Returns:
        float array (B, BEAT_SAMPLES), read-only, each row one beat from foot to the next foot,
        scaled to [0, 1] (0 = foot, 1 = systolic peak); see ``model/data/NOTICE.md``.
    """
    text = resources.files("model").joinpath("data", _TEMPLATE_FILE).read_text()
    rows = list(csv.reader(text.splitlines()))[1:]
    templates = np.array([[float(v) for v in r[_TEMPLATE_META_COLUMNS:]] for r in rows])
    templates.setflags(write=False)
    return templates


@dataclass(frozen=True)
class HrTrajectory:
    """A smooth heart-rate curve; call it with times to get the heart rate.

    Attributes:
        knot_t: float array (K,), knot times in s, increasing, from 0 to the duration.
        knot_bpm: float array (K,), heart rate at the knots in beats per minute.
    """

    knot_t: np.ndarray
    knot_bpm: np.ndarray

    def __call__(self, t: np.ndarray) -> np.ndarray:
        """Heart rate at times ``t`` (float array, s); returns a float array of bpm, same shape.

        Monotone cubic interpolation never overshoots the knots, so the curve keeps the
        knots' bounds; times outside the knot range get the end values.
        """
        t = np.clip(np.asarray(t, dtype=float), self.knot_t[0], self.knot_t[-1])
        return PchipInterpolator(self.knot_t, self.knot_bpm)(t)


def hr_trajectory(
    duration_s: float,
    rng: np.random.Generator,
    lo: float = 90.0,
    hi: float = 200.0,
    knot_spacing_s: float = 1.0,
) -> HrTrajectory:
    """Draw a neonatal heart rate that drifts smoothly over ``duration_s`` seconds.

    The rate starts uniformly in 110-170 bpm (a resting newborn) and wanders as a
    mean-reverting random walk (stationary s.d. about 4 bpm, 20 s relaxation time, so long
    recordings stay plausible) plus two slow sinusoids (periods 20-120 s, 1-5 bpm), then is
    clipped to [lo, hi].

    Args:
        duration_s: length of the curve in s.
        rng: random generator.
        lo, hi: heart-rate bounds in bpm.
        knot_spacing_s: time between random-walk knots in s.

    Returns:
        HrTrajectory mapping times in s (0 to ``duration_s``) to bpm.
    """
    n = max(2, int(np.ceil(duration_s / knot_spacing_s)) + 1)
    t = np.linspace(0.0, duration_s, n)
    dt = t[1] - t[0]
    relax_s, sd_bpm = 20.0, 4.0
    step_sd = sd_bpm * np.sqrt(2.0 * dt / relax_s)
    walk = np.zeros(n)
    for k in range(1, n):
        walk[k] = walk[k - 1] * (1.0 - dt / relax_s) + step_sd * rng.standard_normal()
    waves = sum(
        rng.uniform(1.0, 5.0)
        * np.sin(2 * np.pi * t / rng.uniform(20.0, 120.0) + rng.uniform(0, 2 * np.pi))
        for _ in range(2)
    )
    bpm = np.clip(rng.uniform(110.0, 170.0) + walk + waves, lo, hi)
    return HrTrajectory(knot_t=t, knot_bpm=bpm)


def ppg_wave(
    t: np.ndarray,
    hr_bpm_at_t: np.ndarray,
    rng: np.random.Generator,
    templates: np.ndarray | None = None,
    resp_rate_bpm: float | None = None,
) -> np.ndarray:
    """Build a pulse wave by concatenating real beat templates, one per heart beat.

    The beat phase is the running integral of the heart rate, so each template is stretched
    to the instantaneous beat period. Each beat gets a randomly chosen template, amplitude
    (s.d. 6 %) and baseline offset (s.d. 0.04), both interpolated across beats so the wave
    stays continuous; breathing (30-60 breaths/min unless given) modulates the amplitude by
    about 8 % and the baseline by about 0.06. The beat shape is scaled in time uniformly.

    Args:
        t: float array (T,), sample times in s, increasing.
        hr_bpm_at_t: float array (T,), instantaneous heart rate at ``t`` in bpm.
        rng: random generator.
        templates: float array (B, S) of beat shapes in [0, 1]; defaults to
            ``load_beat_templates()``.
        resp_rate_bpm: breathing rate in breaths per minute; random if None.

    Returns:
        wave: float array (T,), dimensionless blood-volume pulse in template units (beat foot
        about 0, systolic peak about 1, larger = more blood); time-aligned with ``t``.
    """
    t = np.asarray(t, dtype=float)
    hr = np.asarray(hr_bpm_at_t, dtype=float)
    if t.shape != hr.shape or t.ndim != 1 or len(t) == 0:
        raise ValueError(f"t and hr_bpm_at_t must be 1-D, equal, non-empty: {t.shape}, {hr.shape}")
    if templates is None:
        templates = load_beat_templates()
    steps = np.diff(t, prepend=t[0]) * np.concatenate([[hr[0]], 0.5 * (hr[1:] + hr[:-1])])
    phase = rng.uniform(0.0, 1.0) + np.cumsum(steps) / 60.0
    beat = np.floor(phase).astype(int)
    n_beats = beat[-1] + 2
    choice = rng.integers(0, len(templates), n_beats)
    amp_knots = 1.0 + 0.06 * rng.standard_normal(n_beats)
    base_knots = 0.04 * rng.standard_normal(n_beats)
    knots = np.arange(n_beats)
    amp = np.interp(phase, knots, amp_knots)
    base = np.interp(phase, knots, base_knots)

    s = templates.shape[1]
    pos = (phase - beat) * s
    i0 = np.floor(pos).astype(int) % s
    frac = pos - np.floor(pos)
    which = choice[beat]
    shape = templates[which, i0] * (1 - frac) + templates[which, (i0 + 1) % s] * frac

    rr = rng.uniform(30.0, 60.0) if resp_rate_bpm is None else resp_rate_bpm
    breath = np.sin(2 * np.pi * rr / 60.0 * (t - t[0]) + rng.uniform(0, 2 * np.pi))
    return shape * amp * (1.0 + 0.08 * breath) + base + 0.06 * breath
