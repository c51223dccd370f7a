"""One recording-level heart rate from many per-window estimates."""

from __future__ import annotations

import numpy as np

# A window whose pulse SNR is below 0 dB has less power at its heart rate (and harmonic) than in
# the rest of the band: its peak is as likely noise as pulse.
MIN_GOOD_SNR_DB = 0.0
# Fewer good windows than this are too few to outvote a bad one, so all windows are used then.
MIN_GOOD_WINDOWS = 3


def aggregate_hr(hr_bpm: np.ndarray, quality: np.ndarray) -> float:
    """Recording-level heart rate as a quality-weighted median of window estimates.

    hr_bpm: float array (N,), beats per minute, one per analysis window; nan = not estimable.
    quality: float array (N,), SNR in dB (model.spectrum.snr_db) of the same windows.

    Rule: windows with a non-finite hr_bpm or a nan quality are ignored. If at least
    MIN_GOOD_WINDOWS windows reach MIN_GOOD_SNR_DB, only those are used; otherwise all remaining
    windows are. The result is their weighted median with weights 10 ** (quality / 10), the SNR as
    a power ratio, so a window counts in proportion to how much its pulse stands out. The median,
    not the mean, keeps a minority of wrong peaks (harmonics, motion) from pulling the result.
    Returns beats per minute; nan when no window is usable.
    """
    hr = np.asarray(hr_bpm, dtype=float)
    q = np.asarray(quality, dtype=float)
    used = aggregated_windows(hr, q)
    if not used.any():
        return float("nan")
    return weighted_median(hr[used], 10.0 ** (q[used] / 10.0))


def aggregated_windows(hr_bpm: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Which windows aggregate_hr uses (its rule, above): bool (N,).

    hr_bpm, quality: float arrays (N,), as for aggregate_hr.
    """
    hr = np.asarray(hr_bpm, dtype=float)
    q = np.asarray(quality, dtype=float)
    if hr.shape != q.shape or hr.ndim != 1:
        raise ValueError(
            f"hr_bpm and quality must be 1-D of equal length, got {hr.shape}, {q.shape}"
        )
    usable = np.isfinite(hr) & ~np.isnan(q)
    good = usable & (q >= MIN_GOOD_SNR_DB)
    return good if good.sum() >= MIN_GOOD_WINDOWS else usable


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """Weighted median of values (N,) with non-negative weights (N,), N >= 1.

    The value at which the cumulative weight reaches half the total; when it reaches exactly half
    between two values, their mean (so equal weights give the ordinary median). Infinite weights
    (noise-free windows) outrank all finite ones and share equally among themselves.
    """
    v = np.asarray(values, dtype=float)
    w = np.asarray(weights, dtype=float)
    if np.isinf(w).any():
        w = np.isinf(w).astype(float)
    if w.sum() <= 0:
        w = np.ones_like(v)
    order = np.argsort(v)
    v, w = v[order], w[order]
    cum = np.cumsum(w)
    half = cum[-1] / 2.0
    i = int(np.searchsorted(cum, half))
    if i < len(v) - 1 and np.isclose(cum[i], half):
        return float((v[i] + v[i + 1]) / 2.0)
    return float(v[i])
