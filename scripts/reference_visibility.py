"""Is the reference heart rate visible in a video at all? A check before blaming an estimator.

    python scripts/reference_visibility.py TABLE.csv [--roi full] [--population adult]

For every recording in a reference table (recording,hr_bpm; the format of `nbhr run
--reference-table`) and every classical estimator, the power spectra of the pulse in all
analysis windows (--window-s every --hop-s, normalised to unit in-band power) are averaged
over the recording. For a rate r, "x flat" is the share of in-band power within
+-HALF_WIDTH_BPM of r divided by the share a flat spectrum would put there (1.0 = no more
power than white noise). The table gives x flat at the reference rate and the rate (1-bpm
steps) where x flat is highest, with its value. A pulse that the estimator extracts shows as a
peak near the reference; an averaged spectrum whose peak lies elsewhere, or a reference rate
near 1.0, is a recording on which no choice of peak or aggregation rule is reliable.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from model.bands import Band
from model.classical import ESTIMATORS
from model.spectrum import power_spectrum
from scheduler.references import load_reference_table
from worker.process import extract_trace
from worker.video import probe

# Half-width of the rate window whose power is compared, bpm (the classical SNR's, model.spectrum).
HALF_WIDTH_BPM = 6.0


def averaged_spectrum(rgb, fps, estimator, window_s, hop_s):
    """Mean of the unit-in-band-power spectra of the estimator's pulse in every window."""
    win, hop = round(window_s * fps), round(hop_s * fps)
    band = estimator.band
    total = None
    for start in range(0, len(rgb) - win + 1, hop):
        freqs, power = power_spectrum(estimator.pulse(rgb[start : start + win], fps), fps)
        in_band = (freqs >= band.lo_hz) & (freqs <= band.hi_hz)
        power = power / power[in_band].sum()
        total = power if total is None else total + power
    return freqs, total


def x_flat(freqs, power, rate_bpm, band):
    """Share of in-band power within HALF_WIDTH_BPM of rate_bpm over a flat spectrum's share."""
    bpm = 60.0 * freqs
    in_band = (bpm >= band.lo_bpm) & (bpm <= band.hi_bpm)
    near = in_band & (np.abs(bpm - rate_bpm) <= HALF_WIDTH_BPM)
    flat = (
        min(rate_bpm + HALF_WIDTH_BPM, band.hi_bpm) - max(rate_bpm - HALF_WIDTH_BPM, band.lo_bpm)
    ) / (band.hi_bpm - band.lo_bpm)
    return float(power[near].sum() / power[in_band].sum() / flat)


def visibility(freqs, power, ref_bpm, band):
    """(x flat at the reference, peak rate bpm, x flat at the peak)."""
    rates = np.arange(np.ceil(band.lo_bpm), np.floor(band.hi_bpm) + 0.5, 1.0)
    scores = np.array([x_flat(freqs, power, r, band) for r in rates])
    best = int(np.argmax(scores))
    return x_flat(freqs, power, ref_bpm, band), float(rates[best]), float(scores[best])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", type=Path)
    parser.add_argument("--roi", default="full")
    parser.add_argument("--population", default="adult")
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--hop-s", type=float, default=2.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    band = Band.for_population(args.population)
    table = load_reference_table(args.table)
    rows = []
    for rec, (ref_bpm, _) in sorted(table.by_relpath.items()):
        path = args.table.parent / rec
        info = probe(path)
        trace = extract_trace(path, 0, info.n_frames, args.roi, info.fps)
        for name, cls in sorted(ESTIMATORS.items()):
            freqs, power = averaged_spectrum(
                trace.rgb, info.fps, cls(band=band), args.window_s, args.hop_s
            )
            at_ref, peak, at_peak = visibility(freqs, power, ref_bpm, band)
            rows.append(
                {
                    "recording": rec,
                    "estimator": name,
                    "ref_bpm": ref_bpm,
                    "ref_x_flat": round(at_ref, 2),
                    "peak_bpm": peak,
                    "peak_x_flat": round(at_peak, 2),
                }
            )
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(
        f"{'recording':45s} {'estimator':9s} {'ref':>6s} {'x flat':>6s} {'peak':>6s} {'x flat':>6s}"
    )
    for r in rows:
        print(
            f"{r['recording']:45s} {r['estimator']:9s} {r['ref_bpm']:6.1f} "
            f"{r['ref_x_flat']:6.2f} {r['peak_bpm']:6.0f} {r['peak_x_flat']:6.2f}"
        )


if __name__ == "__main__":
    main()
