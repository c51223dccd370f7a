"""scripts/pool_timeline.py: a real two-process pool on the demo archive, timed per process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import segment_states, window_keys

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
    """nbhr bench's end-to-end entry, as the bench compares layouts (each in processes of its
    own): a pool's CPU is its processes' (they do the work, the bench's own process waits), so
    two processes doing one process's work cannot have used less than about as much CPU, and
    pool_cpu_ratio compares the two."""
    from nbhr.bench import bench_end_to_end

    out = bench_end_to_end(demo_archive, 2, spawn=True, rounds=2)
    one, pool = out["one_process"], out["pool"]
    for entry in (one, pool):  # each layout's fastest of its two rounds
        assert len(entry["wall_s_rounds"]) == 2 and entry["wall_s"] == min(entry["wall_s_rounds"])
    walls = zip(one["wall_s_rounds"], pool["wall_s_rounds"], strict=True)
    assert out["pool_speedup_rounds"] == [a / b for a, b in walls]
    assert out["pool_speedup"] == pytest.approx(one["wall_s"] / pool["wall_s"])
    assert one["video_s"] == pool["video_s"] == 48.0
    assert pool["workers"] == 2 and one["workers"] == 1
    assert pool["cpu_s"] > 0.8 * one["cpu_s"] > 0
    assert out["pool_cpu_ratio"] == pool["cpu_s"] / one["cpu_s"]
    assert pool["video_s_per_cpu_s"] == pool["video_s"] / pool["cpu_s"]


def test_one_worker_spawned_runs_in_a_process_of_its_own(
    demo_archive: Path, tmp_path: Path
) -> None:
    """run_segments(spawn=True) with one worker: the segments run in a new process (what the
    bench's one-process layout pays, like a pool's), with the same results as in this one."""
    from nbhr.bench import plan_fresh
    from scheduler.local import run_segments
    from worker.options import ProcessingOptions

    results = {}
    for spawn in (False, True):
        url = f"sqlite:///{tmp_path / f'spawn_{spawn}.sqlite'}"
        engine, segment_ids = plan_fresh(url, demo_archive, ProcessingOptions())
        engine.dispose()
        done = list(run_segments(url, segment_ids, 1, spawn=spawn))
        assert sorted(o.segment_id for o in done) == sorted(segment_ids)
        assert {o.state for o in done} == {"done"}
        holders = {worker for _, _, worker in segment_states(url).values()}
        results[spawn] = window_keys(url), holders
    here = f"{socket.gethostname()}:{os.getpid()}"
    assert results[False][1] == {here}
    (holder,) = results[True][1]
    assert holder != here and holder.startswith(f"{socket.gethostname()}:")
    assert results[True][0] == results[False][0] and len(results[True][0]) > 0


def test_bench_times_inference_alone_in_processes_released_together(
    face_videos: list[Path],
) -> None:
    from model.nbhrnet import BUNDLED_MODEL, ENCODER_BATCH
    from nbhr.bench import (
        ENCODER_BATCHES,
        bench_encoder_batches,
        bench_inference_processes,
        face_frames,
        nbhrnet_run_options,
    )

    opts = nbhrnet_run_options(BUNDLED_MODEL)
    frames = face_frames(face_videos[:1], 60)
    out = bench_inference_processes(opts, frames, 2, windows=2, rounds=1)
    one, pool = out["one_process"], out["pool"]
    assert (one["workers"], pool["workers"], out["windows_per_process"]) == (1, 2, 2)
    # Each process clocks only its own windows, after the warm-up: two did twice the work.
    assert pool["cpu_s"] > one["cpu_s"] > 0
    assert out["speedup"] == 2 * one["wall_s"] / pool["wall_s"]
    assert out["cpu_ratio"] == pool["cpu_s"] / (2 * one["cpu_s"])
    assert out["encoder_batch"] == ENCODER_BATCH
    assert out["cpu_ms_per_frame_pool"] == 1000 * pool["cpu_s"] / (2 * 2 * 60)
    # The batch comparison keeps this run for ENCODER_BATCH and measures the others.
    batches = bench_encoder_batches(opts, frames, 2, out)
    assert list(batches) == [f"frames_{b}" for b in ENCODER_BATCHES]
    assert batches[f"frames_{ENCODER_BATCH}"]["speedup"] == out["speedup"]
    other = batches[f"frames_{ENCODER_BATCHES[1]}"]
    assert other["cpu_ms_per_frame_pool"] > 0 and other["cpu_ms_per_frame_one_process"] > 0


def test_bench_reports_an_inference_process_that_dies(tmp_path: Path) -> None:
    """A process that fails before its barrier raises here instead of leaving the others
    waiting for it forever."""
    import numpy as np

    from nbhr.bench import bench_inference_processes
    from worker.options import ProcessingOptions

    missing = str(tmp_path / "missing.onnx")
    opts = ProcessingOptions(estimators=("nbhrnet",), model_path=missing, model_sha256="0" * 64)
    frames = np.zeros((60, 3, 128, 128), np.float32)
    with pytest.raises(RuntimeError, match="exited with code 1"):
        bench_inference_processes(opts, frames, 2, windows=1, rounds=1)
