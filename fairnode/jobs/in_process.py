"""The in-process job runner: the node's own thread takes ``ready`` studies and runs the pipeline.

The embedded default (``jobs.mode: in-process``): one process receives, processes and forwards.
"""

from __future__ import annotations

import logging
import threading
from functools import cached_property

from sqlalchemy.exc import InterfaceError, OperationalError

from dicom_node.scu import Forwarder
from dicom_node.spool import Spool
from fairnode.jobs.routing import route_outputs
from fairnode.jobs.settings import JobSettings
from fairnode.jobs.status import in_process_status
from fairnode.pipeline import PipelineContext, StudyOutcome, process_study
from fairnode.pipeline_registry import pending_registry
from fairnode.registry_pending import PendingRegistry

logger = logging.getLogger(__name__)


class JobRunner:
    """Takes ``ready`` studies from the spool, runs the pipeline, enqueues the results for delivery.

    The registry is not in the way of results: a study's registry rows are written after its results
    are enqueued for delivery, and when the registry does not take them they are kept on disk
    (:mod:`fairnode.registry_pending`) and written at start-up and every ``registry_retry_seconds``. Only a
    study holding a corrected SEG needs the registry to be processed (the correction is matched to its
    case there): while the registry is unreachable such a study is deferred (back to ``ready``, retried
    every ``registry_retry_seconds``), never failed.
    """

    def __init__(
        self,
        spool: Spool,
        ctx: PipelineContext,
        forwarder: Forwarder,
        poll_seconds: float = 0.25,
        registry_retry_seconds: float = 5.0,
        jobs: JobSettings | None = None,
    ):
        self.spool = spool
        self.ctx = ctx
        self.forwarder = forwarder
        self.poll = poll_seconds
        self.registry_retry = registry_retry_seconds
        self.jobs = jobs or JobSettings()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: StudyOutcome | None = None

    @cached_property
    def pending(self) -> PendingRegistry | None:
        """The registry records kept for this node (None without a registry or a folder for them)."""
        ctx = self.ctx
        if getattr(ctx, "registry_session", None) is None or getattr(ctx, "registry_pending", None) is None:
            return None  # also for a runner built without a pipeline context (status only)
        return pending_registry(ctx)

    def wake(self) -> None:
        """A study became ready: look now rather than at the next poll."""
        self._wake.set()

    def models_in_use(self) -> dict[str, dict[str, object]]:
        """Models opened by this process, their execution providers and bias mitigation (for the status page)."""
        return {
            name: {
                "providers": seg.providers_in_use,
                "mitigation": seg.card.mitigation.strategy if seg.card.mitigation else "none",
            }
            for name, seg in self.ctx.models.opened().items()
        }

    def status(self) -> dict[str, object]:
        """Backlog, oldest waiting study and registry records waiting for the registry (for the status page)."""
        status = in_process_status(self.spool, self.jobs)
        if self.pending is not None:
            status["registry_pending"] = len(self.pending.folders())
            status["registry_refused"] = len(self.pending.refused())
        return status

    def run_once(self) -> StudyOutcome | None:
        study = self.spool.claim_ready()
        if study is None:
            return None
        files = [r.path for r in self.spool.instances(study.study_uid)]
        out = self.spool.outbox / study.study_uid / f"run-{study.run}"
        try:
            outcome = process_study(
                files,
                study_uid=study.study_uid,
                run=study.run,
                out_dir=out,
                ctx=self.ctx,
                defer_registry=self.pending is not None,
            )
        except (OperationalError, InterfaceError) as exc:  # a correction needs the registry: the study waits for it
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
        self.write_registry()  # once the results are on their way: a refusal keeps the record for later
        state = "failed" if outcome.failed else "done"
        self.spool.finish(
            study.study_uid, state, reason="; ".join(s.reason for s in outcome.series if s.status == "failed")
        )
        logger.info("study %s run %d %s in %.2f s", study.study_uid, study.run, state, outcome.seconds)
        self.last = outcome
        return outcome

    def write_registry(self, every: float | None = None) -> None:
        """Write the kept registry records (this study's and any the registry did not take before).

        With ``every``, only when the last pass is that many seconds old. Never raises: the records stay
        kept whatever goes wrong, and the runner goes on.
        """
        if self.pending is None:
            return
        try:
            if every is None:
                self.pending.retry()
            else:
                self.pending.retry_due(every)
        except Exception:  # the kept records stay for the next pass; the runner must go on
            logger.exception("writing the kept registry records failed; tried again in %g s", self.registry_retry)

    def _route(self, study_uid: str, run: int, outcome: StudyOutcome) -> None:
        """PASS series (and REVIEW ones when forwarding) to PACS; REVIEW ones held or to the review destination."""
        route_outputs(self.forwarder, study_uid, run, outcome.series)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.write_registry(every=self.registry_retry)  # at start-up, then every registry_retry seconds
            if self.run_once() is None:
                self._wake.wait(self.poll)
                self._wake.clear()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
