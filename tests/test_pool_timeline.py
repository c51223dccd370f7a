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
