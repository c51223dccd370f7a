"""Results at window, recording and subject level, and their agreement with the reference.

Everything here reads windows from SQL (db.queries) and aggregates them with model/ code;
recording and subject HR is the robust quality-weighted aggregate of their windows.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import replace
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from db import queries
from db.queries import WindowRow
from model.aggregate import aggregate_hr
from model.metrics import agreement

LEVELS = ("window", "recording", "subject")


def _valid(w: WindowRow) -> bool:
    """A usable estimate: an HR exists and the face (when tracked) was found."""
    return w.hr_bpm is not None and w.face_found is not False


def _clean(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 3)


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def _summarise(rows: list[WindowRow]) -> dict[str, Any]:
    """HR summary of one recording's windows (one estimator).

    hr_bpm is the robust aggregate (quality-weighted median) of the usable windows and
    ref_hr_bpm the median reference over those same windows, so the two compare like with
    like; with no usable window, the reference is the median over all windows.
    """
    valid = [w for w in rows if _valid(w)]
    hr = np.array([w.hr_bpm for w in valid], dtype=float)
    q = np.array([w.quality if w.quality is not None else np.nan for w in valid], dtype=float)
    paired = [w.ref_hr_bpm for w in valid if w.ref_hr_bpm is not None]
    every = [w.ref_hr_bpm for w in rows if w.ref_hr_bpm is not None]
    return {
        "n_windows": len(rows),
        "n_valid": len(valid),
        "coverage": _clean(len(valid) / len(rows)) if rows else None,
        "hr_bpm": _clean(aggregate_hr(hr, q)) if len(hr) else None,
        "hr_mean_bpm": _clean(float(hr.mean())) if len(hr) else None,
        "hr_min_bpm": _clean(float(hr.min())) if len(hr) else None,
        "hr_max_bpm": _clean(float(hr.max())) if len(hr) else None,
        "quality_median": _clean(float(np.nanmedian(q))) if np.isfinite(q).any() else None,
        "ref_hr_bpm": _clean(_median(paired) if paired else _median(every)),
    }


def _summarise_subject(rows: list[WindowRow]) -> dict[str, Any]:
    """HR summary of one subject (one estimator): the mean over its recordings' aggregates,
    against the mean of the same recordings' references (recordings without an estimate
    count toward coverage only)."""
    by_rec: dict[int, list[WindowRow]] = defaultdict(list)
    for w in rows:
        by_rec[w.recording_id].append(w)
    recs = [_summarise(r) for r in by_rec.values()]
    est = [r for r in recs if r["hr_bpm"] is not None]
    refs = [r["ref_hr_bpm"] for r in (est or recs) if r["ref_hr_bpm"] is not None]
    out = _summarise(rows)
    out["hr_bpm"] = _clean(float(np.mean([r["hr_bpm"] for r in est]))) if est else None
    out["ref_hr_bpm"] = _clean(float(np.mean(refs))) if refs else None
    return out


def _group(rows: list[WindowRow], level: str) -> dict[tuple, list[WindowRow]]:
    groups: dict[tuple, list[WindowRow]] = defaultdict(list)
    for w in rows:
        if level == "recording":
            key = (w.subject, w.recording, w.estimator, w.model_key)
        else:
            key = (w.subject, w.estimator, w.model_key)
        groups[key].append(w)
    return groups


def results(
    session: Session,
    level: str = "window",
    subject: str | None = None,
    recording: str | None = None,
    estimator: str | None = None,
) -> list[dict[str, Any]]:
    """Rows for `nbhr results`: one per window, per recording or per subject (and estimator)."""
    rows = queries.window_rows(session, subject, recording, estimator)
    labels = queries.model_labels(session)
    rows = [
        r if not r.model_key else replace(r, model_key=labels.get(r.model_key, r.model_key))
        for r in rows
    ]
    if level == "window":
        return [
            {
                "subject": w.subject,
                "recording": w.recording,
                "estimator": w.estimator,
                "model": w.model_key or None,
                "t_start": round(w.t_start, 3),
                "t_end": round(w.t_end, 3),
                "hr_bpm": _clean(w.hr_bpm),
                "quality": _clean(w.quality),
                "face_found": w.face_found,
                "ref_hr_bpm": _clean(w.ref_hr_bpm),
                "ppg_r": _clean(w.ppg_r),
            }
            for w in rows
        ]
    out = []
    for key, group in _group(rows, level).items():
        head = (
            {"subject": key[0], "recording": key[1], "estimator": key[2], "model": key[3] or None}
            if level == "recording"
            else {
                "subject": key[0],
                "estimator": key[1],
                "model": key[2] or None,
                "n_recordings": len({w.recording_id for w in group}),
            }
        )
        summary = _summarise(group) if level == "recording" else _summarise_subject(group)
        out.append(head | summary)
    return out


def _pairs(rows: list[WindowRow], level: str) -> tuple[list[tuple[str, float, float]], int]:
    """(group key, estimate, reference) per data point of `level`, and how many points had a
    reference (the denominator of coverage)."""
    if level == "window":
        with_ref = [w for w in rows if w.ref_hr_bpm is not None]
        pts = [(w.recording, w.hr_bpm if _valid(w) else math.nan, w.ref_hr_bpm) for w in with_ref]
        return pts, len(with_ref)
    pts = []
    n_ref = 0
    for key, group in _group(rows, level).items():
        s = _summarise(group) if level == "recording" else _summarise_subject(group)
        if s["ref_hr_bpm"] is None:
            continue
        n_ref += 1
        est = s["hr_bpm"] if s["hr_bpm"] is not None else math.nan
        # Recordings are grouped by subject; a subject is its own group.
        pts.append((key[0], est, s["ref_hr_bpm"]))
    return pts, n_ref


def evaluate(
    session: Session, estimator: str, level: str = "recording", model_key: str | None = None
) -> dict[str, Any]:
    """Agreement of one estimator (one model version of it) with the reference at `level`,
    overall and per group (per recording for window level, per subject otherwise)."""
    rows = queries.window_rows(session, estimator=estimator, model_key=model_key)
    pts, n_ref = _pairs(rows, level)
    est = np.array([p[1] for p in pts], dtype=float)
    ref = np.array([p[2] for p in pts], dtype=float)
    overall = agreement(est, ref, n_total=n_ref)
    by_key: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(pts):
        by_key[p[0]].append(i)
    groups = [
        {"key": key} | agreement(est[idx], ref[idx], n_total=len(idx))
        for key, idx in sorted(by_key.items())
    ]
    ppg_r = [w.ppg_r for w in rows if w.ppg_r is not None and _valid(w)]
    return {
        "estimator": estimator,
        "model": _model_label(session, model_key),
        # NBHRnet's PPG output against the reference PPG: mean Pearson r over windows.
        "ppg_r_mean": _clean(float(np.mean(ppg_r))) if ppg_r else None,
        "ppg_r_n": len(ppg_r),
        "level": level,
        "overall": _json_safe(overall),
        "groups": [_json_safe(g) for g in groups],
    }


def _model_label(session: Session, key: str | None) -> str | None:
    """'name:version' of a registered model, else its key; None for classical estimators."""
    if not key:
        return None
    return queries.model_labels(session).get(key, key)


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    """NaN is not JSON: undefined metrics (e.g. r with fewer than 3 points) become null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}
