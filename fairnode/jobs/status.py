"""What the status page shows of the jobs: backlog, the oldest waiting study, every worker."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from dicom_node.spool import Spool
from fairness_registry.models import utcnow
from fairnode.jobs import store
from fairnode.jobs.settings import JobSettings

logger = logging.getLogger(__name__)


def in_process_status(spool: Spool, jobs: JobSettings) -> dict[str, Any]:
    """The in-process backlog: studies ready or being processed by this node."""
    waiting = spool.studies("ready")
    backlog = len(waiting) + len(spool.studies("processing"))
    return {
        "mode": "in-process",
        "backlog": backlog,
        "backlog_warn": jobs.backlog_warn_studies,
        "backlog_high": bool(jobs.backlog_warn_studies) and backlog > jobs.backlog_warn_studies,
        "oldest_waiting": _oldest(waiting[0].study_uid, utcnow().timestamp() - waiting[0].last_received)
        if waiting
        else None,
        "workers": [],
    }


def celery_status(
    spool: Spool, jobs: JobSettings, session: Callable[[], Any], *, receiver: str, broker_ok: bool, enqueued: int
) -> dict[str, Any]:
    """Celery mode: this receiver's studies waiting to be enqueued, the registry's backlog and workers."""
    to_enqueue = len(spool.studies("ready"))
    out: dict[str, Any] = {
        "mode": "celery",
        "receiver": receiver,
        "broker_ok": broker_ok,
        "enqueued": enqueued,
        "to_enqueue": to_enqueue,
        "backlog_warn": jobs.backlog_warn_studies,
        "workers": [],
    }
    try:
        with session() as s:
            b = store.backlog(s)
            rows = store.workers(s)
            now = utcnow()
            workers = [
                {
                    "name": w.name,
                    "alive": store.alive(w, jobs.heartbeat_seconds, now),
                    "queues": ", ".join(w.queues),
                    "concurrency": w.concurrency,
                    "provider": w.provider or "-",
                    "jobs_done": w.jobs_done,
                    "jobs_failed": w.jobs_failed,
                    "last_error": w.last_error or "",
                    "heartbeat_age_s": round((now - w.heartbeat_at).total_seconds(), 1),
                }
                for w in rows
            ]
    except Exception as exc:  # the status page must show when the registry is down; logged, shown
        logger.exception("job backlog unavailable for the status page")
        out["error"] = f"registry unavailable: {type(exc).__name__}"
        return out
    backlog = b.queued + b.running + to_enqueue
    oldest = None
    if b.oldest_study_uid is not None and b.oldest_enqueued_at is not None:
        oldest = _oldest(b.oldest_study_uid, (utcnow() - b.oldest_enqueued_at).total_seconds())
    out.update(
        backlog=backlog,
        queued=b.queued,
        running=b.running,
        backlog_high=bool(jobs.backlog_warn_studies) and backlog > jobs.backlog_warn_studies,
        oldest_waiting=oldest,
        workers=workers,
    )
    return out


def _oldest(study_uid: str, waiting_s: float) -> dict[str, Any]:
    return {"study_uid": study_uid, "waiting_s": round(max(0.0, waiting_s), 1)}
