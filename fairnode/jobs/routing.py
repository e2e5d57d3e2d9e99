"""Where a study's results go: PASS series to PACS, REVIEW ones held, marked or to the review destination.

The same rule in both job modes: the in-process runner applies it to the outcome it just computed, a Celery
receiver to the outcome a worker recorded in the registry.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from dicom_node.scu import Forwarder

logger = logging.getLogger(__name__)


class RoutedSeries(Protocol):
    """What routing needs of a series outcome."""

    series_uid: str
    review_state: str | None
    review_reasons: list[str]

    @property
    def outputs(self) -> list[Path]: ...


def route_outputs(forwarder: Forwarder, study_uid: str, run: int, series: Iterable[RoutedSeries]) -> int:
    """Record the deliveries of a study run's outputs (persisted before anything is sent); files enqueued."""
    to_pacs: list[Path] = []
    n = 0
    for s in series:
        if s.review_state == "held":
            logger.info("study %s series %s held for review: %s", study_uid, s.series_uid, "; ".join(s.review_reasons))
        elif s.review_state == "sent_for_review":
            forwarder.enqueue(study_uid, run, s.outputs, review=True)
            n += len(s.outputs)
        else:
            to_pacs += s.outputs
    if to_pacs:
        forwarder.enqueue(study_uid, run, to_pacs)
    return n + len(to_pacs)
