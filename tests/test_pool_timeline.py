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


def test_bench_estimates_the_nbhr_archive_from_a_layouts_rate() -> None:
    """Point 7's estimate: 9.6 h of video at a layout's video s per wall s, and how many such
    machines would bring it under an hour."""
    from nbhr.bench import NBHR_VIDEO_H, archive_estimate

    entry = {"workers": 2, "threads": 1, "video_s": 390.0, "wall_s": 33.2}
    entry["video_s_per_wall_s"] = entry["video_s"] / entry["wall_s"]  # 11.7, as on a Zen 3
    out = archive_estimate(entry)
    assert NBHR_VIDEO_H == 9.6 and out["video_h"] == 9.6
    assert out["wall_h_one_machine"] == pytest.approx(9.6 * 33.2 / 390.0)  # 0.82 h
    assert out["machines_for_one_hour"] == 1
    assert (out["workers"], out["threads"]) == (2, 1)
    slow = archive_estimate({**entry, "video_s_per_wall_s": 2.5})  # 3.84 h on one machine
    assert slow["wall_h_one_machine"] == pytest.approx(3.84)
    assert slow["machines_for_one_hour"] == 4


def test_one_worker_spawned_runs_in_a_process_of_its_own(
    demo_archive: Path, tmp_path: Path
) -> None:
    """LocalPool(spawn=True) with one worker: the segments run in a new process (what the
    bench's one-process layout pays, like a pool's), with the same results as in this one."""
    from nbhr.bench import plan_fresh
    from scheduler.local import LocalPool
    from worker.options import ProcessingOptions

    results = {}
    for spawn in (False, True):
        url = f"sqlite:///{tmp_path / f'spawn_{spawn}.sqlite'}"
        engine, segment_ids = plan_fresh(url, demo_archive, ProcessingOptions())
        engine.dispose()
        with LocalPool(url, 1, spawn=spawn) as pool:
            assert pool.in_process is not spawn
            done = list(pool.run(segment_ids))
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


def test_a_pool_starts_its_processes_before_the_work_is_known(
    demo_archive: Path, tmp_path: Path
) -> None:
    """LocalPool starts every process on entering its block, before any segment exists (as
    `nbhr run` starts them, then plans the archive), runs the segments planned afterwards, and
    leaves no process behind with wait=True."""
    import multiprocessing as mp

    from nbhr.bench import plan_fresh
    from scheduler.local import LocalPool
    from worker.options import ProcessingOptions

    url = f"sqlite:///{tmp_path / 'early.sqlite'}"
    assert mp.active_children() == []
    with LocalPool(url, 2, detector=True) as pool:
        assert len(mp.active_children()) == 2
        engine, segment_ids = plan_fresh(url, demo_archive, ProcessingOptions())
        engine.dispose()
        done = list(pool.run(segment_ids))
    assert mp.active_children() == []
    assert sorted(o.segment_id for o in done) == sorted(segment_ids) and len(done) == 3
    assert {o.state for o in done} == {"done"}
    here = f"{socket.gethostname()}:{os.getpid()}"
    assert here not in {worker for _, _, worker in segment_states(url).values()}


def test_nbhr_run_on_a_pool_keeps_the_worker_out_of_its_own_process(
    demo_archive: Path, tmp_path: Path
) -> None:
    """`nbhr run -j2`: the segments run in the pool's processes, and the main process, which
    only registers, plans and sums up, never imports the worker (worker.process, and with it
    scipy.signal and dlib): their import time would delay the pool's start on two cores."""
    code = (
        "import json, os, sys\n"
        "from nbhr.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "heavy = [m in sys.modules for m in ('worker.process', 'scipy.signal', 'dlib')]\n"
        "print(json.dumps([os.getpid(), heavy]))\n"
    )
    url = f"sqlite:///{tmp_path / 'light.sqlite'}"
    out = subprocess.run(
        [sys.executable, "-c", code, "run", str(demo_archive), "-j2", "--db", url, "--json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    summary_text, _, imported = out.stdout.rstrip().rpartition("\n")
    summary = json.loads(summary_text)
    assert summary["segments_run"] == 3 and summary["segments_failed"] == 0
    assert summary["windows_written"] > 0
    pid, heavy = json.loads(imported)
    assert heavy == [False, False, False]
    holders = {worker for _, _, worker in segment_states(url).values()}
    assert holders and f"{socket.gethostname()}:{pid}" not in holders


def test_a_pool_left_before_any_work_ends_its_processes_at_once(tmp_path: Path) -> None:
    """Leaving a LocalPool that ran nothing (`nbhr run` with nothing to do) ends its processes
    while they still start up (a signal, not their own exit after it), and leaves none."""
    import multiprocessing as mp
    import signal

    from scheduler.local import LocalPool

    with LocalPool(f"sqlite:///{tmp_path / 'unused.sqlite'}", 2, detector=True) as pool:
        procs = mp.active_children()
        assert len(procs) == 2
        assert list(pool.run([])) == []
    assert mp.active_children() == []
    assert [p.exitcode for p in procs] == [-signal.SIGTERM] * 2


def test_a_pool_left_on_an_exception_ends_its_processes_and_the_job_resumes(
    demo_archive: Path, tmp_path: Path
) -> None:
    """Ctrl-C in `nbhr run -j2` leaves the pool's block with an exception while segments run:
    the processes end at once (a signal), and planning the same job again takes over what
    they held or had not started, so that every segment ends done with its windows."""
    import multiprocessing as mp
    import signal

    from nbhr.bench import plan_fresh
    from scheduler.local import LocalPool
    from worker.options import ProcessingOptions

    url = f"sqlite:///{tmp_path / 'stopped.sqlite'}"
    opts = ProcessingOptions()
    engine, segment_ids = plan_fresh(url, demo_archive, opts)
    engine.dispose()
    assert len(segment_ids) == 3
    with pytest.raises(KeyboardInterrupt), LocalPool(url, 2) as pool:
        procs = mp.active_children()
        first = next(pool.run(segment_ids))
        raise KeyboardInterrupt
    assert mp.active_children() == []
    assert [p.exitcode for p in procs] == [-signal.SIGTERM] * 2
    states = segment_states(url)
    assert states[first.segment_id][0] == "done"
    left = sorted(sid for sid, (state, _, _) in states.items() if state != "done")
    assert left  # the other two were cut short or never started

    engine, again = plan_fresh(url, demo_archive, opts)  # `nbhr run` once more
    engine.dispose()
    assert sorted(again) == left
    with LocalPool(url, 2) as pool:
        assert {o.state for o in pool.run(again)} == {"done"}
    assert {state for state, _, _ in segment_states(url).values()} == {"done"}
    assert len(window_keys(url)) > 0
