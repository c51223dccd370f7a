"""Helpers for tests: run the real `nbhr` console script and read its JSON; read what a run
left in its database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select

from db.models import Segment, SegmentState, Window

NBHR = [sys.executable, "-m", "nbhr"]


def nbhr(
    *args: str | Path, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run `nbhr ARGS` in a real subprocess; fail with its output when it exits non-zero."""
    proc = subprocess.run(
        [*NBHR, *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"nbhr {' '.join(map(str, args))} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def nbhr_json(*args: str | Path) -> Any:
    return json.loads(nbhr(*args).stdout)


def copy_bundled_model(folder: Path) -> Path:
    """The shipped model and its fp32 halves (no int8 encoder, no ReLU student) copied into
    `folder`; returns the copy of the whole-model file."""
    import shutil

    from model.nbhrnet import BUNDLED_MODEL, companion_paths

    for path in (BUNDLED_MODEL, *companion_paths(BUNDLED_MODEL)):
        shutil.copy(path, folder / path.name)
    return folder / BUNDLED_MODEL.name


def segment_states(db_url: str) -> dict[int, tuple[str, int, str | None]]:
    """segment id -> (state, attempts, worker)."""
    eng = create_engine(db_url)
    try:
        with eng.connect() as conn:
            rows = conn.execute(select(Segment.id, Segment.state, Segment.attempts, Segment.worker))
            return {r.id: (SegmentState(r.state).value, r.attempts, r.worker) for r in rows}
    finally:
        eng.dispose()


def window_keys(db_url: str) -> list[tuple]:
    """Every window's (recording id, estimator, start, HR), sorted."""
    eng = create_engine(db_url)
    try:
        with eng.connect() as conn:
            return sorted(
                conn.execute(
                    select(Window.recording_id, Window.estimator, Window.t_start, Window.hr_bpm)
                ).all()
            )
    finally:
        eng.dispose()


def pool_processes(pid: int) -> list[int]:
    """The pool processes among the children of process `pid` (Linux /proc): those started by
    multiprocessing's spawn, not its resource tracker."""
    tasks = Path(f"/proc/{pid}/task")
    children = [int(c) for t in tasks.iterdir() for c in (t / "children").read_text().split()]
    return [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
