"""The running node: SCP -> spool -> assembler -> job runner (pipeline) -> forwarder, plus the registry.

Built once by :func:`build_node` from :class:`~fairnode.settings.Settings`; every part gets its
dependencies injected. The job runner depends on ``jobs.mode`` (:mod:`fairnode.jobs`): ``in-process``, one
thread processes one study at a time here; ``celery``, this node is a receiver whose complete studies go to
Celery workers (``fairnode worker``), and it forwards their results.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from sqlmodel import Session

from dicom_node import audit_messages, audit_trail
from dicom_node.assembly import Assembler
from dicom_node.retention import Retention
from dicom_node.scp import DicomServer
from dicom_node.scp_audit import AuditedAssembler
from dicom_node.scu import Forwarder
from dicom_node.spool import Spool
from fairness_registry.db import EngineOptions, get_engine, migrate
from fairnode import security
from fairnode.jobs.in_process import JobRunner
from fairnode.pipeline import Models, PipelineContext
from fairnode.settings import Settings
from inference.model_store import imported_models_dir

__all__ = [
    "JobRunner",
    "Node",
    "Runner",
    "build_node",
    "offline_context",
    "pipeline_context",
    "registry_sessions",
    "session_factory",
]

logger = logging.getLogger(__name__)


def registry_sessions(url: str, options: EngineOptions | None = None) -> Callable[[], object]:
    """A factory of registry sessions (commit on success) on the migrated database at ``url``, its engine's
    timeouts ``options`` (:meth:`~fairness_registry.settings.RegistrySettings.engine_options`)."""
    migrate(url, options)
    return session_factory(url, options)


def session_factory(url: str, options: EngineOptions | None = None) -> Callable[[], object]:
    """A factory of registry sessions (commit on success) on the database at ``url``, as it is (no migration)."""
    engine = get_engine(url, options)

    @contextmanager
    def session() -> Iterator[Session]:
        with Session(engine) as s:
            yield s
            s.commit()

    return session


def pipeline_context(settings: Settings) -> PipelineContext:
    return PipelineContext(
        rules=settings.rules,
        models=Models(
            settings.models_dir, settings.prefer_gpu, imported_models_dir(settings.data_dir), settings.inference
        ),
        outputs=settings.outputs(),
        registry_session=registry_sessions(settings.registry, settings.registry_options.engine_options()),
        secret=settings.secret(),
        quality=settings.quality(),
        registry_options=settings.registry_options,
        registry_pending=settings.data_dir / "registry-pending",
        lesions=settings.lesions,
    )


def offline_context(settings: Settings) -> PipelineContext:
    """The pipeline context of ``fairnode run``: no registry, no network."""
    return PipelineContext(
        rules=settings.rules,
        models=Models(
            settings.models_dir, settings.prefer_gpu, imported_models_dir(settings.data_dir), settings.inference
        ),
        outputs=settings.outputs(),
        registry_session=None,
        secret=b"",
        quality=settings.quality(),
        lesions=settings.lesions,
    )


class Runner(Protocol):
    """What the node needs of its job runner (in-process :class:`JobRunner` or Celery :class:`Dispatcher`)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def wake(self) -> None: ...

    def status(self) -> dict[str, object]: ...

    def models_in_use(self) -> dict[str, dict[str, object]]: ...


@dataclass
class Node:
    settings: Settings
    spool: Spool
    server: DicomServer
    assembler: Assembler
    runner: Runner
    forwarder: Forwarder
    retention: Retention | None = None

    def start(self, *, listen: bool = True) -> None:
        """Recover the spool and start the workers; ``listen``: open the DICOM port too (else
        :meth:`listen` opens it once whatever else the node serves is up, so that nothing is accepted by a
        node that then fails to start)."""
        indexed, requeued = self.spool.reconcile()
        logger.info("spool %s: %d files recovered, %d studies re-queued", self.spool.root, indexed, requeued)
        self.spool.prepare()
        self.forwarder.start()
        self.runner.start()
        self.assembler.start()
        if self.retention is not None:
            self.retention.start()
        audit_trail.record(audit_messages.application_activity(started=True, application=self.settings.ae_title))
        # What is imported and built by now lives as long as the node (half a million objects): out of the
        # cyclic collector's way, so that the full collections a study's short-lived objects trigger no longer
        # walk it each time (0.6 s of CPU each, measured at start-up).
        gc.freeze()
        if listen:
            self.listen()

    def listen(self) -> None:
        """Open the DICOM port."""
        self.server.start()

    def status(self) -> dict[str, object]:
        """What the status page shows: listener, studies and deliveries by state, dead letters, models."""
        studies: dict[str, int] = {}
        for st in self.spool.studies():
            studies[st.state] = studies.get(st.state, 0) + 1
        deliveries: dict[str, int] = {}
        dead = []
        for d in self.spool.deliveries():
            deliveries[d.state] = deliveries.get(d.state, 0) + 1
            if d.state == "dead":
                dead.append(
                    {
                        "id": d.id,
                        "study_uid": d.study_uid,
                        "destination": d.destination,
                        "attempts": d.attempts,
                        "last_error": d.last_error,
                    }
                )
        recent = [
            {"study_uid": st.study_uid, "state": st.state, "run": st.run, "reason": st.reason}
            for st in self.spool.studies()[-20:]
        ]
        return {
            "ae_title": self.settings.ae_title,
            "dicom_port": self.server.port,
            "free_disk_mb": self.server.disk.free_bytes() // (1024 * 1024),
            "studies": studies,
            "deliveries": deliveries,
            "dead_letters": dead,
            "recent_studies": recent,
            "models": self.runner.models_in_use(),
            "jobs": self.runner.status(),
        }

    def stop(self) -> None:
        if self.retention is not None:
            self.retention.stop()
        self.server.stop()
        self.assembler.stop()
        self.runner.stop()
        self.forwarder.stop()
        audit_trail.record(audit_messages.application_activity(started=False, application=self.settings.ae_title))
        trail = audit_trail.configured()
        if trail is not None:
            trail.flush()
        gc.unfreeze()  # a node started again in this process (tests) freezes afresh


def build_node(settings: Settings) -> Node:
    spool = Spool(settings.spool_dir)
    security.start_audit_trail(settings)  # before anything that records on it
    pseudonym = security.patient_pseudonym(settings)
    forwarder = Forwarder(
        spool, settings.forwarding(), deidentifier=security.deidentifier_factory(settings), pseudonym=pseudonym
    )
    runner: Runner
    if settings.jobs.mode == "celery":
        from fairnode.jobs.dispatch import Dispatcher
        from fairnode.jobs.tasks import shared_storage

        runner = Dispatcher(spool, forwarder, pipeline_context(settings), settings.jobs, shared_storage(settings))
    else:
        runner = JobRunner(spool, pipeline_context(settings), forwarder, jobs=settings.jobs)
    return Node(
        settings=settings,
        spool=spool,
        server=DicomServer(settings.scp(), spool, tls_settings=settings.tls),
        assembler=AuditedAssembler(
            spool, settings.assembly(), node_ae=settings.ae_title, pseudonym=pseudonym, on_ready=runner.wake
        ),
        runner=runner,
        forwarder=forwarder,
        retention=Retention(spool, settings.retention),
    )
