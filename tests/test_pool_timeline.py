"""scripts/pool_timeline.py: a real two-process pool on the demo archive, timed per process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pool_timeline.py"


def test_two_processes_share_the_segments_and_each_reports_its_start_up(
    demo_archive: Path,
) -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(demo_archive), "--workers", "2", "--json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (run,) = json.loads(out.stdout)
    assert run["workers"] == 2 and run["segments"] == 3  # 2 face recordings and an empty cot
    assert run["video_s"] == 48.0
    procs = run["processes"]
    assert 1 <= len(procs) <= 2 and sum(p["segments"] for p in procs) == 3
    for p in procs:
        # Ready before its first segment, which ends after it starts, within the run.
        assert 0 < p["ready_s"] < p["last_end_s"] <= run["wall_s"]
        assert 0 < p["busy_s"] <= p["last_end_s"] - p["ready_s"] + 1e-6
    assert run["children_cpu_s"] > 0


def test_bench_counts_the_cpu_of_its_pool_processes(demo_archive: Path) -> None:
    """nbhr bench's end-to-end entry: a pool's CPU is its processes' (they do the work, the
    bench's own process waits), so two processes doing one process's work cannot have used
    less than about as much CPU, and pool_cpu_ratio compares the two."""
    from nbhr.bench import bench_end_to_end

    out = bench_end_to_end(demo_archive, 2)
    one, pool = out["one_process"], out["pool"]
    assert one["video_s"] == pool["video_s"] == 48.0
    assert pool["workers"] == 2 and one["workers"] == 1
    assert pool["cpu_s"] > 0.8 * one["cpu_s"] > 0
    assert out["pool_cpu_ratio"] == pool["cpu_s"] / one["cpu_s"]
    assert pool["video_s_per_cpu_s"] == pool["video_s"] / pool["cpu_s"]
