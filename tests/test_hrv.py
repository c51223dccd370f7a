"""Beats and heart-rate variability: synthetic pulses of known beat intervals built from real
PPG beat shapes, and `nbhr hrv` on a real run of the demo archive."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.bands import Band
from model.hrv import PulseTrack, clean_intervals, detect_beats, hrv
from model.synthetic import load_beat_templates
from tests.helpers import nbhr, nbhr_json

NEONATE = Band.for_population("neonate")


def _pulse(feet: np.ndarray, fps: float, template: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A pulse wave sampled at fps whose beat k runs from feet[k] to feet[k + 1] (s), each beat
    the same real PPG shape stretched to its interval; and the systolic peak times (s)."""
    t = np.arange(0.0, feet[-1], 1.0 / fps)
    k = np.clip(np.searchsorted(feet, t, side="right") - 1, 0, len(feet) - 2)
    phase = np.clip((t - feet[k]) / (feet[k + 1] - feet[k]), 0.0, 1.0)
    s = len(template)
    ring = np.append(template, template[0])
    wave = np.interp(phase * s, np.arange(s + 1), ring)
    fine = np.linspace(0.0, 1.0, 64 * s, endpoint=False)
    peak_phase = fine[np.argmax(np.interp(fine * s, np.arange(s + 1), ring))]
    return wave, feet[:-1] + peak_phase * np.diff(feet)


def _alternating(n: int = 80, short: float = 0.42, long: float = 0.46) -> np.ndarray:
    ibi = np.tile([short, long], n // 2)
    return np.concatenate([[0.3], 0.3 + np.cumsum(ibi)])


def test_hrv_of_known_intervals_is_exact() -> None:
    ibi = np.tile([0.40, 0.45], 20)
    beats = np.concatenate([[1.0], 1.0 + np.cumsum(ibi)])
    got = hrv(beats, NEONATE)
    assert got.n_beats == 41 and got.n_intervals == 40 and got.n_rejected == 0
    assert got.rmssd_ms == pytest.approx(50.0)
    assert got.sdnn_ms == pytest.approx(np.std(1000 * ibi, ddof=1))
    assert got.mean_ibi_ms == pytest.approx(425.0)
    assert got.hr_bpm == pytest.approx(60000 / 425.0)
    assert got.covered_s == pytest.approx(ibi.sum())


def test_missed_and_extra_beats_are_rejected_and_break_successive_differences() -> None:
    ibi = np.full(30, 0.45)
    ibi[10] = 0.90  # a missed beat: twice the interval
    ibi[20:22] = [0.20, 0.25]  # an extra beat splits one interval in two
    beats = np.concatenate([[0.0], np.cumsum(ibi)])
    got_ibi, kept = clean_intervals(beats, NEONATE)
    assert np.allclose(got_ibi, ibi)
    assert list(np.flatnonzero(~kept)) == [10, 20, 21]
    result = hrv(beats, NEONATE)
    # Every kept interval is 450 ms, and no difference spans a rejected one.
    assert result.rmssd_ms == pytest.approx(0.0, abs=1e-9)
    assert result.sdnn_ms == pytest.approx(0.0, abs=1e-9)
    assert result.n_rejected == 3


def test_out_of_band_intervals_are_rejected() -> None:
    adult = Band.for_population("adult")
    beats = np.cumsum(np.r_[0.0, np.full(10, 1.0), 2.0, np.full(10, 1.0)])
    _, kept = clean_intervals(beats, adult)
    assert not kept[10] and kept[:10].all() and kept[11:].all()  # 2 s = 30 bpm < 40


@pytest.mark.parametrize("fps", [30.0, 60.0])
def test_beats_of_a_clean_real_shape_pulse_are_timed_to_a_few_ms(fps: float) -> None:
    template = load_beat_templates()[0]
    wave, peaks = _pulse(_alternating(), fps, template)
    got = detect_beats(wave, fps, NEONATE)
    inner = peaks[(peaks > got[0] - 0.1) & (peaks < got[-1] + 0.1)]
    assert len(got) == len(inner) >= 75
    assert np.abs(got - inner).max() < 0.02  # a constant offset at most
    # Each interval away from the filter's edges to within a quarter of a frame (8 ms at 30 fps).
    assert np.abs(np.diff(got[2:-2]) - np.diff(inner[2:-2])).max() < 0.25 / fps
    want, found = hrv(inner, NEONATE), hrv(got, NEONATE)
    assert found.rmssd_ms == pytest.approx(want.rmssd_ms, rel=0.1)
    assert found.sdnn_ms == pytest.approx(want.sdnn_ms, rel=0.1)
    assert found.hr_bpm == pytest.approx(want.hr_bpm, abs=0.2)


def test_noise_inflates_rmssd_but_keeps_the_rate() -> None:
    """What a camera's pulse does to HRV: the rate stays right, RMSSD grows with noise."""
    rng = np.random.default_rng(3)
    wave, peaks = _pulse(_alternating(), 30.0, load_beat_templates()[0])
    clean = hrv(peaks, NEONATE)
    noisy = hrv(detect_beats(wave + 0.1 * rng.standard_normal(len(wave)), 30.0, NEONATE), NEONATE)
    assert noisy.hr_bpm == pytest.approx(clean.hr_bpm, abs=1.0)
    assert noisy.rmssd_ms > clean.rmssd_ms


def test_no_beats_are_invented_in_a_gap() -> None:
    wave, peaks = _pulse(_alternating(), 30.0, load_beat_templates()[0])
    t = np.arange(len(wave)) / 30.0
    gap = (t >= 10.0) & (t < 15.0)
    wave[gap] = np.nan
    got = detect_beats(wave, 30.0, NEONATE)
    assert not ((got > 10.05) & (got < 14.95)).any()
    ibi, kept = clean_intervals(got, NEONATE)
    assert not kept[ibi > 1.0].any()  # the interval across the gap is not a beat interval
    assert len(got) >= len(peaks) - 14


def test_pulse_track_joins_overlapping_windows_into_one_pulse() -> None:
    """The workers' overlap-add: 10-s windows every 2 s, each cut from the same pulse with its
    own offset, trend and scale, give the beats of the whole pulse."""
    fps = 30.0
    wave, peaks = _pulse(_alternating(120), fps, load_beat_templates()[3])
    n = len(wave)
    track = PulseTrack(0, n, fps)
    win, hop = int(10 * fps), int(2 * fps)
    for k, start in enumerate(range(0, n - win + 1, hop)):
        piece = wave[start : start + win]
        track.add(start, (1 + 0.3 * k) * piece + 5.0 + 0.01 * np.arange(win))
    got = track.beats(NEONATE, 0.0, n / fps)
    inner = peaks[(peaks > got[0] - 0.1) & (peaks < got[-1] + 0.1)]
    assert len(got) == len(inner) >= 100
    assert np.abs(np.diff(got) - np.diff(inner)).max() < 0.005
    assert track.beats(NEONATE, 20.0, 30.0).min() >= 20.0


def test_hrv_command_on_a_real_run(demo_archive: Path, db_url: str, tmp_path: Path) -> None:
    nbhr("run", demo_archive, "--db", db_url, "--estimator", "pos", "--estimator", "chrom")
    rows = nbhr_json("hrv", "--db", db_url, "--json", "--intervals")
    assert {r["estimator"] for r in rows} == {"pos", "chrom"}
    assert len(rows) == 6  # 3 recordings x 2 estimators
    faces = [r for r in rows if r["estimate"]["n_beats"] > 0]
    assert len(faces) == 4  # the empty cot has no beats
    for r in faces:
        est, ref = r["estimate"], r["reference"]
        # Beats of the video's pulse give the reference PPG's rate over the same stretch.
        assert est["hr_bpm"] == pytest.approx(ref["hr_bpm"], abs=3.0)
        assert abs(est["n_beats"] - ref["n_beats"]) <= 2
        assert est["sdnn_ms"] > 0 and est["rmssd_ms"] > 0
        assert len(est["intervals"]) == est["n_intervals"]
        assert all(240 <= i["ibi_ms"] <= 750 for i in est["intervals"])
    # Running the archive again stores no second copy of the beats.
    before = {(r["recording"], r["estimator"]): r["estimate"]["n_beats"] for r in rows}
    nbhr("run", demo_archive, "--db", db_url, "--estimator", "pos", "--estimator", "chrom")
    again = nbhr_json("hrv", "--db", db_url, "--json")
    assert {(r["recording"], r["estimator"]): r["estimate"]["n_beats"] for r in again} == before
    # The report reads the same beats (and everything else) from either database.
    report = nbhr_json("report", "--db", db_url, "--out", tmp_path / "r.html", "--json")
    assert report["recordings"] == 3 and report["recording_plots"] == 3
    html = (tmp_path / "r.html").read_text()
    some = next(r for r in faces if r["estimator"] == "pos")["estimate"]["rmssd_ms"]
    assert f"<td>{some:.2f}</td>" in html
    table = nbhr("hrv", "--db", db_url, "--estimator", "pos").stdout
    assert "sdnn_ms" in table and "ref_rmssd_ms" in table
    bad = nbhr("hrv", "--db", db_url, "--hr-range", "200-100", check=False)
    assert bad.returncode == 2 and "invalid heart-rate band" in bad.stderr


def test_segment_boundaries_lose_and_duplicate_no_beat(demo_archive: Path, tmp_path: Path) -> None:
    """Beats of a recording cut into 4-s segments (each worker sees only its stretch of the
    video) are those of the same recording in one segment."""
    whole, cut = (f"sqlite:///{tmp_path / name}" for name in ("whole.sqlite", "cut.sqlite"))
    nbhr("run", demo_archive, "--db", whole, "--estimator", "pos", "--segment-s", "600")
    nbhr("run", demo_archive, "--db", cut, "--estimator", "pos", "--segment-s", "4")
    status = nbhr_json("status", "--db", cut, "--json")
    assert sum(status["segments"].values()) == 3 * 2  # each recording really cut in two

    def beats(url: str) -> dict[str, list[dict]]:
        rows = nbhr_json("hrv", "--db", url, "--json", "--intervals")
        return {r["recording"]: r["estimate"].get("intervals", []) for r in rows}

    one, many = beats(whole), beats(cut)
    assert one.keys() == many.keys()
    for rec, intervals in one.items():
        t_one = np.array([i["t_s"] for i in intervals])
        t_many = np.array([i["t_s"] for i in many[rec]])
        assert len(t_one) == len(t_many)
        if len(t_one):
            # The pulse around a boundary is made of fewer windows, so a beat may move a little.
            assert np.abs(t_one - t_many).max() < 0.03
