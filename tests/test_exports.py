"""Results for people who work in pandas, R or SQL: the SQL views a migration creates, CSV and
parquet files, and the window filters (--min-quality, --face-only) with what they change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers import nbhr, nbhr_json


@pytest.fixture
def processed(demo_archive: Path, db_url: str) -> str:
    """The session's demo (2 face recordings + 1 empty cot) through POS and CHROM."""
    nbhr("run", demo_archive, "--db", db_url, "--estimator", "pos", "--estimator", "chrom")
    return db_url


def test_views_answer_pandas_read_sql_with_the_clis_numbers(processed: str) -> None:
    url = processed
    windows = nbhr_json("results", "--db", url, "--format", "json")
    view = pd.read_sql("select * from v_window_hr order by recording, estimator, t_start", url)
    assert len(view) == len(windows) == 3 * 4 * 2
    assert set(view["estimator"]) == {"pos", "chrom"} and view["model"].isna().all()
    by_key = {(w["recording"], w["estimator"], w["t_start"]): w for w in windows}
    for row in view.itertuples():
        w = by_key[(row.recording, row.estimator, round(row.t_start, 3))]
        if w["hr_bpm"] is None:
            assert pd.isna(row.hr_bpm) and row.usable == 0
        else:
            assert row.hr_bpm == pytest.approx(w["hr_bpm"], abs=1e-3) and row.usable == 1
            assert row.error_bpm == pytest.approx(w["hr_bpm"] - w["ref_hr_bpm"], abs=1e-3)

    summary = pd.read_sql("select * from v_subject_summary order by subject, estimator", url)
    per_subject = {(r.subject, r.estimator): r for r in summary.itertuples()}
    # Two infants (the empty cot is one infant's second recording), two estimators.
    assert set(per_subject) == {(w["subject"], w["estimator"]) for w in windows}
    assert len(per_subject) == 2 * 2
    for (subject, estimator), row in per_subject.items():
        mine = [w for w in windows if w["subject"] == subject and w["estimator"] == estimator]
        usable = [w for w in mine if w["hr_bpm"] is not None]
        assert (row.n_windows, row.n_usable) == (len(mine), len(usable))
        assert row.coverage == pytest.approx(len(usable) / len(mine))
        if usable:
            hrs = [w["hr_bpm"] for w in usable]
            errors = [abs(w["hr_bpm"] - w["ref_hr_bpm"]) for w in usable]
            assert row.hr_mean_bpm == pytest.approx(np.mean(hrs), abs=1e-3)
            assert row.hr_max_bpm == pytest.approx(max(hrs), abs=1e-3)
            assert row.window_mae_bpm == pytest.approx(np.mean(errors), abs=1e-3)
        else:
            assert pd.isna(row.hr_mean_bpm) and pd.isna(row.window_mae_bpm)
    recordings = pd.read_sql("select * from v_recording_summary", url)
    assert len(recordings) == 3 * 2 and recordings["n_windows"].sum() == len(windows)


def test_results_to_csv_and_parquet_files(processed: str, tmp_path: Path) -> None:
    url = processed
    rows = nbhr_json("results", "--db", url, "--level", "recording", "--format", "json")
    out = tmp_path / "rec.parquet"
    nbhr("results", "--db", url, "--level", "recording", "--format", "parquet", "--out", out)
    table = pd.read_parquet(out)
    assert list(table.columns) == list(rows[0]) and len(table) == len(rows)
    assert table["hr_bpm"].tolist() == pytest.approx(
        [np.nan if r["hr_bpm"] is None else r["hr_bpm"] for r in rows], nan_ok=True
    )
    csv_out = tmp_path / "rec.csv"
    nbhr("results", "--db", url, "--level", "recording", "--format", "csv", "--out", csv_out)
    assert len(pd.read_csv(csv_out)) == len(rows)
    bad = nbhr("results", "--db", url, "--format", "parquet", check=False)
    assert bad.returncode == 2 and "--out" in bad.stderr


def test_quality_floor_and_face_only_trade_coverage_for_error(processed: str) -> None:
    url = processed
    base = nbhr_json("evaluate", "--db", url, "--estimator", "pos", "--level", "window", "--json")
    assert base["filters"] == {"min_quality": None, "face_only": False}
    # The empty cot's windows have no face: they count as misses unless --face-only.
    face = nbhr_json(
        "evaluate", "--db", url, "--estimator", "pos", "--level", "window", "--face-only", "--json"
    )
    assert face["overall"]["n"] == base["overall"]["n"]
    assert face["overall"]["coverage"] > base["overall"]["coverage"]

    windows = nbhr_json("results", "--db", url, "--estimator", "pos", "--format", "json")
    qualities = sorted(w["quality"] for w in windows if w["quality"] is not None)
    # Between two neighbours near the median (printed qualities are rounded): half go.
    half = len(qualities) // 2
    floor = (qualities[half - 1] + qualities[half]) / 2
    kept = nbhr_json(
        "results",
        "--db",
        url,
        "--estimator",
        "pos",
        "--min-quality",
        str(floor),
        "--format",
        "json",
    )
    assert kept and all(w["quality"] >= floor for w in kept)
    assert len(kept) == sum(q >= floor for q in qualities)
    strict = nbhr_json(
        "evaluate",
        *("--db", url, "--estimator", "pos", "--level", "window"),
        *("--min-quality", str(floor), "--json"),
    )
    assert strict["overall"]["n"] == len(kept)
    assert strict["overall"]["coverage"] < base["overall"]["coverage"]

    (sweep,) = nbhr_json(
        "evaluate",
        "--db",
        url,
        "--estimator",
        "pos",
        "--level",
        "window",
        "--quality-sweep",
        "--json",
    )
    floors = [row["min_quality"] for row in sweep["sweep"]]
    assert floors[0] is None and floors[1:] == sorted(floors[1:]) and len(floors) >= 3
    coverage = [row["coverage"] for row in sweep["sweep"]]
    assert coverage == sorted(coverage, reverse=True) and coverage[-1] < coverage[0]
    assert sweep["sweep"][0]["mae"] == pytest.approx(base["overall"]["mae"])
    text = nbhr("evaluate", "--db", url, "--estimator", "pos", "--quality-sweep").stdout
    assert "quality floor" in text and "coverage" in text


def test_reference_spo2_is_shown_next_to_hr(processed: str, demo_archive: Path) -> None:
    """Each window carries the mean of the pulse oximeter's SpO2 over its span, as in the
    recording's NBHR PPG file (PPG, HR, SpO2 at 60 Hz), and each recording the median."""
    url = processed
    windows = nbhr_json("results", "--db", url, "--estimator", "pos", "--format", "json")
    by_rec: dict[str, list] = {}
    for w in windows:
        by_rec.setdefault(w["recording"], []).append(w)
    for path, ws in by_rec.items():
        csv = demo_archive / "PPG" / (Path(path).stem + ".csv")
        spo2 = np.loadtxt(csv, delimiter=",")[:, 2]
        t = np.arange(len(spo2)) / 60.0
        for w in ws:
            inside = (t >= w["t_start"]) & (t < w["t_end"])
            assert w["ref_spo2_pct"] == pytest.approx(spo2[inside].mean(), abs=1e-3)
    recs = nbhr_json(
        "results", "--db", url, "--estimator", "pos", "--level", "recording", "--format", "json"
    )
    for r in recs:
        values = [w["ref_spo2_pct"] for w in by_rec[r["recording"]]]
        assert r["ref_spo2_pct"] == pytest.approx(float(np.median(values)), abs=1e-3)
