"""The running node: SCP -> spool -> assembler -> job runner (pipeline) -> forwarder, plus the registry.

Built once by :func:`build_node` from :class:`~fairnode.settings.Settings`; every part gets its
dependencies injected. One job runner thread processes one study at a time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlmodel import Session

from dicom_node import audit_messages, audit_trail
from dicom_node.assembly import Assembler
from dicom_node.retention import Retention
from dicom_node.scp import DicomServer
from dicom_node.scp_audit import AuditedAssembler
from dicom_node.scu import Forwarder
from dicom_node.spool import Spool
from fairness_registry.db import get_engine, migrate
from fairnode import security
from fairnode.pipeline import Models, PipelineContext, StudyOutcome, process_study
from fairnode.settings import Settings

logger = logging.getLogger(__name__)


def registry_sessions(url: str) -> Callable[[], object]:
    """A factory of registry sessions (commit on success) on the migrated database at ``url``."""
    migrate(url)
    engine = get_engine(url)

    @contextmanager
    def session() -> Iterator[Session]:
        with Session(engine) as s:
            yield s
            s.commit()

    return session


def pipeline_context(settings: Settings) -> PipelineContext:
    return PipelineContext(
        rules=settings.rules,
        models=Models(settings.models_dir, settings.prefer_gpu),
        outputs=settings.outputs(),
        registry_session=registry_sessions(settings.registry),
        secret=settings.secret(),
        quality=settings.quality(),
        registry_options=settings.registry_options,
    )


def offline_context(settings: Settings) -> PipelineContext:
    """The pipeline context of ``fairnode run``: no registry, no network."""
    return PipelineContext(
        rules=settings.rules,
        models=Models(settings.models_dir, settings.prefer_gpu),
        outputs=settings.outputs(),
        registry_session=None,
        secret=b"",
        quality=settings.quality(),
    )


class JobRunner:
    """Takes ``ready`` studies from the spool, runs the pipeline, enqueues the results for delivery.

    While the registry database is unreachable a study is deferred (back to ``ready``, retried every
    ``registry_retry_seconds``), never failed: it is processed by itself once the registry returns.
    """

    def __init__(
        self,
        spool: Spool,
        ctx: PipelineContext,
        forwarder: Forwarder,
        poll_seconds: float = 0.25,
        registry_retry_seconds: float = 5.0,
    ):
        self.spool = spool
        self.ctx = ctx
        self.forwarder = forwarder
        self.poll = poll_seconds
        self.registry_retry = registry_retry_seconds
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: StudyOutcome | None = None

    def wake(self) -> None:
        """A study became ready: look now rather than at the next poll."""
        self._wake.set()

    def run_once(self) -> StudyOutcome | None:
        study = self.spool.claim_ready()
        if study is None:
            return None
        files = [r.path for r in self.spool.instances(study.study_uid)]
        out = self.spool.outbox / study.study_uid / f"run-{study.run}"
        try:
            outcome = process_study(files, study_uid=study.study_uid, run=study.run, out_dir=out, ctx=self.ctx)
        except (OperationalError, InterfaceError) as exc:  # the registry is unreachable: the study waits for it
            reason = f"registry unavailable ({type(exc).__name__}); retried every {self.registry_retry:g} s"
            logger.warning("study %s run %d deferred: %s", study.study_uid, study.run, reason)
            self.spool.defer(study.study_uid, reason, self.registry_retry)
            return None
        except Exception as exc:  # one bad study must not stop the node: record it and go on
            logger.exception("study %s run %d failed", study.study_uid, study.run)
            self.spool.finish(study.study_uid, "failed", reason=f"{type(exc).__name__}: {exc}")
            return None
        # results are persisted (outbox + delivery rows) before anything is sent
        self._route(study.study_uid, study.run, outcome)
        state = "failed" if outcome.failed else "done"
        self.spool.finish(
            study.study_uid, state, reason="; ".join(s.reason for s in outcome.series if s.status == "failed")
        )
        logger.info("study %s run %d %s in %.2f s", study.study_uid, study.run, state, outcome.seconds)
        self.last = outcome
        return outcome

    def _route(self, study_uid: str, run: int, outcome: StudyOutcome) -> None:
        """PASS series (and REVIEW ones when forwarding) to PACS; REVIEW ones held or to the review destination."""
        to_pacs: list[Path] = []
        for s in outcome.series:
            if s.review_state == "held":
                logger.info(
                    "study %s series %s held for review: %s", study_uid, s.series_uid, "; ".join(s.review_reasons)
                )
            elif s.review_state == "sent_for_review":
                self.forwarder.enqueue(study_uid, run, s.outputs, review=True)
            else:
                to_pacs += s.outputs
        if to_pacs:
            self.forwarder.enqueue(study_uid, run, to_pacs)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.run_once() is None:
                self._wake.wait(self.poll)
                self._wake.clear()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)


@dataclass
class Node:
    settings: Settings
    spool: Spool
    server: DicomServer
    assembler: Assembler
    runner: JobRunner
    forwarder: Forwarder
    retention: Retention | None = None

    def start(self) -> None:
        indexed, requeued = self.spool.reconcile()
        logger.info("spool %s: %d files recovered, %d studies re-queued", self.spool.root, indexed, requeued)
        self.forwarder.start()
        self.runner.start()
        self.assembler.start()
        self.server.start()
        if self.retention is not None:
            self.retention.start()
        audit_trail.record(audit_messages.application_activity(started=True, application=self.settings.ae_title))

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
            "models": {
                name: {"providers": seg.providers_in_use} for name, seg in self.runner.ctx.models.opened().items()
            },
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


def build_node(settings: Settings) -> Node:
    spool = Spool(settings.spool_dir)
    security.start_audit_trail(settings)  # before anything that records on it
    pseudonym = security.patient_pseudonym(settings)
    forwarder = Forwarder(
        spool, settings.forwarding(), deidentifier=security.deidentifier_factory(settings), pseudonym=pseudonym
    )
    runner = JobRunner(spool, pipeline_context(settings), forwarder)
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
