"""Normalise DICOM patient-module header values into the registry's demographic categories.

Every function here is pure and total: junk, missing or implausible input gives ``None`` (numbers) or
``"unknown"`` (categories), never an exception, because a header typo must not stop a study. Values
are never logged (they describe a patient).

Categories
----------
- sex: ``M``, ``F``, ``O`` (DICOM PatientSex) or ``unknown``.
- age band (completed years): ``<18``, ``18-39``, ``40-59``, ``60-74``, ``75+`` or ``unknown``.
- BMI band (WHO adult classes, kg/m²): ``underweight`` (< 18.5), ``normal`` (18.5 to < 25),
  ``overweight`` (25 to < 30), ``obese`` (>= 30) or ``unknown``.
- ethnic group: the groups of the mapping table (:mod:`fairness_registry.ethnic_groups`; the shipped table
  gives ``White``, ``Black``, ``Asian``, ``Hispanic``, ``Other``) or ``unknown``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum

from fairness_registry.ethnic_groups import EthnicGroupMapping, default_mapping

__all__ = [
    "MAX_HEIGHT_M",
    "MAX_WEIGHT_KG",
    "MIN_HEIGHT_M",
    "AgeBand",
    "BmiBand",
    "Demographics",
    "EthnicGroup",
    "Sex",
    "age_band",
    "age_years",
    "bmi",
    "bmi_band",
    "normalise_ethnic_group",
    "normalise_sex",
    "parse_dicom_date",
    "parse_height_m",
    "parse_patient_age",
    "parse_weight_kg",
]

#: Plausible ranges (exclusive lower, inclusive upper bound); values outside them are stored as ``None``.
MAX_WEIGHT_KG = 400.0
MIN_HEIGHT_M = 0.5
MAX_HEIGHT_M = 2.5
#: Oldest age (years) accepted from PatientAge or the birth date; older is treated as a typo.
MAX_AGE_YEARS = 130

_DAYS_PER_YEAR = 365.2425


class Sex(StrEnum):
    """Patient sex as registered (DICOM PatientSex), plus ``unknown`` for empty or junk values."""

    MALE = "M"
    FEMALE = "F"
    OTHER = "O"
    UNKNOWN = "unknown"


class AgeBand(StrEnum):
    """Age bands in completed years used by the fairness audits."""

    UNDER_18 = "<18"
    FROM_18_TO_39 = "18-39"
    FROM_40_TO_59 = "40-59"
    FROM_60_TO_74 = "60-74"
    FROM_75 = "75+"
    UNKNOWN = "unknown"


class BmiBand(StrEnum):
    """WHO adult body-mass-index classes."""

    UNDERWEIGHT = "underweight"
    NORMAL = "normal"
    OVERWEIGHT = "overweight"
    OBESE = "obese"
    UNKNOWN = "unknown"


class EthnicGroup(StrEnum):
    """Coarse ethnic groups used by the fairness audits."""

    WHITE = "White"
    BLACK = "Black"
    ASIAN = "Asian"
    HISPANIC = "Hispanic"
    OTHER = "Other"
    UNKNOWN = "unknown"


_ETHNIC_GROUP_VALUES = frozenset(g.value for g in EthnicGroup)


_AGE_RE = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$", re.IGNORECASE)
_DATE_RE = re.compile(r"^\s*(\d{4})[-.]?(\d{2})[-.]?(\d{2})\s*$")


def _text(value: object) -> str:
    """A header value as stripped text (``""`` for ``None`` or bytes that are not ASCII)."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        try:
            return value.decode("ascii").strip()
        except UnicodeDecodeError:
            return ""
    return str(value).strip()


def _number(value: object) -> float | None:
    """A header value as a finite float, or ``None`` when it is missing or not a number."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float | Decimal):
        number = float(value)
    else:
        try:
            number = float(Decimal(_text(value)))
        except (InvalidOperation, ValueError):
            return None
    return number if math.isfinite(number) else None


def normalise_sex(value: object) -> Sex:
    """Normalise a PatientSex value.

    Parameters
    ----------
    value : object
        The header value: ``"M"``, ``"F"``, ``"O"`` (any case, padded or not), the words ``male``,
        ``female``, ``other``, or anything else.

    Returns
    -------
    Sex
        ``Sex.UNKNOWN`` for empty, missing or unrecognised values.
    """
    text = _text(value).upper()
    return {
        "M": Sex.MALE,
        "MALE": Sex.MALE,
        "F": Sex.FEMALE,
        "FEMALE": Sex.FEMALE,
        "O": Sex.OTHER,
        "OTHER": Sex.OTHER,
    }.get(text, Sex.UNKNOWN)


def parse_patient_age(value: object) -> int | None:
    """Completed years from a PatientAge (AS) value.

    Parameters
    ----------
    value : object
        ``nnnD``, ``nnnW``, ``nnnM`` or ``nnnY`` (days, weeks, months, years), e.g. ``"054Y"``; one to
        three digits and lower-case units are tolerated.

    Returns
    -------
    int or None
        Whole years (``"006M"`` -> 0, ``"216M"`` -> 18), or ``None`` when the value is missing,
        malformed or above :data:`MAX_AGE_YEARS`.
    """
    match = _AGE_RE.match(_text(value))
    if match is None:
        return None
    count, unit = int(match.group(1)), match.group(2).upper()
    if unit == "Y":
        years = count
    elif unit == "M":
        years = count // 12
    elif unit == "W":
        years = math.floor(count * 7 / _DAYS_PER_YEAR)
    else:
        years = math.floor(count / _DAYS_PER_YEAR)
    return years if years <= MAX_AGE_YEARS else None


def parse_dicom_date(value: object) -> date | None:
    """A DICOM DA value (``YYYYMMDD``; ``YYYY-MM-DD`` and ``YYYY.MM.DD`` tolerated) as a date.

    Parameters
    ----------
    value : object
        Text, or a ``datetime.date`` / ``datetime.datetime`` (pydicom may already have converted it).

    Returns
    -------
    datetime.date or None
        ``None`` for missing, malformed or impossible dates (e.g. ``"20230231"``).
    """
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    match = _DATE_RE.match(_text(value))
    if match is None:
        return None
    try:
        return date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError:
        return None


def age_years(patient_age: object, birth_date: object = None, study_date: object = None) -> int | None:
    """Age in completed years at the study.

    Parameters
    ----------
    patient_age : object
        PatientAge (AS); used when it parses.
    birth_date, study_date : object
        PatientBirthDate and StudyDate (DA); used when PatientAge is missing or malformed.

    Returns
    -------
    int or None
        ``None`` when neither source gives a plausible age (0 to :data:`MAX_AGE_YEARS`), including a
        birth date after the study date.
    """
    years = parse_patient_age(patient_age)
    if years is not None:
        return years
    born, studied = parse_dicom_date(birth_date), parse_dicom_date(study_date)
    if born is None or studied is None or born > studied:
        return None
    years = studied.year - born.year - ((studied.month, studied.day) < (born.month, born.day))
    return years if years <= MAX_AGE_YEARS else None


def age_band(years: int | None) -> AgeBand:
    """The audit age band of an age in completed years (``AgeBand.UNKNOWN`` for ``None`` or negative)."""
    if years is None or years < 0:
        return AgeBand.UNKNOWN
    if years < 18:
        return AgeBand.UNDER_18
    if years < 40:
        return AgeBand.FROM_18_TO_39
    if years < 60:
        return AgeBand.FROM_40_TO_59
    if years < 75:
        return AgeBand.FROM_60_TO_74
    return AgeBand.FROM_75


def parse_weight_kg(value: object) -> float | None:
    """PatientWeight in kg, or ``None`` when missing, not a number, <= 0 or > :data:`MAX_WEIGHT_KG`."""
    weight = _number(value)
    if weight is None or not 0.0 < weight <= MAX_WEIGHT_KG:
        return None
    return weight


def parse_height_m(value: object) -> float | None:
    """PatientSize in metres, or ``None`` when missing, not a number, <= 0.5 m or > 2.5 m.

    A height given in centimetres (e.g. ``175``) is out of range and therefore ``None``: it is not guessed.
    """
    height = _number(value)
    if height is None or not MIN_HEIGHT_M < height <= MAX_HEIGHT_M:
        return None
    return height


def bmi(weight_kg: float | None, height_m: float | None) -> float | None:
    """Body-mass index in kg/m² from already validated weight (kg) and height (m); ``None`` if either is."""
    if weight_kg is None or height_m is None:
        return None
    return weight_kg / (height_m * height_m)


def bmi_band(value: float | None) -> BmiBand:
    """The WHO class of a BMI in kg/m² (``BmiBand.UNKNOWN`` for ``None``)."""
    if value is None:
        return BmiBand.UNKNOWN
    if value < 18.5:
        return BmiBand.UNDERWEIGHT
    if value < 25.0:
        return BmiBand.NORMAL
    if value < 30.0:
        return BmiBand.OVERWEIGHT
    return BmiBand.OBESE


def normalise_ethnic_group(value: object, mapping: EthnicGroupMapping | None = None) -> str:
    """Map free-text EthnicGroup to an audit group through the mapping table.

    Parameters
    ----------
    value : object
        The EthnicGroup header value (SH) or an EHR text, any case.
    mapping : EthnicGroupMapping, optional
        The table (matching rules: :meth:`~fairness_registry.ethnic_groups.EthnicGroupMapping.match`); the
        shipped ``ethnic_groups.yaml`` when omitted.

    Returns
    -------
    str
        The group; an :class:`EthnicGroup` member when the group is one of them (always with the shipped
        table), ``EthnicGroup.UNKNOWN`` when the text means "not recorded" or is not mapped.
    """
    group = (mapping or default_mapping()).group(value)
    return EthnicGroup(group) if group in _ETHNIC_GROUP_VALUES else group


@dataclass(frozen=True, slots=True)
class Demographics:
    """The normalised demographics of one patient at one study (no identifier among them).

    Attributes
    ----------
    sex : Sex
    age_years : int or None
        Completed years at the study.
    age_band : AgeBand
    ethnic_group : str
        The audit group of the mapping table (an :class:`EthnicGroup` with the shipped table), or ``unknown``.
    height_m : float or None
        Metres, plausible range (0.5, 2.5].
    weight_kg : float or None
        Kilograms, plausible range (0, 400].
    bmi : float or None
        kg/m², from ``weight_kg`` and ``height_m``.
    bmi_band : BmiBand
    """

    sex: Sex
    age_years: int | None
    age_band: AgeBand
    ethnic_group: str
    height_m: float | None
    weight_kg: float | None
    bmi: float | None
    bmi_band: BmiBand

    @classmethod
    def from_headers(
        cls,
        *,
        patient_sex: object = None,
        patient_age: object = None,
        patient_birth_date: object = None,
        study_date: object = None,
        patient_weight: object = None,
        patient_size: object = None,
        ethnic_group: object = None,
        ethnic_groups: EthnicGroupMapping | None = None,
    ) -> Demographics:
        """Normalise the raw header values (DICOM keywords in snake case); the birth date is only read.

        ``ethnic_groups`` is the mapping table for ``ethnic_group`` (the shipped one when omitted).
        """
        years = age_years(patient_age, patient_birth_date, study_date)
        weight, height = parse_weight_kg(patient_weight), parse_height_m(patient_size)
        body_mass = bmi(weight, height)
        return cls(
            sex=normalise_sex(patient_sex),
            age_years=years,
            age_band=age_band(years),
            ethnic_group=normalise_ethnic_group(ethnic_group, ethnic_groups),
            height_m=height,
            weight_kg=weight,
            bmi=body_mass,
            bmi_band=bmi_band(body_mass),
        )

    @classmethod
    def from_dataset(cls, dataset: object, ethnic_groups: EthnicGroupMapping | None = None) -> Demographics:
        """Normalise the patient attributes of a dataset (e.g. ``pydicom.Dataset``); absent ones are None."""
        return cls.from_headers(
            patient_sex=getattr(dataset, "PatientSex", None),
            patient_age=getattr(dataset, "PatientAge", None),
            patient_birth_date=getattr(dataset, "PatientBirthDate", None),
            study_date=getattr(dataset, "StudyDate", None),
            patient_weight=getattr(dataset, "PatientWeight", None),
            patient_size=getattr(dataset, "PatientSize", None),
            ethnic_group=getattr(dataset, "EthnicGroup", None),
            ethnic_groups=ethnic_groups,
        )
