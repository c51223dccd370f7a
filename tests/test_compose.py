"""docker-compose.yml is checked by parsing it (there is no Docker engine here): every
service's command exists in the CLI, build contexts exist, env vars are ones the code reads."""

from __future__ import annotations

import re

import yaml

from nbhr.cli import main
from tests.conftest import REPO


def _code_env_vars() -> set[str]:
    names: set[str] = set()
    for py in REPO.glob("*/**/*.py"):
        if ".venv" in py.parts or "tests" in py.parts:
            continue
        names |= set(re.findall(r"\"(NBHR_[A-Z_]+)\"", py.read_text()))
    return names


def test_compose_services_are_runnable() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "worker", "beat", "flower", "run"} <= set(services)
    read_by_code = _code_env_vars()
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            assert (REPO / build["context"] / build["dockerfile"]).is_file(), name
            cmd = svc["command"]
            group = main
            for word in cmd:
                if word.startswith("-") or word.startswith("/"):
                    break
                assert word in group.commands, f"{name}: `nbhr {' '.join(cmd)}` is not a command"
                group = group.commands[word]
            for var in svc.get("environment", {}):
                assert var in read_by_code, f"{name}: {var} is not read by the code"
            mounts = svc.get("volumes", [])
            assert any(m.endswith(":/archive:ro") for m in mounts), f"{name}: archive not read-only"
        for dep in svc.get("depends_on", {}):
            assert dep in services
    assert "pgdata" in compose["volumes"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    checks = {n: " ".join(s.get("healthcheck", {}).get("test", [])) for n, s in services.items()}
    assert "pg_isready" in checks["postgres"]
    assert "redis-cli ping" in checks["redis"]
    assert "celery -A worker.celery_app inspect ping" in checks["worker"]
    assert (REPO / "worker" / "celery_app.py").is_file()
    # `--scale worker=N` needs no fixed name and no host port on the worker.
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]
    # Workers only read the archive they are given, and find the broker and database.
    env = services["worker"]["environment"]
    assert env["NBHR_ARCHIVE_ROOTS"] == "/archive"
    assert env["NBHR_BROKER_URL"].startswith("redis://redis:")
    assert "@postgres:5432/" in env["NBHR_DB_URL"]
    assert services["flower"]["environment"]["CELERY_BROKER_URL"] == env["NBHR_BROKER_URL"]


def test_dockerfile_copies_every_package() -> None:
    text = (REPO / "Dockerfile").read_text()
    # setup.py declares the C extensions the image builds and checks.
    assert "COPY pyproject.toml setup.py" in text
    assert "import worker._jpegpart, model._zscore" in text
    for pkg in ("nbhr", "worker", "scheduler", "model", "db", "training"):
        assert f"COPY {pkg} ./{pkg}" in text
        assert (REPO / pkg / "__init__.py").is_file()
