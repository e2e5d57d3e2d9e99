"""Series and cases: record a series, queue a run of a model on it, move the run along its life cycle, list runs."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from sqlmodel import Session, col, func, select

from fairness_registry.crud.common import (
    MAX_PAGE,
    NotFoundError,
    _check_name,
    _check_timings,
    _check_uid,
    _header_text,
)
from fairness_registry.models import Case, CaseStatus, Series, Study, utcnow

__all__ = ["ALLOWED_TRANSITIONS", "list_cases", "record_case", "record_series", "update_case"]

logger = logging.getLogger(__name__)

#: Status changes :func:`update_case` accepts (``done`` and ``failed`` are final: re-run with a new case).
ALLOWED_TRANSITIONS: Mapping[CaseStatus, frozenset[CaseStatus]] = {
    CaseStatus.QUEUED: frozenset({CaseStatus.RUNNING, CaseStatus.FAILED}),
    CaseStatus.RUNNING: frozenset({CaseStatus.DONE, CaseStatus.FAILED}),
    CaseStatus.DONE: frozenset(),
    CaseStatus.FAILED: frozenset(),
}


def record_series(
    session: Session,
    *,
    study_id: int,
    series_uid: str,
    modality: object = None,
    body_part: object = None,
    description: object = None,
    n_instances: int = 0,
    selected_model: str | None = None,
    selection_reason: str | None = None,
) -> Series:
    """Record a series of a recorded study, or update it when its UID is already there.

    Parameters
    ----------
    session : sqlmodel.Session
    study_id : int
        ``Study.id`` returned by :func:`record_study`.
    series_uid : str
        SeriesInstanceUID.
    modality, body_part, description : object
        Modality, BodyPartExamined and SeriesDescription header values (cut to the column length).
    n_instances : int
        Number of instances received, >= 0.
    selected_model : str, optional
        The model the selection rules chose; ``None`` when none applies.
    selection_reason : str, optional
        Why (or why not), in words.

    Returns
    -------
    Series

    Raises
    ------
    NotFoundError
        When ``study_id`` is not in the registry.
    ValueError
        For a malformed UID, a negative count, or a series UID already recorded under another study.
    """
    uid = _check_uid("series_uid", series_uid)
    if isinstance(n_instances, bool) or not isinstance(n_instances, int) or n_instances < 0:
        raise ValueError(f"n_instances {n_instances!r} must be an int >= 0")
    if selected_model is not None:
        _check_name("selected_model", selected_model, 64)
    if session.get(Study, study_id) is None:
        raise NotFoundError(f"study_id {study_id} is not in the registry; record the study first (record_study)")
    series = session.exec(select(Series).where(Series.series_uid == uid)).first()
    if series is None:
        series = Series(study_id=study_id, series_uid=uid)
    elif series.study_id != study_id:
        raise ValueError(f"series {uid} is already recorded under study_id {series.study_id}, not {study_id}")
    series.modality = _header_text(modality, 16)
    series.body_part = _header_text(body_part)
    series.description = _header_text(description)
    series.n_instances = n_instances
    series.selected_model = selected_model
    series.selection_reason = selection_reason
    session.add(series)
    session.commit()
    session.refresh(series)
    logger.info("series %s recorded (model %s)", uid, selected_model)
    return series


def record_case(
    session: Session,
    *,
    series_id: int,
    model: str,
    model_version: str,
    run: int | None = None,
) -> Case:
    """Queue a run of ``model`` on a series.

    Parameters
    ----------
    session : sqlmodel.Session
    series_id : int
        ``Series.id`` returned by :func:`record_series`.
    model, model_version : str
        Model name (at most 64 characters) and version (at most 32).
    run : int, optional
        Run number, >= 1; by default one more than the highest run of this model on this series (1 for the
        first). Two workers queuing the same run at once: the second gets ``sqlalchemy.exc.IntegrityError``
        (constraint ``uq_case_series_model_run``) and may retry.

    Returns
    -------
    Case
        Status ``queued``.

    Raises
    ------
    NotFoundError
        When ``series_id`` is not in the registry.
    sqlalchemy.exc.IntegrityError
        When (series, model, run) is already recorded; the session is rolled back.
    """
    _check_name("model", model, 64)
    _check_name("model_version", model_version, 32)
    if run is not None and (isinstance(run, bool) or not isinstance(run, int) or run < 1):
        raise ValueError(f"run {run!r} must be an int >= 1 (or None for the next run)")
    if session.get(Series, series_id) is None:
        raise NotFoundError(f"series_id {series_id} is not in the registry; record the series first")
    if run is None:
        highest = session.exec(select(func.max(Case.run)).where(Case.series_id == series_id, Case.model == model)).one()
        run = (highest or 0) + 1
    case = Case(series_id=series_id, model=model, model_version=model_version, run=run)
    session.add(case)
    try:
        session.commit()
    except Exception:
        session.rollback()
        raise
    session.refresh(case)
    logger.info("case %s queued: model %s %s run %d on series_id %d", case.id, model, model_version, run, series_id)
    return case


def update_case(
    session: Session,
    *,
    case_id: int,
    status: CaseStatus | str | None = None,
    failure_reason: str | None = None,
    timings: Mapping[str, float] | None = None,
    seg_sop_uid: str | None = None,
    sr_sop_uid: str | None = None,
) -> Case:
    """Move a case along its life cycle and record what it produced.

    Parameters
    ----------
    session : sqlmodel.Session
    case_id : int
    status : CaseStatus or str, optional
        New status; must be allowed from the current one (:data:`ALLOWED_TRANSITIONS`). ``done`` and
        ``failed`` set ``finished_at``.
    failure_reason : str, optional
        Required with ``failed``, refused otherwise.
    timings : mapping of str to float, optional
        Stage -> seconds, merged into the stored timings (a stage given again is replaced).
    seg_sop_uid, sr_sop_uid : str, optional
        SOPInstanceUIDs of the SEG and SR written for the case.

    Returns
    -------
    Case

    Raises
    ------
    NotFoundError
        When ``case_id`` is not in the registry.
    ValueError
        For an unknown status, a transition not allowed, a missing or unexpected failure reason, bad
        timings or malformed UIDs.
    """
    new_status = None if status is None else _check_status(status)
    checked_timings = None if timings is None else _check_timings(timings)
    seg_uid = None if seg_sop_uid is None else _check_uid("seg_sop_uid", seg_sop_uid)
    sr_uid = None if sr_sop_uid is None else _check_uid("sr_sop_uid", sr_sop_uid)
    if new_status is CaseStatus.FAILED and not (failure_reason and failure_reason.strip()):
        raise ValueError("status 'failed' needs a failure_reason saying what went wrong")
    if failure_reason is not None and new_status is not CaseStatus.FAILED:
        raise ValueError(f"failure_reason is only recorded with status 'failed', not with status {status!r}")
    case = session.get(Case, case_id)
    if case is None:
        raise NotFoundError(f"case_id {case_id} is not in the registry")
    if new_status is not None and new_status is not case.status:
        allowed = ALLOWED_TRANSITIONS[case.status]
        if new_status not in allowed:
            names = ", ".join(sorted(s.value for s in allowed)) or "nothing (final; record a new run instead)"
            raise ValueError(
                f"case {case_id} cannot go from {case.status.value!r} to {new_status.value!r}; allowed: {names}"
            )
        case.status = new_status
        if new_status in (CaseStatus.DONE, CaseStatus.FAILED):
            case.finished_at = utcnow()
        logger.info("case %d is %s", case_id, new_status.value)
    if failure_reason is not None:
        case.failure_reason = failure_reason
    if checked_timings:
        case.timings = {**case.timings, **checked_timings}
    if seg_uid is not None:
        case.seg_sop_uid = seg_uid
    if sr_uid is not None:
        case.sr_sop_uid = sr_uid
    session.add(case)
    session.commit()
    session.refresh(case)
    return case


def _check_status(status: CaseStatus | str) -> CaseStatus:
    """``status`` as a :class:`CaseStatus`; ``ValueError`` lists the accepted values."""
    try:
        return CaseStatus(status)
    except ValueError:
        accepted = ", ".join(s.value for s in CaseStatus)
        raise ValueError(f"status {status!r} is not a case status; accepted: {accepted}") from None


def list_cases(
    session: Session,
    *,
    status: CaseStatus | str | None = None,
    model: str | None = None,
    series_id: int | None = None,
    offset: int = 0,
    limit: int = 100,
) -> list[Case]:
    """Cases matching every filter given, oldest first.

    Parameters
    ----------
    session : sqlmodel.Session
    status : CaseStatus or str, optional
    model : str, optional
    series_id : int, optional
    offset : int
        Rows to skip, >= 0.
    limit : int
        Rows to return, 1 to :data:`MAX_PAGE`.

    Returns
    -------
    list of Case
    """
    if offset < 0:
        raise ValueError(f"offset {offset} must be >= 0")
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit {limit} must be between 1 and {MAX_PAGE}")
    statement = select(Case)
    if status is not None:
        statement = statement.where(Case.status == _check_status(status))
    if model is not None:
        statement = statement.where(Case.model == model)
    if series_id is not None:
        statement = statement.where(Case.series_id == series_id)
    statement = statement.order_by(col(Case.id)).offset(offset).limit(limit)
    return list(session.exec(statement).all())
