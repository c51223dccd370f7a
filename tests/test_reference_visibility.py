"""scripts/reference_visibility.py: the check of whether a reference rate shows in a video's
pulse spectrum at all (issue 3, point 11: why the real clips miss the 6-bpm target)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from model.bands import Band
from model.classical import PBVN

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reference_visibility.py"


def _script():
    spec = importlib.util.spec_from_file_location("reference_visibility", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_pulse_in_the_trace_peaks_at_its_rate_and_a_wrong_rate_scores_like_noise() -> None:
    rv = _script()
    band = Band.for_population("adult")
    fps, hr = 15.0, 72.0
    t = np.arange(int(60 * fps)) / fps
    rng = np.random.default_rng(3)
    pulse = np.sin(2 * np.pi * hr / 60 * t) + 0.4 * np.sin(4 * np.pi * hr / 60 * t)
    skin = np.array([180.0, 120.0, 100.0])
    rgb = skin * (1 + 0.002 * pulse[:, None] * [0.33, 0.77, 0.53])
    rgb = rgb + rng.normal(0, 0.3, rgb.shape)
    freqs, power = rv.averaged_spectrum(rgb, fps, PBVN(band=band), 10.0, 2.0)
    at_ref, peak, at_peak = rv.visibility(freqs, power, hr, band)
    assert abs(peak - hr) <= 1.0
    assert at_ref == at_peak and at_ref > 3.0
    wrong, _, _ = rv.visibility(freqs, power, 130.0, band)
    assert wrong < 1.0


def test_script_reads_a_reference_table_of_real_clips(shared_data: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(shared_data / "reference_hr.csv"), "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    rows = json.loads(out.stdout)
    assert len(rows) == 4 * 4  # four clips x the four classical estimators
    assert {r["estimator"] for r in rows} == {"pos", "chrom", "green", "pbvn"}
    for r in rows:
        assert 40 <= r["peak_bpm"] <= 180 and r["peak_x_flat"] >= r["ref_x_flat"] > 0
