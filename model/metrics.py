"""Agreement between estimated and reference heart rates (error, correlation, Bland-Altman)."""

from __future__ import annotations

import numpy as np

# Bland-Altman limits of agreement: bias +- this many standard deviations of the differences.
LOA_Z = 1.96

_FLOAT_KEYS = (
    "mae",
    "rmse",
    "mape",
    "pearson_r",
    "ba_bias",
    "ba_loa_low",
    "ba_loa_high",
    "within_5bpm",
    "within_10pct",
)


def agreement(est: np.ndarray, ref: np.ndarray, n_total: int | None = None) -> dict:
    """Agreement metrics between est and ref, both float arrays (N,) in beats per minute.

    Pairs where either value is nan (or infinite) are excluded. n_total is the number of items
    that should have had an estimate (coverage denominator, at least n); None means coverage 1.0.
    Returns a dict of plain Python numbers (nan where undefined):
      n: int, finite pairs; coverage: n / n_total;
      mae, rmse: bpm; mape: percent of ref;
      pearson_r: nan if n < 3 or either side has zero variance;
      ba_bias: mean(est - ref), bpm; ba_loa_low, ba_loa_high: bias -+ LOA_Z * SD (ddof=1), bpm;
      within_5bpm: fraction with |est - ref| <= 5; within_10pct: fraction with |err| <= 0.1 * ref.
    """
    est = np.asarray(est, dtype=float)
    ref = np.asarray(ref, dtype=float)
    if est.shape != ref.shape:
        raise ValueError(f"est and ref must have the same shape, got {est.shape} and {ref.shape}")
    ok = np.isfinite(est) & np.isfinite(ref)
    est, ref = est[ok], ref[ok]
    n = int(ok.sum())
    if n_total is not None and n_total < n:
        raise ValueError(f"n_total ({n_total}) is smaller than the number of finite pairs ({n})")
    coverage = 1.0 if n_total is None else n / n_total if n_total else float("nan")
    if n == 0:
        return {"n": 0, "coverage": coverage, **dict.fromkeys(_FLOAT_KEYS, float("nan"))}
    err = est - ref
    abs_err = np.abs(err)
    bias = float(err.mean())
    sd = float(err.std(ddof=1)) if n > 1 else float("nan")
    return {
        "n": n,
        "coverage": float(coverage),
        "mae": float(abs_err.mean()),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mape": float(100.0 * np.mean(abs_err / np.abs(ref))),
        "pearson_r": _pearson(est, ref),
        "ba_bias": bias,
        "ba_loa_low": bias - LOA_Z * sd,
        "ba_loa_high": bias + LOA_Z * sd,
        "within_5bpm": float(np.mean(abs_err <= 5.0)),
        "within_10pct": float(np.mean(abs_err <= 0.1 * np.abs(ref))),
    }


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])
