"""Create, update and list registry rows. Every function takes the session first, then keywords only.

Each function commits its own change and returns the refreshed table object; callers that serve an API
convert it to a public model (``CasePublic.model_validate(case)``). Import the package and call through it
(``from fairness_registry import crud; crud.record_study(...)``); the modules group the functions by concept:

- :mod:`~fairness_registry.crud.studies`: :func:`record_study` (pseudonym, demographics at the study,
  acquisition), :func:`record_acquisition`, :func:`ethnic_group_texts` and :func:`remap_ethnic_groups`.
  Patient identifiers enter only here; none is stored or logged.
- :mod:`~fairness_registry.crud.cases`: :func:`record_series`, :func:`record_case`, :func:`update_case`,
  :func:`list_cases` and the case life cycle (:data:`ALLOWED_TRANSITIONS`).
- :mod:`~fairness_registry.crud.quality`: :func:`record_quality` (route, reasons, scores and one
  ``case_structure`` row per structure, with the first review state) and :func:`set_review_state`
  (:data:`INITIAL_REVIEW_STATES`, :data:`REVIEW_TRANSITIONS`).
- :mod:`~fairness_registry.crud.structures`: :func:`record_truth` (true Dice, NSD, HD95 of a structure).
- :mod:`~fairness_registry.crud.worklist`: :func:`list_worklist`, :func:`worklist_item`,
  :func:`worklist_counts`; items carry no patient identifier.
- :mod:`~fairness_registry.crud.common`: :class:`NotFoundError`, :class:`ReviewTransitionError`,
  :data:`MAX_PAGE`.
"""

from __future__ import annotations

from fairness_registry.crud.cases import ALLOWED_TRANSITIONS, list_cases, record_case, record_series, update_case
from fairness_registry.crud.common import MAX_PAGE, NotFoundError, ReviewTransitionError
from fairness_registry.crud.quality import (
    INITIAL_REVIEW_STATES,
    QUALITY_STATUSES,
    REVIEW_TRANSITIONS,
    record_quality,
    set_review_state,
)
from fairness_registry.crud.structures import record_truth
from fairness_registry.crud.studies import (
    EHR_WINS,
    ethnic_group_texts,
    record_acquisition,
    record_study,
    remap_ethnic_groups,
)
from fairness_registry.crud.worklist import list_worklist, worklist_counts, worklist_item

__all__ = [
    "ALLOWED_TRANSITIONS",
    "EHR_WINS",
    "INITIAL_REVIEW_STATES",
    "MAX_PAGE",
    "QUALITY_STATUSES",
    "REVIEW_TRANSITIONS",
    "NotFoundError",
    "ReviewTransitionError",
    "ethnic_group_texts",
    "list_cases",
    "list_worklist",
    "record_acquisition",
    "record_case",
    "record_quality",
    "record_series",
    "record_study",
    "record_truth",
    "remap_ethnic_groups",
    "set_review_state",
    "update_case",
    "worklist_counts",
    "worklist_item",
]
