"""Reference vitals in every supported layout, and clear errors for malformed ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.reference import reference_hr
from scheduler.references import (
    ReferenceFileError,
    find_reference_file,
    load_reference_table,
    load_references,
    parse_nbhr_csv,
    parse_sidecar,
    parse_ubfc,
)


def _touch_video(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 16)
    return path


def test_nbhr_layout_is_paired_and_parsed(tmp_path: Path) -> None:
    video = _touch_video(tmp_path / "video" / "20190612_101530.avi")
    ppg = tmp_path / "PPG" / "20190612_101530.csv"
    ppg.parent.mkdir()
    t = np.arange(600) / 60.0
    rows = [f"{np.sin(2 * np.pi * 2.5 * x):.4f},150,97" for x in t]
    ppg.write_text("\n".join(rows) + "\n")
    assert find_reference_file(video) == ("nbhr", ppg)
    series, source, problem = load_references(video)
    assert problem is None and source == str(ppg)
    kinds = {s.kind: s for s in series}
    assert set(kinds) == {"ppg", "hr", "spo2"}
    assert kinds["hr"].sample_rate_hz == 60.0
    assert reference_hr(kinds, 0.0, 8.0) == pytest.approx(150.0)


def test_nbhr_csv_with_wrong_columns_or_text_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "a.csv"
    bad.write_text("0.1,150,97\n0.2,150\n")
    with pytest.raises(ReferenceFileError, match="line 2: expected 3 columns"):
        parse_nbhr_csv(bad)
    bad.write_text("0.1,150,97\n0.2,abc,97\n")
    with pytest.raises(ReferenceFileError, match="line 2.*'abc' is not a number"):
        parse_nbhr_csv(bad)


def test_ubfc_ground_truth(tmp_path: Path) -> None:
    video = _touch_video(tmp_path / "subject1" / "vid.avi")
    t = np.arange(0, 20, 1 / 30)
    ppg = np.sin(2 * np.pi * 1.2 * t)
    hr = np.full_like(t, 72.0)
    gt = video.parent / "ground_truth.txt"
    gt.write_text("\n".join(" ".join(f"{v:.5e}" for v in row) for row in (ppg, hr, t)) + "\n")
    assert find_reference_file(video) == ("ubfc", gt)
    series = {s.kind: s for s in parse_ubfc(gt)}
    assert reference_hr(series, 2.0, 12.0) == pytest.approx(72.0)


def test_sidecar_with_ppg_only_gives_hr_from_the_ppg_spectrum(tmp_path: Path) -> None:
    video = _touch_video(tmp_path / "rec one.mp4")
    t = np.arange(0, 30, 1 / 50)
    lines = ["time_s,ppg"] + [f"{x:.4f},{np.sin(2 * np.pi * (157 / 60) * x):.5f}" for x in t]
    video.with_suffix(".csv").write_text("\n".join(lines) + "\n")
    series, _, problem = load_references(video)
    assert problem is None
    ref = reference_hr({s.kind: s for s in series}, 5.0, 15.0)
    assert ref == pytest.approx(157.0, abs=0.5)


def test_sidecar_without_time_column_is_reported_not_fatal(tmp_path: Path) -> None:
    video = _touch_video(tmp_path / "x.avi")
    video.with_suffix(".csv").write_text("heart,rate\n1,2\n")
    with pytest.raises(ReferenceFileError, match="needs a time_s column"):
        parse_sidecar(video.with_suffix(".csv"))
    series, _, problem = load_references(video)
    assert series == [] and "unusable" in problem and "time_s" in problem


def test_missing_reference_is_reported(tmp_path: Path) -> None:
    video = _touch_video(tmp_path / "lonely.avi")
    series, source, problem = load_references(video)
    assert series == [] and source is None
    assert problem.startswith("no reference found")


def test_reference_table_by_relative_path_and_name(shared_data: Path) -> None:
    table = load_reference_table(shared_data / "reference_hr.csv")
    video = shared_data / "bias_eval" / "India_video1_forehead.avi"
    hr, subject = table.lookup(video)
    assert hr == pytest.approx(85.413, abs=1e-3)
    assert subject == "India/video1"
    series, _, problem = load_references(video, table)
    assert problem is None and series[0].is_mean


def test_reference_table_with_bad_columns(tmp_path: Path) -> None:
    t = tmp_path / "t.csv"
    t.write_text("file,bpm\na.avi,70\n")
    with pytest.raises(ReferenceFileError, match="needs columns recording,hr_bpm"):
        load_reference_table(t)
    t.write_text("recording,hr_bpm\na.avi,seventy\n")
    with pytest.raises(ReferenceFileError, match="line 2.*not a number"):
        load_reference_table(t)


def test_implausible_oximeter_values_are_ignored() -> None:
    from model.reference import ReferenceSeries

    hr = ReferenceSeries("hr", np.r_[np.zeros(60), np.full(540, 140.0)], "x", sample_rate_hz=60)
    assert reference_hr({"hr": hr}, 0.0, 10.0) == pytest.approx(140.0)


def test_reference_table_that_is_not_text(tmp_path: Path) -> None:
    t = tmp_path / "t.csv"
    t.write_bytes(b"\xff\xfe\x00binary\x00")
    with pytest.raises(ReferenceFileError, match="cannot read reference table"):
        load_reference_table(t)


def test_probe_off_spo2_readings_are_not_values() -> None:
    """An oximeter writes 0 while its probe is off: neither a window's SpO2 nor a recording's
    median and minimum (the report) may count those readings."""
    from model.reference import ReferenceSeries

    values = np.r_[np.full(60, 97.0), np.zeros(60), np.full(60, 95.0)]
    spo2 = ReferenceSeries("spo2", values, "test", sample_rate_hz=60.0)
    assert list(np.unique(spo2.plausible(spo2.values))) == [95.0, 97.0]
    assert spo2.window_mean(0.0, 3.0) == pytest.approx(96.0)
    assert spo2.window_mean(1.0, 2.0) is None  # only probe-off readings there
