"""Create, update and list registry rows. Every function takes the session first, then keywords only.

Each function commits its own change and returns the refreshed table object; callers that serve an API
convert it to a public model (``CasePublic.model_validate(case)``). Patient identifiers enter only
:func:`record_study`, which turns the patient ID into a pseudonym and the birth date into an age, and
stores neither; nothing here logs them.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from datetime import date, datetime

from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, select

from fairness_registry.demographics import Demographics, bmi, bmi_band, parse_dicom_date
from fairness_registry.models import (
    LO_LENGTH,
    UID_LENGTH,
    Case,
    CaseStatus,
    Series,
    Study,
    Subject,
    utcnow,
)
from fairness_registry.pseudonym import pseudonymise

__all__ = [
    "ALLOWED_TRANSITIONS",
    "NotFoundError",
    "list_cases",
    "record_case",
    "record_series",
    "record_study",
    "update_case",
]

logger = logging.getLogger(__name__)

#: Status changes :func:`update_case` accepts (``done`` and ``failed`` are final: re-run with a new case).
ALLOWED_TRANSITIONS: Mapping[CaseStatus, frozenset[CaseStatus]] = {
    CaseStatus.QUEUED: frozenset({CaseStatus.RUNNING, CaseStatus.FAILED}),
    CaseStatus.RUNNING: frozenset({CaseStatus.DONE, CaseStatus.FAILED}),
    CaseStatus.DONE: frozenset(),
    CaseStatus.FAILED: frozenset(),
}
#: Largest page :func:`list_cases` returns.
MAX_PAGE = 1000

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class NotFoundError(LookupError):
    """A row named by its id is not in the registry."""


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
