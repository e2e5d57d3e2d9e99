"""The receiver's side of Celery mode: complete studies become tasks; finished jobs become deliveries.

Spool states stay those of the in-process mode. ``ready`` is "to enqueue": a study stays there (deferred by
``jobs.enqueue_retry_seconds``) while the broker is down, so nothing is dropped and it is enqueued when the
broker returns. ``processing`` means its jobs are in the broker or in a worker; the receiver polls the
registry's ``job`` rows and, once every model's job of the study run has finished, records the deliveries
of the outputs (the persisted, retried forwarding of :mod:`dicom_node.scu`) and finishes the study.

One task per model: a study whose series go to several models gives one task on each model's queue, so each
GPU machine subscribes only to the models it holds, and the models of one study run side by side.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from celery import Celery
from kombu.exceptions import KombuError
from prometheus_client.core import Metric
from sqlalchemy.exc import InterfaceError, OperationalError

from dicom_node.scu import Forwarder
from dicom_node.selection import SeriesInfo, select
from dicom_node.spool import Spool, StudyState
from fairness_registry.models import Job, JobState
from fairnode.jobs import store
from fairnode.jobs.celery_app import make_app, publish
from fairnode.jobs.observe import counter, gauge
from fairnode.jobs.routing import route_outputs
from fairnode.jobs.settings import JobSettings
from fairnode.jobs.status import celery_status
from fairnode.jobs.storage import SharedStorage
from fairnode.lesions import OUTPUT_KEYS as LESION_OUTPUT_KEYS
from fairnode.pipeline import OUTPUT_PATH_KEYS, PipelineContext, process_study
from fairnode.pipeline_registry import pending_registry
from fairnode.registry_pending import PendingRegistry

logger = logging.getLogger(__name__)

#: Errors that mean "the broker cannot take the task now".
BROKER_ERRORS: tuple[type[BaseException], ...] = (KombuError, OSError, ConnectionError, TimeoutError)
try:  # the Redis client's own connection errors do not derive from OSError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    BROKER_ERRORS += (RedisConnectionError, RedisTimeoutError)
except ImportError:  # pragma: no cover - redis is a declared dependency
    pass


@dataclass
class RecordedSeries:
    """A series outcome as a worker recorded it (outputs as shared storage references)."""

    series_uid: str
    review_state: str | None
    review_reasons: list[str]
    refs: list[str]
    storage: SharedStorage
    status: str
    reason: str

    @property
    def outputs(self) -> list[Path]:
        return [self.storage.local(r) for r in self.refs]

    @classmethod
    def from_result(cls, s: dict[str, Any], storage: SharedStorage) -> RecordedSeries:
        lesions = s.get("lesions") or {}
        return cls(
            series_uid=str(s.get("series_uid", "")),
            review_state=s.get("review_state"),
            review_reasons=list(s.get("review_reasons") or []),
            refs=[str(s[k]) for k in OUTPUT_PATH_KEYS if s.get(k)]
            + [str(lesions[k]) for k in LESION_OUTPUT_KEYS if lesions.get(k)],
            storage=storage,
            status=str(s.get("status", "")),
            reason=str(s.get("reason", "")),
        )


@dataclass(frozen=True)
class JobView:
    """What the receiver needs of a finished job, read while its session is open."""

    model: str
    state: str
    worker: str | None
    error: str | None
    result: dict[str, Any] | None

    @classmethod
    def of(cls, job: Job) -> JobView:
        return cls(job.model, str(job.state), job.worker, job.error, job.result)


class Dispatcher:
    """Enqueues ``ready`` studies as Celery tasks and forwards the results of finished jobs; one thread.

    Parameters
    ----------
    spool, forwarder
        The receiver's spool and forwarder.
    ctx
        The receiver's pipeline context: its rules choose the models; a study no model takes is recorded
        in the registry here, without a task.
    jobs
        The job settings (broker, queue names, timings).
    storage
        The shared storage the workers read the study from and write the outputs to.
    app
        A Celery application (default: :func:`~fairnode.jobs.celery_app.make_app` of ``jobs``).
    """

    def __init__(
        self,
        spool: Spool,
        forwarder: Forwarder,
        ctx: PipelineContext,
        jobs: JobSettings,
        storage: SharedStorage,
        *,
        name: str | None = None,
        app: Celery | None = None,
    ):
        self.spool = spool
        self.forwarder = forwarder
        self.ctx = ctx
        self.jobs = jobs
        self.storage = storage
        self.name = name or jobs.receiver_name or f"receiver@{socket.gethostname()}"
        self.app = app or make_app(jobs)
        if ctx.registry_session is None:
            raise ValueError("Celery mode needs a registry (the job table is where workers record results)")
        self.session: Callable[[], Any] = ctx.registry_session
        self.pending: PendingRegistry | None = pending_registry(ctx) if ctx.registry_pending is not None else None
        self.enqueued = 0
        self.enqueue_failures = 0
        self.broker_ok = True
        self._broker_retry_at = 0.0  # monotonic time before which no enqueue is tried (broker down)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the runner interface of the node ------------------------------------------------------------------
    def wake(self) -> None:
        """A study became ready: look now rather than at the next poll."""
        self._wake.set()

    def models_in_use(self) -> dict[str, dict[str, object]]:
        """A receiver opens no model (workers do: see the worker list)."""
        return {}

    def status(self) -> dict[str, Any]:
        """Backlog, oldest waiting study, workers (for the status page)."""
        return celery_status(
            self.spool, self.jobs, self.session, receiver=self.name, broker_ok=self.broker_ok, enqueued=self.enqueued
        )

    def metrics(self) -> Iterable[Metric]:
        """This receiver's Prometheus metrics (see :mod:`fairnode.jobs.observe`)."""
        s = self.status()
        labels = {"receiver": self.name}
        yield counter("fairnode_jobs_enqueued", "Studies this receiver enqueued", self.enqueued, labels)
        yield counter("fairnode_jobs_enqueue_failures", "Enqueues the broker refused", self.enqueue_failures, labels)
        yield gauge("fairnode_broker_up", "1 while the broker took the last task", float(self.broker_ok), labels)
        yield gauge("fairnode_jobs_to_enqueue", "Studies waiting here for the broker", float(s["to_enqueue"]), labels)
        for key in ("backlog", "queued", "running"):
            if key in s:
                yield gauge(f"fairnode_jobs_{key}", f"Jobs {key} over every receiver", float(s[key]))
        oldest = s.get("oldest_waiting")
        yield gauge(
            "fairnode_jobs_oldest_waiting_seconds",
            "How long the oldest queued study has waited for a worker",
            float(oldest["waiting_s"]) if oldest else 0.0,
        )
        alive = sum(1 for w in s.get("workers", []) if w["alive"])
        yield gauge("fairnode_workers_alive", "Workers whose heartbeat is recent", float(alive))

    def health(self) -> dict[str, Any]:
        """Health of this receiver's job side: the broker took the last task, the dispatcher thread runs."""
        running = self._thread is not None and self._thread.is_alive()
        ok = running and self.broker_ok
        return {"status": "ok" if ok else "failing", "role": "receiver", "broker_ok": self.broker_ok, "thread": running}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="job-dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except Exception:  # the registry may be down: log, keep the thread alive, try again
                logger.exception("job dispatcher pass failed; retried in %g s", self.jobs.poll_seconds)
                busy = 0
            if not busy:
                self._wake.wait(self.jobs.poll_seconds)
                self._wake.clear()

    def run_once(self) -> int:
        """Enqueue the ready studies, then collect finished jobs; how many studies moved.

        First, every ``jobs.enqueue_retry_seconds``, the registry records kept here (of studies no model
        takes, recorded while the registry was away) are written.
        """
        if self.pending is not None:
            self.pending.retry_due(self.jobs.enqueue_retry_seconds)
        moved = 0
        while not self._stop.is_set() and time.monotonic() >= self._broker_retry_at:
            study = self.spool.claim_ready()
            if study is None:
                break
            moved += 1
            if not self.enqueue(study):
                break  # the broker is down: the rest wait for the next pass
        return moved + self.collect()

    # -- enqueue -------------------------------------------------------------------------------------------
    def plan(self, study: StudyState) -> dict[str, list[Path]]:
        """Model -> the study's files for it (series no model takes ride with the first model's task)."""
        by_series: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
        for rec in self.spool.instances(study.study_uid):
            ds = pydicom.dcmread(rec.path, stop_before_pixels=True)
            by_series.setdefault(rec.series_uid, []).append((rec.path, ds))
        infos = [SeriesInfo.from_datasets([d for _, d in items]) for items in by_series.values()]
        plan: dict[str, list[Path]] = {}
        unrouted: list[Path] = []
        for info, sel in zip(infos, select(infos, self.ctx.rules), strict=True):
            files = [p for p, _ in by_series[info.series_uid]]
            if sel.model is None:
                unrouted += files
            else:
                plan.setdefault(sel.model, []).extend(files)
        if plan and unrouted:
            plan[sorted(plan)[0]].extend(unrouted)
        elif unrouted:
            plan[""] = unrouted  # no model: recorded here, no task
        return plan

    def enqueue(self, study: StudyState) -> bool:
        """Hand a claimed study to the workers; False (study back to "to enqueue") when the broker is down."""
        uid, run = study.study_uid, study.run
        try:
            plan = self.plan(study)
        except (OSError, ValueError, pydicom.errors.InvalidDicomError) as exc:
            self.spool.finish(uid, "failed", reason=f"cannot read the study's headers: {exc}")
            return True
        queues = {m: self.jobs.queue(m) for m in plan if m}
        try:
            if not queues:
                return self._without_model(study, plan[""])
            with self.session() as session:
                jobs = store.enqueue(session, study_uid=uid, run=run, queues=queues, receiver=self.name)
                waiting = [j.model for j in jobs if j.state == JobState.QUEUED]
        except (OperationalError, InterfaceError) as exc:  # the registry is down: the study waits, still spooled
            reason = f"registry unavailable ({type(exc).__name__}); enqueued when it returns"
            logger.warning("study %s run %d waits to be enqueued: %s", uid, run, reason)
            self.spool.defer(uid, reason, self.jobs.enqueue_retry_seconds)
            return False
        out = self.spool.outbox / uid / f"run-{run}"
        try:
            for model in waiting:
                payload = {
                    "study_uid": uid,
                    "run": run,
                    "model": model,
                    "queue": queues[model],
                    "files": [self.storage.ref(p) for p in plan[model]],
                    "out": self.storage.ref(out),
                    "receiver": self.name,
                }
                publish(self.app, queues[model], payload)
        except BROKER_ERRORS as exc:
            self.enqueue_failures += 1
            self.broker_ok = False
            reason = f"broker unavailable ({type(exc).__name__}); enqueued when it returns"
            logger.warning("study %s run %d waits to be enqueued: %s", uid, run, reason)
            self.spool.defer(uid, reason, self.jobs.enqueue_retry_seconds)
            self._broker_retry_at = time.monotonic() + self.jobs.enqueue_retry_seconds  # results still collected
            return False
        self.broker_ok = True
        self.enqueued += 1
        self.spool.set_state(uid, "processing", expect="processing", reason=f"queued on {', '.join(queues.values())}")
        logger.info("study %s run %d queued on %s", uid, run, ", ".join(queues.values()))
        return True

    def _without_model(self, study: StudyState, files: list[Path]) -> bool:
        """A study no rule takes: its series are recorded (skipped, with the reason) here."""
        out = self.spool.outbox / study.study_uid / f"run-{study.run}"
        try:
            process_study(files, study_uid=study.study_uid, run=study.run, out_dir=out, ctx=self.ctx)
        except (OperationalError, InterfaceError):
            raise  # the registry is down: the caller keeps the study to enqueue
        except Exception as exc:  # one bad study must not stop the receiver: record it and go on
            logger.exception("study %s run %d failed", study.study_uid, study.run)
            self.spool.finish(study.study_uid, "failed", reason=f"{type(exc).__name__}: {exc}"[:500])
            return True
        self.spool.finish(study.study_uid, "done", reason="no model takes any series")
        return True

    # -- collect -------------------------------------------------------------------------------------------
    def collect(self) -> int:
        """Forward the results of studies whose jobs have all finished; how many studies finished."""
        processing = {s.study_uid: s for s in self.spool.studies("processing")}
        if not processing:
            return 0
        with self.session() as session:
            rows = [j for uid in processing for j in store.of_study(session, uid, processing[uid].run)]
            finished = {uid: [JobView.of(j) for j in jobs] for uid, jobs in _finished_studies(rows).items()}
        done = 0
        for uid, jobs in finished.items():
            self._finish(processing[uid], jobs)
            done += 1
        return done

    def _finish(self, study: StudyState, jobs: list[JobView]) -> None:
        series: list[RecordedSeries] = []
        problems: list[str] = []
        for job in jobs:
            if job.state == JobState.FAILED:
                problems.append(f"{job.model}: {job.error}")
            for s in (job.result or {}).get("series", []):
                recorded = RecordedSeries.from_result(s, self.storage)
                series.append(recorded)
                if recorded.status == "failed":
                    problems.append(recorded.reason)
        route_outputs(self.forwarder, study.study_uid, study.run, series)
        state = "failed" if problems else "done"
        self.spool.finish(study.study_uid, state, reason="; ".join(problems)[:500])
        logger.info(
            "study %s run %d %s by %s",
            study.study_uid,
            study.run,
            state,
            ", ".join(sorted({j.worker or "" for j in jobs})),
        )


def _finished_studies(rows: Iterable[Job]) -> dict[str, list[Job]]:
    """Study UID -> its jobs, for the studies whose jobs have all finished."""
    by_study: dict[str, list[Job]] = {}
    for j in rows:
        by_study.setdefault(j.study_uid, []).append(j)
    return {uid: jobs for uid, jobs in by_study.items() if jobs and all(j.state in store.FINISHED for j in jobs)}
