"""Watching an archive root for new recordings (`nbhr beat --watch DIR` runs this on a worker
every few seconds): register what is new, plan it with the options of the root's latest job,
and publish its segments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from db.engine import session_scope
from db.models import Job
from scheduler.discover import load_manifest, register_archive
from scheduler.plan import plan_job
from scheduler.queue import publish
from worker.options import ProcessingOptions


def latest_options(session: Any, root: str) -> ProcessingOptions | None:
    """The processing options of the newest job planned on `root`, if any."""
    options = session.scalar(
        select(Job.options).where(Job.archive_root == root).order_by(Job.id.desc()).limit(1)
    )
    return ProcessingOptions.from_json(options) if options else None


def watch_once(engine: Engine, root: Path, queue: str | None = None) -> dict[str, Any]:
    """One pass over `root`: new videos are registered, planned and published (recordings seen
    before are left to their jobs and to requeue). Returns what it did."""
    root = root.resolve()
    manifest = root / "manifest.csv"
    mapping = load_manifest(manifest) if manifest.is_file() else None
    with session_scope(engine) as s:
        reg = register_archive(s, root, mapping)
        if not reg.new:
            return {"root": str(root), "new": 0, "job_id": None, "segments": 0}
        opts = latest_options(s, str(root)) or ProcessingOptions()
        plan = plan_job(s, str(root), reg.new, opts, "celery")
    published = publish(plan.segment_ids, queue) if plan.job_id is not None else 0
    return {"root": str(root), "new": len(reg.new), "job_id": plan.job_id, "segments": published}
