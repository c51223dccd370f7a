"""`nbhr report`: one self-contained HTML file (figures embedded as PNG) that sums up an archive's
results against its reference vitals: overview, estimator comparison, per-subject table,
agreement plots, quality floors and every recording's HR over time."""

from __future__ import annotations

import base64
import html
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from db import queries
from model.bands import Band
from nbhr import analysis, plots
from nbhr.analysis import LEVELS, NO_FILTER, WindowFilter

# Columns of the estimator comparison: (level, metric key, heading).
COMPARISON = (
    ("window", "n", "windows"),
    ("window", "coverage", "coverage"),
    ("window", "mae", "MAE"),
    ("window", "pearson_r", "r"),
    ("recording", "n", "recordings"),
    ("recording", "mae", "MAE"),
    ("recording", "rmse", "RMSE"),
    ("recording", "pearson_r", "r"),
    ("recording", "ba_bias", "bias"),
    ("recording", "ba_loa_low", "LoA-"),
    ("recording", "ba_loa_high", "LoA+"),
    ("recording", "within_5bpm", "<=5 bpm"),
    ("subject", "n", "subjects"),
    ("subject", "mae", "MAE"),
)

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1150px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 2em; }
h3 { font-size: 1em; margin-bottom: 0.3em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #f0f0f0; } td.t, th.t { text-align: left; }
.note { color: #555; font-size: 0.85em; } .fail { color: #a00; }
img { max-width: 100%; display: block; }
"""


@dataclass(frozen=True)
class Report:
    html: str
    summary: dict[str, Any]


def build_report(
    session: Session,
    subject: str | None = None,
    estimators: tuple[str, ...] = (),
    filt: WindowFilter = NO_FILTER,
    level: str = "window",
    max_plots: int | None = None,
    band: Band | None = None,
    title: str = "nbhr report",
) -> Report:
    """The report over every recording (of `subject`) and every estimator present (or those in
    `estimators`), each model version of an estimator on its own. Its numbers are those of
    `nbhr evaluate --json` with the same filter; the agreement figures plot `level`'s points.
    `band` (default: neonatal) bounds plausible beat intervals for the HRV columns. Every
    recording with windows gets its HR-over-time figure (about 25 kB each) unless `max_plots`
    caps them."""
    band = band or Band.for_population("neonate")
    recs = queries.recording_rows(session, subject)
    pairs = [
        (e, k) for e, k in queries.estimators_present(session) if not estimators or e in estimators
    ]
    labels = queries.model_labels(session)
    evals: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    points: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    sweeps: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e, k in pairs:
        rows = queries.window_rows(session, subject, estimator=e, model_key=k)
        sweeps[(e, k)] = analysis.sweep_rows(session, rows, e, "window", k, filt.face_only)
        evals[(e, k)] = {
            lev: analysis.evaluate_rows(session, rows, e, lev, k, filt) for lev in LEVELS
        }
        pts, _ = analysis.pairs(rows, level, filt)
        points[(e, k)] = (
            np.array([p[1] for p in pts], dtype=float),
            np.array([p[2] for p in pts], dtype=float),
        )
    names = {(e, k): e + (f" ({labels.get(k, k)})" if k else "") for e, k in pairs}
    by_rec: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in analysis.results(session, "recording", subject, filt=filt):
        if not estimators or r["estimator"] in estimators:
            by_rec[r["recording"]].append(r)
    rhythm = {
        (r["recording"], r["estimator"], r["model"]): r
        for r in analysis.rhythm(session, subject, filt=filt)
    }
    hrv = {
        (r["recording"], r["estimator"], r["model"]): r
        for r in analysis.hrv(session, band, subject)
    }

    parts = [
        f"<h1>{_e(title)}</h1>",
        _p(
            f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
            + (f" for subject {_e(subject)}" if subject else "")
            + f"; window filter: {_e(_filter_text(filt))}. HR in bpm; coverage and hit rates are "
            "shares 0-1. The numbers are those of <code>nbhr evaluate --json</code> with the "
            "same filter."
        ),
        _overview(recs, by_rec, {names[k]: evals[k]["window"]["overall"] for k in pairs}),
        "<h2>Estimators and model versions side by side</h2>",
        _comparison(pairs, names, evals),
        "<h2>Per subject</h2>",
        _subjects(session, subject, pairs, names, evals, filt, estimators),
        f"<h2>Agreement with the reference ({level} level)</h2>",
    ]
    for key in pairs:
        est, ref = points[key]
        fig = plots.agreement_figure(est, ref, names[key], evals[key][level]["overall"])
        parts.append(f"<h3>{_e(names[key])}</h3>" + _img(plots.png_bytes(fig), names[key]))
    parts += [
        "<h2>What a quality floor buys (window level)</h2>",
        _p(
            "Coverage against error as <code>--min-quality</code> rises: no floor, then the "
            "0/25/50/75/90 % quantiles of each estimator's window qualities (SNR, dB)."
        ),
    ]
    for key in pairs:
        parts.append(f"<h3>{_e(names[key])}</h3>" + _table(sweeps[key]))
    parts.append("<h2>Recordings</h2>")
    drawn = 0
    for rec in recs:
        parts.append(_recording(session, rec, by_rec.get(rec.path, []), rhythm, hrv))
        if rec.path in by_rec and (max_plots is None or drawn < max_plots):
            fig = plots.recording_figure(session, rec.path, estimators, filt.min_quality)
            parts.append(_img(plots.png_bytes(fig), f"HR over time, {rec.path}"))
            drawn += 1
    n_with = sum(1 for r in recs if r.path in by_rec)
    if drawn < n_with:
        parts.append(
            _p(
                f"{n_with - drawn} recordings have no figure here (--max-plots {max_plots}); "
                "<code>nbhr plot RECORDING --out FILE.png</code> draws any of them."
            )
        )
    body = "\n".join(parts)
    doc = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n"
        "</body></html>\n"
    )
    summary = {
        "recordings": len(recs),
        "subjects": len({r.subject for r in recs}),
        "estimators": [names[p] for p in pairs],
        "recording_plots": drawn,
        "filters": filt.as_dict(),
        "level": level,
    }
    return Report(doc, summary)


def write_report(report: Report, out: Path) -> None:
    out.write_text(report.html, encoding="utf-8")


def _overview(
    recs: list[queries.RecordingRow], by_rec: dict[str, list], windows: dict[str, dict]
) -> str:
    states: dict[str, int] = defaultdict(int)
    for r in recs:
        states[r.status] += 1
    hours = sum(r.duration_s or 0.0 for r in recs) / 3600
    failed = [r for r in recs if r.status == "failed"]
    rows = [
        {"": "subjects", "value": len({r.subject for r in recs})},
        {"": "recordings", "value": len(recs)},
        *({"": f"recordings {s}", "value": n} for s, n in sorted(states.items())),
        {"": "recordings with results", "value": sum(1 for r in recs if r.path in by_rec)},
        {"": "video (hours)", "value": round(hours, 3)},
        {"": "with a reference", "value": sum(1 for r in recs if r.reference_source)},
        *({"": f"window coverage, {name}", "value": w["coverage"]} for name, w in windows.items()),
    ]
    out = "<h2>Overview</h2>" + _table(rows)
    if failed:
        out += "<h3>Failures</h3>" + _table(
            [{"recording": r.path, "reason": r.error or ""} for r in failed]
        )
    return out


def _comparison(
    pairs: list[tuple[str, str]],
    names: dict[tuple[str, str], str],
    evals: dict[tuple[str, str], dict[str, dict[str, Any]]],
) -> str:
    if not pairs:
        return _p("No windows yet: run <code>nbhr run DIR</code> first.")
    spans = [(lev, sum(1 for c in COMPARISON if c[0] == lev)) for lev in LEVELS]
    head = "<tr><th class='t' rowspan='2'>estimator</th>" + "".join(
        f"<th colspan='{n}'>{lev} level</th>" for lev, n in spans
    )
    head += "</tr><tr>" + "".join(f"<th>{_e(h)}</th>" for _, _, h in COMPARISON) + "</tr>"
    body = ""
    for key in pairs:
        cells = "".join(
            f"<td>{_fmt(evals[key][lev]['overall'][m])}</td>" for lev, m, _ in COMPARISON
        )
        body += f"<tr><td class='t'>{_e(names[key])}</td>{cells}</tr>"
    return f"<table class='comparison'>{head}{body}</table>"


def _subjects(
    session: Session,
    subject: str | None,
    pairs: list[tuple[str, str]],
    names: dict[tuple[str, str], str],
    evals: dict[tuple[str, str], dict[str, dict[str, Any]]],
    filt: WindowFilter,
    estimators: tuple[str, ...],
) -> str:
    """One row per subject and estimator: HR aggregate, mean/min/max of its windows, the
    reference, the MAE over its recordings and the coverage of its windows."""
    label_of = {(e, analysis.model_label(session, k)): names[(e, k)] for e, k in pairs}
    mae = {
        (names[key], g["key"]): g["mae"] for key in pairs for g in evals[key]["recording"]["groups"]
    }
    rows = []
    for r in analysis.results(session, "subject", subject, filt=filt):
        if estimators and r["estimator"] not in estimators:
            continue
        name = label_of.get((r["estimator"], r["model"]), r["estimator"])
        rows.append(
            {
                "subject": r["subject"],
                "estimator": name,
                "recordings": r["n_recordings"],
                "HR": r["hr_bpm"],
                "mean": r["hr_mean_bpm"],
                "min": r["hr_min_bpm"],
                "max": r["hr_max_bpm"],
                "reference": r["ref_hr_bpm"],
                "MAE": mae.get((name, r["subject"])),
                "coverage": r["coverage"],
            }
        )
    return _table(rows) if rows else _p("No results.")


def _recording(
    session: Session,
    rec: queries.RecordingRow,
    results: list[dict[str, Any]],
    rhythm: dict[tuple[str, str, str | None], dict[str, Any]],
    hrv: dict[tuple[str, str, str | None], dict[str, Any]],
) -> str:
    dur = f", {rec.duration_s:.1f} s" if rec.duration_s else ""
    out = f"<h3>{_e(rec.subject)}: {_e(rec.path)}</h3>"
    facts = [f"status {rec.status}{dur}"]
    refs = queries.load_references(session, rec.id)
    spo2 = refs["spo2"].plausible(refs["spo2"].values) if "spo2" in refs else np.empty(0)
    if len(spo2):
        facts.append(f"SpO2 reference median {np.median(spo2):.1f} %, min {np.min(spo2):.1f} %")
    if rec.reference_source:
        facts.append(f"reference {rec.reference_source}")
    out += _p("; ".join(_e(f) for f in facts))
    if rec.error:
        out += f"<p class='fail'>{_e(rec.error)}</p>"
    if rec.note:
        out += _p(_e(rec.note))
    rows = []
    for r in results:
        ep = rhythm.get((r["recording"], r["estimator"], r["model"]), {}).get("estimate", {})
        if not ep.get("n_windows_with_hr"):
            ep = {}
        beats = hrv.get((r["recording"], r["estimator"], r["model"]), {})
        est_hrv, ref_hrv = beats.get("estimate") or {}, beats.get("reference") or {}
        err = (
            abs(r["hr_bpm"] - r["ref_hr_bpm"])
            if r["hr_bpm"] is not None and r["ref_hr_bpm"] is not None
            else None
        )
        rows.append(
            {
                "estimator": r["estimator"] + (f" ({r['model']})" if r["model"] else ""),
                "HR": r["hr_bpm"],
                "min": r["hr_min_bpm"],
                "max": r["hr_max_bpm"],
                "reference": r["ref_hr_bpm"],
                "|error|": err,
                "coverage": r["coverage"],
                "brady s": ep.get("bradycardia_s"),
                "tachy s": ep.get("tachycardia_s"),
                "SDNN ms": est_hrv.get("sdnn_ms"),
                "RMSSD ms": est_hrv.get("rmssd_ms"),
                "ref SDNN": ref_hrv.get("sdnn_ms"),
                "ref RMSSD": ref_hrv.get("rmssd_ms"),
            }
        )
    if rows:
        out += _table(rows)
    return out


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return _p("No rows.")
    cols = list(rows[0])
    text = [isinstance(rows[0][c], str) or rows[0][c] is None for c in cols]
    head = "".join(
        f"<th class='t'>{_e(c)}</th>" if t else f"<th>{_e(c)}</th>"
        for c, t in zip(cols, text, strict=True)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='t'>{_e(_fmt(r[c]))}</td>" if t else f"<td>{_e(_fmt(r[c]))}</td>"
            for c, t in zip(cols, text, strict=True)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "-" if not np.isfinite(v) else f"{v:.2f}"
    return str(v)


def _filter_text(filt: WindowFilter) -> str:
    parts = []
    if filt.min_quality is not None:
        parts.append(f"quality >= {filt.min_quality:g} dB")
    if filt.face_only:
        parts.append("face-tracked windows only")
    return ", ".join(parts) or "none (every window)"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f"<img alt='{_e(alt)}' src='data:image/png;base64,{data}'>"


def _p(text: str) -> str:
    return f"<p class='note'>{text}</p>"


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)
