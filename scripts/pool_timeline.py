"""Where a local pool's wall time goes: each worker process's start-up (spawn, imports, set-up)
and each segment's start and end, for 1 and then 2 processes, on an archive planned fresh
into a temporary SQLite database each time.

    python scripts/pool_timeline.py ARCHIVE [--model model/data/nbhrnet.onnx] [--workers 1 2]

Prints, per run, the wall time, the children's CPU time, and per process when it was ready,
how many segments it ran, when its last one ended and how long it was busy; with --json the
same as JSON. The gap between a process's last end and the run's end is the tail it waited
for the other; the time before its first segment is its start-up.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_URL: str | None = None
_T0 = 0.0
_READY = 0.0


def _init(url: str, t0: float) -> None:
    global _URL, _T0, _READY
    from worker.process import init_process

    init_process(1)
    _URL, _T0 = url, t0
    _READY = time.time() - t0


def _run(segment_id: int) -> tuple[int, float, float, float, float]:
    from db.engine import engine_for
    from worker.process import process_segment

    begin = time.time() - _T0
    outcome = process_segment(engine_for(_URL), segment_id)
    return os.getpid(), _READY, begin, time.time() - _T0, outcome.video_s


def timeline(archive: Path, workers: int, model: Path | None) -> dict[str, Any]:
    from nbhr.bench import nbhrnet_run_options, plan_fresh
    from worker.faces import DETECT_WIDTH
    from worker.options import ProcessingOptions

    opts = nbhrnet_run_options(model) if model else ProcessingOptions(decode_min_width=DETECT_WIDTH)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/timeline.sqlite"
        engine, segment_ids = plan_fresh(url, archive, opts)
        engine.dispose()
        before = os.times()
        t0 = time.time()
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(workers, ctx, initializer=_init, initargs=(url, t0)) as pool:
            rows = list(pool.map(_run, segment_ids))
        wall = time.time() - t0
        after = os.times()
    procs: dict[int, dict[str, Any]] = {}
    for pid, ready, begin, end, _ in rows:
        p = procs.setdefault(
            pid, {"ready_s": ready, "segments": 0, "last_end_s": 0.0, "busy_s": 0.0}
        )
        p["segments"] += 1
        p["last_end_s"] = max(p["last_end_s"], end)
        p["busy_s"] += end - begin
    cpu = (after.children_user + after.children_system) - (
        before.children_user + before.children_system
    )
    return {
        "workers": workers,
        "segments": len(rows),
        "video_s": sum(r[4] for r in rows),
        "wall_s": wall,
        "children_cpu_s": cpu,
        "processes": list(procs.values()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("archive", type=Path)
    ap.add_argument("--model", type=Path, help="run --estimator nbhrnet with this model")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    runs = [timeline(args.archive, n, args.model) for n in args.workers]
    if args.json:
        print(json.dumps(runs, indent=2))
        return
    for r in runs:
        print(
            f"{r['workers']} process(es): {r['segments']} segments, {r['video_s']:.0f} video s, "
            f"wall {r['wall_s']:.2f} s, CPU {r['children_cpu_s']:.2f} s"
        )
        for p in r["processes"]:
            print(
                f"  ready at {p['ready_s']:.2f} s, {p['segments']} segments, last ended at "
                f"{p['last_end_s']:.2f} s, busy {p['busy_s']:.2f} s"
            )


if __name__ == "__main__":
    main()
