"""Results at window, recording and subject level, and their agreement with the reference.

Everything here reads windows from SQL (db.queries) and aggregates them with model/ code;
recording and subject HR is the robust quality-weighted aggregate of their windows.
"""

from __future__ import annotations

import math
from collections import defaultdict
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


def _summarise(rows: list[WindowRow]) -> dict[str, Any]:
    """HR summary of a group of windows (one recording or one subject, one estimator)."""
    valid = [w for w in rows if _valid(w)]
    hr = np.array([w.hr_bpm for w in valid], dtype=float)
    q = np.array([w.quality if w.quality is not None else np.nan for w in valid], dtype=float)
    refs = np.array([w.ref_hr_bpm for w in rows if w.ref_hr_bpm is not None], dtype=float)
    return {
        "n_windows": len(rows),
        "n_valid": len(valid),
        "coverage": _clean(len(valid) / len(rows)) if rows else None,
        "hr_bpm": _clean(aggregate_hr(hr, q)) if len(hr) else None,
        "hr_mean_bpm": _clean(float(hr.mean())) if len(hr) else None,
        "hr_min_bpm": _clean(float(hr.min())) if len(hr) else None,
        "hr_max_bpm": _clean(float(hr.max())) if len(hr) else None,
        "quality_median": _clean(float(np.nanmedian(q))) if np.isfinite(q).any() else None,
        "ref_hr_bpm": _clean(float(refs.mean())) if len(refs) else None,
    }


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
        out.append(head | _summarise(group))
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
        s = _summarise(group)
        if s["ref_hr_bpm"] is None:
            continue
        n_ref += 1
        est = s["hr_bpm"] if s["hr_bpm"] is not None else math.nan
        # Recordings are grouped by subject; a subject is its own group.
        pts.append((key[0], est, s["ref_hr_bpm"]))
    return pts, n_ref


def evaluate(session: Session, estimator: str, level: str = "recording") -> dict[str, Any]:
    """Agreement of one estimator with the reference at `level`, overall and per group
    (per recording for window level, per subject for recording and subject level)."""
    rows = queries.window_rows(session, estimator=estimator)
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
    return {
        "estimator": estimator,
        "level": level,
        "overall": _json_safe(overall),
        "groups": [_json_safe(g) for g in groups],
    }


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    """NaN is not JSON: undefined metrics (e.g. r with fewer than 3 points) become null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}
