"""Two worker hosts on one machine: two network namespaces, each with its own hostname, joined
to the root namespace over veth pairs, run `nbhr worker` against a Redis broker and PostgreSQL
in the root namespace, and process one job together. Needs root and `ip netns`.

    sudo python scripts/two_hosts.py [--subjects 2 --seconds 20] [--json]

Everything the workers reach is on addresses this script creates (10.77.1.0/24 and
10.77.2.0/24): a private redis-server bound to the two root-side veth addresses, and a TCP
forwarder on each of them in front of the local PostgreSQL (which listens on 127.0.0.1 only).
The job is enqueued from the root namespace; at the end `nbhr status` shows both hosts among
the workers. The namespaces, veth pairs, processes and database are removed on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench_distributed import fresh_database  # scripts/ is on sys.path when run as a script
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
NBHR = [sys.executable, "-m", "nbhr"]
REDIS_PORT, PG_PORT = 6399, 5433
HOSTS = {"nbhr-host1": ("10.77.1.1", "10.77.1.2"), "nbhr-host2": ("10.77.2.1", "10.77.2.2")}


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


@contextmanager
def namespace(name: str, root_ip: str, ns_ip: str, index: int) -> Iterator[str]:
    """A network namespace `name` whose veth end has ns_ip/24, the root end root_ip/24."""
    outer, inner = f"nbv{index}h", f"nbv{index}n"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    subprocess.run(["ip", "link", "del", outer], capture_output=True)
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        sh("ip", "link", "set", inner, "netns", name)
        sh("ip", "addr", "add", f"{root_ip}/24", "dev", outer)
        sh("ip", "link", "set", outer, "up")
        sh("ip", "netns", "exec", name, "ip", "addr", "add", f"{ns_ip}/24", "dev", inner)
        sh("ip", "netns", "exec", name, "ip", "link", "set", inner, "up")
        sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "link", "del", outer], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@contextmanager
def process(args: list[str], log: Path, **kw) -> Iterator[subprocess.Popen]:
    with log.open("w") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kw
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def run(subjects: int, seconds: float) -> dict:
    from nbhr.demo import write_demo_archive

    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise SystemExit("redis-server is not installed")
    work = Path(tempfile.mkdtemp(prefix="nbhr_two_hosts_"))
    archive = work / "archive"
    write_demo_archive(archive, subjects=subjects, seconds=seconds, seed=5)
    with ExitStack() as stack:
        for i, (name, (root_ip, ns_ip)) in enumerate(HOSTS.items(), 1):
            stack.enter_context(namespace(name, root_ip, ns_ip, i))
        root_ips = [root_ip for root_ip, _ in HOSTS.values()]
        redis_args = [redis_server, "--port", str(REDIS_PORT), "--bind", *root_ips]
        redis_args += ["--save", "", "--appendonly", "no", "--protected-mode", "no"]
        stack.enter_context(process(redis_args, work / "redis.log", cwd=work))
        pg = make_url(PG_ADMIN)
        for ip in root_ips:
            proxy = [sys.executable, "-m", "tests.tcp_proxy", str(PG_PORT), pg.host, str(pg.port)]
            stack.enter_context(process([*proxy, ip], work / f"proxy-{ip}.log", cwd=REPO))
        db = stack.enter_context(fresh_database("nbhr_hosts"))
        first_broker = f"redis://{root_ips[0]}:{REDIS_PORT}/0"
        wait_until(
            lambda: (
                subprocess.run(
                    ["redis-cli", "-h", root_ips[0], "-p", str(REDIS_PORT), "ping"],
                    capture_output=True,
                ).returncode
                == 0
            ),
            20,
            "the broker",
        )
        subprocess.run(
            [*NBHR, "db", "upgrade", "--db", db], check=True, cwd=REPO, capture_output=True
        )
        for name, (root_ip, _) in HOSTS.items():
            # What the host sees: the database and the broker at its own root-side address.
            host_db = make_url(db).set(host=root_ip, port=PG_PORT).render_as_string(False)
            worker = [
                *NBHR,
                "worker",
                "--db",
                host_db,
                "--broker",
                f"redis://{root_ip}:{REDIS_PORT}/0",
                "-c",
                "1",
                "-n",
                f"{name}@%h",
                "--archive-root",
                str(archive),
            ]
            # Its own UTS namespace, so that worker ids (hostname:pid) tell the hosts apart.
            cmd = ["ip", "netns", "exec", name, "unshare", "--uts", "sh", "-c"]
            cmd.append(f'hostname {name} && exec "$@"')
            stack.enter_context(process([*cmd, "sh", *worker], work / f"{name}.log", cwd=REPO))
        # Both hosts consume before the job is published (Celery logs "<name>@<host> ready."),
        # so that neither takes it all while the other is still starting.
        wait_until(
            lambda: all(" ready." in (work / f"{n}.log").read_text() for n in HOSTS),
            120,
            "both workers",
        )
        subprocess.run(
            [*NBHR, "enqueue", archive, "--db", db, "--broker", first_broker, "--segment-s", "4"],
            check=True,
            cwd=REPO,
            capture_output=True,
        )

        def finished() -> bool:
            out = subprocess.run(
                [*NBHR, "status", "--db", db, "--json"], capture_output=True, text=True, cwd=REPO
            )
            job = json.loads(out.stdout)["job"]
            return job is not None and job["segments"]["queued"] + job["segments"]["running"] == 0

        wait_until(finished, 600, "the job")
        status = json.loads(
            subprocess.run(
                [*NBHR, "status", "--db", db, "--json"],
                capture_output=True,
                text=True,
                check=True,
                cwd=REPO,
            ).stdout
        )
        human = subprocess.run(
            [*NBHR, "status", "--db", db], capture_output=True, text=True, cwd=REPO
        ).stdout
    shutil.rmtree(work, ignore_errors=True)
    hosts = sorted({w["host"] for w in status["workers"]})
    return {"hosts": hosts, "job": status["job"], "workers": status["workers"], "status": human}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (ip netns)")
    result = run(args.subjects, args.seconds)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(result["status"])
        print("hosts that processed segments:", ", ".join(result["hosts"]))


if __name__ == "__main__":
    main()
