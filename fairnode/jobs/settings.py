"""Settings of the job runner: in-process (one node, the embedded default) or Celery (scale-out)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class JobSettings(BaseModel):
    """How complete studies are processed (``jobs:`` in the settings file, ``FAIRNODE_JOBS__<FIELD>``).

    ``mode``: ``in-process`` runs the pipeline in the node's own job thread (what ``make run`` starts);
    ``celery`` hands each complete study to Celery workers, one task per model on that model's queue.
    """

    model_config = ConfigDict(extra="forbid")

    mode: Literal["in-process", "celery"] = "in-process"
    broker_url: str = Field("redis://127.0.0.1:6379/0", description="redis://... or amqp://... (RabbitMQ)")
    result_backend: str | None = Field(None, description="optional: results live in the registry's job table")
    queue_prefix: str = Field("", description="prepended to each model's queue name (several nodes, one broker)")
    shared_root: Path | None = Field(
        None, description="folder every machine mounts (spool and outputs under it); default: data_dir"
    )
    receiver_name: str | None = Field(None, description="this receiver's name on jobs; default: AE title@host")
    backlog_warn_studies: int = Field(
        100, ge=0, description="queue depth the status page flags as a backlog (receivers keep accepting)"
    )
    enqueue_retry_seconds: float = Field(5.0, gt=0, description="wait before enqueuing again while the broker is down")
    poll_seconds: float = Field(0.5, gt=0, description="how often a receiver looks for finished jobs")
    heartbeat_seconds: float = Field(5.0, gt=0, description="a worker's heartbeat interval")
    visibility_timeout_seconds: int = Field(
        3600, ge=10, description="Redis: an unacknowledged task is given to another worker after this long"
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus /metrics and /health of this process (workers; 0: any port)"
    )
    metrics_bind: str = "127.0.0.1"

    def queue(self, model: str) -> str:
        """The queue of a model's tasks."""
        return f"{self.queue_prefix}{model}"
