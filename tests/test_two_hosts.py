"""Two worker hosts (network namespaces with their own hostnames, over veth) process one job
through Redis and PostgreSQL in the root namespace: scripts/two_hosts.py, run for real where
this test runs as root and `ip netns` works (CI does), skipped elsewhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _netns_usable() -> str | None:
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        return "no ip or unshare"
    probe = subprocess.run(["ip", "netns", "add", "nbhr-probe"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"ip netns unusable: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", "nbhr-probe"], capture_output=True)
    return None


def test_two_namespaced_hosts_share_one_job(pg_server: str) -> None:
    problem = _netns_usable()
    if problem:
        pytest.skip(problem)
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "two_hosts.py"), "--json", "--seconds", "16"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={**os.environ, "PG_ADMIN": pg_server},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout)
    assert result["hosts"] == ["nbhr-host1", "nbhr-host2"]
    assert all(w["segments"] > 0 for w in result["workers"])
    job = result["job"]
    assert job["hosts"] == 2 and job["segments"]["queued"] == job["segments"]["running"] == 0
    # Nothing left behind.
    assert (
        "nbhr-host"
        not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    )
