"""A Celery worker of the node, started programmatically (``fairnode worker`` / ``serve --role worker``).

Before the pool forks, the main process migrates the registry once (PostgreSQL: under an advisory lock, so
workers starting together do not race) and lets go of its pooled connections; it then beats a heartbeat
into ``job_worker`` from a thread with its own unpooled engine (nothing a forked pool process could
inherit), and optionally serves its Prometheus metrics and health (:mod:`fairnode.jobs.observe`).
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from prometheus_client.core import Metric
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool
from sqlmodel import Session

from fairness_registry.db import dispose_engines, migrate
from fairness_registry.models import JobWorker, utcnow
from fairnode.jobs import store, tasks
from fairnode.jobs.celery_app import make_app
from fairnode.jobs.observe import MetricsServer, counter, gauge, serve_metrics
from fairnode.settings import Settings
from inference.model_card import bundled_models

logger = logging.getLogger(__name__)


def unpooled_engine(url: str) -> Engine:
    """An engine that keeps no connection open between uses (safe in a process that forks)."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(parsed, poolclass=NullPool)


class Heartbeat:
    """Beats ``job_worker`` every ``interval`` seconds from a daemon thread."""

    def __init__(self, url: str, name: str, queues: Sequence[str], concurrency: int, interval: float):
        self.engine = unpooled_engine(url)
        self.name, self.queues, self.concurrency, self.interval = name, list(queues), concurrency, interval
        self.pid = os.getpid()
        self.last_error: str | None = None
        self.beats = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine) as s:
            yield s
            s.commit()

    def beat(self) -> None:
        try:
            with self.session() as s:
                store.beat(
                    s,
                    name=self.name,
                    host=socket.gethostname(),
                    pid=self.pid,
                    queues=self.queues,
                    concurrency=self.concurrency,
                )
            self.beats += 1
            self.last_error = None
        except Exception as exc:  # the registry may be down for a while: say so on /health, keep beating
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            logger.warning("heartbeat of %s failed: %s", self.name, self.last_error)

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.engine.dispose()

    def row(self) -> JobWorker | None:
        with Session(self.engine) as s:
            row = s.get(JobWorker, self.name)
            if row is not None:
                s.expunge(row)
            return row

    def metrics(self) -> Iterable[Metric]:
        row = self.row()
        labels = {"worker": self.name}
        yield gauge(
            "fairnode_worker_up",
            "1 while the worker's heartbeat reaches the registry",
            float(self.last_error is None),
            labels,
        )
        if row is not None:
            yield counter("fairnode_worker_jobs_done", "Jobs this worker finished", row.jobs_done, labels)
            yield counter("fairnode_worker_jobs_failed", "Jobs this worker failed", row.jobs_failed, labels)
            yield gauge("fairnode_worker_concurrency", "Pool processes", row.concurrency, labels)
            age = (utcnow() - row.heartbeat_at).total_seconds()
            yield gauge("fairnode_worker_heartbeat_age_seconds", "Seconds since the last heartbeat", age, labels)

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.last_error is None else "failing",
            "role": "worker",
            "worker": self.name,
            "queues": self.queues,
            "heartbeats": self.beats,
            "error": self.last_error,
        }


def default_queues(settings: Settings) -> list[str]:
    """Every installed model's queue (a worker that holds all models)."""
    folders = bundled_models(settings.models_dir) if settings.models_dir else bundled_models()
    return [settings.jobs.queue(m) for m in sorted(folders)]


def run_worker(
    settings: Settings,
    queues: Sequence[str] | None = None,
    concurrency: int = 1,
    name: str | None = None,
    loglevel: str = "INFO",
) -> None:
    """Run a Celery worker on ``queues`` (default: every installed model's) until it is stopped.

    Raises
    ------
    ValueError
        when the settings lack what a worker needs (the pseudonym secret, a queue).
    """
    queues = list(queues or default_queues(settings))
    if not queues:
        raise ValueError("no queue to listen on: give --queues (model names, e.g. xr-knee,ct-abdomen)")
    name = name or tasks.default_name()
    tasks.configure(settings, name)
    migrate(settings.registry, settings.registry_options.engine_options())  # once, here, before the pool forks
    dispose_engines()  # the pool processes open their own connections
    heartbeat = Heartbeat(settings.registry, name, queues, concurrency, settings.jobs.heartbeat_seconds)
    heartbeat.start()
    metrics: MetricsServer | None = None
    if settings.jobs.metrics_port is not None:
        metrics = serve_metrics(
            settings.jobs.metrics_bind, settings.jobs.metrics_port, heartbeat.metrics, heartbeat.health
        )
        logger.info("worker %s metrics on port %d", name, metrics.port)
    app = make_app(settings.jobs)
    argv = [
        "worker",
        f"--queues={','.join(queues)}",
        f"--concurrency={concurrency}",
        f"--hostname={name}",
        "--prefetch-multiplier=1",
        "-O",
        "fair",
        "--without-gossip",
        "--without-mingle",
        f"--loglevel={loglevel}",
    ]
    # what is imported by now (the pipeline, its libraries) lives as long as the worker: frozen before the pool
    # forks, so that neither this process's nor a pool process's full collections walk it (nor, walking it,
    # copy the pages a forked process shares with this one)
    gc.freeze()
    try:
        app.worker_main(argv)
    finally:
        heartbeat.stop()
        if metrics is not None:
            metrics.stop()
