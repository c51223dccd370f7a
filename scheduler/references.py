"""Find and parse the reference vitals that belong to a video, in every supported layout.

Layouts (first match wins for time-resolved series; a reference table adds a recording mean):
- generic sidecar: <dir>/<stem>.csv with a header holding time_s and any of hr_bpm, ppg, spo2;
- NBHR: <root>/video/<id>.avi with <root>/PPG/<id>.csv (no header: PPG, HR, SpO2 at a fixed
  sample rate, 60 Hz unless configured);
- UBFC-rPPG: <subject>/vid.avi with <subject>/ground_truth.txt (lines: PPG, HR, time in s);
- reference table (--reference-table): CSV with recording,hr_bpm (recording = path relative
  to the table's folder, or the file name), one mean HR per recording.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.reference import ReferenceSeries

NBHR_PPG_RATE_HZ = 60.0
SIDECAR_COLUMNS = {"hr_bpm": "hr", "ppg": "ppg", "spo2": "spo2"}


class ReferenceFileError(ValueError):
    """A reference file exists but cannot be used; the message names file, line and cause."""


@dataclass(frozen=True)
class ReferenceTable:
    """Recording-level mean HR (and optional subject) keyed by relative path and file name."""

    path: Path
    by_relpath: dict[str, tuple[float, str | None]]
    by_name: dict[str, tuple[float, str | None]]

    def lookup(self, video: Path) -> tuple[float, str | None] | None:
        try:
            rel = video.resolve().relative_to(self.path.parent.resolve()).as_posix()
        except ValueError:
            rel = None
        if rel is not None and rel in self.by_relpath:
            return self.by_relpath[rel]
        return self.by_name.get(video.name)


def _float(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ReferenceFileError(f"{where}: {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise ReferenceFileError(f"{where}: {text.strip()!r} is not a finite number")
    return value


def load_reference_table(path: Path) -> ReferenceTable:
    """Parse a reference table; raise ReferenceFileError for a missing column or bad number."""
    try:
        return _read_reference_table(path)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ReferenceFileError(f"cannot read reference table {path}: {exc}") from None


def _read_reference_table(path: Path) -> ReferenceTable:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or [])
        if not {"recording", "hr_bpm"} <= cols:
            raise ReferenceFileError(
                f"{path}: needs columns recording,hr_bpm; found {','.join(sorted(cols)) or 'none'}"
            )
        by_rel: dict[str, tuple[float, str | None]] = {}
        by_name: dict[str, tuple[float, str | None]] = {}
        for line, row in enumerate(reader, start=2):
            rec = (row["recording"] or "").strip()
            hr = _float(row["hr_bpm"] or "", f"{path.name} line {line}, hr_bpm")
            subject = (row.get("subject") or "").strip() or None
            by_rel[Path(rec).as_posix()] = (hr, subject)
            by_name[Path(rec).name] = (hr, subject)
    return ReferenceTable(path=path, by_relpath=by_rel, by_name=by_name)


def parse_nbhr_csv(path: Path, rate_hz: float = NBHR_PPG_RATE_HZ) -> list[ReferenceSeries]:
    """NBHR PPG/<id>.csv: no header, three numeric columns PPG, HR, SpO2 at rate_hz."""
    rows: list[tuple[float, float, float]] = []
    with path.open(newline="", encoding="utf-8-sig") as fh:
        for line, row in enumerate(csv.reader(fh), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != 3:
                raise ReferenceFileError(
                    f"{path.name} line {line}: expected 3 columns (PPG, HR, SpO2), got {len(row)}"
                )
            where = f"{path.name} line {line}"
            rows.append(tuple(_float(c, where) for c in row))  # type: ignore[arg-type]
    if not rows:
        raise ReferenceFileError(f"{path.name}: no data rows")
    data = np.asarray(rows, dtype=np.float64)
    src = str(path)
    return [
        ReferenceSeries("ppg", data[:, 0], src, sample_rate_hz=rate_hz),
        ReferenceSeries("hr", data[:, 1], src, sample_rate_hz=rate_hz),
        ReferenceSeries("spo2", data[:, 2], src, sample_rate_hz=rate_hz),
    ]


def parse_ubfc(path: Path) -> list[ReferenceSeries]:
    """UBFC-rPPG ground_truth.txt: three lines of numbers (PPG, HR bpm, time s)."""
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(lines) < 3:
        raise ReferenceFileError(f"{path.name}: expected 3 lines (PPG, HR, time), got {len(lines)}")
    series = []
    for i, name in enumerate(("PPG", "HR", "time")):
        vals = [_float(tok, f"{path.name} line {i + 1} ({name})") for tok in lines[i].split()]
        series.append(np.asarray(vals))
    ppg, hr, t = series
    if not (len(ppg) == len(hr) == len(t)):
        raise ReferenceFileError(f"{path.name}: PPG, HR and time lines differ in length")
    src = str(path)
    return [
        ReferenceSeries("ppg", ppg, src, times_s=t - t[0]),
        ReferenceSeries("hr", hr, src, times_s=t - t[0]),
    ]


def parse_sidecar(path: Path) -> list[ReferenceSeries]:
    """Generic <stem>.csv: header with time_s and any of hr_bpm, ppg, spo2."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        present = [c for c in SIDECAR_COLUMNS if c in cols]
        if "time_s" not in cols or not present:
            raise ReferenceFileError(
                f"{path.name}: needs a time_s column and one of hr_bpm, ppg, spo2; "
                f"found {','.join(cols) or 'no header'}"
            )
        t: list[float] = []
        vals: dict[str, list[float]] = {c: [] for c in present}
        for line, row in enumerate(reader, start=2):
            t.append(_float(row["time_s"] or "", f"{path.name} line {line}, time_s"))
            for c in present:
                cell = (row.get(c) or "").strip()
                # Empty cells are gaps (the sensor had no reading), not errors.
                vals[c].append(_float(cell, f"{path.name} line {line}, {c}") if cell else np.nan)
    if not t:
        raise ReferenceFileError(f"{path.name}: no data rows")
    times = np.asarray(t)
    if np.any(np.diff(times) <= 0):
        raise ReferenceFileError(f"{path.name}: time_s must increase from row to row")
    return [
        ReferenceSeries(SIDECAR_COLUMNS[c], np.asarray(vals[c]), str(path), times_s=times)
        for c in present
    ]


def find_reference_file(video: Path) -> tuple[str, Path] | None:
    """(layout, path) of the time-resolved reference file of `video`, if one exists."""
    sidecar = video.with_suffix(".csv")
    if sidecar.is_file():
        return "sidecar", sidecar
    if video.parent.name.lower() == "video":
        for name in ("PPG", "ppg"):
            nbhr = video.parent.parent / name / f"{video.stem}.csv"
            if nbhr.is_file():
                return "nbhr", nbhr
    ubfc = video.parent / "ground_truth.txt"
    if ubfc.is_file():
        return "ubfc", ubfc
    return None


def load_references(
    video: Path, table: ReferenceTable | None = None, nbhr_rate_hz: float = NBHR_PPG_RATE_HZ
) -> tuple[list[ReferenceSeries], str | None, str | None]:
    """All reference series of a video, the file they came from, and a problem (or None).

    A malformed reference file is reported in the third item; the video is still processed.
    """
    series: list[ReferenceSeries] = []
    problem = None
    source = None
    found = find_reference_file(video)
    if found is not None:
        layout, path = found
        source = str(path)
        parser = {"sidecar": parse_sidecar, "ubfc": parse_ubfc}.get(layout)
        try:
            series = parser(path) if parser else parse_nbhr_csv(path, nbhr_rate_hz)
        except (ReferenceFileError, OSError, UnicodeDecodeError, csv.Error) as exc:
            problem = f"reference {path.name} unusable: {exc}"
    if table is not None and not any(s.kind == "hr" for s in series):
        entry = table.lookup(video)
        if entry is not None:
            series.append(ReferenceSeries("hr", np.array([entry[0]]), str(table.path)))
            source = source or str(table.path)
    if not series and problem is None:
        problem = "no reference found (looked for sidecar .csv, NBHR PPG/, UBFC ground_truth.txt"
        problem += ", reference table)" if table is not None else ")"
    return series, source, problem
