"""Benchmarks of the distributed path, side by side in one run, on this machine's real
PostgreSQL and Redis:

  enqueue  time of `nbhr enqueue` on a generated archive of N small distinct videos
  workers  the same demo archive processed by `nbhr run -j2`, by one `nbhr worker -c1` and by
           one `nbhr worker -c2` (video seconds per wall second, and ratios)

    python scripts/bench_distributed.py enqueue [--files 2000]
    python scripts/bench_distributed.py workers [--subjects 3 --seconds 30]

Each measurement gets a fresh PostgreSQL database (dropped afterwards) and its own Redis queue.
PG_ADMIN (default postgresql+psycopg://postgres@127.0.0.1:5432/test) and REDIS (default
redis://127.0.0.1:6379/8) choose the servers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import redis
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from db.models import Segment, SegmentState

PG_ADMIN = os.environ.get("PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("REDIS", "redis://127.0.0.1:6379/8")
NBHR = [sys.executable, "-m", "nbhr"]


@contextmanager
def fresh_database(prefix: str = "nbhr_bench") -> Iterator[str]:
    """A new PostgreSQL database on PG_ADMIN's server, dropped on exit; yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def small_archive(root: Path, n: int, seconds: float = 11.0, fps: float = 15.0) -> Path:
    """n distinct tiny MJPG videos (32x24, `seconds` long) in root/video (kept for reuse)."""
    video = root / "video"
    video.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        path = video / f"v{i:05d}.avi"
        if path.exists():
            continue
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (32, 24))
        base = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        for k in range(int(seconds * fps)):
            writer.write(np.roll(base, k, axis=1))
        writer.release()
    return root


def bench_enqueue(files: int) -> dict:
    root = small_archive(Path(tempfile.gettempdir()) / f"nbhr_bench_{files}_files", files)
    queue = f"bench_{uuid.uuid4().hex[:6]}"
    with fresh_database() as db:
        subprocess.run([*NBHR, "db", "upgrade", "--db", db], check=True, capture_output=True)
        t0 = time.perf_counter()
        out = subprocess.run(
            [*NBHR, "enqueue", root, "--db", db, "--broker", REDIS, "--queue", queue, "--json"],
            check=True,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t0
    summary = json.loads(out.stdout)
    published = redis.Redis.from_url(REDIS).llen(queue)
    redis.Redis.from_url(REDIS).delete(queue)
    return {
        "files": files,
        "enqueue_wall_s": round(wall, 2),
        "enqueue_reported_s": summary["seconds"],
        "segments_published": summary["segments_published"],
        "messages_in_queue": published,
        "job_id": summary["job_id"],
    }


def _wait_done(db: str, timeout: float = 1800) -> None:
    eng = create_engine(db)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with eng.connect() as conn:
                left = conn.scalar(
                    select(func.count())
                    .select_from(Segment)
                    .where(Segment.state.in_([SegmentState.queued, SegmentState.running]))
                )
            if left == 0:
                return
            time.sleep(0.2)
        raise TimeoutError("job did not finish")
    finally:
        eng.dispose()


def _video_s(db: str) -> float:
    eng = create_engine(db)
    with eng.connect() as conn:
        v = conn.scalar(select(func.sum(Segment.video_s)).where(Segment.state == "done"))
    eng.dispose()
    return float(v or 0.0)


def bench_local(archive: Path, workers: int) -> dict:
    with fresh_database() as db:
        subprocess.run([*NBHR, "db", "upgrade", "--db", db], check=True, capture_output=True)
        t0 = time.perf_counter()
        subprocess.run(
            [*NBHR, "run", archive, "--db", db, "-j", str(workers), "--json"],
            check=True,
            capture_output=True,
        )
        wall = time.perf_counter() - t0
        video_s = _video_s(db)
    return {"executor": f"nbhr run -j{workers}", "wall_s": wall, "video_s": video_s}


def bench_celery(archive: Path, concurrency: int) -> dict:
    queue = f"bench_{uuid.uuid4().hex[:6]}"
    with fresh_database() as db:
        # The worker is up (and has migrated) before the clock starts, as a standing cluster is.
        worker = subprocess.Popen(
            [*NBHR, "worker", "--db", db, "--broker", REDIS, "-Q", queue, "-c", str(concurrency)]
            + ["--archive-root", str(archive), "--loglevel", "WARNING"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            time.sleep(8)
            t0 = time.perf_counter()
            subprocess.run(
                [*NBHR, "enqueue", archive, "--db", db, "--broker", REDIS, "--queue", queue],
                check=True,
                capture_output=True,
            )
            _wait_done(db)
            wall = time.perf_counter() - t0
            video_s = _video_s(db)
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=60)
    return {"executor": f"nbhr worker -c{concurrency}", "wall_s": wall, "video_s": video_s}


def bench_workers(subjects: int, seconds: float) -> dict:
    from nbhr.demo import write_demo_archive

    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "demo"
        write_demo_archive(archive, subjects=subjects, seconds=seconds, seed=11)
        runs = [bench_local(archive, 2), bench_celery(archive, 1), bench_celery(archive, 2)]
    for r in runs:
        r["video_s_per_wall_s"] = r["video_s"] / r["wall_s"]
    local, one, two = runs
    return {
        "archive": {"subjects": subjects, "seconds": seconds},
        "runs": runs,
        "two_vs_one_worker_process": two["video_s_per_wall_s"] / one["video_s_per_wall_s"],
        "celery_c2_vs_local_j2": two["video_s_per_wall_s"] / local["video_s_per_wall_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    e = sub.add_parser("enqueue")
    e.add_argument("--files", type=int, default=2000)
    w = sub.add_parser("workers")
    w.add_argument("--subjects", type=int, default=3)
    w.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    if args.what == "enqueue":
        result = bench_enqueue(args.files)
    else:
        result = bench_workers(args.subjects, args.seconds)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
