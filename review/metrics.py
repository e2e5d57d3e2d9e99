"""Prometheus metrics of the node, read at scrape time from the status provider and the registry.

Families (all prefixed ``fairnode_``): ``instances_received_total``, ``studies`` (by state),
``studies_processed_total``, ``queue_depth`` (studies received or ready, not yet processed),
``deliveries`` (by state), ``delivery_failures`` (deliveries with at least one failed attempt),
``dead_letters``, ``stage_seconds`` (summary per pipeline stage over the recent cases), ``review_cases``
(by review state) and ``review_rate`` (reviewed / all REVIEW cases).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from sqlmodel import col, select

from fairness_registry.models import Case, ReviewState
from review.deps import ReviewContext

__all__ = ["NodeCollector", "render_metrics"]

logger = logging.getLogger(__name__)

#: Cases whose stage timings feed ``stage_seconds``.
RECENT_CASES = 500
#: Study states still waiting to be processed.
QUEUED_STATES = ("receiving", "ready", "running")


class NodeCollector:
    """A custom collector: every scrape asks the node and the registry afresh."""

    def __init__(self, context: ReviewContext) -> None:
        self._context = context

    def collect(self) -> Iterable[Metric]:
        """The metric families (see the module docstring)."""
        status: Mapping[str, Any] = self._context.status()
        studies: Mapping[str, int] = status.get("studies", {})
        deliveries: Mapping[str, int] = status.get("deliveries", {})
        if "instances_received" in status:
            yield CounterMetricFamily(
                "fairnode_instances_received", "DICOM instances received", value=status["instances_received"]
            )
        by_state = GaugeMetricFamily("fairnode_studies", "Studies by state", labels=["state"])
        for state, n in studies.items():
            by_state.add_metric([state], n)
        yield by_state
        yield CounterMetricFamily(
            "fairnode_studies_processed",
            "Studies processed (done or failed)",
            value=sum(studies.get(s, 0) for s in ("done", "failed")),
        )
        yield GaugeMetricFamily(
            "fairnode_queue_depth",
            "Studies received but not processed yet",
            value=sum(studies.get(s, 0) for s in QUEUED_STATES),
        )
        delivered = GaugeMetricFamily("fairnode_deliveries", "Deliveries by state", labels=["state"])
        for state, n in deliveries.items():
            delivered.add_metric([state], n)
        yield delivered
        yield GaugeMetricFamily(
            "fairnode_delivery_failures",
            "Deliveries with at least one failed attempt",
            value=status.get("delivery_failures", deliveries.get("dead", 0)),
        )
        yield GaugeMetricFamily(
            "fairnode_dead_letters", "Deliveries given up on", value=len(status.get("dead_letters", []))
        )
        yield from self._registry_metrics()

    def _registry_metrics(self) -> Iterable[Metric]:
        if self._context.registry is None:
            return
        with self._context.registry() as db:
            timings = db.exec(select(Case.timings).order_by(col(Case.id).desc()).limit(RECENT_CASES)).all()
        stages = SummaryMetricFamily(
            "fairnode_stage_seconds", "Pipeline stage latency (recent cases)", labels=["stage"]
        )
        sums: dict[str, tuple[int, float]] = {}
        for row in timings:
            for stage, seconds in (row or {}).items():
                count, total = sums.get(stage, (0, 0.0))
                sums[stage] = (count + 1, total + float(seconds))
        for stage, (count, total) in sorted(sums.items()):
            stages.add_metric([stage], count_value=count, sum_value=total)
        yield stages
        if self._context.worklist is not None:
            counts = self._context.worklist.counts()
            review = GaugeMetricFamily("fairnode_review_cases", "Cases by review state", labels=["state"])
            for state, n in counts.items():
                review.add_metric([state.value], n)
            yield review
            flagged = sum(n for s, n in counts.items() if s is not ReviewState.NOT_NEEDED)
            rate = counts.get(ReviewState.REVIEWED, 0) / flagged if flagged else 0.0
            yield GaugeMetricFamily("fairnode_review_rate", "Reviewed share of the REVIEW cases", value=rate)


def render_metrics(context: ReviewContext) -> bytes:
    """The Prometheus text exposition of :class:`NodeCollector`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(context))
    return generate_latest(registry)
