"""Studies and subjects: record a received study with the patient's demographics and its acquisition.

Patient identifiers enter only :func:`record_study`, which turns the patient ID into a pseudonym and the
birth date into an age, and stores neither; nothing here logs them.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import date, datetime

from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, func, select

from fairness_registry.acquisition import Acquisition, header_text
from fairness_registry.crud.common import NotFoundError, _check_uid, _header_text
from fairness_registry.demographics import Demographics, bmi, bmi_band, parse_dicom_date
from fairness_registry.ethnic_groups import EthnicGroupMapping
from fairness_registry.models import LO_LENGTH, Study, Subject, utcnow
from fairness_registry.pseudonym import UNLINKED, pseudonym_of

__all__ = ["EHR_WINS", "ethnic_group_texts", "record_acquisition", "record_study", "remap_ethnic_groups"]

logger = logging.getLogger(__name__)

#: Subject fields for which an EHR import wins over later headers (see :mod:`fairness_registry.ehr_import`).
EHR_WINS: frozenset[str] = frozenset({"sex", "ethnic_group"})


def _set_study_demographics(
    study: Study, demographics: Demographics, *, raw_sex: object, raw_ethnic_group: object
) -> None:
    """The study-time demographics: ``None`` where the header held nothing, ``"unknown"`` where junk."""
    study.sex = None if header_text(raw_sex) is None else demographics.sex.value
    study.age_years = demographics.age_years
    study.age_band = None if demographics.age_years is None else demographics.age_band.value
    text = header_text(raw_ethnic_group, LO_LENGTH)
    study.ethnic_group = None if text is None else str(demographics.ethnic_group)
    study.ethnic_group_text = text
    study.weight_kg = demographics.weight_kg
    study.height_m = demographics.height_m
    study.bmi = demographics.bmi
    study.bmi_band = None if demographics.bmi is None else demographics.bmi_band.value


def _set_acquisition(study: Study, acquisition: Acquisition) -> None:
    """Copy the acquisition columns onto the study row."""
    study.scanner_model = acquisition.scanner_model
    study.site = acquisition.site
    study.slice_thickness_mm = acquisition.slice_thickness_mm
    study.pixel_spacing_mm = acquisition.pixel_spacing_mm
    study.kvp = acquisition.kvp
    study.contrast = acquisition.contrast


def _apply_demographics(subject: Subject, demographics: Demographics, *, fill_only: bool) -> None:
    """Copy the known values of ``demographics`` onto ``subject``.

    Unknown values (``None`` / ``"unknown"``) never overwrite known ones. With ``fill_only`` (the study is
    older than one already recorded) only fields still unknown on the subject are filled. A subject whose
    demographics were imported from the EHR keeps its sex and ethnic group (:data:`EHR_WINS`).
    """
    for field, value in (
        ("sex", demographics.sex.value),
        ("age_years", demographics.age_years),
        ("age_band", demographics.age_band.value),
        ("ethnic_group", str(demographics.ethnic_group)),
        ("height_m", demographics.height_m),
        ("weight_kg", demographics.weight_kg),
    ):
        if value is None or value == "unknown":
            continue
        if subject.ehr_imported_at is not None and field in EHR_WINS and getattr(subject, field) != "unknown":
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
        "ethnic_group": str(demographics.ethnic_group),
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
    ethnic_groups: EthnicGroupMapping | None = None,
    site: str | None = None,
) -> Study:
    """Record a received study, the patient's demographics at that study, and how it was acquired.

    The patient ID becomes a pseudonym (HMAC-SHA256 with ``secret``) and the birth date only serves to
    compute the age when PatientAge is missing; neither is stored. Recording the same study again (a PACS
    re-send) updates it instead of adding a row.

    The study row keeps the demographics *at this study* (sex, age and band, ethnic group and its raw text,
    weight, height, BMI and WHO band) and the acquisition (:class:`~fairness_registry.acquisition.Acquisition`:
    scanner model, site, slice thickness, pixel spacing, kVp, contrast). A value the header does not hold
    stays ``NULL``; a value it holds that cannot be normalised is ``"unknown"`` (categories) or ``NULL``
    (numbers). When the subject's demographics were imported from the EHR, the EHR's sex and ethnic group
    win over the header's (:data:`EHR_WINS`; see :mod:`fairness_registry.ehr_import`).

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
        PatientID; hashed, never stored or logged. A study without one (missing or empty, here and in
        ``header``) is recorded under the :data:`~fairness_registry.pseudonym.UNLINKED` subject, with no
        demographics (the audit counts it as missing them).
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
    ethnic_groups : EthnicGroupMapping, optional
        The EthnicGroup mapping table (``RegistrySettings.mapping()``); the shipped one when omitted.
    site : str, optional
        A configured site name stored as ``study.site`` instead of InstitutionName.

    Returns
    -------
    Study

    Raises
    ------
    ValueError
        When the UID is malformed, the secret too short, or the study is already recorded for another
        pseudonym.
    """
    uid = _check_uid("study_uid", study_uid)

    def given_or_read(value: object, keyword: str) -> object:
        return getattr(header, keyword, None) if value is None else value

    pseudonym = pseudonym_of(given_or_read(patient_id, "PatientID"), secret)
    linked = pseudonym != UNLINKED
    if not linked:
        logger.warning("study %s has no PatientID: recorded under the unlinked subject, without demographics", uid)
    when = parse_dicom_date(given_or_read(study_date, "StudyDate"))

    def demographic(value: object, keyword: str) -> object:
        # an unlinked study's demographics cannot be checked against the patient's: counted as missing
        return given_or_read(value, keyword) if linked else None

    raw_sex = demographic(patient_sex, "PatientSex")
    raw_ethnic_group = demographic(ethnic_group, "EthnicGroup")
    demographics = Demographics.from_headers(
        patient_sex=raw_sex,
        patient_age=demographic(patient_age, "PatientAge"),
        patient_birth_date=demographic(patient_birth_date, "PatientBirthDate"),
        study_date=when,
        patient_weight=demographic(patient_weight, "PatientWeight"),
        patient_size=demographic(patient_size, "PatientSize"),
        ethnic_group=raw_ethnic_group,
        ethnic_groups=ethnic_groups,
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
    subject: Subject | None = None
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
    _set_study_demographics(study, demographics, raw_sex=raw_sex, raw_ethnic_group=raw_ethnic_group)
    if subject is not None and subject.ehr_imported_at is not None:
        if subject.sex != "unknown":
            study.sex = subject.sex
        if subject.ethnic_group != "unknown":
            study.ethnic_group = subject.ethnic_group
    acquisition = Acquisition.from_dataset(header, site=site)
    if acquisition.site is None:  # explicit institution argument, no header
        acquisition = replace(acquisition, site=header_text(institution))
    _set_acquisition(study, acquisition)
    session.add(study)
    session.commit()
    session.refresh(study)
    return study


def record_acquisition(session: Session, *, study_id: int, header: object, site: str | None = None) -> Study:
    """Replace a study's acquisition columns with those of one of its series (the one a model processed).

    :func:`record_study` reads them from whichever header it is given; the pipeline calls this with the
    header of the series it segments, whose slice thickness, spacing and kVp are the ones that matter.

    Parameters
    ----------
    session : sqlmodel.Session
    study_id : int
        ``Study.id`` returned by :func:`record_study`.
    header : object
        A dataset of the series (e.g. ``pydicom.Dataset``), read by DICOM keyword.
    site : str, optional
        A configured site name stored instead of InstitutionName.

    Returns
    -------
    Study

    Raises
    ------
    NotFoundError
        When ``study_id`` is not in the registry.
    """
    study = session.get(Study, study_id)
    if study is None:
        raise NotFoundError(f"study_id {study_id} is not in the registry; record the study first (record_study)")
    acquisition = Acquisition.from_dataset(header, site=site)
    _set_acquisition(study, replace(acquisition, site=acquisition.site or study.site))
    manufacturer = _header_text(getattr(header, "Manufacturer", None))
    if manufacturer:
        study.manufacturer = manufacturer
    session.add(study)
    session.commit()
    session.refresh(study)
    return study


def ethnic_group_texts(session: Session) -> list[tuple[str, str | None, int, int]]:
    """Every raw EthnicGroup text on the study rows, with its stored group and counts.

    Returns
    -------
    list of (text, group, studies, patients)
        One entry per (text, stored group), most studies first; ``patients`` counts distinct pseudonyms.
        ``fairnode registry unmapped`` keeps those the current mapping table leaves unmapped.
    """
    rows = session.exec(
        select(
            col(Study.ethnic_group_text),
            col(Study.ethnic_group),
            func.count(),
            func.count(func.distinct(col(Study.pseudonym))),
        )
        .where(col(Study.ethnic_group_text).is_not(None))
        .group_by(col(Study.ethnic_group_text), col(Study.ethnic_group))
        .order_by(func.count().desc(), col(Study.ethnic_group_text))
    ).all()
    return [(str(text), group, int(studies), int(patients)) for text, group, studies, patients in rows]


def remap_ethnic_groups(session: Session, *, mapping: EthnicGroupMapping, dry_run: bool = False) -> int:
    """Give studies stored as ``unknown`` the group their raw text maps to under ``mapping`` (after the table
    was extended); their subjects still ``unknown`` get it too. A known group is never changed.

    Returns
    -------
    int
        Study rows changed (or that would change, with ``dry_run``).
    """
    studies = session.exec(
        select(Study).where(col(Study.ethnic_group) == "unknown", col(Study.ethnic_group_text).is_not(None))
    ).all()
    changed = 0
    for study in studies:
        group = mapping.group(study.ethnic_group_text)
        if group == "unknown":
            continue
        changed += 1
        study.ethnic_group = group
        session.add(study)
        subject = session.get(Subject, study.pseudonym)
        if subject is not None and subject.ethnic_group == "unknown":
            subject.ethnic_group = group
            session.add(subject)
    if dry_run:
        session.rollback()
    else:
        session.commit()
    logger.info("ethnic groups remapped on %d studies%s", changed, " (dry run)" if dry_run else "")
    return changed
