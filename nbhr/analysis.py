"""Results at window, recording and subject level, and their agreement with the reference.

Everything here reads windows from SQL (db.queries) and aggregates them with model/ code;
recording and subject HR is the robust quality-weighted aggregate of their windows.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from db import queries
from db.queries import WindowRow
from model.aggregate import aggregate_hr
from model.bands import Band
from model.hrv import clean_intervals, detect_beats
from model.hrv import hrv as model_hrv
from model.metrics import agreement
from model.rhythm import NEONATAL_BRADY_BPM, NEONATAL_TACHY_BPM, episodes

LEVELS = ("window", "recording", "subject")


@dataclass(frozen=True)
class WindowFilter:
    """Which windows count, and which of them are usable estimates.

    min_quality: dB (the window's SNR); a window below it, or without one, is not a usable
        estimate: it stays in the denominator and lowers coverage, like a window without a face.
    face_only: windows where the tracked face was lost are left out altogether (they no longer
        lower coverage). Windows of a fixed region (--roi full or a box) have no face flag and
        are kept.
    """

    min_quality: float | None = None
    face_only: bool = False

    def counts(self, w: WindowRow) -> bool:
        return not (self.face_only and w.face_found is False)

    def usable(self, w: WindowRow) -> bool:
        if w.hr_bpm is None or w.face_found is False:
            return False
        return self.min_quality is None or (w.quality is not None and w.quality >= self.min_quality)

    def as_dict(self) -> dict[str, Any]:
        return {"min_quality": self.min_quality, "face_only": self.face_only}


NO_FILTER = WindowFilter()


def _clean(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 3)


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def _summarise(rows: list[WindowRow], filt: WindowFilter = NO_FILTER) -> dict[str, Any]:
    """HR summary of one recording's windows (one estimator).

    hr_bpm is the robust aggregate (quality-weighted median) of the usable windows and
    ref_hr_bpm the median reference over those same windows, so the two compare like with
    like; with no usable window, the reference is the median over all windows.
    """
    valid = [w for w in rows if filt.usable(w)]
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


def _summarise_subject(rows: list[WindowRow], filt: WindowFilter = NO_FILTER) -> dict[str, Any]:
    """HR summary of one subject (one estimator): the mean over its recordings' aggregates,
    against the mean of the same recordings' references (recordings without an estimate
    count toward coverage only)."""
    by_rec: dict[int, list[WindowRow]] = defaultdict(list)
    for w in rows:
        by_rec[w.recording_id].append(w)
    recs = [_summarise(r, filt) for r in by_rec.values()]
    est = [r for r in recs if r["hr_bpm"] is not None]
    refs = [r["ref_hr_bpm"] for r in (est or recs) if r["ref_hr_bpm"] is not None]
    out = _summarise(rows, filt)
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
    filt: WindowFilter = NO_FILTER,
) -> list[dict[str, Any]]:
    """Rows for `nbhr results`: one per window, per recording or per subject (and estimator).
    With a filter, window rows are those that count and are usable; recordings and subjects
    aggregate their usable windows, and coverage is usable / counted."""
    rows = [
        w for w in queries.window_rows(session, subject, recording, estimator) if filt.counts(w)
    ]
    if level == "window" and filt.min_quality is not None:
        rows = [w for w in rows if filt.usable(w)]
    labels = queries.model_labels(session)
    rows = [
        r if not r.model_key else replace(r, model_key=labels.get(r.model_key, r.model_key))
        for r in rows
    ]
    spo2 = _Spo2(session)
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
                "ref_spo2_pct": _clean(spo2.window(w)),
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
        summary = (
            _summarise(group, filt) if level == "recording" else _summarise_subject(group, filt)
        )
        summary["ref_spo2_pct"] = _clean(spo2.median(group))
        out.append(head | summary)
    return out


class _Spo2:
    """The reference SpO2 (%) over windows, from each recording's stored series (read once)."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._series: dict[int, Any] = {}
        self._memo: dict[tuple[int, float, float], float | None] = {}

    def window(self, w: WindowRow) -> float | None:
        """Mean plausible SpO2 over the window; None without a reference covering it."""
        key = (w.recording_id, w.t_start, w.t_end)
        if key not in self._memo:
            if w.recording_id not in self._series:
                refs = queries.load_references(self._session, w.recording_id)
                self._series[w.recording_id] = refs.get("spo2")
            series = self._series[w.recording_id]
            self._memo[key] = series.window_mean(w.t_start, w.t_end) if series else None
        return self._memo[key]

    def median(self, rows: list[WindowRow]) -> float | None:
        """Median over the windows' SpO2 (a subject's: over all its recordings' windows)."""
        values = [v for v in map(self.window, rows) if v is not None]
        return _median(values)


def pairs(
    rows: list[WindowRow], level: str, filt: WindowFilter = NO_FILTER
) -> tuple[list[tuple[str, float, float]], int]:
    """(group key, estimate, reference) per data point of `level`, and how many points had a
    reference (the denominator of coverage)."""
    rows = [w for w in rows if filt.counts(w)]
    if level == "window":
        with_ref = [w for w in rows if w.ref_hr_bpm is not None]
        pts = [
            (w.recording, w.hr_bpm if filt.usable(w) else math.nan, w.ref_hr_bpm) for w in with_ref
        ]
        return pts, len(with_ref)
    pts = []
    n_ref = 0
    for key, group in _group(rows, level).items():
        s = _summarise(group, filt) if level == "recording" else _summarise_subject(group, filt)
        if s["ref_hr_bpm"] is None:
            continue
        n_ref += 1
        est = s["hr_bpm"] if s["hr_bpm"] is not None else math.nan
        # Recordings are grouped by subject; a subject is its own group.
        pts.append((key[0], est, s["ref_hr_bpm"]))
    return pts, n_ref


def evaluate(
    session: Session,
    estimator: str,
    level: str = "recording",
    model_key: str | None = None,
    filt: WindowFilter = NO_FILTER,
) -> dict[str, Any]:
    """Agreement of one estimator (one model version of it) with the reference at `level`,
    overall and per group (per recording for window level, per subject otherwise), over the
    windows `filt` lets through."""
    rows = queries.window_rows(session, estimator=estimator, model_key=model_key)
    return evaluate_rows(session, rows, estimator, level, model_key, filt)


def evaluate_rows(
    session: Session,
    rows: list[WindowRow],
    estimator: str,
    level: str,
    model_key: str | None,
    filt: WindowFilter,
) -> dict[str, Any]:
    """`evaluate` over the given windows (one estimator and model version of it), e.g. one
    subject's."""
    pts, n_ref = pairs(rows, level, filt)
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
    ppg_r = [w.ppg_r for w in rows if w.ppg_r is not None and filt.counts(w) and filt.usable(w)]
    return {
        "estimator": estimator,
        "model": model_label(session, model_key),
        "filters": filt.as_dict(),
        # NBHRnet's PPG output against the reference PPG: mean Pearson r over windows.
        "ppg_r_mean": _clean(float(np.mean(ppg_r))) if ppg_r else None,
        "ppg_r_n": len(ppg_r),
        "level": level,
        "overall": _json_safe(overall),
        "groups": [_json_safe(g) for g in groups],
    }


def model_label(session: Session, key: str | None) -> str | None:
    """'name:version' of a registered model, else its key; None for classical estimators."""
    if not key:
        return None
    return queries.model_labels(session).get(key, key)


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    """NaN is not JSON: undefined metrics (e.g. r with fewer than 3 points) become null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


# Quality floors a sweep tries: these quantiles of the windows' own quality (SNR scales differ
# between estimators, so fixed dB values would mean different things for each).
SWEEP_QUANTILES = (0.0, 0.25, 0.5, 0.75, 0.9)


def quality_sweep(
    session: Session,
    estimator: str,
    level: str = "window",
    model_key: str | None = None,
    face_only: bool = False,
) -> list[dict[str, Any]]:
    """What a quality floor buys: coverage against error as --min-quality rises (sweep_rows
    over every window of the estimator and model version)."""
    rows = queries.window_rows(session, estimator=estimator, model_key=model_key)
    return sweep_rows(session, rows, estimator, level, model_key, face_only)


def sweep_rows(
    session: Session,
    rows: list[WindowRow],
    estimator: str,
    level: str,
    model_key: str | None,
    face_only: bool,
) -> list[dict[str, Any]]:
    """`quality_sweep` over the given windows (e.g. one subject's). One row per floor (none,
    then the SWEEP_QUANTILES of the windows' qualities, in dB): the floor, n, coverage, MAE,
    RMSE and r at `level`."""
    qualities = [w.quality for w in rows if w.quality is not None and math.isfinite(w.quality)]
    floors: list[float | None] = [None]
    if qualities:
        floors += sorted({round(float(q), 2) for q in np.quantile(qualities, SWEEP_QUANTILES)})
    out = []
    for floor in floors:
        filt = WindowFilter(min_quality=floor, face_only=face_only)
        ev = evaluate_rows(session, rows, estimator, level, model_key, filt)["overall"]
        out.append(
            {"min_quality": floor}
            | {k: ev[k] for k in ("n", "coverage", "mae", "rmse", "pearson_r")}
        )
    return out


def rhythm(
    session: Session,
    subject: str | None = None,
    recording: str | None = None,
    estimator: str | None = None,
    brady_bpm: float = NEONATAL_BRADY_BPM,
    tachy_bpm: float = NEONATAL_TACHY_BPM,
    min_duration_s: float = 0.0,
    filt: WindowFilter = NO_FILTER,
) -> list[dict[str, Any]]:
    """Per recording and estimator (and model): bradycardia and tachycardia episodes in the
    estimated window HRs (usable windows only) and, for comparison, in the reference HR of the
    same windows (model.rhythm.episodes)."""
    rows = [
        w for w in queries.window_rows(session, subject, recording, estimator) if filt.counts(w)
    ]
    labels = queries.model_labels(session)
    out = []
    for (subj, rec, est, key), group in _group(rows, "recording").items():
        t0 = np.array([w.t_start for w in group])
        t1 = np.array([w.t_end for w in group])
        series = {
            "estimate": np.array([w.hr_bpm if filt.usable(w) else np.nan for w in group], float),
            "reference": np.array(
                [np.nan if w.ref_hr_bpm is None else w.ref_hr_bpm for w in group], float
            ),
        }
        entry: dict[str, Any] = {
            "subject": subj,
            "recording": rec,
            "estimator": est,
            "model": labels.get(key, key) if key else None,
            "thresholds": {
                "brady_bpm": brady_bpm,
                "tachy_bpm": tachy_bpm,
                "min_duration_s": min_duration_s,
            },
        }
        for source, hr in series.items():
            found = episodes(t0, t1, hr, brady_bpm, tachy_bpm, min_duration_s)
            entry[source] = {
                "n_windows_with_hr": int(np.isfinite(hr).sum()),
                **{
                    f"{kind}_s": round(sum(e.duration_s for e in found if e.kind == kind), 3)
                    for kind in ("bradycardia", "tachycardia")
                },
                "episodes": [
                    {
                        "kind": e.kind,
                        "t_start": round(e.t_start, 3),
                        "t_end": round(e.t_end, 3),
                        "duration_s": round(e.duration_s, 3),
                        "extreme_bpm": round(e.extreme_bpm, 2),
                        "n_windows": e.n_windows,
                    }
                    for e in found
                ],
            }
        out.append(entry)
    return out


def hrv(
    session: Session,
    band: Band,
    subject: str | None = None,
    recording: str | None = None,
    estimator: str | None = None,
    intervals: bool = False,
) -> list[dict[str, Any]]:
    """Per recording and estimator (and model): heart-rate variability of the beats the workers
    found in its pulse (model.hrv: cleaned intervals, SDNN, RMSSD), beside the same figures
    from the reference PPG's beats over the same stretch of time (from the first to the last
    estimated beat), where the recording has a reference PPG. `band` bounds plausible
    intervals. With `intervals`, the kept beat intervals themselves (time of the beat that
    ends each, in s, and its length in ms)."""
    labels = queries.model_labels(session)
    ref_beats: dict[int, np.ndarray | None] = {}
    out = []
    for b in queries.beat_rows(session, subject, recording, estimator):
        if b.recording_id not in ref_beats:
            ref_beats[b.recording_id] = _reference_beats(session, b.recording_id, band)
        ref = ref_beats[b.recording_id]
        if ref is not None and len(b.times_s):
            ref = ref[(ref >= b.times_s[0] - 1e-6) & (ref <= b.times_s[-1] + 1e-6)]
        entry: dict[str, Any] = {
            "subject": b.subject,
            "recording": b.recording,
            "estimator": b.estimator,
            "model": labels.get(b.model_key, b.model_key) if b.model_key else None,
            "band_bpm": [band.lo_bpm, band.hi_bpm],
            "estimate": _hrv_entry(b.times_s, band, intervals),
            "reference": None if ref is None else _hrv_entry(ref, band, intervals),
        }
        out.append(entry)
    return out


def _reference_beats(session: Session, recording_id: int, band: Band) -> np.ndarray | None:
    """Beat times (s) of a recording's reference PPG, by the same detector as the video's."""
    ppg = queries.load_references(session, recording_id).get("ppg")
    if ppg is None or ppg.sample_rate_hz is None or len(ppg.values) < 4:
        return None
    return detect_beats(ppg.values, ppg.sample_rate_hz, band, t0_s=ppg.t0_s)


def _hrv_entry(beats: np.ndarray, band: Band, intervals: bool) -> dict[str, Any]:
    found = asdict(model_hrv(beats, band))
    stats = {k: _clean(v) if isinstance(v, float) else v for k, v in found.items()}
    if intervals and len(beats) > 1:
        ibi, kept = clean_intervals(beats, band)
        stats["intervals"] = [
            {"t_s": round(float(t), 4), "ibi_ms": round(1000.0 * float(v), 2)}
            for t, v in zip(beats[1:][kept], ibi[kept], strict=True)
        ]
    return stats
