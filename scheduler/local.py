"""The embedded executor: run segments on a pool of local processes (no broker needed).

Each process builds its own database engine and face detector on first use and calls the
same `process_segment` that the Celery task calls.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed

from db.engine import engine_for
from worker.process import SegmentOutcome, init_process, process_segment

_DB_URL: str | None = None


def _init(db_url: str, model_threads: int, archive_roots: list[str] | None) -> None:
    global _DB_URL
    _DB_URL = db_url
    init_process(model_threads, archive_roots)


def _run(segment_id: int) -> SegmentOutcome:
    assert _DB_URL is not None, "pool process not initialised"
    return process_segment(engine_for(_DB_URL), segment_id)


def run_segments(
    db_url: str,
    segment_ids: list[int],
    workers: int = 1,
    model_threads: int = 1,
    archive_roots: list[str] | None = None,
    spawn: bool = False,
) -> Iterator[SegmentOutcome]:
    """Run segments on `workers` processes (in this process when workers == 1, unless
    `spawn`), each with `model_threads` onnxruntime threads for NBHRnet and reading only under
    `archive_roots` (None: anywhere), yielding each outcome as it finishes. spawn: run even one
    worker in a fresh process, which pays the start-up (imports, onnxruntime sessions, the
    face detector) that a pool's processes pay, as `nbhr bench` compares them."""
    if workers <= 1 and not spawn:
        _init(db_url, model_threads, archive_roots)
        for sid in segment_ids:
            yield _run(sid)
        return
    # spawn, not fork: a forked child would inherit the parent's open database connections.
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(
        max(workers, 1),
        mp_context=ctx,
        initializer=_init,
        initargs=(db_url, model_threads, archive_roots),
    ) as pool:
        futures = [pool.submit(_run, sid) for sid in segment_ids]
        try:
            for fut in as_completed(futures):
                yield fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
