"""Classical rPPG estimators (POS, CHROM, GREEN) behind one interface: RGB trace -> Estimate."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from scipy import signal

from model.bands import Band
from model.spectrum import bandpass, butter_sos, power_spectrum, spectral_hr

# Above this fraction of frames without a valid ROI, interpolating the gaps would invent the
# signal rather than bridge it, so the window is declared not estimable.
MAX_NAN_FRACTION = 0.2
# Below this mean level (0-255) a channel is black: relative colour changes are meaningless
# (and division by its mean would blow up), so the window is declared not estimable.
MIN_CHANNEL_LEVEL = 1.0
# Length of the short windows in which POS and CHROM fit their projection (Wang et al. 2017 use
# 1.6 s: long enough to span one beat at 40 bpm, short enough to track illumination changes).
SHORT_WINDOW_S = 1.6


@dataclass(frozen=True)
class Estimate:
    """Heart rate of one analysis window.

    hr_bpm: float, beats per minute; nan when the window is not estimable.
    quality: float, dB; SNR of the pulse spectrum (model.spectrum.snr_db), nan when hr_bpm is.
    """

    hr_bpm: float
    quality: float


NOT_ESTIMABLE = Estimate(float("nan"), float("nan"))


@dataclass(frozen=True)
class RGBEstimator(ABC):
    """Heart rate from the mean skin colour of one analysis window.

    band: heart-rate search band; defaults to the neonatal band, the population this tool is for.
    """

    name: ClassVar[str]
    band: Band = field(default_factory=Band.for_population)

    def estimate(self, rgb: np.ndarray, fps: float) -> Estimate:
        """Heart rate of one window.

        rgb: float array (T, 3), per-frame mean skin colour, RGB order, 0-255; rows are nan for
            frames without a valid ROI.
        fps: sampling rate of the rows, Hz.
        Returns an Estimate; NOT_ESTIMABLE if more than MAX_NAN_FRACTION of the rows are nan
        or a colour channel is black (mean below MIN_CHANNEL_LEVEL).
        """
        return self.analyse(rgb, fps)[0]

    def analyse(self, rgb: np.ndarray, fps: float) -> tuple[Estimate, np.ndarray | None]:
        """`estimate` and the window's pulse before its final band-pass (float (T,), for timing
        beats, model.hrv), or None when the window is not estimable."""
        rgb = _check_rgb(rgb)
        if np.isnan(rgb).any(axis=1).mean() > MAX_NAN_FRACTION:
            return NOT_ESTIMABLE, None
        if np.nanmean(rgb, axis=0).min() < MIN_CHANNEL_LEVEL:
            return NOT_ESTIMABLE, None
        raw = self._raw_pulse(_fill_gaps(rgb), fps)
        peak = spectral_hr(bandpass(raw, fps, self.band), fps, self.band)
        return Estimate(peak.hr_bpm, peak.snr_db), raw

    def pulse(self, rgb: np.ndarray, fps: float) -> np.ndarray:
        """Band-passed pulse signal of one window.

        rgb: float array (T, 3) as for `estimate`; nan rows are linearly interpolated over.
        Returns float array (T,), dimensionless (relative colour change), zero mean.
        """
        rgb = _fill_gaps(_check_rgb(rgb))
        return bandpass(self._raw_pulse(rgb, fps), fps, self.band)

    @abstractmethod
    def _raw_pulse(self, rgb: np.ndarray, fps: float) -> np.ndarray:
        """Pulse signal (T,) before the final band-pass, from a gap-free rgb (T, 3)."""


@dataclass(frozen=True)
class GREEN(RGBEstimator):
    """Green channel relative to its mean (Verkruysse et al. 2008): the baseline method."""

    name: ClassVar[str] = "green"

    def _raw_pulse(self, rgb: np.ndarray, fps: float) -> np.ndarray:
        g = rgb[:, 1]
        # Blood absorbs green light, so reflectance falls as blood volume rises; negate so the
        # pulse rises with it.
        return -(g / g.mean() - 1.0)


@dataclass(frozen=True)
class POS(RGBEstimator):
    """Plane-Orthogonal-to-Skin (Wang et al. 2017), overlap-added over SHORT_WINDOW_S windows."""

    name: ClassVar[str] = "pos"

    def _raw_pulse(self, rgb: np.ndarray, fps: float) -> np.ndarray:
        n = len(rgb)
        w = min(n, max(2, round(SHORT_WINDOW_S * fps)))
        # Every short window at once: (n - w + 1, w, 3), a view, no copy.
        c = np.lib.stride_tricks.sliding_window_view(rgb, w, axis=0).transpose(0, 2, 1)
        # Temporal normalisation removes the skin tone and the illumination level.
        cn = c / c.mean(axis=1, keepdims=True)
        s1 = cn[..., 1] - cn[..., 2]
        s2 = -2.0 * cn[..., 0] + cn[..., 1] + cn[..., 2]
        # Alpha-tuning: the ratio of standard deviations cancels the specular/intensity
        # distortion that both projections share.
        sd2 = s2.std(axis=1)
        alpha = np.divide(s1.std(axis=1), sd2, out=np.zeros_like(sd2), where=sd2 > 0)
        p = s1 + alpha[:, None] * s2
        p -= p.mean(axis=1, keepdims=True)
        # Overlap-add: window k adds its p to samples k .. k + w - 1.
        index = np.arange(len(p))[:, None] + np.arange(w)
        return np.bincount(index.ravel(), weights=p.ravel(), minlength=n)


@dataclass(frozen=True)
class CHROM(RGBEstimator):
    """Chrominance method (de Haan & Jeanne 2013) with 50 % overlapping Hann-windowed segments."""

    name: ClassVar[str] = "chrom"

    def _raw_pulse(self, rgb: np.ndarray, fps: float) -> np.ndarray:
        rn, gn, bn = (rgb / rgb.mean(axis=0)).T
        # Chrominance signals orthogonal to the standardized skin tone.
        xs = bandpass(3.0 * rn - 2.0 * gn, fps, self.band)
        ys = bandpass(1.5 * rn + gn - 1.5 * bn, fps, self.band)
        n = len(rgb)
        w = min(n, max(2, round(SHORT_WINDOW_S * fps)))
        w += w % 2  # an even length makes the 50 % overlapped Hann windows sum to a constant
        if w > n:
            return xs - _std_ratio(xs, ys) * ys
        hop = w // 2
        taper = np.hanning(w + 1)[:w]  # periodic Hann
        s = np.zeros(n)
        starts = list(range(0, n - w + 1, hop))
        if starts[-1] != n - w:
            starts.append(n - w)  # cover the tail; the final band-pass absorbs the extra gain
        for start in starts:
            x, y = xs[start : start + w], ys[start : start + w]
            s[start : start + w] += taper * (x - _std_ratio(x, y) * y)
        return s


# Normalised blood-volume-pulse signature of skin, RGB (de Haan & van Leest 2014): the relative
# colour change that one pulse causes.
PBV_SIGNATURE = np.array([0.33, 0.77, 0.53])
# Power density along the dominant high-frequency colour direction, in band vs above it: white
# (codec, exposure) noise is near 1; a direction that carries the pulse is far above.
WHITE_NOISE_MAX_RATIO = 4.0


@dataclass(frozen=True)
class PBVN(RGBEstimator):
    """Blood-volume signature with the dominant broadband noise direction nulled.

    Compressed, low-light video adds frame-to-frame noise that lies along ONE colour direction
    (MPEG luma quantisation and exposure jitter move R, G and B together), often far stronger
    than the pulse. The direction is estimated from the trace above the heart-rate band, where
    no pulse energy is expected. If the trace along it is white (the same power density in band
    as above it) it is noise, and the combination weights are the absolute pulse signature
    (mean colour x PBV signature) with that direction projected out. If it carries in-band
    energy it is (or contains) the pulse and nothing is nulled. Unlike POS and CHROM, no
    temporal normalisation re-mixes the noise into the pulse plane.
    """

    name: ClassVar[str] = "pbvn"

    def _raw_pulse(self, rgb: np.ndarray, fps: float) -> np.ndarray:
        mean = rgb.mean(axis=0)
        x = rgb - mean
        weights = mean * PBV_SIGNATURE
        noise = self._noise_direction(x, fps)
        if noise is not None:
            weights = weights - (weights @ noise) * noise
        return x @ weights / np.linalg.norm(mean)

    def _noise_direction(self, x: np.ndarray, fps: float) -> np.ndarray | None:
        """Unit vector (3,) of white high-frequency colour noise, or None."""
        nyquist = fps / 2
        cut = min(1.2 * self.band.hi_hz, 0.8 * nyquist)
        if cut <= self.band.hi_hz or len(x) < 32:
            return None  # no spectrum left above the band to learn the noise from
        sos = butter_sos(4, cut, "high", fps)
        high = signal.sosfiltfilt(sos, x, axis=0)
        _, vectors = np.linalg.eigh(np.cov(high.T))
        direction = vectors[:, -1]
        freqs, power = power_spectrum(signal.detrend(x @ direction), fps)
        in_band = (freqs >= self.band.lo_hz) & (freqs <= self.band.hi_hz)
        above = power[freqs >= cut].mean()
        if above <= 0 or power[in_band].mean() / above > WHITE_NOISE_MAX_RATIO:
            return None
        return direction


ESTIMATORS: dict[str, type[RGBEstimator]] = {cls.name: cls for cls in (POS, CHROM, GREEN, PBVN)}


def make_estimator(name: str, band: Band) -> RGBEstimator:
    """The estimator registered under `name` (case-insensitive), searching `band`."""
    try:
        cls = ESTIMATORS[name.strip().lower()]
    except KeyError:
        valid = ", ".join(sorted(ESTIMATORS))
        raise ValueError(f"unknown estimator {name!r}; valid: {valid}") from None
    return cls(band=band)


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, dtype=float)
    if rgb.ndim != 2 or rgb.shape[1] != 3:
        raise ValueError(f"rgb must have shape (T, 3), got {rgb.shape}")
    return rgb


def _fill_gaps(rgb: np.ndarray) -> np.ndarray:
    """Linearly interpolate nan rows of rgb (T, 3); leading/trailing gaps take the nearest row."""
    bad = np.isnan(rgb).any(axis=1)
    if not bad.any():
        return rgb
    if bad.all():
        raise ValueError("rgb has no valid rows")
    t = np.arange(len(rgb))
    return np.column_stack([np.interp(t, t[~bad], rgb[~bad, c]) for c in range(3)])


def _std_ratio(a: np.ndarray, b: np.ndarray) -> float:
    sb = b.std()
    return float(a.std() / sb) if sb > 0 else 0.0
