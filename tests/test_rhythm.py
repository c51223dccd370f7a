"""Bradycardia and tachycardia episodes from window HR series (model/rhythm.py, `nbhr rhythm`):
synthetic series with known episodes, then the real CLI on the demo archive."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.rhythm import episodes
from tests.helpers import nbhr_json


def _grid(n: int, hop: float = 2.0, window: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    t0 = np.arange(n) * hop
    return t0, t0 + window


def test_known_episodes_are_found_with_their_duration() -> None:
    t0, t1 = _grid(40)
    hr = np.full(40, 150.0)
    hr[10:15] = [95, 88, 85, 90, 97]  # 5 windows below 100: 10 s of bradycardia
    hr[30:33] = [185, 195, 190]  # 3 windows above 180: 6 s of tachycardia
    found = episodes(t0, t1, hr)
    assert [(e.kind, e.n_windows) for e in found] == [("bradycardia", 5), ("tachycardia", 3)]
    brady, tachy = found
    # Window 10 is centred at 25 s, window 14 at 33 s; each stands for +-1 s (the hop).
    assert (brady.t_start, brady.t_end, brady.duration_s) == (24.0, 34.0, 10.0)
    assert brady.extreme_bpm == 85 and tachy.extreme_bpm == 195
    assert tachy.duration_s == pytest.approx(6.0)


def test_unmeasured_time_ends_an_episode_and_thresholds_are_parameters() -> None:
    t0, t1 = _grid(20)
    hr = np.full(20, 70.0)  # an adult at rest
    hr[8] = np.nan  # a window without an estimate splits the run
    found = episodes(t0, t1, hr)
    assert [e.n_windows for e in found] == [8, 11]
    assert episodes(t0, t1, hr, brady_bpm=60, tachy_bpm=100) == []
    assert [e.n_windows for e in episodes(t0, t1, hr, min_duration_s=20)] == [11]
    # A gap in the windows themselves (a missing stretch of video) splits it too.
    keep = np.r_[0:5, 9:20]
    assert [e.n_windows for e in episodes(t0[keep], t1[keep], np.full(16, 90.0))] == [5, 11]
    with pytest.raises(ValueError, match="below"):
        episodes(t0, t1, hr, brady_bpm=200, tachy_bpm=180)


def test_rhythm_command_reports_estimate_and_reference_episodes(
    demo_archive: Path, sqlite_url: str
) -> None:
    from tests.helpers import nbhr

    nbhr("run", demo_archive, "--db", sqlite_url, "--estimator", "pos")
    # Brady/tachy limits inside the demo's neonatal rates, so that both kinds occur.
    windows = nbhr_json("results", "--db", sqlite_url, "--format", "json")
    refs = sorted(w["ref_hr_bpm"] for w in windows if w["ref_hr_bpm"] is not None)
    low, high = refs[len(refs) // 4], refs[3 * len(refs) // 4]
    report = nbhr_json(
        "rhythm",
        *("--db", sqlite_url, "--brady-bpm", str(low), "--tachy-bpm", str(high), "--json"),
    )
    assert {r["estimator"] for r in report} == {"pos"} and len(report) == 3
    assert all(
        r["thresholds"] == {"brady_bpm": low, "tachy_bpm": high, "min_duration_s": 0.0}
        for r in report
    )
    for rec in report:
        for source in ("estimate", "reference"):
            for e in rec[source]["episodes"]:
                assert e["duration_s"] == pytest.approx(2.0 * e["n_windows"])
                if e["kind"] == "bradycardia":
                    assert e["extreme_bpm"] < low
                else:
                    assert e["extreme_bpm"] > high
            total = rec[source]["bradycardia_s"] + rec[source]["tachycardia_s"]
            assert total == pytest.approx(sum(e["duration_s"] for e in rec[source]["episodes"]))
    face = [r for r in report if r["estimate"]["n_windows_with_hr"] > 0]
    assert len(face) == 2
    # The reference below the lower quartile for some windows: episodes exist somewhere.
    assert any(r["reference"]["episodes"] for r in report)
