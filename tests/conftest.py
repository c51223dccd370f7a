"""Shared fixtures: real databases (a fresh SQLite file and a fresh PostgreSQL database per
test), the real recordings in ../shared/data, and a small synthetic archive."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NBHR_SHARED_DATA", REPO.parent / "shared" / "data"))
PG_ADMIN_URL = os.environ.get(
    "NBHR_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI") == "true"

# Test files in the order their work should start under scripts/test.sh (`pytest -n 2 --dist
# loadfile --no-loadscope-reorder`: each file runs whole in one of two processes, handed out
# in collection order as a process runs short of work): the longest first, so that the two
# end close together. xdist's own order, the files with the most tests first, left the
# longest of few tests to the end. The seconds of one run in one process's share (AMD Zen 4,
# 2026-12-07): 137, 99, 89, 55, 53, 52, 45, 37, 35, 35, 31, 27, 17, 16, 15, 15, 13; every
# other file under 10. Files not named here run after these, in name order.
SLOWEST_FIRST = (
    "test_celery.py",
    "test_training.py",
    "test_bundled_model.py",
    "test_pool_timeline.py",
    "test_distill.py",
    "test_hrv.py",
    "test_exports.py",
    "test_pipeline.py",
    "test_nbhrnet_pipeline.py",
    "test_resume.py",
    "test_nbhrnet.py",
    "test_two_hosts.py",
    "test_bad_input.py",
    "test_demo.py",
    "test_report.py",
    "test_quantize.py",
    "test_training_data.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Collected tests with SLOWEST_FIRST's files first, in its order (a stable sort: each
    file's tests, and the other files, keep their order)."""
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def missing(in_ci: str, elsewhere: str) -> NoReturn:
    """Something a test needs is not on this machine: a failure in CI, which must have it
    (.ci/run installs or builds it), a skip elsewhere."""
    if IN_CI:
        pytest.fail(in_ci)
    pytest.skip(elsewhere)


def _pg_available() -> str | None:
    try:
        eng = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with eng.connect() as conn:
            conn.execute(text("SELECT 1"))
        eng.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not available"
        return str(exc).splitlines()[0]


@pytest.fixture(scope="session")
def pg_server() -> str:
    problem = _pg_available()
    if problem is not None:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI and does not answer: {problem}")
        pytest.skip(f"PostgreSQL not available: {problem}")
    return PG_ADMIN_URL


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"nbhr_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(pg_server).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        from db.engine import engine_for

        engine_for.cache_clear()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'nbhr.sqlite'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each database test runs on SQLite (the default) and on PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "bias_eval").is_dir():
        missing(
            f"{SHARED_DATA} is missing; CI needs the shared recordings",
            f"{SHARED_DATA} not present",
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory):
    """A small synthetic NICU-like archive, written once per test session (read-only use):
    2 subjects with one 16-s recording each, plus one recording without a face."""
    from nbhr.demo import write_demo_archive

    root = tmp_path_factory.mktemp("demo")
    return write_demo_archive(root, subjects=2, seconds=16.0, seed=7, recordings_per_subject=1)


@pytest.fixture(scope="session")
def demo_archive(demo) -> Path:
    return demo.root


@pytest.fixture(scope="session")
def face_videos(demo) -> list[Path]:
    return [demo.root / r.recording for r in demo.recordings if r.has_face]
