"""A real `nbhr run` process killed mid-job: the next run finishes the job, nothing doubled."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from db.engine import make_engine, session_scope
from db.models import Segment, SegmentState, Window
from tests.helpers import nbhr, pool_processes
from worker.options import CLASSICAL

# 16-s recordings, 4-s windows every 2 s, one window per segment: 7 segments per recording.
OPTS = ["--window-s", "4", "--hop-s", "2", "--segment-s", "2"]


def _done(engine: Engine) -> int:
    with session_scope(engine) as s:
        q = select(func.count()).select_from(Segment).where(Segment.state == SegmentState.done)
        return s.scalar(q) or 0


@pytest.mark.parametrize(
    ("database", "workers", "sig"),
    [("sqlite", "1", signal.SIGKILL), ("pg", "2", signal.SIGINT), ("sqlite", "2", signal.SIGTERM)],
)
def test_killed_run_is_resumed_without_duplicates(
    database: str,
    workers: str,
    sig: signal.Signals,
    demo_archive: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    db_url = request.getfixturevalue(f"{database}_url")
    archive = tmp_path / "archive"
    shutil.copytree(demo_archive, archive)
    nbhr("db", "upgrade", "--db", db_url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbhr", "run", archive, "--db", db_url, "-j", workers, *OPTS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
        # A shell starts background jobs with SIGINT ignored, and children inherit that (CI
        # run as `bash .ci/run &` did: the run ignored the signal and finished with 0). A
        # user's Ctrl-C reaches a run with the default disposition; give the child that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # The whole job takes a few seconds: poll on one engine, often, and interrupt at the first
    # finished segment, so that most of the job is left.
    engine = make_engine(db_url)
    deadline = time.monotonic() + 120
    while _done(engine) < 1:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.01)
    pool = pool_processes(proc.pid)
    assert len(pool) == (int(workers) if workers != "1" else 0)  # -j1 runs in its own process
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:  # Ctrl-C, or `kill`: the pool's processes end with the run, none goes on alone
        done = _done(engine)
        assert proc.returncode == 128 + sig and "run the same command again" in err
        assert ("terminated" if sig == signal.SIGTERM else "interrupted") in err
        assert not [pid for pid in pool if Path(f"/proc/{pid}").exists()]
        time.sleep(1.0)
        assert _done(engine) == done
    assert _done(engine) < 21
    engine.dispose()

    nbhr("run", archive, "--db", db_url, "-j", workers, *OPTS)
    with session_scope(make_engine(db_url)) as s:
        states = dict(s.execute(select(Segment.state, func.count()).group_by(Segment.state)).all())
        assert states == {SegmentState.done: 21}
        n = s.scalar(select(func.count()).select_from(Window))
        keys = s.execute(
            select(Window.recording_id, Window.estimator, Window.t_start).distinct()
        ).all()
    assert n == len(keys) == 3 * 7 * len(CLASSICAL)
