"""Import demographics from an EHR export (CSV keyed by patient ID) into the registry, in one transaction.

The file
--------
A CSV file (UTF-8, a BOM allowed; comma, semicolon or tab separated) whose first row names the columns.
Column names are matched case-insensitively, with spaces and hyphens read as underscores; accepted names
(:data:`COLUMNS`, aliases in brackets):

- ``patient_id`` (``patientid``, ``mrn``, ``pid``): required. Pseudonymised with the registry's secret at
  once; never stored, logged or printed.
- ``sex`` (``gender``): ``M``, ``F``, ``O`` or ``male``, ``female``, ``other``.
- ``birth_date`` (``date_of_birth``, ``dob``, ``birthdate``): ``YYYY-MM-DD`` or ``YYYYMMDD``. Only used to
  compute the age at each study; never stored.
- ``age`` (``age_years``): completed years on the ``as_of`` date (the export date; today by default).
- ``ethnic_group`` (``ethnicity``, ``race``): free text, mapped by the ethnic group table.
- ``weight_kg`` (``weight``): kilograms. ``height_m`` (``height``): metres; or ``height_cm``: centimetres.

Other columns are ignored and named in the report. Every value may be empty (not known).

Which value wins (:data:`RULES`)
--------------------------------
- sex, ethnic group: **the EHR wins** over the DICOM header, on every study of the patient and on later
  ones. The EHR is the registration record, usually self-reported and checked at admission; header values
  are copied by modality operators, often blank or defaulted. An EHR ethnic group that the table does not
  map (or "declined") only fills studies that have none.
- age from ``birth_date``: **the EHR wins**: the age at each study is computed exactly from its StudyDate
  (PatientAge is often missing or a placeholder such as ``000Y``).
- age from ``age``: **the header wins**: an age on the export date gives the age at an earlier study only
  to within a year, so it fills studies without an age and never corrects one (a difference of more than
  a year is reported as a conflict).
- weight, height: **the header wins**: the header's values were taken at the scan (e.g. for contrast
  dosing); the EHR's may be from another visit. EHR values fill studies without them; BMI is recomputed.

Rows
----
Rows are numbered as in a spreadsheet (the column names are row 1). A row is *rejected* (with its number
and the reason, never its patient ID) when its patient ID is empty, the patient already appeared on an
earlier row, a value cannot be read or is implausible, or it holds no value at all; rejected rows change
nothing. A row is *matched* when the patient is in the registry, *new* otherwise (a subject row is created
so that the patient's future studies get the EHR's sex and ethnic group), and *conflicted* when one of its
values differs from a value already recorded. A file that cannot be read, or lacks the ``patient_id``
column, raises :class:`EhrFileError` before anything is written.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from sqlmodel import Session, col, select

from fairness_registry.demographics import (
    MAX_AGE_YEARS,
    age_band,
    age_years,
    bmi,
    bmi_band,
    normalise_sex,
    parse_dicom_date,
    parse_height_m,
    parse_weight_kg,
)
from fairness_registry.ethnic_groups import UNKNOWN_GROUP, EthnicGroupMapping, MatchKind
from fairness_registry.models import LO_LENGTH, Study, Subject, utcnow
from fairness_registry.pseudonym import pseudonymise

__all__ = [
    "COLUMNS",
    "RULES",
    "EhrFileError",
    "EhrImportReport",
    "EhrRecord",
    "apply_records",
    "import_file",
    "read_file",
]

logger = logging.getLogger(__name__)

#: Canonical column -> accepted names (after lower-casing, spaces and hyphens as underscores).
COLUMNS: Mapping[str, tuple[str, ...]] = {
    "patient_id": ("patient_id", "patientid", "mrn", "pid"),
    "sex": ("sex", "gender"),
    "birth_date": ("birth_date", "date_of_birth", "dob", "birthdate"),
    "age": ("age", "age_years"),
    "ethnic_group": ("ethnic_group", "ethnicity", "race"),
    "weight_kg": ("weight_kg", "weight"),
    "height_m": ("height_m", "height"),
    "height_cm": ("height_cm",),
}
#: Field -> (who wins a conflict, why), as the report states it.
RULES: Mapping[str, tuple[str, str]] = {
    "sex": ("EHR", "the registration record beats a header typed or defaulted at the modality"),
    "ethnic_group": ("EHR", "usually self-reported at registration; headers are often blank or guessed"),
    "age": ("EHR", "computed exactly from the birth date at each StudyDate"),
    "age (approximate)": ("header", "an age on the export date is only within a year of the age at the study"),
    "weight_kg": ("header", "measured at the scan; the EHR's may be from another visit"),
    "height_m": ("header", "measured at the scan; the EHR's may be from another visit"),
}
#: Differences below these are not conflicts (rounding in one of the systems).
_TOLERANCE = {"weight_kg": 0.5, "height_m": 0.01}


class EhrFileError(ValueError):
    """An EHR export that cannot be imported at all (unreadable, no header row, no patient ID column)."""


@dataclass(frozen=True)
class EhrRecord:
    """One accepted row, already pseudonymised (no patient ID, no birth date kept beyond the import)."""

    row: int
    pseudonym: str
    sex: str | None = None
    birth_date: date | None = None
    age: int | None = None
    ethnic_text: str | None = None
    weight_kg: float | None = None
    height_m: float | None = None


@dataclass
class EhrImportReport:
    """What an import did. Holds counts, row numbers and reasons; no patient identifier.

    Attributes
    ----------
    rows : int
        Data rows read.
    matched, new, conflicted : int
        Rows whose patient was in the registry, was not, and rows with at least one conflict.
    studies_updated : int
        Study rows changed.
    conflicts : dict of str to int
        Field (a key of :data:`RULES`) -> rows where the EHR value differed from a recorded one.
    rejected : list of (int, str)
        Row number and reason.
    ignored_columns : list of str
    unmapped_ethnic_groups : int
        Accepted rows whose ethnic group text the mapping table leaves unmapped.
    committed : bool
        ``False`` for a dry run.
    """

    rows: int = 0
    matched: int = 0
    new: int = 0
    conflicted: int = 0
    studies_updated: int = 0
    conflicts: dict[str, int] = field(default_factory=dict)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)
    unmapped_ethnic_groups: int = 0
    committed: bool = False


def _column_key(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def _columns(header: Sequence[str], source: str) -> tuple[dict[str, int], list[str]]:
    """Canonical column -> index, and the ignored column names."""
    alias = {name: canonical for canonical, names in COLUMNS.items() for name in names}
    found: dict[str, int] = {}
    ignored: list[str] = []
    for index, name in enumerate(header):
        canonical = alias.get(_column_key(name))
        if canonical is None:
            ignored.append(name.strip())
        elif canonical in found:
            raise EhrFileError(f"{source}: columns {header[found[canonical]]!r} and {name!r} both give {canonical}")
        else:
            found[canonical] = index
    if "patient_id" not in found:
        raise EhrFileError(
            f"{source}: no patient ID column; the first row must name one of {', '.join(COLUMNS['patient_id'])} "
            f"(columns found: {', '.join(h.strip() for h in header) or 'none'})"
        )
    if "height_m" in found and "height_cm" in found:
        raise EhrFileError(f"{source}: give height_m or height_cm, not both")
    return found, ignored


def _parse_row(
    number: int, values: Mapping[str, str], secret: str | bytes, as_of: date
) -> tuple[EhrRecord | None, str | None]:
    """One row as a record, or the reason it is rejected (never naming the patient ID or birth date)."""
    raw_id = values.get("patient_id", "").strip()
    if not raw_id:
        return None, "patient ID is empty"
    record: dict[str, object] = {}
    sex_text = values.get("sex", "").strip()
    if sex_text:
        sex = normalise_sex(sex_text)
        if sex.value == "unknown":
            return None, f"sex {sex_text[:16]!r} is not recognised; accepted: M, F, O, male, female, other"
        record["sex"] = sex.value
    birth_text = values.get("birth_date", "").strip()
    if birth_text:
        born = parse_dicom_date(birth_text)
        if born is None or born > as_of or as_of.year - born.year > MAX_AGE_YEARS:
            return None, "birth_date is not a plausible date (accepted: YYYY-MM-DD or YYYYMMDD, not in the future)"
        record["birth_date"] = born
    age_text = values.get("age", "").strip()
    if age_text:
        if not age_text.isdigit() or int(age_text) > MAX_AGE_YEARS:
            return None, f"age is not a whole number of years between 0 and {MAX_AGE_YEARS}"
        record["age"] = int(age_text)
    ethnic = values.get("ethnic_group", "").strip()
    if ethnic:
        record["ethnic_text"] = ethnic[:LO_LENGTH]
    weight_text = values.get("weight_kg", "").strip()
    if weight_text:
        weight = parse_weight_kg(weight_text)
        if weight is None:
            return None, f"weight_kg {weight_text[:16]!r} is not a weight in kg (0 to 400)"
        record["weight_kg"] = weight
    for column, scale in (("height_m", 1.0), ("height_cm", 0.01)):
        height_text = values.get(column, "").strip()
        if height_text:
            try:
                height = parse_height_m(float(height_text) * scale)
            except ValueError:
                height = None
            if height is None:
                unit = "m (0.5 to 2.5)" if column == "height_m" else "cm (50 to 250)"
                return None, f"{column} {height_text[:16]!r} is not a height in {unit}"
            record["height_m"] = height
    if not record:
        return None, "no demographic value given (only the patient ID)"
    return EhrRecord(row=number, pseudonym=pseudonymise(raw_id, secret), **record), None  # type: ignore[arg-type]


def read_file(
    path: str | Path, *, secret: str | bytes, as_of: date | None = None
) -> tuple[list[EhrRecord], EhrImportReport]:
    """Read and check an EHR export; nothing is written. Patient IDs are pseudonymised as they are read.

    Returns
    -------
    records : list of EhrRecord
        The accepted rows.
    report : EhrImportReport
        With ``rows``, ``rejected`` and ``ignored_columns`` filled.

    Raises
    ------
    EhrFileError
        When the file cannot be read as CSV, is empty, or has no patient ID column.
    """
    source = Path(path).name
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise EhrFileError(f"cannot read {source}: {why}") from None
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    try:
        rows = list(csv.reader(io.StringIO(text), dialect))
    except csv.Error as exc:
        raise EhrFileError(f"{source} is not a readable CSV file: {exc}") from None
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise EhrFileError(f"{source} is empty; the first row must name the columns (patient_id, sex, ...)")
    columns, ignored = _columns(rows[0], source)
    report = EhrImportReport(ignored_columns=ignored)
    records: list[EhrRecord] = []
    first_row: dict[str, int] = {}
    today = as_of or date.today()
    for number, cells in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in cells):
            continue  # blank line
        report.rows += 1
        if len(cells) > len(rows[0]):
            report.rejected.append((number, f"has {len(cells)} fields but the first row names {len(rows[0])}"))
            continue
        values = {name: cells[index] if index < len(cells) else "" for name, index in columns.items()}
        record, reason = _parse_row(number, values, secret, today)
        if record is None:
            report.rejected.append((number, reason or "rejected"))
            continue
        if record.pseudonym in first_row:
            report.rejected.append((number, f"same patient as row {first_row[record.pseudonym]}; one row per patient"))
            continue
        first_row[record.pseudonym] = number
        records.append(record)
    return records, report


def _known(value: object) -> bool:
    return value is not None and value != UNKNOWN_GROUP


def _differs(field_name: str, old: object, new: object) -> bool:
    if isinstance(old, float) and isinstance(new, float):
        return abs(old - new) > _TOLERANCE.get(field_name, 0.0)
    return old != new


def _age_at(record: EhrRecord, studied: date | None, as_of: date) -> tuple[int | None, bool]:
    """The age at a study from the record, and whether it is exact (from the birth date)."""
    if studied is None:
        return None, False
    if record.birth_date is not None:
        return age_years(None, record.birth_date, studied), True
    if record.age is not None:
        elapsed = age_years(None, studied, as_of)
        return (None if elapsed is None else max(record.age - elapsed, 0)), False
    return None, False


def _apply_study(study: Study, record: EhrRecord, group: str | None, as_of: date, conflicts: set[str]) -> bool:
    """Apply one record to one study row (rules: module docstring); True when the row changed."""
    before = study.model_dump()
    if record.sex is not None:
        if _known(study.sex) and study.sex != record.sex:
            conflicts.add("sex")
        study.sex = record.sex
    if group is not None:
        if group != UNKNOWN_GROUP:
            if _known(study.ethnic_group) and study.ethnic_group != group:
                conflicts.add("ethnic_group")
            study.ethnic_group, study.ethnic_group_text = group, record.ethnic_text
        elif study.ethnic_group is None:
            study.ethnic_group, study.ethnic_group_text = UNKNOWN_GROUP, record.ethnic_text
    years, exact = _age_at(record, study.study_date, as_of)
    if years is not None:
        if study.age_years is not None and abs(study.age_years - years) > (0 if exact else 1):
            conflicts.add("age" if exact else "age (approximate)")
        if exact or study.age_years is None:
            study.age_years, study.age_band = years, age_band(years).value
    for name in ("weight_kg", "height_m"):
        new = getattr(record, name)
        if new is None:
            continue
        old = getattr(study, name)
        if old is None:
            setattr(study, name, new)
        elif _differs(name, old, new):
            conflicts.add(name)
    study.bmi = bmi(study.weight_kg, study.height_m)
    study.bmi_band = None if study.bmi is None else bmi_band(study.bmi).value
    return study.model_dump() != before


def _apply_subject(subject: Subject, record: EhrRecord, group: str | None, latest: date | None, as_of: date) -> None:
    """The subject row: EHR sex and ethnic group, age at the latest study, weight and height where unknown."""
    if record.sex is not None:
        subject.sex = record.sex
    if group is not None and (group != UNKNOWN_GROUP or subject.ethnic_group == UNKNOWN_GROUP):
        subject.ethnic_group = group
    years, exact = _age_at(record, latest, as_of)
    if years is not None and (exact or subject.age_years is None):
        subject.age_years, subject.age_band = years, age_band(years).value
    if subject.weight_kg is None and record.weight_kg is not None:
        subject.weight_kg = record.weight_kg
    if subject.height_m is None and record.height_m is not None:
        subject.height_m = record.height_m
    subject.bmi = bmi(subject.weight_kg, subject.height_m)
    subject.bmi_band = bmi_band(subject.bmi).value
    now = utcnow()
    subject.updated_at = subject.ehr_imported_at = now


def apply_records(
    session: Session,
    records: Iterable[EhrRecord],
    report: EhrImportReport,
    *,
    mapping: EthnicGroupMapping,
    as_of: date | None = None,
    dry_run: bool = False,
) -> EhrImportReport:
    """Apply accepted records to the registry in one transaction (rolled back on any error or a dry run).

    Parameters
    ----------
    session : sqlmodel.Session
    records : iterable of EhrRecord
        From :func:`read_file`.
    report : EhrImportReport
        Filled in further (matched, new, conflicted, conflicts, studies_updated, unmapped_ethnic_groups).
    mapping : EthnicGroupMapping
        The ethnic group table.
    as_of : datetime.date, optional
        The date the ``age`` column refers to; today when omitted.
    dry_run : bool
        Roll back instead of committing (the report says what would change).

    Returns
    -------
    EhrImportReport
    """
    today = as_of or date.today()
    try:
        for record in records:
            matched = mapping.match(record.ethnic_text) if record.ethnic_text is not None else None
            group = None if matched is None else matched[0]
            if matched is not None and matched[1] is MatchKind.UNMAPPED:
                report.unmapped_ethnic_groups += 1
            subject = session.get(Subject, record.pseudonym)
            if subject is None:
                subject = Subject(pseudonym=record.pseudonym)
                report.new += 1
            else:
                report.matched += 1
            studies = session.exec(
                select(Study).where(Study.pseudonym == record.pseudonym).order_by(col(Study.id))
            ).all()
            conflicts: set[str] = set()
            for study in studies:
                if _apply_study(study, record, group, today, conflicts):
                    report.studies_updated += 1
                    session.add(study)
            dates = [s.study_date for s in studies if s.study_date is not None]
            _apply_subject(subject, record, group, max(dates) if dates else None, today)
            session.add(subject)
            if conflicts:
                report.conflicted += 1
                for name in conflicts:
                    report.conflicts[name] = report.conflicts.get(name, 0) + 1
            session.flush()
        if dry_run:
            session.rollback()
        else:
            session.commit()
            report.committed = True
    except BaseException:
        session.rollback()
        raise
    logger.info(
        "EHR import: %d rows, %d matched, %d new, %d conflicted, %d rejected%s",
        report.rows,
        report.matched,
        report.new,
        report.conflicted,
        len(report.rejected),
        "" if report.committed else " (not committed)",
    )
    return report


def import_file(
    session: Session,
    path: str | Path,
    *,
    secret: str | bytes,
    mapping: EthnicGroupMapping,
    as_of: date | None = None,
    dry_run: bool = False,
) -> EhrImportReport:
    """Read an EHR export and apply it (:func:`read_file` then :func:`apply_records`); all or nothing.

    Raises
    ------
    EhrFileError
        When the file cannot be imported at all; the registry is not touched.
    """
    records, report = read_file(path, secret=secret, as_of=as_of)
    return apply_records(session, records, report, mapping=mapping, as_of=as_of, dry_run=dry_run)
