"""The radiologists' worklist: REVIEW cases with their structures' estimates, and counts per review state.

Items (:class:`~fairness_registry.models.WorklistItem`) name the study and series by UID and carry no
patient identifier, not even the pseudonym.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlmodel import Session, col, func, select
from sqlmodel.sql.expression import Select

from fairness_registry.crud.common import MAX_PAGE, NotFoundError
from fairness_registry.models import Case, ReviewState, Series, Study, WorklistItem, WorklistStructure
from quality.types import Route

__all__ = ["list_worklist", "worklist_counts", "worklist_item"]


def _structures(quality: Mapping[str, Mapping[str, object]] | None) -> list[WorklistStructure]:
    """``Case.quality`` as the worklist shows it."""
    if not quality:
        return []
    return [WorklistStructure.model_validate({"name": name, **scores}) for name, scores in quality.items()]


def _worklist_statement() -> Select[Case, str, str, str]:
    """Cases with the UIDs and modality of their series and study (no patient fields)."""
    return (
        select(Case, Series.series_uid, Series.modality, Study.study_uid)
        .join(Series, col(Case.series_id) == col(Series.id))
        .join(Study, col(Series.study_id) == col(Study.id))
    )


def _worklist_item(case: Case, series_uid: str, modality: str, study_uid: str) -> WorklistItem:
    """One joined row as a :class:`WorklistItem`."""
    if case.id is None or case.route is None or case.review_state is None:
        raise NotFoundError(f"case_id {case.id} has no quality recorded, so it is not on the worklist")
    return WorklistItem(
        case_id=case.id,
        study_uid=study_uid,
        series_uid=series_uid,
        modality=modality,
        model=case.model,
        model_version=case.model_version,
        run=case.run,
        status=case.status,
        route=case.route,
        reasons=list(case.review_reasons or []),
        review_state=case.review_state,
        structures=_structures(case.quality),
        created_at=case.created_at,
        reviewed_at=case.reviewed_at,
    )


def list_worklist(
    session: Session, *, include_reviewed: bool = False, offset: int = 0, limit: int = 100
) -> list[WorklistItem]:
    """REVIEW cases for the radiologists, newest first.

    Parameters
    ----------
    session : sqlmodel.Session
    include_reviewed : bool
        Also list cases already ``reviewed`` (by default only open ones: held, forwarded, sent for review).
    offset : int
        Items to skip, >= 0.
    limit : int
        Items to return, 1 to :data:`MAX_PAGE`.

    Returns
    -------
    list of WorklistItem
        Newest case first (by creation time, then id). No patient identifier, not even the pseudonym.
    """
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset {offset!r} must be an int >= 0")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit {limit!r} must be an int between 1 and {MAX_PAGE}")
    statement = _worklist_statement().where(col(Case.route) == Route.REVIEW, col(Case.review_state).is_not(None))
    if not include_reviewed:
        statement = statement.where(col(Case.review_state) != ReviewState.REVIEWED)
    statement = statement.order_by(col(Case.created_at).desc(), col(Case.id).desc()).offset(offset).limit(limit)
    return [_worklist_item(*row) for row in session.exec(statement).all()]


def worklist_item(session: Session, *, case_id: int) -> WorklistItem:
    """One case as the worklist shows it (PASS cases included, with review state ``not_needed``).

    Raises
    ------
    NotFoundError
        When ``case_id`` is not in the registry or has no quality recorded.
    """
    row = session.exec(_worklist_statement().where(col(Case.id) == case_id)).first()
    if row is None:
        raise NotFoundError(f"case_id {case_id} is not in the registry")
    return _worklist_item(*row)


def worklist_counts(session: Session) -> dict[ReviewState, int]:
    """Number of cases in each review state (every state listed, 0 included; cases without one left out)."""
    rows = session.exec(
        select(Case.review_state, func.count())
        .where(col(Case.review_state).is_not(None))
        .group_by(col(Case.review_state))
    ).all()
    counts = dict.fromkeys(ReviewState, 0)
    for state, count in rows:
        if state is not None:
            counts[ReviewState(state)] = int(count)
    return counts
