"""Demographics normalisation, table-driven, junk included."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pydicom
import pytest

from fairness_registry.demographics import (
    AgeBand,
    BmiBand,
    Demographics,
    EthnicGroup,
    Sex,
    age_band,
    age_years,
    bmi,
    bmi_band,
    normalise_ethnic_group,
    normalise_sex,
    parse_dicom_date,
    parse_height_m,
    parse_patient_age,
    parse_weight_kg,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("M", Sex.MALE),
        ("F", Sex.FEMALE),
        ("O", Sex.OTHER),
        ("f ", Sex.FEMALE),
        ("female", Sex.FEMALE),
        ("", Sex.UNKNOWN),
        (None, Sex.UNKNOWN),
        ("X", Sex.UNKNOWN),
        ("MF", Sex.UNKNOWN),
        (42, Sex.UNKNOWN),
    ],
)
def test_sex(value: object, expected: Sex) -> None:
    assert normalise_sex(value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("054Y", 54),
        ("006M", 0),
        ("216M", 18),
        ("010W", 0),
        ("060W", 1),
        ("003D", 0),
        ("400D", 1),
        ("000Y", 0),
        ("54y", 54),
        ("", None),
        (None, None),
        ("54", None),
        ("Y054", None),
        ("-05Y", None),
        ("999Y", None),
        ("fifty", None),
    ],
)
def test_patient_age(value: object, expected: int | None) -> None:
    assert parse_patient_age(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20240131", date(2024, 1, 31)),
        ("2024-01-31", date(2024, 1, 31)),
        ("2024.01.31", date(2024, 1, 31)),
        (date(2024, 1, 31), date(2024, 1, 31)),
        ("20230231", None),
        ("2024013", None),
        ("", None),
        (None, None),
        ("yesterday", None),
    ],
)
def test_dicom_date(value: object, expected: date | None) -> None:
    assert parse_dicom_date(value) == expected


@pytest.mark.parametrize(
    ("patient_age", "birth_date", "study_date", "expected"),
    [
        ("054Y", "19000101", "20240101", 54),  # PatientAge wins over the dates
        (None, "19700412", "20240411", 53),  # the day before the birthday
        (None, "19700412", "20240412", 54),  # on the birthday
        ("", "19700412", "20240412", 54),
        ("junk", "19700412", "20240412", 54),
        (None, "20250101", "20240101", None),  # born after the study
        (None, "18500101", "20240101", None),  # implausibly old
        (None, "19700412", None, None),
        (None, None, "20240101", None),
        (None, "notadate", "20240101", None),
    ],
)
def test_age_years(patient_age: object, birth_date: object, study_date: object, expected: int | None) -> None:
    assert age_years(patient_age, birth_date, study_date) == expected


@pytest.mark.parametrize(
    ("years", "expected"),
    [
        (0, AgeBand.UNDER_18),
        (17, AgeBand.UNDER_18),
        (18, AgeBand.FROM_18_TO_39),
        (39, AgeBand.FROM_18_TO_39),
        (40, AgeBand.FROM_40_TO_59),
        (59, AgeBand.FROM_40_TO_59),
        (60, AgeBand.FROM_60_TO_74),
        (74, AgeBand.FROM_60_TO_74),
        (75, AgeBand.FROM_75),
        (110, AgeBand.FROM_75),
        (None, AgeBand.UNKNOWN),
        (-1, AgeBand.UNKNOWN),
    ],
)
def test_age_band(years: int | None, expected: AgeBand) -> None:
    assert age_band(years) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("70", 70.0),
        (70, 70.0),
        (70.5, 70.5),
        (Decimal("70.5"), 70.5),
        (" 82.3 ", 82.3),
        ("400", 400.0),
        ("400.1", None),
        ("0", None),
        ("-5", None),
        ("", None),
        (None, None),
        ("heavy", None),
        ("nan", None),
        ("inf", None),
        (True, None),
    ],
)
def test_weight(value: object, expected: float | None) -> None:
    assert parse_weight_kg(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1.75", 1.75),
        (1.6, 1.6),
        ("2.5", 2.5),
        ("0.5", None),
        ("2.51", None),
        ("175", None),  # centimetres are not guessed
        ("0", None),
        ("", None),
        (None, None),
        ("tall", None),
    ],
)
def test_height(value: object, expected: float | None) -> None:
    assert parse_height_m(value) == expected


@pytest.mark.parametrize(
    ("weight", "height", "expected_bmi", "expected_band"),
    [
        (70.0, 1.75, 22.857, BmiBand.NORMAL),
        (50.0, 1.75, 16.327, BmiBand.UNDERWEIGHT),
        (80.0, 1.75, 26.122, BmiBand.OVERWEIGHT),
        (110.0, 1.75, 35.918, BmiBand.OBESE),
        (None, 1.75, None, BmiBand.UNKNOWN),
        (70.0, None, None, BmiBand.UNKNOWN),
    ],
)
def test_bmi_and_band(
    weight: float | None, height: float | None, expected_bmi: float | None, expected_band: BmiBand
) -> None:
    value = bmi(weight, height)
    assert value == (None if expected_bmi is None else pytest.approx(expected_bmi, abs=1e-3))
    assert bmi_band(value) is expected_band


@pytest.mark.parametrize(
    ("value", "expected"),
    [(18.49, BmiBand.UNDERWEIGHT), (18.5, BmiBand.NORMAL), (25.0, BmiBand.OVERWEIGHT), (30.0, BmiBand.OBESE)],
)
def test_bmi_band_edges(value: float, expected: BmiBand) -> None:
    assert bmi_band(value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("WHITE", EthnicGroup.WHITE),
        ("Caucasian", EthnicGroup.WHITE),
        ("White British", EthnicGroup.WHITE),
        ("Non-Hispanic White", EthnicGroup.WHITE),
        ("Black", EthnicGroup.BLACK),
        ("AFRICAN AMERICAN", EthnicGroup.BLACK),
        ("Black or African American", EthnicGroup.BLACK),
        ("Black/Caribbean", EthnicGroup.BLACK),
        ("asian", EthnicGroup.ASIAN),
        ("Chinese", EthnicGroup.ASIAN),
        ("South-Asian", EthnicGroup.ASIAN),
        ("Asian or Pacific Islander", EthnicGroup.ASIAN),
        ("Hispanic", EthnicGroup.HISPANIC),
        ("LATINO", EthnicGroup.HISPANIC),
        ("Hispanic or Latino", EthnicGroup.HISPANIC),
        ("Other", EthnicGroup.OTHER),
        ("Mixed", EthnicGroup.OTHER),
        ("White and Black Caribbean", EthnicGroup.OTHER),  # two groups: mixed
        ("American Indian", EthnicGroup.OTHER),
        ("North African", EthnicGroup.OTHER),
        ("Not Hispanic or Latino", EthnicGroup.UNKNOWN),  # says only what the patient is not
        ("", EthnicGroup.UNKNOWN),
        (None, EthnicGroup.UNKNOWN),
        ("Unknown", EthnicGroup.UNKNOWN),
        ("Declined", EthnicGroup.UNKNOWN),
        ("N/A", EthnicGroup.UNKNOWN),
        ("12345", EthnicGroup.UNKNOWN),
        ("???", EthnicGroup.UNKNOWN),
        ("whitewash", EthnicGroup.UNKNOWN),  # whole words only
    ],
)
def test_ethnic_group(value: object, expected: EthnicGroup) -> None:
    assert normalise_ethnic_group(value) is expected


def test_from_dataset_reads_the_patient_module() -> None:
    ds = pydicom.Dataset()
    ds.PatientSex = "F"
    ds.PatientBirthDate = "19700412"
    ds.StudyDate = "20240412"
    ds.PatientWeight = "82"
    ds.PatientSize = "1.64"
    ds.EthnicGroup = "Hispanic"
    demographics = Demographics.from_dataset(ds)
    assert demographics == Demographics(
        sex=Sex.FEMALE,
        age_years=54,
        age_band=AgeBand.FROM_40_TO_59,
        ethnic_group=EthnicGroup.HISPANIC,
        height_m=1.64,
        weight_kg=82.0,
        bmi=82 / 1.64**2,
        bmi_band=BmiBand.OBESE,
    )


def test_from_dataset_with_nothing_is_all_unknown() -> None:
    demographics = Demographics.from_dataset(pydicom.Dataset())
    assert (demographics.sex, demographics.age_band, demographics.ethnic_group, demographics.bmi_band) == (
        Sex.UNKNOWN,
        AgeBand.UNKNOWN,
        EthnicGroup.UNKNOWN,
        BmiBand.UNKNOWN,
    )
    assert (demographics.age_years, demographics.height_m, demographics.weight_kg, demographics.bmi) == (
        None,
        None,
        None,
        None,
    )
