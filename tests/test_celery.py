"""The distributed path for real: `nbhr enqueue` publishes to Redis, `nbhr worker` processes
(Celery prefork workers in their own OS processes) write to PostgreSQL. No eager mode, no mocks.

Each test gets a fresh PostgreSQL database and its own queue; the broker is either the shared
Redis (a database number of its own, flushed) or, where a test restarts the broker, a private
redis-server it starts on a free port.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from db import queries
from db.models import Recording, Segment, Window
from tests.conftest import IN_CI
from tests.helpers import NBHR, nbhr, nbhr_json, segment_states, window_keys

REDIS_URL = os.environ.get("NBHR_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
# Short leases so that a killed worker's segment is free again within seconds.
LEASE_S = "6"
JOB_TIMEOUT_S = 240.0
# Segments of 8 s: a few per recording, each a second or two of work.
PLAN = ("--estimator", "pos", "--estimator", "green", "--segment-s", "8")


@pytest.fixture(scope="session")
def redis_server() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        if IN_CI:
            pytest.fail(f"Redis is required in CI and does not answer: {exc}")
        pytest.skip(f"Redis not available: {exc}")
    return REDIS_URL


@pytest.fixture
def broker(redis_server: str) -> str:
    redis.Redis.from_url(redis_server).flushdb()
    return redis_server


@pytest.fixture
def queue() -> str:
    return f"nbhr_test_{uuid.uuid4().hex[:8]}"


class Workers:
    """`nbhr worker` processes started for one test and stopped (killed if need be) after it."""

    def __init__(self, db_url: str, broker_url: str, queue: str, log_dir: Path) -> None:
        self.db_url, self.broker_url, self.queue, self.log_dir = db_url, broker_url, queue, log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        # Where the workers may read: the test session's temporary directories.
        self.roots = [tempfile.gettempdir()]

    def start(self, name: str, concurrency: int = 1) -> subprocess.Popen:
        log = (self.log_dir / f"{name}.log").open("w")
        proc = subprocess.Popen(
            [
                *NBHR,
                "worker",
                "--db",
                self.db_url,
                "--broker",
                self.broker_url,
                "-Q",
                self.queue,
                "-c",
                str(concurrency),
                "-n",
                f"{name}@%h",
                *(f"--archive-root={r}" for r in self.roots),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NBHR_LEASE_S": LEASE_S},
            start_new_session=True,  # its own process group, so that stop() reaches the pool
        )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def workers(pg_url: str, broker: str, queue: str, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(pg_url, broker, queue, tmp_path)
    yield w
    w.stop()


def wait_for(cond: Callable[[], object], timeout: float, what: str, logs: Callable = str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{logs()}")


def wait_first_claim(db_url: str, logs: Callable) -> None:
    """Until a worker has claimed a first segment: the moment a test breaks something while
    most of the job still waits in the queue."""
    wait_for(
        lambda: any(s != "queued" for s, _, _ in segment_states(db_url).values()),
        60,
        "a first claimed segment",
        logs,
    )


def all_done(db_url: str) -> bool:
    states = segment_states(db_url)
    return bool(states) and all(s in ("done", "failed") for s, _, _ in states.values())


def wait_ready(workers: Workers, *names: str) -> None:
    """Until each named worker consumes its queue (Celery logs "<name>@<host> ready.")."""
    wait_for(
        lambda: all(" ready." in workers.log(name) for name in names),
        60,
        f"workers {', '.join(names)}",
        lambda: "\n".join(workers.log(name) for name in names),
    )


def kill_mid_segment(db_url: str, sid: int, worker: str) -> int | None:
    """SIGKILL the pool process `worker` (host:pid) while it holds segment `sid`: it is
    stopped first, so that it cannot finish the segment between the look and the kill, and
    killed only if the segment is still running in its hands. Returns the pid it killed; None
    where it let the process go or the process had already ended. A process killed before
    still takes signals as a zombie until its parent reaps it, which can happen between any
    two of these calls: then there is nothing left to kill."""
    pid = int(worker.rsplit(":", 1)[1])
    try:
        os.kill(pid, signal.SIGSTOP)
        state, _, holder = segment_states(db_url)[sid]
        if state == "running" and holder == worker:
            os.kill(pid, signal.SIGKILL)
            return pid
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass
    return None


@pytest.fixture(scope="module")
def local_windows(demo_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> list[tuple]:
    """What `nbhr run` (local pool, SQLite) writes for the same archive and options: the
    distributed path must write exactly this."""
    url = f"sqlite:///{tmp_path_factory.mktemp('local') / 'local.sqlite'}"
    nbhr("run", demo_archive, "--db", url, *PLAN, "--json")
    return window_keys(url)


def enqueue_args(archive: Path, db_url: str, broker_url: str, queue: str) -> list[str]:
    return [
        *map(str, ("enqueue", archive, "--db", db_url, "--broker", broker_url, "--queue", queue)),
        *PLAN,
    ]


def enqueue(archive: Path, db_url: str, broker_url: str, queue: str) -> None:
    nbhr(*enqueue_args(archive, db_url, broker_url, queue))


def test_two_workers_write_what_the_local_run_writes(
    demo_archive: Path, pg_url: str, broker: str, queue: str, workers: Workers, local_windows
) -> None:
    workers.start("a")
    workers.start("b")
    # Both consume before the job is published: each is handed a segment (prefetch 1).
    wait_ready(workers, "a", "b")

    def logs() -> str:
        return workers.log("a") + workers.log("b")

    # While it runs: an ETA once a segment is done and others are left. The job's few seconds
    # of work start as `nbhr enqueue` publishes it, before that command has exited, so the
    # progress is watched while the command runs (a look after it returned once came after
    # the last segment, and waited for a half-done job that had ended).
    enqueuing = subprocess.Popen(
        [*NBHR, *enqueue_args(demo_archive, pg_url, broker, queue)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    eng = create_engine(pg_url)

    def mid_run() -> dict | None:
        if enqueuing.poll() not in (None, 0):
            output = enqueuing.stdout.read() if enqueuing.stdout else ""
            raise AssertionError(f"nbhr enqueue exited {enqueuing.returncode}\n{output}")
        try:
            with Session(eng) as s:
                job = queries.job_progress(s)
        except DBAPIError:  # enqueue has not set the database up yet
            return None
        left = job is not None and job["video_s_left"] > 0
        return job if left and job["segments"]["done"] >= 1 else None

    job = wait_for(mid_run, JOB_TIMEOUT_S, "a job half done", logs)
    out, _ = enqueuing.communicate(timeout=60)
    assert enqueuing.returncode == 0, out
    assert job["eta_s"] > 0 and job["video_s_per_s"] > 0
    during = json.loads(nbhr("status", "--db", pg_url, "--json").stdout)
    assert during["job"]["job_id"] == job["job_id"]
    wait_for(lambda: all_done(pg_url), JOB_TIMEOUT_S, "the job", logs)
    eng.dispose()
    assert window_keys(pg_url) == local_windows
    states = segment_states(pg_url)
    assert {s for s, _, _ in states.values()} == {"done"}
    assert all(attempts == 1 for _, attempts, _ in states.values())
    # Both workers took part (worker ids are host:pid of the pool process).
    assert len({w for _, _, w in states.values()}) >= 2
    status = nbhr_json("status", "--db", pg_url, "--json")
    assert status["job"]["eta_s"] == 0 and status["job"]["segments"]["done"] == len(states)
    assert sum(w["segments"] for w in status["workers"]) == len(states)
    assert all(w["video_s_per_busy_s"] > 0 for w in status["workers"])


def test_sigkill_mid_segment_is_finished_by_another_worker(
    demo_archive: Path, pg_url: str, broker: str, queue: str, workers: Workers, local_windows
) -> None:
    enqueue(demo_archive, pg_url, broker, queue)
    workers.start("a")

    def killed() -> tuple[int, str] | None:
        for sid, (state, _, w) in segment_states(pg_url).items():
            if state != "running" or w is None:
                continue
            if kill_mid_segment(pg_url, sid, w) is not None:
                return sid, w  # the pool process, in the middle of the segment
        return None

    sid, victim = wait_for(killed, 60, "a segment killed mid-run", lambda: workers.log("a"))
    workers.start("b")
    wait_for(lambda: all_done(pg_url), JOB_TIMEOUT_S, "the job", lambda: workers.log("a"))
    state, attempts, worker = segment_states(pg_url)[sid]
    assert state == "done" and attempts == 2 and worker != victim
    # Exactly one row per window: nothing lost, nothing twice.
    assert window_keys(pg_url) == local_windows


def test_a_task_delivered_twice_writes_one_set_of_windows(
    demo_archive: Path, pg_url: str, broker: str, queue: str, workers: Workers, local_windows
) -> None:
    enqueue(demo_archive, pg_url, broker, queue)
    # Every segment a second time, then once more after all are done.
    env = {"NBHR_BROKER_URL": broker, "NBHR_DB_URL": pg_url}
    publish_all = (
        "from db.engine import engine_for, session_scope\n"
        "from db.models import Segment\n"
        "from sqlalchemy import select\n"
        "from scheduler.queue import publish\n"
        f"with session_scope(engine_for({pg_url!r})) as s:\n"
        "    ids = list(s.scalars(select(Segment.id)))\n"
        f"publish(ids, {queue!r})\n"
    )
    subprocess.run([sys.executable, "-c", publish_all], check=True, env={**os.environ, **env})
    workers.start("a")
    workers.start("b")
    wait_for(lambda: all_done(pg_url), JOB_TIMEOUT_S, "the job", lambda: workers.log("a"))
    subprocess.run([sys.executable, "-c", publish_all], check=True, env={**os.environ, **env})
    r = redis.Redis.from_url(broker)
    wait_for(lambda: r.llen(queue) == 0, 60, "the queue to drain")
    # The last deliveries finish (they find their segment done) and are acknowledged.
    wait_for(lambda: r.hlen("unacked") == 0, 60, "the last deliveries", lambda: workers.log("a"))
    assert window_keys(pg_url) == local_windows
    assert all(a == 1 for _, a, _ in segment_states(pg_url).values())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def private_redis(tmp_path: Path, redis_server: str) -> Iterator[Callable[[], subprocess.Popen]]:
    """A redis-server of this test's own, which it may stop and start again; like the
    production broker it keeps nothing on disk."""
    exe = shutil.which("redis-server")
    if exe is None:
        if IN_CI:
            pytest.fail("redis-server is required in CI")
        pytest.skip("redis-server not installed")
    port = _free_port()
    procs: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
        proc = subprocess.Popen([*args, "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
        procs.append(proc)
        url = f"redis://127.0.0.1:{port}/0"
        wait_for(lambda: _pings(url), 10, "redis-server to start")
        start.url = url  # type: ignore[attr-defined]
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def test_redis_restart_loses_messages_and_requeue_recovers_them(
    demo_archive: Path,
    pg_url: str,
    queue: str,
    tmp_path: Path,
    private_redis,
    local_windows,
) -> None:
    server = private_redis()
    url = private_redis.url
    enqueue(demo_archive, pg_url, url, queue)
    w = Workers(pg_url, url, queue, tmp_path)
    try:
        w.start("a")
        # Restart the broker as soon as the worker has claimed a segment, while most are queued.
        wait_first_claim(pg_url, lambda: w.log("a"))
        pending = [sid for sid, (s, _, _) in segment_states(pg_url).items() if s == "queued"]
        assert pending, "the job ended before the broker could be restarted"
        server.terminate()  # the broker goes away with every queued message
        server.wait()
        private_redis()
        assert redis.Redis.from_url(url).llen(queue) == 0  # nothing came back
        # The worker may hold one message from before the restart (prefetch 1, late ack) and
        # finish that segment; what is still queued once it has had time to is truly lost. A
        # segment running at the restart may need its lease to run out.
        time.sleep(float(LEASE_S) + 1)
        lost = [sid for sid, (s, _, _) in segment_states(pg_url).items() if s == "queued"]
        assert lost, f"the worker had every queued segment {pending} in hand at the restart"
        done = nbhr_json("requeue", "--db", pg_url, "--broker", url, "--queue", queue, "--json")
        assert done["queue"] == queue and done["requeued"] >= len(lost)
        wait_for(lambda: all_done(pg_url), JOB_TIMEOUT_S, "the job", lambda: w.log("a"))
    finally:
        w.stop()
    assert {s for s, _, _ in segment_states(pg_url).values()} == {"done"}
    assert window_keys(pg_url) == local_windows


@pytest.fixture
def pg_proxy(pg_url: str) -> Iterator[Callable[[], subprocess.Popen]]:
    """start() runs tests/tcp_proxy.py in front of PostgreSQL on a fixed free port and returns
    the process; start.url is pg_url through it."""
    from sqlalchemy.engine import make_url

    target = make_url(pg_url)
    port = _free_port()
    procs: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.tcp_proxy", str(port), target.host, str(target.port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        procs.append(proc)
        return proc

    start.url = target.set(port=port).render_as_string(hide_password=False)  # type: ignore[attr-defined]
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_database_outage_tasks_back_off_and_finish_when_it_returns(
    demo_archive: Path,
    pg_url: str,
    broker: str,
    queue: str,
    tmp_path: Path,
    pg_proxy,
    local_windows,
) -> None:
    proxy = pg_proxy()
    via_proxy = pg_proxy.url
    enqueue(demo_archive, pg_url, broker, queue)
    w = Workers(via_proxy, broker, queue, tmp_path)
    try:
        w.start("a")
        # The database goes away as soon as the worker has claimed a segment, while the
        # others wait: the worker must reach it again to finish them.
        wait_first_claim(pg_url, lambda: w.log("a"))
        proxy.kill()  # PostgreSQL is now unreachable for the worker
        proxy.wait()
        left = [sid for sid, (s, _, _) in segment_states(pg_url).items() if s != "done"]
        assert left, "the job ended before the database went away"
        down = nbhr("status", "--db", via_proxy, check=False)
        assert down.returncode == 1
        assert down.stderr.startswith("Error: cannot connect to database")
        assert len(down.stderr.strip().splitlines()) == 1 and "Traceback" not in down.stderr
        wait_for(lambda: "database unavailable" in w.log("a"), 60, "a retry", lambda: w.log("a"))
        time.sleep(3)
        pg_proxy()
        wait_for(lambda: all_done(pg_url), JOB_TIMEOUT_S, "the job", lambda: w.log("a"))
    finally:
        w.stop()
    assert {s for s, _, _ in segment_states(pg_url).values()} == {"done"}
    assert window_keys(pg_url) == local_windows


def test_poisoned_recordings_fail_with_a_reason_and_do_not_block_the_queue(
    demo: object, pg_url: str, broker: str, queue: str, workers: Workers, tmp_path: Path
) -> None:
    """Two kinds of poison: a file that went bad after it was planned (decoding fails: the
    reason is stored at once), and a segment whose worker dies every time it runs it (here:
    SIGKILLed each time it is claimed), which fails after NBHR_MAX_ATTEMPTS (3) attempts."""
    archive = tmp_path / "archive"
    shutil.copytree(demo.root, archive)  # type: ignore[attr-defined]
    face = [r.recording for r in demo.recordings if r.has_face]  # type: ignore[attr-defined]
    enqueue(archive, pg_url, broker, queue)
    # The file goes bad after planning: same size, garbage inside.
    bad = archive / face[0]
    bad.write_bytes(os.urandom(bad.stat().st_size))
    eng = create_engine(pg_url)
    with eng.connect() as conn:
        killer_rec = conn.scalar(select(Recording.id).where(Recording.path.like(f"%{face[1]}")))
        target = conn.scalar(
            select(Segment.id).where(Segment.recording_id == killer_rec).order_by(Segment.t_start)
        )
    eng.dispose()
    workers.start("a")
    killed: set[int] = set()
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not all_done(pg_url) and time.monotonic() < deadline:
        state, _, worker = segment_states(pg_url)[target]
        # Three kills; the fourth claim must give up on its own (killing it too would race
        # with the worker writing that verdict).
        if state == "running" and worker is not None and len(killed) < 3:
            # The set counts each process once: one killed before can still take the signal
            # as a zombie until Celery reaps it.
            pid = kill_mid_segment(pg_url, target, worker)
            if pid is not None:
                killed.add(pid)
        time.sleep(0.05)
    assert all_done(pg_url), workers.log("a")
    assert len(killed) == 3
    states = segment_states(pg_url)
    assert states[target][0] == "failed" and states[target][1] == 4
    failures = {
        f["recording"]: f["error"]
        for f in nbhr_json("status", "--db", pg_url, "--json")["failures"]
    }
    assert "gave up after 3 attempts" in failures[str(archive / face[1])]
    assert str(archive / face[0]) in failures and failures[str(archive / face[0])]
    # Every other segment ran: the poison blocked nothing.
    others = [s for sid, (s, _, _) in states.items() if sid != target]
    assert "done" in others


def test_workers_read_only_under_their_archive_roots_mask_credentials_and_refuse_pickle(
    demo: object, pg_url: str, broker: str, queue: str, workers: Workers, tmp_path: Path
) -> None:
    from nbhr.demo import write_demo_archive

    archive = tmp_path / "archive"
    shutil.copytree(demo.root, archive)  # type: ignore[attr-defined]
    outside = write_demo_archive(tmp_path / "outside", subjects=1, seconds=12.0, seed=3)
    escaping = archive / "video" / "escape.avi"
    escaping.symlink_to(outside.root / outside.recordings[0].recording)
    enqueue(archive, pg_url, broker, queue)

    # No archive root: the worker does not start.
    env = {k: v for k, v in os.environ.items() if k != "NBHR_ARCHIVE_ROOTS"}
    refused = subprocess.run(
        [*NBHR, "worker", "--db", pg_url, "--broker", broker, "-Q", queue],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert refused.returncode == 2 and "NBHR_ARCHIVE_ROOTS is not set" in refused.stderr

    # A password in the database URL (trust authentication ignores it) appears nowhere.
    secret = f"pw-s3cret-{os.getpid()}"
    from sqlalchemy.engine import make_url

    workers.db_url = make_url(pg_url).set(password=secret).render_as_string(hide_password=False)
    workers.roots = [str(archive)]
    workers.start("a")
    wait_for(lambda: all_done(pg_url), JOB_TIMEOUT_S, "the job", lambda: workers.log("a"))
    status = nbhr_json("status", "--db", pg_url, "--json")
    failures = {f["recording"]: f["error"] for f in status["failures"]}
    assert "outside this worker's archive roots" in failures[str(escaping)]
    assert "symbolic link" in failures[str(escaping)]
    done = [r for r in demo.recordings if r.has_face]  # type: ignore[attr-defined]
    assert all(str(archive / r.recording) not in failures for r in done)

    # A pickled message is refused, not run.
    code = (
        "from worker.celery_app import app, SEGMENT_TASK\n"
        f"app.send_task(SEGMENT_TASK, args=(1,), queue={queue!r}, serializer='pickle')\n"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        env={**os.environ, "NBHR_BROKER_URL": broker},
    )
    wait_for(
        lambda: "untrusted content" in workers.log("a"), 30, "the refusal", lambda: workers.log("a")
    )
    down = nbhr(
        "status", "--db", workers.db_url.replace(str(make_url(pg_url).port), "1"), check=False
    )
    assert down.returncode == 1
    for text in (workers.log("a"), down.stderr, down.stdout, refused.stderr):
        assert secret not in text


def test_beat_requeues_lost_messages_and_picks_up_new_recordings(
    demo: object, pg_url: str, broker: str, queue: str, workers: Workers, tmp_path: Path
) -> None:
    from nbhr.demo import write_demo_archive

    archive = tmp_path / "archive"
    shutil.copytree(demo.root, archive)  # type: ignore[attr-defined]
    enqueue(archive, pg_url, broker, queue)
    workers.roots = [str(tmp_path)]
    workers.start("a")
    beat_log = (tmp_path / "beat.log").open("w")
    beat = subprocess.Popen(
        [*NBHR, "beat", "--db", pg_url, "--broker", broker, "--queue", queue, "--every", "2"]
        + ["--watch", str(archive)],
        stdout=beat_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_first_claim(pg_url, lambda: workers.log("a"))
        redis.Redis.from_url(broker).flushdb()  # every queued message is lost
        lost = [sid for sid, (s, _, _) in segment_states(pg_url).items() if s == "queued"]
        assert lost, "the job ended before its messages could be lost"
        wait_for(lambda: all_done(pg_url), JOB_TIMEOUT_S, "the job", lambda: workers.log("a"))
        # A recording appears: beat's next scan plans it with the last job's options.
        new = write_demo_archive(tmp_path / "new", subjects=1, seconds=12.0, seed=21)
        source = new.root / new.recordings[0].recording
        if not new.recordings[0].has_face:
            source = new.root / new.recordings[1].recording
        shutil.copy(source, archive / "video" / "arrived_later.avi")
        eng = create_engine(pg_url)

        def new_windows() -> set[str]:
            with eng.connect() as conn:
                return set(
                    conn.scalars(
                        select(Window.estimator)
                        .join(Recording, Recording.id == Window.recording_id)
                        .where(Recording.path.like("%arrived_later.avi"))
                    )
                )

        wait_for(
            lambda: new_windows() and all_done(pg_url),
            JOB_TIMEOUT_S,
            "the new recording",
            lambda: workers.log("a") + (tmp_path / "beat.log").read_text(),
        )
        assert new_windows() == {"pos", "green"}
        eng.dispose()
    finally:
        os.killpg(beat.pid, signal.SIGTERM)
        beat.wait(timeout=30)
    assert {s for s, _, _ in segment_states(pg_url).values()} == {"done"}
