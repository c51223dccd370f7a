"""The Celery application: one task per segment, run by `nbhr worker` processes on any host that
reaches the broker (Redis) and the database (PostgreSQL, the system of record).

Settings come from the environment, so that `nbhr worker`, `celery -A worker.celery_app worker`
and docker-compose all configure it the same way:

  NBHR_BROKER_URL            broker URL (default redis://127.0.0.1:6379/0)
  NBHR_DB_URL                database URL the tasks write to (never sent in a message)
  NBHR_QUEUE                 queue the segment tasks go to (default "nbhr")
  NBHR_VISIBILITY_TIMEOUT_S  Redis redelivers an unacknowledged task after this long (default
                             7200 s, far above the longest segment)
  NBHR_MAX_TASKS_PER_CHILD   a worker process is replaced after this many tasks (default 200)
  NBHR_MAX_MEMORY_PER_CHILD_MB  ... or once its resident memory passes this (default 4096)
  NBHR_MODEL_THREADS         onnxruntime threads per worker process (default 1)
  NBHR_DB_RETRIES            retries of a task while the database is unreachable (default 30)
  NBHR_ARCHIVE_ROOTS         directories (os.pathsep-separated) the worker may read videos
                             under; required: a worker without it refuses to start

Messages carry segment ids only, serialised as JSON; results are not stored (the database is
where results go).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, signals
from sqlalchemy.exc import DBAPIError

from db import queries
from db.engine import engine_for, mask_url, session_scope

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
DEFAULT_QUEUE = "nbhr"
SEGMENT_TASK = "nbhr.segment"
REQUEUE_TASK = "nbhr.requeue"
WATCH_TASK = "nbhr.watch"
# Backoff while the database is unreachable: 2, 4, 8 ... s, at most this.
MAX_BACKOFF_S = 60.0

log = logging.getLogger(__name__)


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def broker_url() -> str:
    return os.environ.get("NBHR_BROKER_URL") or DEFAULT_BROKER


def queue_name() -> str:
    return os.environ.get("NBHR_QUEUE") or DEFAULT_QUEUE


def db_url() -> str:
    url = os.environ.get("NBHR_DB_URL")
    if not url:
        raise RuntimeError("NBHR_DB_URL is not set: the worker does not know its database")
    return url


def archive_roots() -> list[str]:
    """NBHR_ARCHIVE_ROOTS as a list; ValueError when unset or naming no existing directory."""
    roots = [r for r in os.environ.get("NBHR_ARCHIVE_ROOTS", "").split(os.pathsep) if r]
    if not roots:
        raise ValueError(
            "NBHR_ARCHIVE_ROOTS is not set: a worker reads videos only under the archive roots "
            "it is given (--archive-root)"
        )
    missing = [r for r in roots if not os.path.isdir(r)]
    if missing:
        raise ValueError(f"archive root {missing[0]} is not a directory")
    return roots


def make_app() -> Celery:
    app = Celery("nbhr", broker=broker_url(), set_as_current=True)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        event_serializer="json",
        task_ignore_result=True,
        task_default_queue=queue_name(),
        # A task is acknowledged when it ends, not when it starts, and a task whose process died
        # goes back to the queue: a killed worker loses no segment.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Long CPU tasks: a process holds one task at a time, so none waits behind a busy one.
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=_env_int("NBHR_MAX_TASKS_PER_CHILD", 200),
        worker_max_memory_per_child=_env_int("NBHR_MAX_MEMORY_PER_CHILD_MB", 4096) * 1024,
        broker_transport_options={
            "visibility_timeout": _env_int("NBHR_VISIBILITY_TIMEOUT_S", 7200),
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


app = make_app()


@signals.worker_process_init.connect
def _init_worker_process(**_: Any) -> None:
    """Each pool process: one OpenCV thread, NBHR_MODEL_THREADS onnxruntime threads; its engine,
    face detector and onnxruntime session are created on first use, in the process."""
    from worker.process import init_process

    init_process(_env_int("NBHR_MODEL_THREADS", 1), archive_roots())


@signals.worker_init.connect
def _check_settings(**_: Any) -> None:
    """Refuse to start without a database or archive roots (before any task is taken)."""
    roots = archive_roots()
    log.info(
        "nbhr worker: database %s, queue %s, archive roots %s",
        mask_url(db_url()),
        queue_name(),
        os.pathsep.join(roots),
    )


@app.task(bind=True, name=SEGMENT_TASK, max_retries=None)
def run_segment(self: Any, segment_id: int) -> dict[str, Any]:
    """Run one segment (worker.process.process_segment, as the local pool does).

    Idempotent: a segment that is finished is not run again, one that another worker holds
    under a live lease is retried when that lease ends, and windows are upserted, so a task
    delivered twice writes one set of windows. While the database is unreachable the task is
    retried with exponential backoff (NBHR_DB_RETRIES times).
    """
    from worker.process import process_segment

    engine = engine_for(db_url())
    try:
        outcome = process_segment(engine, segment_id)
        if outcome.state == "skipped":
            with session_scope(engine) as s:
                wait = queries.lease_wait_s(s, segment_id)
            if wait is not None:  # held by a live worker, or its lease just ran out
                raise self.retry(countdown=wait + 1.0, max_retries=None)
    except DBAPIError as exc:
        retries = self.request.retries
        cause = str(exc.orig or exc).strip().splitlines()[0]
        log.warning("segment %s: database unavailable (%s); retry %d", segment_id, cause, retries)
        raise self.retry(
            countdown=min(MAX_BACKOFF_S, 2.0 ** (retries + 1)),
            max_retries=_env_int("NBHR_DB_RETRIES", 30),
            exc=RuntimeError(f"database unavailable: {cause}"),
        ) from None
    return {"segment": segment_id, "state": outcome.state, "windows": outcome.n_windows}


@app.task(name=REQUEUE_TASK)
def requeue_task(queue: str | None = None) -> int:
    """Publish again, on `queue` (default NBHR_QUEUE), every segment that is queued or whose
    lease ran out and has no message in the broker (beat runs this)."""
    from scheduler.queue import requeue

    with session_scope(engine_for(db_url())) as s:
        ids = queries.segments_to_requeue(s)
    return requeue(ids, queue)


@app.task(name=WATCH_TASK)
def watch_task(root: str, queue: str | None = None) -> dict[str, Any]:
    """Register, plan and publish on `queue` (default NBHR_QUEUE) the recordings that appeared
    under `root` (beat runs this for every --watch root); the root must lie under this
    worker's archive roots."""
    from pathlib import Path

    from scheduler.watch import watch_once
    from worker.process import check_readable

    check_readable(Path(root))
    result = watch_once(engine_for(db_url()), Path(root), queue or queue_name())
    if result["new"]:
        log.info("watch %s: %d new recordings, job %s", root, result["new"], result["job_id"])
    return result
