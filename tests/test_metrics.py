"""Agreement metrics on arrays small enough to check by hand."""

import json
import math

import numpy as np
import pytest

from model.metrics import agreement

KEYS = [
    "n",
    "coverage",
    "mae",
    "rmse",
    "mape",
    "pearson_r",
    "ba_bias",
    "ba_loa_low",
    "ba_loa_high",
    "within_5bpm",
    "within_10pct",
]


def test_nan_pairs_are_excluded_and_coverage_counts_them():
    est = np.array([100.0, 110.0, 90.0, np.nan, 80.0])
    ref = np.array([100.0, 100.0, 100.0, 120.0, np.nan])
    m = agreement(est, ref, n_total=5)
    assert list(m) == KEYS
    assert m["n"] == 3
    assert m["coverage"] == 0.6
    assert m["mae"] == pytest.approx(20.0 / 3.0)
    assert m["rmse"] == pytest.approx(math.sqrt(200.0 / 3.0))
    assert m["mape"] == pytest.approx(20.0 / 3.0)
    assert m["ba_bias"] == 0.0
    # SD of the errors [0, 10, -10] with ddof=1 is 10.
    assert m["ba_loa_low"] == pytest.approx(-19.6)
    assert m["ba_loa_high"] == pytest.approx(19.6)
    assert m["within_5bpm"] == pytest.approx(1.0 / 3.0)
    assert m["within_10pct"] == 1.0
    assert math.isnan(m["pearson_r"])  # the reference has zero variance


def test_linear_relation():
    m = agreement(np.array([61.0, 72.0, 83.0]), np.array([60.0, 70.0, 80.0]))
    assert m["n"] == 3 and m["coverage"] == 1.0
    assert m["mae"] == 2.0
    assert m["rmse"] == pytest.approx(math.sqrt(14.0 / 3.0))
    assert m["mape"] == pytest.approx(100.0 * (1 / 60 + 2 / 70 + 3 / 80) / 3)
    assert m["pearson_r"] == pytest.approx(1.0)
    assert m["ba_bias"] == 2.0
    assert m["ba_loa_low"] == pytest.approx(2.0 - 1.96)
    assert m["ba_loa_high"] == pytest.approx(2.0 + 1.96)
    assert m["within_5bpm"] == 1.0
    assert m["within_10pct"] == 1.0


def test_thresholds():
    est = np.array([106.0, 95.0, 100.0, 89.0])
    ref = np.array([100.0, 100.0, 100.0, 100.0])
    m = agreement(est, ref)
    assert m["within_5bpm"] == 0.5  # errors 6, 5, 0, 11
    assert m["within_10pct"] == 0.75


def test_pearson_needs_three_pairs():
    m = agreement(np.array([60.0, 70.0]), np.array([61.0, 72.0]))
    assert m["n"] == 2
    assert math.isnan(m["pearson_r"])
    assert m["mae"] == 1.5


def test_no_pairs():
    m = agreement(np.array([np.nan, 70.0]), np.array([60.0, np.nan]), n_total=4)
    assert list(m) == KEYS
    assert m["n"] == 0 and m["coverage"] == 0.0
    assert all(math.isnan(m[k]) for k in KEYS[2:])


def test_values_are_plain_python_numbers():
    m = agreement(np.array([61.0, 72.0, 83.0, 90.0]), np.array([60.0, 70.0, 80.0, 95.0]), 5)
    assert type(m["n"]) is int
    assert all(type(m[k]) is float for k in KEYS[1:])
    assert json.loads(json.dumps(m))["n"] == 4


def test_n_total_below_n_is_an_error():
    with pytest.raises(ValueError, match="n_total"):
        agreement(np.array([60.0, 70.0]), np.array([60.0, 70.0]), n_total=1)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        agreement(np.array([1.0, 2.0]), np.array([1.0]))
