"""A scale-out node on loopback, from real processes: redis-server, receivers, Celery workers, Orthanc.

Used by ``tests/integration/test_scale_out.py`` and ``benchmarks/scale_out.py``. Every process gets its
own settings file; receivers and workers share one folder (the shared storage root) and one registry.
Processes are stopped by PID (a worker's whole process group, so its pool processes go with it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlmodel import Session, select

from fairness_registry.db import get_engine
from fairness_registry.models import Case, Job
from tests.conftest import require_tool
from tests.peers import Orthanc, free_port, port_open, wait_for

SECRET = "scale-out-test-secret-" + "0" * 24


@dataclass
class RedisServer:
    """Debian's redis-server on a loopback port, append-only file on (a restart keeps queued tasks)."""

    port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = require_tool("redis-server")
        self.folder.mkdir(parents=True, exist_ok=True)
        argv = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        argv += ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--protected-mode", "no"]
        log = (self.folder / "redis.log").open("ab")
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: port_open(self.port), 30, "redis-server to listen")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)
            self.process = None


@dataclass
class Proc:
    """A node process (receiver or worker) and its log."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    port: int = 0  # a receiver's DICOM port, a worker's metrics port

    def alive(self) -> bool:
        return self.process.poll() is None

    def children(self) -> list[int]:
        """PIDs of the process's children (a Celery worker's pool processes)."""
        pid = self.process.pid
        try:
            return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@dataclass
class Cluster:
    """Receivers and workers of one scale-out node; ``root`` is the shared storage."""

    root: Path
    registry_url: str
    redis: RedisServer
    pacs: Orthanc
    receivers: list[Proc] = field(default_factory=list)
    workers: list[Proc] = field(default_factory=list)
    worker_extra: dict[str, Any] = field(default_factory=dict)

    def _settings(self, name: str, **extra: Any) -> dict[str, Any]:
        return {
            "data_dir": str(self.root / name),
            "pseudonym_secret": SECRET,
            "registry_url": self.registry_url,
            "quality_enabled": False,
            "min_free_disk_mb": 10,
            "log_level": "INFO",
            "jobs": {
                "mode": "celery",
                "broker_url": self.redis.url,
                "shared_root": str(self.root),
                "receiver_name": name,
                "enqueue_retry_seconds": 1.0,
                "poll_seconds": 0.2,
                "heartbeat_seconds": 1.0,
                "visibility_timeout_seconds": 10,
            },
            **extra,
        }

    def _spawn(self, name: str, settings: dict[str, Any], argv: list[str], port: int = 0) -> Proc:
        config = self.root / f"{name}.yaml"
        config.write_text(yaml.safe_dump(settings))
        log = self.root / f"{name}.log"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(
            [sys.executable, "-m", "fairnode", *argv, "--config", str(config)],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: a kill takes the pool processes too
        )
        return Proc(name, process, log, port)

    def start_receiver(self, **extra: Any) -> Proc:
        name = f"receiver{len(self.receivers) + 1}"
        port = free_port()
        destination = {"name": "pacs", "ae_title": self.pacs.aet, "host": "127.0.0.1", "port": self.pacs.dicom_port}
        settings = self._settings(
            name,
            bind="127.0.0.1",
            port=port,
            http_port=0,
            idle_seconds=1.0,
            destinations=[destination],
            retry_base_seconds=1.0,
            **extra,
        )
        proc = self._spawn(name, settings, ["serve", "--role", "receiver"], port)
        self.receivers.append(proc)
        return proc

    def start_worker(self, concurrency: int = 1, name: str | None = None) -> Proc:
        name = name or f"worker{len(self.workers) + 1}"
        port = free_port()
        settings = self._settings(name, **self.worker_extra)
        settings["jobs"]["metrics_port"] = port
        argv = ["worker", "--queues", "xr-knee", "--concurrency", str(concurrency), "--name", f"{name}@test"]
        proc = self._spawn(name, settings, argv, port)
        self.workers.append(proc)
        return proc

    def wait_listening(self, timeout: float = 120) -> None:
        for p in self.receivers:
            wait_for(lambda p=p: not p.alive() or port_open(p.port), timeout, f"{p.name} to listen")  # type: ignore[misc]
            assert p.alive(), f"{p.name} exited: {p.log.read_text()[-3000:]}"
        for p in self.workers:
            wait_for(lambda p=p: not p.alive() or port_open(p.port), timeout, f"{p.name} to serve metrics")  # type: ignore[misc]
            assert p.alive(), f"{p.name} exited: {p.log.read_text()[-3000:]}"

    def send(self, receiver: Proc, files: list[Path], aet: str) -> subprocess.Popen[bytes]:
        """dcmtk's storescu sending ``files`` to a receiver on one association (TCP_NODELAY on)."""
        exe = require_tool("storescu")
        env = {**os.environ, "TCP_NODELAY": "1"}
        argv = [exe, "-aet", aet, "-aec", "FAIRNODE", "127.0.0.1", str(receiver.port), *map(str, files)]
        return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    # -- what happened ----------------------------------------------------------------------------------
    def jobs(self) -> list[Job]:
        with Session(get_engine(self.registry_url)) as s:
            rows = list(s.exec(select(Job)).all())
            for r in rows:
                s.expunge(r)
            return rows

    def cases(self) -> list[Case]:
        with Session(get_engine(self.registry_url)) as s:
            rows = list(s.exec(select(Case)).all())
            for r in rows:
                s.expunge(r)
            return rows

    def pacs_results(self) -> dict[str, dict[str, int]]:
        """Study UID -> modality -> instances in Orthanc (every study Orthanc holds)."""
        out: dict[str, dict[str, int]] = {}
        with self.pacs.client() as c:
            for sid in c.get("/studies").json():
                study = c.get(f"/studies/{sid}").json()
                uid = study["MainDicomTags"]["StudyInstanceUID"]
                counts: dict[str, int] = {}
                for series_id in study["Series"]:
                    series = c.get(f"/series/{series_id}").json()
                    mod = series["MainDicomTags"].get("Modality", "")
                    counts[mod] = counts.get(mod, 0) + len(series["Instances"])
                out[uid] = counts
        return out

    def stop(self) -> None:
        procs = [p for p in [*self.receivers, *self.workers] if p.alive()]
        for p in procs:
            os.killpg(p.process.pid, signal.SIGTERM)
        for p in procs:
            p.stop(timeout=8)  # then SIGKILL: nothing of the cluster is kept


@contextmanager
def cluster(root: Path, registry_url: str, pacs: Orthanc, **worker_extra: Any) -> Iterator[Cluster]:
    """A started redis-server and an empty cluster on it (add receivers and workers); all stopped after."""
    redis = RedisServer(free_port(), root / "redis")
    redis.start()
    c = Cluster(root, registry_url, redis, pacs, worker_extra=worker_extra)
    try:
        yield c
    finally:
        c.stop()
        redis.stop()


def wait_results(c: Cluster, study_uids: set[str], timeout: float) -> dict[str, dict[str, int]]:
    """Wait until Orthanc holds a SEG and an SR for each of ``study_uids``; Orthanc's counts then."""

    def arrived() -> dict[str, dict[str, int]] | None:
        got = c.pacs_results()
        done = all(got.get(u, {}).get("SEG") and got.get(u, {}).get("SR") for u in study_uids)
        return got if done else None

    start = time.monotonic()
    try:
        result: dict[str, dict[str, int]] = wait_for(arrived, timeout, "results in Orthanc", interval=0.5)
    except TimeoutError as exc:
        logs = "\n".join(f"--- {p.name}\n{p.log.read_text()[-2500:]}" for p in [*c.receivers, *c.workers])
        raise TimeoutError(f"{exc} ({time.monotonic() - start:.0f} s)\n{logs}") from exc
    return result


@contextmanager
def run_postgres(root: Path) -> Iterator[str]:
    """A throwaway PostgreSQL 15 cluster on a Unix socket (for the benchmark; tests use the session fixture).

    Yields the URL of its ``postgres`` database's server; make databases with :func:`create_database`.
    As root the server runs as the ``postgres`` user (initdb refuses root).
    """
    import pwd
    import shutil
    import tempfile

    bin_dir = Path("/usr/lib/postgresql/15/bin")
    as_user: list[str] = []
    owner = None
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        as_user = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="fairnode-bench-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    if owner is not None:
        for p in (base, sock):
            os.chown(p, owner.pw_uid, owner.pw_gid)
    port = free_port()
    try:
        subprocess.run(
            [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"],
            check=True,
            capture_output=True,
        )
        opts = f"-p {port} -k {sock} -c listen_addresses='' -c fsync=off -c synchronous_commit=off"
        subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-o", opts, "-w", "start"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql+psycopg://postgres@/postgres?host={sock}&port={port}"
    finally:
        subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "stop", "-m", "immediate", "-w"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(base, ignore_errors=True)


def create_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server of ``server_url``; its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    host, port = url.query["host"], url.query["port"]
    with psycopg.connect(host=str(host), port=int(str(port)), user="postgres", dbname="postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False)
