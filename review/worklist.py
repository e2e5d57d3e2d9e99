"""The radiologists' worklist: REVIEW cases from the registry, most doubtful first, filtered and counted.

"Most doubtful" is the lowest predicted lower bound (``predicted_low``) over a case's structures; a case with
no estimate at all (no calibration, RCA failed) is as doubtful as it gets and comes first; ties go to the
oldest case. Reasons are grouped into kinds (:func:`reason_kind`: "predicted Dice", "RCA estimate", "input
spacing", ...) for the filter.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from fairness_registry import crud
from fairness_registry.db import get_engine
from fairness_registry.models import ReviewState, Study, WorklistItem, WorklistStructure, utcnow
from review.deps import Worklist

__all__ = [
    "OPEN_STATES",
    "RegistryWorklist",
    "WorklistEntry",
    "WorklistPage",
    "build_page",
    "doubt",
    "reason_kind",
]

#: Review states still waiting for a radiologist.
OPEN_STATES = (ReviewState.HELD, ReviewState.FORWARDED, ReviewState.SENT_FOR_REVIEW)
#: Most cases one page shows.
MAX_ITEMS = crud.MAX_PAGE


class RegistryWorklist:
    """A worklist read from and written to the registry, one short session per call.

    Parameters
    ----------
    session_factory : callable returning sqlmodel.Session
        Opens a session on the registry, e.g. ``lambda: Session(get_engine(url))`` (:meth:`from_url`).
    """

    def __init__(self, session_factory: Callable[[], Session]) -> None:
        self._session = session_factory

    @classmethod
    def from_url(cls, url: str) -> RegistryWorklist:
        """The worklist of the registry at ``url`` (on the process-wide engine of that URL)."""
        engine = get_engine(url)
        return cls(lambda: Session(engine))

    def items(self, *, include_reviewed: bool = False, limit: int = 100) -> list[WorklistItem]:
        """See :func:`fairness_registry.crud.list_worklist`."""
        with self._session() as session:
            return crud.list_worklist(session, include_reviewed=include_reviewed, limit=limit)

    def counts(self) -> dict[ReviewState, int]:
        """See :func:`fairness_registry.crud.worklist_counts`."""
        with self._session() as session:
            return crud.worklist_counts(session)

    def set_state(self, case_id: int, state: str) -> WorklistItem:
        """See :func:`fairness_registry.crud.set_review_state`."""
        with self._session() as session:
            crud.set_review_state(session, case_id=case_id, state=state)
            return crud.worklist_item(session, case_id=case_id)

    def study_dates(self, study_uids: Sequence[str]) -> dict[str, date | None]:
        """Study date by study UID (the only date of the study the worklist shows)."""
        if not study_uids:
            return {}
        with self._session() as session:
            rows = session.exec(select(Study).where(col(Study.study_uid).in_(list(study_uids)))).all()
            return {study.study_uid: study.study_date for study in rows}


def reason_kind(reason: str) -> str:
    """The kind of a gate reason, without structure and numbers: ``"liver: predicted Dice 0.62 < 0.75"`` ->
    ``"predicted Dice"``, ``"input: spacing 3.0 mm ..."`` -> ``"input spacing"``."""
    head, sep, rest = reason.partition(": ")
    if not sep or " " in head:
        head, rest = "", reason
    kind = re.split(r"[\d<>(=]", rest, maxsplit=1)[0].strip(" ,;:.-")
    kind = kind or rest.strip()
    return f"input {kind}" if head == "input" else kind


def doubt(structures: Sequence[WorklistStructure]) -> float | None:
    """The lowest predicted lower bound of Dice over the structures (``None`` when none is estimated)."""
    lows = [s.predicted_low for s in structures if s.predicted_low is not None]
    return min(lows) if lows else None


class WorklistEntry(BaseModel):
    """One case as the worklist shows it: enough to find the study in PACS, nothing about the patient."""

    case_id: int
    study_uid: str = Field(description="for PACS-side tools to match the study (not shown on the page)")
    study_date: date | None
    modality: str
    accession: str | None = Field(None, description="only when the node's settings allow it")
    model: str
    model_version: str
    review_state: ReviewState
    reasons: list[str]
    reason_kinds: list[str]
    structures: list[WorklistStructure]
    lowest_predicted_low: float | None = Field(description="the sort key: most doubtful first")
    created_at: datetime
    age_hours: float = Field(description="hours since the case was made")
    reviewed_at: datetime | None = None


class WorklistPage(BaseModel):
    """The worklist after filters, with what the filters can choose from and the counts."""

    entries: list[WorklistEntry]
    counts: dict[str, int] = Field(description="cases per review state (all of them, before filters)")
    shown: int
    models: list[str]
    reason_kinds: dict[str, int] = Field(description="kind -> open cases with a reason of that kind")
    states: list[str]
    filters: dict[str, str | None]


def _entry(item: WorklistItem, study_date: date | None, accession: str | None, now: datetime) -> WorklistEntry:
    return WorklistEntry(
        case_id=item.case_id,
        study_uid=item.study_uid,
        study_date=study_date,
        modality=item.modality,
        accession=accession,
        model=item.model,
        model_version=item.model_version,
        review_state=item.review_state,
        reasons=item.reasons,
        reason_kinds=sorted({reason_kind(r) for r in item.reasons}),
        structures=item.structures,
        lowest_predicted_low=doubt(item.structures),
        created_at=item.created_at,
        age_hours=round((now - item.created_at).total_seconds() / 3600, 1),
        reviewed_at=item.reviewed_at,
    )


def build_page(
    worklist: Worklist,
    *,
    model: str | None = None,
    reason: str | None = None,
    state: ReviewState | Literal["all"] | None = None,
    accession_of: Callable[[str], str | None] | None = None,
    limit: int = MAX_ITEMS,
) -> WorklistPage:
    """The worklist page: open cases (or one ``state``, or ``"all"`` with reviewed ones), most doubtful first.

    Parameters
    ----------
    worklist : Worklist
    model, reason : str, optional
        Keep cases of this model / with a reason of this kind (:func:`reason_kind`).
    state : ReviewState or "all", optional
        Keep cases in this state; default: the open ones.
    accession_of : callable, optional
        Study UID -> accession number; without it no accession is shown.
    limit : int
        Most entries returned.
    """
    include_reviewed = state in ("all", ReviewState.REVIEWED)
    items = worklist.items(include_reviewed=include_reviewed, limit=MAX_ITEMS)
    dates = worklist.study_dates(sorted({i.study_uid for i in items}))
    counts: Mapping[ReviewState, int] = worklist.counts()
    now = utcnow()
    if isinstance(state, ReviewState):
        items = [i for i in items if i.review_state is state]
    models = sorted({i.model for i in items})
    kinds = Counter(k for i in items for k in {reason_kind(r) for r in i.reasons})
    if model:
        items = [i for i in items if i.model == model]
    if reason:
        items = [i for i in items if any(reason_kind(r) == reason for r in i.reasons)]
    entries = [
        _entry(i, dates.get(i.study_uid), accession_of(i.study_uid) if accession_of else None, now) for i in items
    ]
    entries.sort(
        key=lambda e: (
            e.lowest_predicted_low is not None,
            e.lowest_predicted_low or 0.0,
            e.created_at,
            e.case_id,
        )
    )
    return WorklistPage(
        entries=entries[:limit],
        counts={s.value: counts.get(s, 0) for s in ReviewState},
        shown=min(len(entries), limit),
        models=models,
        reason_kinds=dict(sorted(kinds.items())),
        states=[s.value for s in (*OPEN_STATES, ReviewState.REVIEWED)],
        filters={
            "model": model,
            "reason": reason,
            "state": state.value if isinstance(state, ReviewState) else state,
        },
    )
