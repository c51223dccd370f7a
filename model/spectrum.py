"""Heart rate from the spectrum of a pulse signal, plus the band-pass that prepares the signal."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from model.bands import Band

# The pass-band is wider than the search band by this factor on each side, so that the filter's
# roll-off does not pull peaks near the band edges inwards.
PASSBAND_WIDENING = 1.1
# Per-edge Butterworth order; filtfilt doubles it and removes the phase shift.
BUTTER_ORDER = 4
# Zero-padding factor of the FFT: the spectrum is sampled this many times more densely than its
# native resolution fps / T, which makes the parabolic peak fit accurate to a small fraction of
# a native bin.
ZERO_PAD = 8
# Half-width of the "signal" windows around the fundamental and its first harmonic in the SNR
# (de Haan & Jeanne 2013).
SNR_HALF_WIDTH_BPM = 6.0


@dataclass(frozen=True)
class SpectralPeak:
    """Dominant in-band frequency of a pulse signal.

    hr_bpm: float, beats per minute; nan when the band holds no local spectral maximum.
    snr_db: float, dB; de Haan's SNR (see `snr_db`), nan when hr_bpm is nan.
    """

    hr_bpm: float
    snr_db: float


def bandpass(x: np.ndarray, fps: float, band: Band, harmonics: int = 1) -> np.ndarray:
    """Detrend and band-pass a signal around a heart-rate band.

    x: float array (T,), any unit, sampled at fps (Hz).
    harmonics: the upper edge is the band's upper edge times this (1 keeps the fundamental
        only, for rate estimation; 3 keeps the beat's shape, for timing beats).
    Returns float array (T,), same unit, zero-phase filtered with a Butterworth band-pass whose
    edges are `band` widened by PASSBAND_WIDENING (upper edge kept below Nyquist).
    """
    from scipy import signal  # 1.5 s to import; only the workers need it

    x = signal.detrend(np.asarray(x, dtype=float), type="linear")
    nyquist = fps / 2.0
    lo = band.lo_hz / PASSBAND_WIDENING
    hi = min(band.hi_hz * harmonics * PASSBAND_WIDENING, 0.95 * nyquist)
    if lo >= hi:
        raise ValueError(f"band {band} bpm does not fit below the Nyquist rate of {fps:g} fps")
    sos = butter_sos(BUTTER_ORDER, (lo, hi), "bandpass", fps)
    # sosfiltfilt's default edge padding is longer than very short windows allow.
    padlen = min(3 * (2 * len(sos) + 1), len(x) - 1)
    return signal.sosfiltfilt(sos, x, padlen=padlen)


def butter_sos(
    order: int, edges: float | tuple[float, float], btype: str, fps: float
) -> np.ndarray:
    """A Butterworth filter's second-order sections (scipy.signal.butter, edges in Hz), a
    fresh copy of a design made once per set of arguments: a worker filters every window
    with the same few filters, and designing one cost 1.3 ms, about twice what filtering a
    window with it costs (0.7 ms, sosfiltfilt; cProfile of 4 videos' NBHRnet run). scipy's
    filters want a writable array, hence the copy."""
    return _butter_design(order, edges, btype, fps).copy()


@lru_cache(maxsize=64)
def _butter_design(
    order: int, edges: float | tuple[float, float], btype: str, fps: float
) -> np.ndarray:
    from scipy import signal

    return signal.butter(order, edges, btype=btype, fs=fps, output="sos")


def power_spectrum(x: np.ndarray, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Hann-windowed, zero-padded power spectrum.

    x: float array (T,), sampled at fps (Hz).
    Returns (freqs_hz, power): float arrays (F,), one-sided, F = nfft // 2 + 1.
    """
    x = np.asarray(x, dtype=float)
    x = (x - x.mean()) * np.hanning(len(x))
    nfft = int(2 ** np.ceil(np.log2(ZERO_PAD * len(x))))
    power = np.abs(np.fft.rfft(x, nfft)) ** 2
    return np.fft.rfftfreq(nfft, d=1.0 / fps), power


def spectral_hr(pulse: np.ndarray, fps: float, band: Band) -> SpectralPeak:
    """Heart rate as the strongest spectral peak of `pulse` inside `band`.

    pulse: float array (T,), sampled at fps (Hz); should already be band-passed.
    The peak is the highest local maximum strictly inside the band (a maximum on the band edge is
    the skirt of an out-of-band component, not a heart beat), refined by a parabola through the
    log power of it and its two neighbours, so the rate is not quantised to FFT bins.
    """
    freqs, power = power_spectrum(pulse, fps)
    in_band = np.flatnonzero((freqs >= band.lo_hz) & (freqs <= band.hi_hz))
    if len(in_band) < 3 or not np.all(np.isfinite(power)):
        return SpectralPeak(float("nan"), float("nan"))
    # Neighbours on both sides of each in-band bin; the spectrum extends beyond the band edges.
    k = in_band[(in_band > 0) & (in_band < len(power) - 1)]
    is_peak = (power[k] > power[k - 1]) & (power[k] >= power[k + 1])
    if not is_peak.any():
        return SpectralPeak(float("nan"), float("nan"))
    best = k[is_peak][np.argmax(power[k[is_peak]])]
    f_peak = freqs[best] + _parabolic_offset(power, best) * (freqs[1] - freqs[0])
    hr_bpm = float(60.0 * f_peak)
    return SpectralPeak(hr_bpm, snr_db(freqs, power, hr_bpm, band))


def snr_db(freqs: np.ndarray, power: np.ndarray, hr_bpm: float, band: Band) -> float:
    """De Haan & Jeanne's (2013) pulse SNR, in dB.

    Ratio of the power within +-SNR_HALF_WIDTH_BPM of hr_bpm and of its first harmonic to the
    rest of the power in `band`; only the parts of these windows inside the band count.
    With a 10-s window the Hann main lobe (+-12 bpm) is wider than the signal window, so even a
    pure sinusoid scores only about 10 dB; compare SNRs between windows of equal length.
    freqs: float array (F,), Hz; power: float array (F,), same length.
    """
    bpm = 60.0 * freqs
    in_band = (bpm >= band.lo_bpm) & (bpm <= band.hi_bpm)
    near = (np.abs(bpm - hr_bpm) <= SNR_HALF_WIDTH_BPM) | (
        np.abs(bpm - 2 * hr_bpm) <= SNR_HALF_WIDTH_BPM
    )
    sig = power[in_band & near].sum()
    noise = power[in_band & ~near].sum()
    if noise <= 0:
        return float("inf")
    return float(10.0 * np.log10(sig / noise))


def _parabolic_offset(power: np.ndarray, k: int) -> float:
    """Offset in bins (-0.5..0.5) of the vertex of a parabola through log power at k-1, k, k+1."""
    a, b, c = np.log(np.maximum(power[k - 1 : k + 2], np.finfo(float).tiny))
    denom = a - 2 * b + c
    if denom >= 0:
        return 0.0
    return float(np.clip(0.5 * (a - c) / denom, -0.5, 0.5))
