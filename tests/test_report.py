"""`nbhr report`: a real run's HTML report, rendered by a real headless Chromium, holds the
numbers `nbhr evaluate --json` gives and draws its embedded figures."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np

from nbhr.report import COMPARISON
from tests.conftest import missing
from tests.helpers import nbhr, nbhr_json

ESTIMATORS = ("pos", "green")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    missing(
        "Chromium is required in CI (.ci/run installs Debian's chromium package)",
        "no Chromium on this machine (apt-get install chromium)",
    )


def _render(html_file: Path, out_png: Path, height: int) -> str:
    """Screenshot of the page (1200 px wide) and the DOM Chromium built from it."""
    browser = _chromium()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    url = html_file.resolve().as_uri()
    subprocess.run(
        [browser, *flags, f"--window-size=1200,{height}", f"--screenshot={out_png}", url],
        check=True,
        capture_output=True,
        timeout=120,
    )
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", url],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return dom.stdout


class _Tables(HTMLParser):
    """Text of every table cell, per row, per table; and every image's src."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[tuple[str, list[list[str]]]] = []
        self.images: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "table":
            self.tables.append((a.get("class") or "", []))
        elif tag == "tr":
            self.tables[-1][1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(a["src"])

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _parse(dom: str) -> _Tables:
    p = _Tables()
    p.feed(dom)
    return p


def _fmt(v: float | int | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def _comparison_rows(page: _Tables) -> dict[str, list[str]]:
    rows = next(rows for cls, rows in page.tables if cls == "comparison")
    return {r[0]: r[1:] for r in rows[2:]}


def _expected_cells(db_url: str, estimator: str, *filters: str) -> list[str]:
    evals = {
        lev: nbhr_json(
            "evaluate", "--db", db_url, "--estimator", estimator, "--level", lev, "--json", *filters
        )["overall"]
        for lev in ("window", "recording", "subject")
    }
    return [_fmt(evals[lev][metric]) for lev, metric, _ in COMPARISON]


def test_report_renders_in_chromium_with_evaluates_numbers(
    demo_archive: Path, sqlite_url: str, tmp_path: Path
) -> None:
    """On SQLite, the default (test_hrv's real run builds the report on PostgreSQL)."""
    db_url = sqlite_url
    nbhr("run", demo_archive, "--db", db_url, *(a for e in ESTIMATORS for a in ("--estimator", e)))
    out = tmp_path / "report.html"
    summary = nbhr_json("report", "--db", db_url, "--out", out, "--json")
    assert summary["out"] == str(out)
    assert summary["recordings"] == 3 and summary["subjects"] == 2
    assert summary["estimators"] == sorted(ESTIMATORS)
    assert summary["recording_plots"] == 3  # the faceless recording too: it has windows

    shot = tmp_path / "report.png"
    dom = _render(out, shot, height=2600)
    page = _parse(dom)
    # The comparison table holds exactly what `nbhr evaluate --json` says, at every level.
    rows = _comparison_rows(page)
    assert set(rows) == set(ESTIMATORS)
    for e in ESTIMATORS:
        assert rows[e] == _expected_cells(db_url, e)
    # Per-subject table: every subject and estimator, with the MAE over its recordings.
    subj = next(rows for _, rows in page.tables if rows and rows[0][:2] == ["subject", "estimator"])
    assert {(r[0], r[1]) for r in subj[1:]} == {
        (s, e) for s in ("infant_001", "infant_002") for e in ESTIMATORS
    }
    groups = nbhr_json("evaluate", "--db", db_url, "--estimator", "pos", "--json")["groups"]
    col = subj[0].index("MAE")
    for g in groups:
        row = next(r for r in subj[1:] if r[:2] == [g["key"], "pos"])
        assert row[col] == _fmt(g["mae"])
    # Each recording's table has its HRV beside the reference PPG's (model.hrv).
    rec_tables = [rows for _, rows in page.tables if rows and "RMSSD ms" in rows[0]]
    assert len(rec_tables) == 3
    hrv = nbhr_json("hrv", "--db", db_url, "--json", "--estimator", "pos")
    sdnn = {_fmt(r["estimate"]["sdnn_ms"]) for r in hrv}
    col = rec_tables[0][0].index("SDNN ms")
    assert {r[col] for t in rec_tables for r in t[1:] if r[0] == "pos"} == sdnn
    # The failure and its reason are in the overview.
    assert "no face found" in dom
    # Figures: one agreement figure per estimator and one HR-over-time figure per recording,
    # each a PNG embedded in the page.
    assert len(page.images) == len(ESTIMATORS) + 3
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        png = cv2.imdecode(np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8), 1)
        assert png is not None and png.shape[1] in (800, 880)  # 10 or 11 in at 80 dpi
    # Chromium drew them: the screenshot holds coloured pixels (matplotlib's points and
    # lines), which no table or heading has, and is not a blank page.
    image = cv2.imread(str(shot)).astype(int)
    assert image.shape[:2] == (2600, 1200)
    assert ((image.max(axis=2) - image.min(axis=2)) > 80).sum() > 500
    assert (image.min(axis=2) < 128).mean() > 0.01


def test_report_filters_subject_and_estimator(
    demo_archive: Path, sqlite_url: str, tmp_path: Path
) -> None:
    nbhr("run", demo_archive, "--db", sqlite_url, "--estimator", "pos", "--estimator", "chrom")
    windows = nbhr_json("results", "--db", sqlite_url, "--estimator", "pos", "--format", "json")
    floor = float(np.median([w["quality"] for w in windows if w["quality"] is not None]))
    filters = ("--min-quality", f"{floor:.3f}", "--face-only")
    out = tmp_path / "filtered.html"
    nbhr("report", "--db", sqlite_url, "--out", out, "--estimator", "pos", *filters)
    dom = _render(out, tmp_path / "filtered.png", height=800)
    page = _parse(dom)
    rows = _comparison_rows(page)
    assert list(rows) == ["pos"]
    assert rows["pos"] == _expected_cells(sqlite_url, "pos", *filters)
    # The filter changed the numbers: fewer windows than without it.
    assert rows["pos"] != _expected_cells(sqlite_url, "pos")
    assert f"quality &gt;= {float(f'{floor:.3f}'):g} dB" in out.read_text()

    one = tmp_path / "one.html"
    got = nbhr_json("report", "--db", sqlite_url, "--out", one, "--subject", "infant_002", "--json")
    assert got["subjects"] == 1 and got["recordings"] == 1
    text = one.read_text()
    assert "infant_002" in text and "infant_001" not in text

    none = tmp_path / "none.html"
    got = nbhr_json("report", "--db", sqlite_url, "--out", none, "--max-plots", "0", "--json")
    assert got["recording_plots"] == 0
    assert re.search(r"3 recordings have no figure here", none.read_text())
