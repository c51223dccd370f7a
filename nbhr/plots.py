"""Figures from SQL: a recording's heart rate over time against its reference vitals, and an
estimator's agreement with the reference (scatter and Bland-Altman).

matplotlib draws off-screen (Agg); nothing here needs a display.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from db import queries
from model.aggregate import aggregated_windows

# One colour per estimator, stable across figures (matplotlib's tab10 order).
COLOURS = {
    "pos": "tab:blue",
    "chrom": "tab:orange",
    "green": "tab:green",
    "pbvn": "tab:purple",
    "nbhrnet": "tab:red",
    "nbhrnet_ppg": "tab:brown",
}


# One line style per model version of an estimator.
LINE_STYLES = ("-", "--", ":", "-.")


class PlotError(ValueError):
    """Nothing to plot (unknown recording, no windows); str() is a one-line reason."""


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def recording_figure(
    session: Session,
    recording: str,
    estimators: tuple[str, ...] = (),
    quality_floor: float | None = None,
) -> Any:
    """A matplotlib Figure: estimated HR of every window of `recording` (a path or its end) at
    its centre, one line per estimator (colour) and model version (line style), against the
    reference HR (and the SpO2 reference below it, where present). Low-quality windows are
    hollow grey markers: below `quality_floor` (dB) when given, else those the recording's
    aggregate leaves out (model.aggregate: below MIN_GOOD_SNR_DB when at least
    MIN_GOOD_WINDOWS windows reach it). Stretches where the face was lost are shaded. Raises
    PlotError when the recording is unknown or ambiguous or has no windows."""
    rows = queries.window_rows(session, recording=recording)
    if estimators:
        rows = [w for w in rows if w.estimator in estimators]
    paths = sorted({w.recording for w in rows})
    if not paths:
        raise PlotError(f"no windows for a recording {recording!r} (see `nbhr results`)")
    if len(paths) > 1:
        raise PlotError(f"{recording!r} matches {len(paths)} recordings; give more of the path")
    refs = queries.load_references(session, rows[0].recording_id)
    labels = queries.model_labels(session)
    plt = _pyplot()
    spo2 = refs.get("spo2")
    fig, axes = plt.subplots(
        2 if spo2 is not None else 1,
        1,
        figsize=(11, 5.5 if spo2 is not None else 4),
        sharex=True,
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 1]} if spo2 is not None else None,
    )
    ax = axes[0, 0]
    hr_ref = refs.get("hr")
    if hr_ref is not None and not hr_ref.is_mean:
        t, v = hr_ref.times(), hr_ref.values
        ax.plot(t, v, color="black", lw=1.0, label="reference HR")
    elif hr_ref is not None:
        ax.axhline(hr_ref.values[0], color="black", lw=1.0, ls="--", label="reference HR (mean)")
    series: dict[tuple[str, str], list] = {}
    for w in rows:
        series.setdefault((w.estimator, w.model_key), []).append(w)
    # Each window stands for the hop around its centre (windows overlap).
    starts = np.unique([w.t_start for w in rows])
    half = float(np.median(np.diff(starts))) / 2 if len(starts) > 1 else 1.0
    lost = sorted(
        ((w.t_start + w.t_end) / 2 - half, (w.t_start + w.t_end) / 2 + half)
        for w in rows
        if w.face_found is False
    )
    for t0, t1 in _merge(lost):
        ax.axvspan(t0, t1, color="0.85", lw=0, zorder=0)
    if lost:
        ax.axvspan(0, 0, color="0.85", label="face lost")
    versions = sorted({key for _, key in series if key})
    any_weak = False
    for (est, key), ws in sorted(series.items()):
        centre = np.array([(w.t_start + w.t_end) / 2 for w in ws])
        hr = np.array([np.nan if w.hr_bpm is None else w.hr_bpm for w in ws])
        q = np.array([np.nan if w.quality is None else w.quality for w in ws])
        good = _good(hr, q, quality_floor)
        weak = np.isfinite(hr) & ~good
        any_weak |= bool(weak.any())
        name = est + (f" ({labels.get(key, key)})" if key else "")
        style = LINE_STYLES[versions.index(key) % len(LINE_STYLES)] if key else "-"
        shown = np.where(good, hr, np.nan)
        ax.plot(
            centre, shown, marker="o", ls=style, ms=3, lw=1.2, color=COLOURS.get(est),
            label=_label(name, ws),
        )  # fmt: skip
        if weak.any():
            ax.plot(centre[weak], hr[weak], "o", ms=5, mfc="none", color="0.5")
    if any_weak:
        floor = f"quality < {quality_floor:g} dB" if quality_floor is not None else "low quality"
        ax.plot([], [], "o", ms=5, mfc="none", color="0.5", label=f"{floor} (left out)")
    ax.set_ylabel("heart rate (bpm)")
    ax.set_title(f"{rows[0].subject} - {Path(paths[0]).name}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", ncol=2)
    if spo2 is not None:
        sax = axes[1, 0]
        if spo2.is_mean:
            sax.axhline(spo2.values[0], color="tab:cyan", lw=1.0)
        else:
            sax.plot(spo2.times(), spo2.values, color="tab:cyan", lw=1.0)
        sax.set_ylabel("SpO2 (%)")
        sax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("time in recording (s)")
    fig.tight_layout()
    return fig


def _good(hr: np.ndarray, quality: np.ndarray, floor: float | None) -> np.ndarray:
    """Windows (bool (N,)) with an HR that count: at or above `floor`, or with no floor the
    ones model.aggregate.aggregate_hr uses for the recording's HR."""
    if floor is None:
        return aggregated_windows(hr, quality)
    return np.isfinite(hr) & np.isfinite(quality) & (quality >= floor)


def _label(name: str, ws: list) -> str:
    """Legend entry: the estimator and its window MAE against the reference, where known."""
    err = [
        abs(w.hr_bpm - w.ref_hr_bpm)
        for w in ws
        if w.hr_bpm is not None and w.ref_hr_bpm is not None
    ]
    return f"{name}: MAE {np.mean(err):.1f} bpm" if err else name


def _merge(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Overlapping (start, end) spans, sorted by start, joined."""
    out: list[tuple[float, float]] = []
    for a, b in spans:
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def save(fig: Any, out: Path, dpi: int = 100) -> None:
    """Write `fig` as PNG to `out` and free it."""
    fig.savefig(str(out), dpi=dpi, format="png")
    _pyplot().close(fig)


def agreement_figure(est: np.ndarray, ref: np.ndarray, title: str, stats: dict[str, Any]) -> Any:
    """A matplotlib Figure with two panels: estimate against reference (identity line, Pearson
    r) and Bland-Altman (difference against mean, bias and 95 % limits of agreement).

    est, ref: float arrays (N,), bpm; pairs with a nan are left out. stats: the overall
    agreement of these pairs (model.metrics.agreement, as `nbhr evaluate --json` gives it), so
    the figure states the same numbers as the tables.
    """
    ok = np.isfinite(est) & np.isfinite(ref)
    est, ref = np.asarray(est, float)[ok], np.asarray(ref, float)[ok]
    plt = _pyplot()
    fig, (sc, ba) = plt.subplots(1, 2, figsize=(10, 4))
    alpha = 0.6 if len(est) < 500 else 0.25
    sc.scatter(ref, est, s=10, alpha=alpha, color="tab:blue")
    if len(est):
        lo = float(min(est.min(), ref.min())) - 5
        hi = float(max(est.max(), ref.max())) + 5
        sc.plot([lo, hi], [lo, hi], color="black", lw=1, label="identity")
        sc.set_xlim(lo, hi)
        sc.set_ylim(lo, hi)
        sc.legend(fontsize=8, loc="upper left")
    sc.set_xlabel("reference HR (bpm)")
    sc.set_ylabel("estimated HR (bpm)")
    sc.set_title(f"n = {stats['n']}, r = {_num(stats['pearson_r'])}", fontsize=9)
    sc.grid(alpha=0.3)
    mean, diff = (est + ref) / 2, est - ref
    ba.scatter(mean, diff, s=10, alpha=alpha, color="tab:blue")
    for key, style, name in (
        ("ba_bias", "-", "bias"),
        ("ba_loa_low", "--", "95 % limits"),
        ("ba_loa_high", "--", None),
    ):
        if stats.get(key) is not None:
            ba.axhline(stats[key], color="tab:red", ls=style, lw=1, label=name)
    ba.set_xlabel("mean of estimate and reference (bpm)")
    ba.set_ylabel("estimate - reference (bpm)")
    ba.set_title(
        f"bias {_num(stats['ba_bias'])}, limits {_num(stats['ba_loa_low'])} to "
        f"{_num(stats['ba_loa_high'])} bpm",
        fontsize=9,
    )
    ba.grid(alpha=0.3)
    if len(est):
        ba.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def png_bytes(fig: Any, dpi: int = 80) -> bytes:
    """`fig` as a compact PNG (a 256-colour palette, which line plots never exceed visibly;
    about a quarter of the full-colour size); the figure is freed."""
    from PIL import Image  # Pillow comes with matplotlib

    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    _pyplot().close(fig)
    image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    out = io.BytesIO()
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(out, "PNG", optimize=True)
    return out.getvalue()
