"""Create, update and list registry rows. Every function takes the session first, then keywords only.

Each function commits its own change and returns the refreshed table object; callers that serve an API
convert it to a public model (``CasePublic.model_validate(case)``). Patient identifiers enter only
:func:`record_study`, which turns the patient ID into a pseudonym and the birth date into an age, and
stores neither; nothing here logs them.

Quality and review
------------------
:func:`record_quality` stores what the quality estimators said about a case (``quality.types.CaseQuality``)
with the first review state, which follows the route: ``not_needed`` for PASS; ``held``, ``forwarded`` or
``sent_for_review`` for REVIEW (:data:`INITIAL_REVIEW_STATES`). Radiologists then move it on with
:func:`set_review_state` (:data:`REVIEW_TRANSITIONS`); :func:`list_worklist` and :func:`worklist_counts` serve
their worklist, whose items (:class:`~fairness_registry.models.WorklistItem`) carry no patient identifier.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from datetime import date, datetime

from sqlalchemy import func, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import Select

from fairness_registry.demographics import Demographics, bmi, bmi_band, parse_dicom_date
from fairness_registry.models import (
    LO_LENGTH,
    UID_LENGTH,
    Case,
    CaseStatus,
    ReviewState,
    Series,
    Study,
    Subject,
    WorklistItem,
    WorklistStructure,
    utcnow,
)
from fairness_registry.pseudonym import pseudonymise
from quality.types import CaseQuality, Route, SamplingMethod, StructureQuality

__all__ = [
    "ALLOWED_TRANSITIONS",
    "INITIAL_REVIEW_STATES",
    "REVIEW_TRANSITIONS",
    "NotFoundError",
    "ReviewTransitionError",
    "list_cases",
    "list_worklist",
    "record_case",
    "record_quality",
    "record_series",
    "record_study",
    "set_review_state",
    "update_case",
    "worklist_counts",
    "worklist_item",
]

logger = logging.getLogger(__name__)

#: Status changes :func:`update_case` accepts (``done`` and ``failed`` are final: re-run with a new case).
ALLOWED_TRANSITIONS: Mapping[CaseStatus, frozenset[CaseStatus]] = {
    CaseStatus.QUEUED: frozenset({CaseStatus.RUNNING, CaseStatus.FAILED}),
    CaseStatus.RUNNING: frozenset({CaseStatus.DONE, CaseStatus.FAILED}),
    CaseStatus.DONE: frozenset(),
    CaseStatus.FAILED: frozenset(),
}
#: Review states :func:`record_quality` may set first, by route.
INITIAL_REVIEW_STATES: Mapping[Route, frozenset[ReviewState]] = {
    Route.PASS: frozenset({ReviewState.NOT_NEEDED}),
    Route.REVIEW: frozenset({ReviewState.HELD, ReviewState.FORWARDED, ReviewState.SENT_FOR_REVIEW}),
}
#: Review-state changes :func:`set_review_state` accepts. A held case may be released unreviewed (to PACS
#: marked as needing review, or to the review destination); ``not_needed`` and ``reviewed`` are final.
REVIEW_TRANSITIONS: Mapping[ReviewState, frozenset[ReviewState]] = {
    ReviewState.NOT_NEEDED: frozenset(),
    ReviewState.HELD: frozenset({ReviewState.FORWARDED, ReviewState.SENT_FOR_REVIEW, ReviewState.REVIEWED}),
    ReviewState.FORWARDED: frozenset({ReviewState.REVIEWED}),
    ReviewState.SENT_FOR_REVIEW: frozenset({ReviewState.REVIEWED}),
    ReviewState.REVIEWED: frozenset(),
}
#: Case statuses in which :func:`record_quality` accepts quality (a queued case has no segmentation yet, a
#: failed one no outputs to review).
QUALITY_STATUSES: frozenset[CaseStatus] = frozenset({CaseStatus.RUNNING, CaseStatus.DONE})
#: Largest page :func:`list_cases` and :func:`list_worklist` return.
MAX_PAGE = 1000

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class NotFoundError(LookupError):
    """A row named by its id is not in the registry."""


class ReviewTransitionError(ValueError):
    """A review state change the case's current state does not allow (an API answers 409 Conflict).

    Attributes
    ----------
    case_id : int
    current : ReviewState or None
        The case's state; ``None`` when its quality is not recorded yet.
    requested : ReviewState
    allowed : frozenset of ReviewState
        What ``current`` may change to.
    """

    def __init__(
        self,
        message: str,
        *,
        case_id: int,
        current: ReviewState | None,
        requested: ReviewState,
        allowed: frozenset[ReviewState],
    ) -> None:
        super().__init__(message)
        self.case_id = case_id
        self.current = current
        self.requested = requested
        self.allowed = allowed


def _check_uid(name: str, value: str) -> str:
    """A DICOM UID argument, checked (digits and dots, at most 64 characters)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str, got {type(value).__name__}")
    uid = value.strip()
    if not _UID_RE.match(uid) or len(uid) > UID_LENGTH:
        raise ValueError(f"{name} {value!r} is not a DICOM UID (digits separated by dots, at most {UID_LENGTH})")
    return uid


def _check_name(name: str, value: str, max_length: int) -> str:
    """A non-empty identifier of ours (model name, version), at most ``max_length`` characters."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str, got {type(value).__name__}")
    if not value.strip() or len(value) > max_length:
        raise ValueError(f"{name} {value!r} must be non-empty text of at most {max_length} characters")
    return value


def _header_text(value: object, max_length: int = LO_LENGTH) -> str:
    """A descriptive header value (institution, modality, ...) as stripped text cut to the column length.

    Vendors do exceed the DICOM length limits; a long value is cut rather than refused.
    """
    if value is None:
        return ""
    text = value.decode("ascii", errors="replace") if isinstance(value, bytes) else str(value)
    return text.strip()[:max_length]


def _check_timings(timings: Mapping[str, float]) -> dict[str, float]:
    """Stage -> seconds, each a finite number >= 0."""
    checked: dict[str, float] = {}
    for stage, seconds in timings.items():
        if not isinstance(stage, str) or not stage:
            raise ValueError(f"timing stage {stage!r} must be a non-empty str")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
            raise ValueError(f"timing for stage {stage!r} is {seconds!r}; expected a finite number of seconds")
        if seconds < 0:
            raise ValueError(f"timing for stage {stage!r} is {seconds!r} s; expected >= 0")
        checked[stage] = float(seconds)
    return checked


def _apply_demographics(subject: Subject, demographics: Demographics, *, fill_only: bool) -> None:
    """Copy the known values of ``demographics`` onto ``subject``.

    Unknown values (``None`` / ``"unknown"``) never overwrite known ones. With ``fill_only`` (the study is
    older than one already recorded) only fields still unknown on the subject are filled.
    """
    for field, value in (
        ("sex", demographics.sex.value),
        ("age_years", demographics.age_years),
        ("age_band", demographics.age_band.value),
        ("ethnic_group", demographics.ethnic_group.value),
        ("height_m", demographics.height_m),
        ("weight_kg", demographics.weight_kg),
    ):
        if value is None or value == "unknown":
            continue
        current = getattr(subject, field)
        if fill_only and current is not None and current != "unknown":
            continue
        setattr(subject, field, value)
    subject.bmi = bmi(subject.weight_kg, subject.height_m)
    subject.bmi_band = bmi_band(subject.bmi).value
    subject.updated_at = utcnow()


def _insert_subject_if_new(session: Session, pseudonym: str, demographics: Demographics) -> bool:
    """Insert the subject row unless it exists (safe against a concurrent insert); True when inserted."""
    values = {
        "pseudonym": pseudonym,
        "sex": demographics.sex.value,
        "age_years": demographics.age_years,
        "age_band": demographics.age_band.value,
        "ethnic_group": demographics.ethnic_group.value,
        "height_m": demographics.height_m,
        "weight_kg": demographics.weight_kg,
        "bmi": demographics.bmi,
        "bmi_band": demographics.bmi_band.value,
        "updated_at": utcnow(),
    }
    dialect = session.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    statement = (
        insert(Subject)
        .values(values)
        .on_conflict_do_nothing(index_elements=["pseudonym"])
        .returning(col(Subject.pseudonym))
    )
    # RETURNING, not rowcount: psycopg reports rowcount -1 for this statement.
    return session.exec(statement).first() is not None


def record_study(
    session: Session,
    *,
    study_uid: str,
    secret: str | bytes,
    patient_id: str | None = None,
    study_date: date | str | None = None,
    patient_sex: object = None,
    patient_age: object = None,
    patient_birth_date: object = None,
    patient_weight: object = None,
    patient_size: object = None,
    ethnic_group: object = None,
    institution: object = None,
    manufacturer: object = None,
    header: object = None,
    received_at: datetime | None = None,
) -> Study:
    """Record a received study and the normalised demographics of its patient.

    The patient ID becomes a pseudonym (HMAC-SHA256 with ``secret``) and the birth date only serves to
    compute the age when PatientAge is missing; neither is stored. Recording the same study again (a PACS
    re-send) updates it instead of adding a row.

    The subject's demographics follow the most recent study (by StudyDate; a study without a date counts
    as the most recent): its known values replace the stored ones, and its unknown values keep them. An
    older study only fills values still unknown.

    Parameters
    ----------
    session : sqlmodel.Session
    study_uid : str
        StudyInstanceUID.
    secret : str or bytes
        The pseudonymisation secret, at least 32 bytes.
    patient_id : str
        PatientID; hashed, never stored or logged. Required, here or in ``header``.
    study_date : datetime.date, str or None
        StudyDate (DICOM DA text accepted; unparseable text is stored as unknown).
    patient_sex, patient_age, patient_birth_date, patient_weight, patient_size, ethnic_group : object
        Raw header values (PatientSex, PatientAge, PatientBirthDate, PatientWeight in kg, PatientSize in m,
        EthnicGroup), normalised by :class:`fairness_registry.demographics.Demographics`.
    institution, manufacturer : object
        InstitutionName and Manufacturer (site and vendor, not patient data), cut to 64 characters.
    header : object, optional
        A dataset of the study (e.g. a ``pydicom.Dataset`` of one of its instances): every argument above
        left at ``None`` is read from it by DICOM keyword (PatientID, StudyDate, PatientSex, ...,
        InstitutionName, Manufacturer). Explicit arguments win.
    received_at : datetime.datetime, optional
        Timezone-aware arrival time; now when omitted.

    Returns
    -------
    Study

    Raises
    ------
    ValueError
        When the UID is malformed, the secret too short, the patient ID empty, or the study is already
        recorded for another pseudonym.
    """
    uid = _check_uid("study_uid", study_uid)

    def given_or_read(value: object, keyword: str) -> object:
        return getattr(header, keyword, None) if value is None else value

    raw_id = given_or_read(patient_id, "PatientID")
    if not isinstance(raw_id, str):
        raise ValueError(f"study {uid}: patient_id is missing; pass patient_id=... or a header that has PatientID")
    pseudonym = pseudonymise(raw_id, secret)
    when = parse_dicom_date(given_or_read(study_date, "StudyDate"))
    demographics = Demographics.from_headers(
        patient_sex=given_or_read(patient_sex, "PatientSex"),
        patient_age=given_or_read(patient_age, "PatientAge"),
        patient_birth_date=given_or_read(patient_birth_date, "PatientBirthDate"),
        study_date=when,
        patient_weight=given_or_read(patient_weight, "PatientWeight"),
        patient_size=given_or_read(patient_size, "PatientSize"),
        ethnic_group=given_or_read(ethnic_group, "EthnicGroup"),
    )
    institution = given_or_read(institution, "InstitutionName")
    manufacturer = given_or_read(manufacturer, "Manufacturer")
    study = session.exec(select(Study).where(Study.study_uid == uid)).first()
    if study is not None and study.pseudonym != pseudonym:
        raise ValueError(
            f"study {uid} is already recorded for another patient; a StudyInstanceUID belongs to one patient "
            "(check the PACS for a merged or re-assigned study)"
        )
    latest = session.exec(
        select(func.max(Study.study_date)).where(Study.pseudonym == pseudonym, Study.study_uid != uid)
    ).one()
    if not _insert_subject_if_new(session, pseudonym, demographics):
        subject = session.get(Subject, pseudonym, populate_existing=True)
        if subject is None:  # deleted between the insert and the read (erasure request)
            raise NotFoundError(f"the subject of study {uid} was deleted while it was being recorded")
        is_newest = when is None or latest is None or when >= latest
        _apply_demographics(subject, demographics, fill_only=not is_newest)
        session.add(subject)
    if study is None:
        study = Study(study_uid=uid, pseudonym=pseudonym, received_at=received_at or utcnow())
        logger.info("study %s recorded", uid)
    else:
        logger.info("study %s recorded again; updated", uid)
    study.study_date = when
    study.institution = _header_text(institution)
    study.manufacturer = _header_text(manufacturer)
    session.add(study)
    session.commit()
    session.refresh(study)
    return study


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


def _check_review_state(state: ReviewState | str) -> ReviewState:
    """``state`` as a :class:`ReviewState`; ``ValueError`` lists the accepted values."""
    try:
        return ReviewState(state)
    except ValueError:
        accepted = ", ".join(s.value for s in ReviewState)
        raise ValueError(f"review state {state!r} is not known; accepted: {accepted}") from None


def _names(states: frozenset[ReviewState], empty: str) -> str:
    """State values in their declaration order, comma-separated (``empty`` when there are none)."""
    return ", ".join(s.value for s in ReviewState if s in states) or empty


def _score(structure: str, field: str, value: object) -> float | None:
    """A score as a plain float, ``None`` when missing or not finite (JSON has no NaN or infinity)."""
    if value is None:
        return None
    if isinstance(value, bool | str | bytes):
        raise TypeError(f"structure {structure!r}: {field} must be a number, got {type(value).__name__} {value!r}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(
            f"structure {structure!r}: {field} must be a number, got {type(value).__name__} {value!r}"
        ) from None
    return number if math.isfinite(number) else None


def _reasons(where: str, reasons: object) -> list[str]:
    """A sequence of reason texts as a list of str."""
    if isinstance(reasons, str) or not isinstance(reasons, tuple | list):
        raise TypeError(f"{where} reasons must be a tuple of str, got {type(reasons).__name__}")
    for reason in reasons:
        if not isinstance(reason, str):
            raise TypeError(f"{where} reasons must be str, got {type(reason).__name__} {reason!r}")
    return list(reasons)


def _structure_scores(structure: StructureQuality) -> dict[str, object]:
    """One structure's entry of ``Case.quality`` (the keys of :data:`fairness_registry.models.QUALITY_KEYS`)."""
    name = structure.name
    uncertainty, rca, prediction = structure.uncertainty, structure.rca, structure.prediction
    return {
        "label": int(structure.label),
        "volume": _score(name, "volume", uncertainty.volume),
        "mean_entropy": _score(name, "mean_entropy", uncertainty.mean_entropy),
        "mean_mutual_information": _score(name, "mean_mutual_information", uncertainty.mean_mutual_information),
        "sample_dice": _score(name, "sample_dice", uncertainty.sample_dice),
        "volume_cv": _score(name, "volume_cv", uncertainty.volume_cv),
        "rca_max_dice": None if rca is None else _score(name, "rca.max_dice", rca.max_dice),
        "rca_mean_dice": None if rca is None else _score(name, "rca.mean_dice", rca.mean_dice),
        "rca_hd95_mm": None if rca is None else _score(name, "rca.hd95_mm", rca.hd95_mm),
        "predicted_dice": None if prediction is None else _score(name, "prediction.dice", prediction.dice),
        "predicted_low": None if prediction is None else _score(name, "prediction.low", prediction.low),
        "predicted_high": None if prediction is None else _score(name, "prediction.high", prediction.high),
        "coverage": None if prediction is None else _score(name, "prediction.coverage", prediction.coverage),
        "route": Route(structure.route).value,
        "reasons": _reasons(f"structure {name!r}", structure.reasons),
    }


def _quality_scores(quality: CaseQuality) -> dict[str, dict[str, object]]:
    """Structure name -> scores, in label order; names must be unique and non-empty."""
    scores: dict[str, dict[str, object]] = {}
    for structure in sorted(quality.structures, key=lambda s: s.label):
        if not isinstance(structure, StructureQuality):
            raise TypeError(f"quality.structures must hold StructureQuality, got {type(structure).__name__}")
        if not isinstance(structure.name, str) or not structure.name.strip():
            raise ValueError(f"structure with label {structure.label} has no name; the quality is stored by name")
        if structure.name in scores:
            raise ValueError(f"structure name {structure.name!r} appears twice in the quality; names must be unique")
        scores[structure.name] = _structure_scores(structure)
    return scores


def record_quality(
    session: Session,
    *,
    case_id: int,
    quality: CaseQuality,
    review_state: ReviewState | str | None = None,
) -> Case:
    """Store the quality estimates and route of a case, and its first review state.

    Parameters
    ----------
    session : sqlmodel.Session
    case_id : int
        A case that is ``running`` or ``done`` (:data:`QUALITY_STATUSES`).
    quality : quality.types.CaseQuality
        The gate's route and reasons, each structure's scores and the sampling behind them. Structure names
        must be unique (they key ``Case.quality``); NaN and infinite scores are stored as ``null``.
    review_state : ReviewState or str, optional
        What was done with the outputs (:data:`INITIAL_REVIEW_STATES`): ``not_needed`` for a PASS case (the
        default there); ``held``, ``forwarded`` or ``sent_for_review`` for a REVIEW case (required there).

    Returns
    -------
    Case

    Raises
    ------
    NotFoundError
        When ``case_id`` is not in the registry.
    TypeError
        When ``quality`` is not a ``CaseQuality`` (or holds a non-number score), or a REVIEW case comes
        without ``review_state``.
    ValueError
        For an unknown review state or one that does not fit the route, duplicate structure names, a bad
        number of samples, or a case that is queued or failed.
    ReviewTransitionError
        When the case already has a different route or review state (quality is recorded once per run;
        recording the same route and state again replaces the scores).
    """
    if not isinstance(quality, CaseQuality):
        raise TypeError(f"quality must be a quality.types.CaseQuality, got {type(quality).__name__}")
    route = Route(quality.route)
    initial = INITIAL_REVIEW_STATES[route]
    if review_state is None:
        if route is not Route.PASS:
            raise TypeError(
                f"case {case_id}: a {route.value} case needs review_state, one of "
                f"{_names(initial, '')} (what was done with its outputs)"
            )
        state = ReviewState.NOT_NEEDED
    else:
        state = _check_review_state(review_state)
    if state not in initial:
        raise ValueError(
            f"case {case_id}: review state {state.value!r} does not fit route {route.value}; "
            f"accepted for {route.value}: {_names(initial, '')}"
        )
    method = SamplingMethod(quality.method)
    samples = quality.samples
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"case {case_id}: quality.samples {samples!r} must be an int >= 1")
    reasons = _reasons("case", quality.reasons)
    scores = _quality_scores(quality)
    case = session.get(Case, case_id)
    if case is None:
        raise NotFoundError(f"case_id {case_id} is not in the registry")
    if case.status not in QUALITY_STATUSES:
        raise ValueError(
            f"case {case_id} is {case.status.value}; quality is recorded for a case that is "
            f"{' or '.join(sorted(s.value for s in QUALITY_STATUSES))}"
        )
    if case.review_state is not None and (case.route, case.review_state) != (route, state):
        raise ReviewTransitionError(
            f"case {case_id} already has route {case.route} and review state {case.review_state.value!r}; "
            f"quality is recorded once per run (record a new run to estimate it again), and the review state "
            f"changes through set_review_state",
            case_id=case_id,
            current=case.review_state,
            requested=state,
            allowed=REVIEW_TRANSITIONS[case.review_state],
        )
    case.route = route
    case.review_state = state
    case.review_reasons = reasons
    case.quality = scores
    case.sampling = {"method": method.value, "samples": samples}
    session.add(case)
    session.commit()
    session.refresh(case)
    logger.info("case %d quality recorded: route %s, review state %s", case_id, route.value, state.value)
    return case


def set_review_state(session: Session, *, case_id: int, state: ReviewState | str) -> Case:
    """Move a case along the review states (a radiologist closing it, outputs released).

    Setting the state the case already has changes nothing (a repeated click). ``reviewed`` records
    ``reviewed_at``. Two concurrent changes cannot both apply: the update only lands while the state is
    still the one read, and the loser gets :class:`ReviewTransitionError`.

    Parameters
    ----------
    session : sqlmodel.Session
    case_id : int
    state : ReviewState or str
        The new state; must be allowed from the current one (:data:`REVIEW_TRANSITIONS`).

    Returns
    -------
    Case

    Raises
    ------
    ValueError
        When ``state`` is not a review state (the message lists the accepted ones).
    NotFoundError
        When ``case_id`` is not in the registry.
    ReviewTransitionError
        When the case has no review state yet (quality not recorded) or the change is not allowed from
        its current state (the message lists the allowed ones).
    """
    new = _check_review_state(state)
    case = session.get(Case, case_id, populate_existing=True)
    if case is None:
        raise NotFoundError(f"case_id {case_id} is not in the registry")
    current = case.review_state
    if current is None:
        raise ReviewTransitionError(
            f"case {case_id} has no review state yet: its quality is not recorded (record_quality sets the "
            "first state)",
            case_id=case_id,
            current=None,
            requested=new,
            allowed=frozenset(),
        )
    if new is current:
        return case
    allowed = REVIEW_TRANSITIONS[current]
    if new not in allowed:
        raise ReviewTransitionError(
            f"case {case_id} cannot go from review state {current.value!r} to {new.value!r}; allowed: "
            f"{_names(allowed, 'nothing (final)')}",
            case_id=case_id,
            current=current,
            requested=new,
            allowed=allowed,
        )
    values: dict[str, object] = {"review_state": new}
    if new is ReviewState.REVIEWED:
        values["reviewed_at"] = utcnow()
    statement = (
        update(Case)
        .where(col(Case.id) == case_id, col(Case.review_state) == current)
        .values(**values)
        .returning(col(Case.id))
    )
    # RETURNING, not rowcount (see _insert_subject_if_new).
    changed = session.exec(statement).first() is not None
    session.commit()
    if not changed:  # another session changed it between the read and the update
        return set_review_state(session, case_id=case_id, state=new)
    session.refresh(case)
    logger.info("case %d review state %s -> %s", case_id, current.value, new.value)
    return case


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
