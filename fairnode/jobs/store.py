"""The registry's ``job`` and ``job_worker`` tables: what is queued, who took it, what came out, who is alive.

Every function takes an open session and leaves the commit to the caller's session factory. The unique
constraint ``uq_job_study_run_model`` makes enqueuing idempotent; :func:`take` and :func:`finish` make a
redelivered task find the first result instead of writing a second one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from fairness_registry.models import Job, JobState, JobWorker, utcnow

logger = logging.getLogger(__name__)

#: Job states that end a job.
FINISHED = (JobState.DONE, JobState.FAILED)
#: Job states still waiting for a worker or in one.
WAITING = (JobState.QUEUED, JobState.RUNNING)


def enqueue(session: Session, *, study_uid: str, run: int, queues: Mapping[str, str], receiver: str) -> list[Job]:
    """The job rows of a study run, one per model (``queues``: model -> queue), created where missing."""
    existing = {j.model: j for j in of_study(session, study_uid, run)}
    for model, queue in queues.items():
        if model in existing:
            continue
        job = Job(study_uid=study_uid, run=run, model=model, queue=queue, receiver=receiver)
        try:
            with session.begin_nested():
                session.add(job)
        except IntegrityError:  # another receiver of the same study got there first: its row stands
            logger.info("job %s run %d %s exists already", study_uid, run, model)
            continue
        existing[model] = job
    session.flush()
    return [existing[m] for m in queues if m in existing]


def of_study(session: Session, study_uid: str, run: int) -> list[Job]:
    """The job rows of one study run."""
    return list(session.exec(select(Job).where(Job.study_uid == study_uid, Job.run == run)).all())


@dataclass(frozen=True)
class Taken:
    """A job a worker took up: its ``attempt`` must be given back to :func:`finish`."""

    job_id: int
    attempt: int
    previous_worker: str | None


def take(session: Session, *, study_uid: str, run: int, model: str, queue: str, worker: str) -> Taken | None:
    """Take a job up for processing; ``None`` when it is finished already (a redelivered task stops there).

    A job found ``running`` belonged to a worker that was lost (the broker gives a task back only then): it
    is taken over with the next attempt number.
    """
    stmt = select(Job).where(Job.study_uid == study_uid, Job.run == run, Job.model == model).with_for_update()
    job = session.exec(stmt).first()
    if job is None:  # the receiver's row is gone (registry restored from an older backup): record it now
        job = Job(study_uid=study_uid, run=run, model=model, queue=queue, receiver="(unknown)")
        session.add(job)
    elif job.state in FINISHED:
        return None
    job.state = JobState.RUNNING
    job.attempt += 1
    previous = job.worker
    job.worker = worker
    job.started_at = utcnow()
    session.add(job)
    session.flush()
    if job.id is None:
        raise RuntimeError(f"job {study_uid} run {run} {model} was not stored")
    return Taken(job.id, job.attempt, previous if job.attempt > 1 else None)


def finish(
    session: Session, *, job_id: int, attempt: int, ok: bool, result: dict[str, Any] | None, error: str | None = None
) -> bool:
    """Record a job's outcome, only if ``attempt`` still holds it; whether it did (else the result is dropped)."""
    stmt = (
        update(Job)
        .where(col(Job.id) == job_id, col(Job.attempt) == attempt, col(Job.state) == JobState.RUNNING)
        .values(state=JobState.DONE if ok else JobState.FAILED, result=result, error=error, finished_at=utcnow())
    )
    return bool(session.execute(stmt).rowcount)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Backlog:
    """Jobs not finished: how many, and the oldest one waiting for a worker."""

    queued: int
    running: int
    oldest_study_uid: str | None
    oldest_enqueued_at: datetime | None


def backlog(session: Session) -> Backlog:
    """The backlog over every receiver and queue."""
    counts = dict(
        session.exec(select(Job.state, func.count()).where(col(Job.state).in_(WAITING)).group_by(Job.state)).all()
    )
    oldest = session.exec(
        select(Job).where(Job.state == JobState.QUEUED).order_by(col(Job.enqueued_at)).limit(1)
    ).first()
    return Backlog(
        queued=int(counts.get(JobState.QUEUED, 0)),
        running=int(counts.get(JobState.RUNNING, 0)),
        oldest_study_uid=oldest.study_uid if oldest else None,
        oldest_enqueued_at=oldest.enqueued_at if oldest else None,
    )


def beat(
    session: Session,
    *,
    name: str,
    host: str,
    pid: int,
    queues: Sequence[str],
    concurrency: int,
    provider: str | None = None,
) -> None:
    """A worker's heartbeat (the row is created on the first)."""
    row = session.get(JobWorker, name)
    now = utcnow()
    if row is None or row.pid != pid:  # a new process under the same name starts its counts afresh
        if row is not None:
            session.delete(row)
            session.flush()
        row = JobWorker(name=name, host=host, pid=pid, queues=list(queues), concurrency=concurrency, started_at=now)
    row.heartbeat_at = now
    if provider is not None:
        row.provider = provider
    session.add(row)


def count(session: Session, *, name: str, ok: bool, error: str | None = None, provider: str | None = None) -> None:
    """Count one job done or failed on a worker's row (from any of its pool processes)."""
    values: dict[str, Any] = (
        {"jobs_done": col(JobWorker.jobs_done) + 1}
        if ok
        else {
            "jobs_failed": col(JobWorker.jobs_failed) + 1,
            "last_error": (error or "")[:500],
        }
    )
    if provider is not None:
        values["provider"] = provider
    session.execute(update(JobWorker).where(col(JobWorker.name) == name).values(**values))


def workers(session: Session) -> list[JobWorker]:
    """Every worker that ever beat, most recent heartbeat first."""
    return list(session.exec(select(JobWorker).order_by(col(JobWorker.heartbeat_at).desc())).all())


def alive(worker: JobWorker, heartbeat_seconds: float, now: datetime | None = None) -> bool:
    """Whether a worker beat within three heartbeat intervals."""
    now = now or utcnow()
    return now - worker.heartbeat_at <= timedelta(seconds=3 * heartbeat_seconds)
