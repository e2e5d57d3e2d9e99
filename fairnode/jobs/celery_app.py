"""The Celery application of the node: broker, delivery guarantees, one queue per model.

A task is acknowledged only after it ran (``acks_late``), and given back to the broker when the worker
process running it dies (``task_reject_on_worker_lost``); each worker process reserves one task at a time
(prefetch 1), so a study waits in the broker, not behind a busy worker. Redis (``redis://``) and RabbitMQ
(``amqp://``) brokers work through ``jobs.broker_url``; a result backend is optional (the outcome lives in
the registry's ``job`` table).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from fairnode.jobs.settings import JobSettings

#: The one task: process one study run with one model.
TASK_NAME = "fairnode.process_study"


def make_app(jobs: JobSettings) -> Celery:
    """A Celery application configured from ``jobs`` with the node's task registered."""
    from fairnode.jobs.tasks import process_job

    app = Celery("fairnode", broker=jobs.broker_url, backend=jobs.result_backend, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=jobs.result_backend is None,
        task_create_missing_queues=True,
        broker_transport_options={"visibility_timeout": jobs.visibility_timeout_seconds},
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        enable_utc=True,
    )
    app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)(process_job)
    return app


def publish(app: Celery, queue: str, payload: dict[str, Any]) -> None:
    """Send one task to ``queue`` now; raises when the broker cannot take it (no retry here: the caller keeps
    the study as "to enqueue" and tries again later)."""
    app.send_task(TASK_NAME, kwargs=payload, queue=queue, routing_key=queue, retry=False)
