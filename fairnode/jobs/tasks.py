"""The worker's task: one study run, one model, processed once however often the broker delivers it.

:func:`process_job` takes the job up in the registry (:func:`fairnode.jobs.store.take`; a finished job
ends the task there), runs :func:`fairnode.pipeline.process_study` on the files the message names
(shared storage), writes the outputs under ``<outbox>/<model>/attempt-<n>/`` and records the outcome
with the attempt that holds the job. The receiver that enqueued the study forwards the results.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError

from fairnode.jobs import store
from fairnode.jobs.storage import FolderStorage, SharedStorage
from fairnode.lesions import OUTPUT_KEYS as LESION_OUTPUT_KEYS
from fairnode.pipeline import OUTPUT_PATH_KEYS, PipelineContext, StudyOutcome, process_study
from fairnode.pipeline_registry import pending_registry
from fairnode.registry_pending import PendingRegistry
from fairnode.settings import Settings, load_settings

logger = logging.getLogger(__name__)

#: Seconds before a task whose registry write collided (two models' tasks recording one study) runs again.
COLLISION_RETRY_SECONDS = 1.0
#: Seconds before a task retries while the registry is unreachable.
REGISTRY_RETRY_SECONDS = 5.0


@dataclass
class WorkerState:
    """What a worker process needs, built once per process (the pipeline context on first use)."""

    settings: Settings
    storage: SharedStorage
    name: str
    _ctx: PipelineContext | None = field(default=None, repr=False)
    pending: PendingRegistry | None = field(default=None, repr=False)

    @property
    def ctx(self) -> PipelineContext:
        if self._ctx is None:
            from fairnode.node import pipeline_context

            self._ctx = pipeline_context(self.settings)
            # the models and what they built live as long as this process: out of the cyclic collector's way
            # (as the node does at start-up), so that a study's full collections do not walk them again
            gc.freeze()
        return self._ctx

    def session(self) -> Any:
        return self.ctx.registry_session()  # type: ignore[misc]


_state: WorkerState | None = None


def default_name() -> str:
    """The worker's name when none is given: ``fairnode-<pid>@<host>``."""
    return f"fairnode-{os.getpid()}@{socket.gethostname()}"


def shared_storage(settings: Settings) -> FolderStorage:
    """The shared storage of these settings (``jobs.shared_root``, default the data folder)."""
    return FolderStorage(settings.jobs.shared_root or settings.data_dir)


def configure(settings: Settings, name: str | None = None) -> WorkerState:
    """Set up this process as a worker (before the pool forks).

    Raises
    ------
    ValueError
        when no pseudonymisation secret is set and the data folder holds no key: workers must pseudonymise
        exactly as the receivers' registry does, so they never make a key of their own.
    """
    global _state
    if settings.pseudonym_secret is None and not (settings.data_dir / "pseudonym.key").exists():
        raise ValueError(
            "a worker needs the receivers' pseudonym secret: set FAIRNODE_PSEUDONYM_SECRET (or pseudonym_secret) "
            f"or share the data folder holding pseudonym.key (looked in {settings.data_dir})"
        )
    _state = WorkerState(settings, shared_storage(settings), name or default_name())
    return _state


def state() -> WorkerState:
    """This process's worker state (settings from the environment if :func:`configure` was not called)."""
    return _state or configure(load_settings())


def _earlier_result(model_dir: Path, storage: SharedStorage) -> dict[str, Any] | None:
    """The outcome of an earlier attempt that finished the pipeline but was lost before recording it."""
    for summary in sorted(model_dir.glob("attempt-*/summary.json"), reverse=True):
        try:
            return _refs(json.loads(summary.read_text(encoding="utf-8")), storage)
        except (OSError, ValueError):
            continue
    return None


def _refs(outcome: dict[str, Any], storage: SharedStorage) -> dict[str, Any]:
    """A study outcome with its output paths as shared storage references."""
    for s in outcome.get("series", []):
        for holder, keys in ((s, OUTPUT_PATH_KEYS), (s.get("lesions") or {}, LESION_OUTPUT_KEYS)):
            for key in keys:
                if holder.get(key) and Path(holder[key]).is_absolute():
                    holder[key] = storage.ref(Path(holder[key]))
    return outcome


def process_job(
    task: Any, *, study_uid: str, run: int, model: str, queue: str, files: list[str], out: str, receiver: str = ""
) -> dict[str, Any]:
    """Celery task body (bound): process ``files`` (shared storage references) of a study run for ``model``."""
    w = state()
    try:
        with w.session() as session:
            taken = store.take(session, study_uid=study_uid, run=run, model=model, queue=queue, worker=w.name)
    except (OperationalError, InterfaceError) as exc:
        logger.warning(
            "registry unavailable for job %s run %d %s; retried in %g s", study_uid, run, model, REGISTRY_RETRY_SECONDS
        )
        raise task.retry(exc=exc, countdown=REGISTRY_RETRY_SECONDS) from exc
    if taken is None:
        logger.info("job %s run %d %s was processed already: nothing done twice", study_uid, run, model)
        return {"state": "already processed"}
    if taken.previous_worker:
        logger.warning(
            "job %s run %d %s taken over (attempt %d) from %s, which was lost",
            study_uid,
            run,
            model,
            taken.attempt,
            taken.previous_worker,
        )
    model_dir = w.storage.local(out) / model
    result = _earlier_result(model_dir, w.storage)
    error: str | None = None
    provider: str | None = None
    if result is None:
        try:
            outcome = process_study(
                [w.storage.local(f) for f in files],
                study_uid=study_uid,
                run=run,
                out_dir=model_dir / f"attempt-{taken.attempt}",
                ctx=w.ctx,
            )
        except IntegrityError as exc:  # another model's task recorded the same study at the same moment
            raise task.retry(exc=exc, countdown=COLLISION_RETRY_SECONDS) from exc
        except (OperationalError, InterfaceError) as exc:
            raise task.retry(exc=exc, countdown=REGISTRY_RETRY_SECONDS) from exc
        except Exception as exc:  # a study that cannot be processed is recorded as failed, never retried forever
            logger.exception("job %s run %d %s failed", study_uid, run, model)
            error = f"{type(exc).__name__}: {exc}"[:500]
        else:
            result = _refs(_outcome_dict(outcome), w.storage)
            provider = next((s.providers[0] for s in outcome.series if s.providers), None)
    with w.session() as session:
        recorded = store.finish(
            session, job_id=taken.job_id, attempt=taken.attempt, ok=error is None, result=result, error=error
        )
        store.count(session, name=w.name, ok=error is None, error=error, provider=provider)
    if not recorded:
        logger.warning(
            "job %s run %d %s attempt %d superseded: its result is dropped", study_uid, run, model, taken.attempt
        )
    _write_kept(w)
    return {"state": "failed" if error else "done", "attempt": taken.attempt}


def _write_kept(w: WorkerState) -> None:
    """Write the registry records this worker kept while the registry did not take them (every few seconds)."""
    if w.ctx.registry_session is None or w.ctx.registry_pending is None:
        return
    if w.pending is None:
        w.pending = pending_registry(w.ctx)
    try:
        w.pending.retry_due(REGISTRY_RETRY_SECONDS)
    except Exception:  # the records stay kept for the next task: this job's own result is recorded already
        logger.exception("writing the kept registry records of worker %s failed", w.name)


def _outcome_dict(outcome: StudyOutcome) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(outcome)))  # plain JSON types (what the registry stores)
