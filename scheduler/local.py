"""The embedded executor: run segments on a pool of local processes (no broker needed).

Each process builds its own database engine and face detector and calls the same
`process_segment` that the Celery task calls.

A pool's processes can be started before the work is known (LocalPool): `nbhr run` starts them
first and registers and plans the archive while they import and build their face detectors,
the two at once on two cores instead of one after the other. worker.process is imported here
only where segments run in this process, so that the main process of a pool never pays for it.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from contextlib import contextmanager

from db.engine import engine_for
from worker.outcome import SegmentOutcome

_DB_URL: str | None = None


def _init(
    db_url: str, model_threads: int, archive_roots: list[str] | None, detector: bool = False
) -> None:
    """A process's set-up (worker.process.init_process); detector: also build its face
    detector now (dlib's, 0.2 s), not at its first segment."""
    from worker.process import face_detector, init_process

    global _DB_URL
    _DB_URL = db_url
    init_process(model_threads, archive_roots)
    if detector:
        face_detector()


def _run(segment_id: int) -> SegmentOutcome:
    from worker.process import process_segment

    assert _DB_URL is not None, "pool process not initialised"
    return process_segment(engine_for(_DB_URL), segment_id)


def _started() -> None:
    """A task that does nothing: submitting one per process makes the pool start them all."""


def end_now(pool: ProcessPoolExecutor) -> None:
    """Shut `pool` down by ending its processes (SIGTERM) instead of waiting for the tasks they
    run; tasks not started are cancelled. ProcessPoolExecutor has no public way to do this
    before Python 3.14."""
    for proc in list(getattr(pool, "_processes", {}).values()):
        proc.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived inside stop_on_sigterm: to SIGTERM what KeyboardInterrupt is to Ctrl-C's
    SIGINT, so that whatever handles an interrupted run handles this one too."""


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM (`kill`, `timeout`, a batch scheduler or service manager
    stopping the run) raises Terminated in this thread, as Ctrl-C raises KeyboardInterrupt, so
    that a LocalPool left by it ends its processes at once. Python's own response to SIGTERM
    ends this process on the spot and leaves the pool's processes behind: they finish the
    segments they hold unwatched, then wait for work from a parent that is gone, for good (two
    of 170 MB each were still there minutes after such a `kill`). Outside the main thread,
    where Python cannot set a signal handler, the block changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class LocalPool:
    """`workers` processes (none when workers == 1, unless `spawn`: the segments then run in
    this process), each with `model_threads` onnxruntime threads for NBHRnet and reading only
    under `archive_roots` (None: anywhere), started when the block is entered; `run` runs
    segments on them. detector: each process builds its face detector as it starts.
    spawn: run even one worker in a fresh process, which pays the start-up (imports,
    onnxruntime sessions, the face detector) that a pool's processes pay, as `nbhr bench`
    compares them.
    wait: on leaving the block, wait for the processes to end (what a caller that counts
    their CPU time needs); False lets them end while this process goes on (the interpreter
    still waits for them before it exits). Leaving on an exception (Ctrl-C included, and
    SIGTERM within stop_on_sigterm), or before any segment was run, ends the processes at
    once."""

    def __init__(
        self,
        db_url: str,
        workers: int = 1,
        model_threads: int = 1,
        archive_roots: list[str] | None = None,
        spawn: bool = False,
        detector: bool = False,
        wait: bool = True,
    ) -> None:
        self.workers = max(workers, 1)
        self.model_threads = model_threads
        self._initargs = (db_url, model_threads, archive_roots, detector)
        self.in_process = workers <= 1 and not spawn
        self.wait = wait
        self._pool: ProcessPoolExecutor | None = None
        self._ran = False  # whether run was asked for any segment

    def __enter__(self) -> LocalPool:
        if self.in_process:
            return self
        # spawn, not fork: a forked child would inherit the parent's open database connections.
        self._pool = ProcessPoolExecutor(
            self.workers,
            mp_context=mp.get_context("spawn"),
            initializer=_init,
            initargs=self._initargs,
        )
        # The executor starts a process for each task submitted while none is idle.
        for _ in range(self.workers):
            self._pool.submit(_started)
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._pool is None:
            return
        if not self._ran or exc_type is not None:
            # Nothing was run (nothing to do), or the run stops on an error or Ctrl-C: end the
            # processes now instead of waiting for their start-up, or for the segments already
            # handed to them, to finish. A segment cut short stays `running` under a process
            # that is gone, which the next plan of the same job takes over
            # (scheduler.plan._orphaned); its windows are written in one transaction or not at
            # all.
            end_now(self._pool)
        else:
            self._pool.shutdown(wait=self.wait)
        self._pool = None

    def run(self, segment_ids: list[int]) -> Iterator[SegmentOutcome]:
        """Run the segments, yielding each outcome as it finishes."""
        if self._pool is None:
            if not self.in_process:
                raise RuntimeError("LocalPool.run outside its with block")
            _init(*self._initargs)
            for sid in segment_ids:
                yield _run(sid)
            return
        self._ran = self._ran or bool(segment_ids)
        futures: list[Future] = [self._pool.submit(_run, sid) for sid in segment_ids]
        try:
            for fut in as_completed(futures):
                yield fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
