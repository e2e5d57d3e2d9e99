"""The audit-ready registry on both backends: study-time demographics and acquisition, case_structure, truth."""

from __future__ import annotations

import math

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from sqlmodel import Session, func, select

from fairness_registry import crud
from fairness_registry.models import Case, CaseStructure, Route, Study, Subject
from tests.fairness_registry.conftest import TEST_SECRET
from tests.fairness_registry.quality_samples import LIVER_REASON, LIVER_REGIONS, pass_quality, review_quality

STUDY_1 = "1.2.826.0.1.3680043.8.498.901"
STUDY_2 = "1.2.826.0.1.3680043.8.498.902"
SERIES_1 = "1.2.826.0.1.3680043.8.498.911"
AUDIT_FIELDS = (
    "sex",
    "age_years",
    "age_band",
    "ethnic_group",
    "ethnic_group_text",
    "weight_kg",
    "height_m",
    "bmi",
    "bmi_band",
    "scanner_model",
    "site",
    "slice_thickness_mm",
    "pixel_spacing_mm",
    "kvp",
    "contrast",
)


def _ct_header(**changes: object) -> pydicom.Dataset:
    """A CT header with every attribute the study row reads."""
    ds = pydicom.Dataset()
    ds.PatientID = "PID-AUDIT-1"
    ds.StudyDate = "20240502"
    ds.PatientSex = "F"
    ds.PatientAge = "061Y"
    ds.PatientBirthDate = "19500101"  # ignored: PatientAge wins
    ds.PatientWeight = "92"
    ds.PatientSize = "1.60"
    ds.EthnicGroup = "Afro-Caribbean"
    ds.InstitutionName = "North General"
    ds.Manufacturer = "SIEMENS"
    ds.ManufacturerModelName = "SOMATOM Force"
    ds.SliceThickness = "2.5"
    ds.PixelSpacing = ["0.70", "0.74"]
    ds.KVP = "120"
    ds.ContrastBolusAgent = "Omnipaque 350"
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def _case(session: Session, header: pydicom.Dataset | None = None) -> int:
    """A running case on a study recorded from ``header``; its id."""
    study = crud.record_study(session, study_uid=STUDY_1, secret=TEST_SECRET, header=header or _ct_header())
    assert study.id is not None
    series = crud.record_series(session, study_id=study.id, series_uid=SERIES_1, modality="CT")
    assert series.id is not None
    case = crud.record_case(session, series_id=series.id, model="ct-abdomen", model_version="1.0")
    assert case.id is not None
    crud.update_case(session, case_id=case.id, status="running")
    return case.id


def test_study_row_holds_demographics_and_acquisition_from_the_header(session: Session) -> None:
    study = crud.record_study(session, study_uid=STUDY_1, secret=TEST_SECRET, header=_ct_header())
    assert (study.sex, study.age_years, study.age_band) == ("F", 61, "60-74")
    assert (study.ethnic_group, study.ethnic_group_text) == ("Black", "Afro-Caribbean")
    assert (study.weight_kg, study.height_m, study.bmi_band) == (92.0, 1.6, "obese")
    assert study.bmi == pytest.approx(92 / 1.6**2)
    assert (study.manufacturer, study.scanner_model, study.site, study.institution) == (
        "SIEMENS",
        "SOMATOM Force",
        "North General",
        "North General",
    )
    assert (study.slice_thickness_mm, study.pixel_spacing_mm, study.kvp, study.contrast) == (2.5, 0.72, 120.0, True)
    stored = session.exec(select(Study).where(Study.study_uid == STUDY_1)).one()
    assert stored.contrast is True and stored.pixel_spacing_mm == pytest.approx(0.72)


def test_age_from_birth_date_when_patient_age_is_missing(session: Session) -> None:
    header = _ct_header(PatientAge=None, PatientBirthDate="19640503")
    study = crud.record_study(session, study_uid=STUDY_1, secret=TEST_SECRET, header=header)
    assert (study.age_years, study.age_band) == (59, "40-59")  # one day before the 60th birthday


def test_missing_stays_missing(session: Session) -> None:
    header = pydicom.Dataset()
    header.PatientID = "PID-EMPTY"
    study = crud.record_study(session, study_uid=STUDY_1, secret=TEST_SECRET, header=header)
    values = {field: getattr(study, field) for field in AUDIT_FIELDS}
    assert values == dict.fromkeys(AUDIT_FIELDS) | {"contrast": False}  # no Contrast/Bolus module: none given
    # without any header the acquisition is not known at all
    bare = crud.record_study(session, study_uid=STUDY_2, patient_id="PID-BARE", secret=TEST_SECRET)
    assert {field: getattr(bare, field) for field in AUDIT_FIELDS} == dict.fromkeys(AUDIT_FIELDS)


def test_junk_is_unknown_not_missing(session: Session) -> None:
    header = _ct_header(
        PatientSex="X",
        EthnicGroup="Martian",
        PatientAge="abc",
        PatientBirthDate=None,
        PatientSize="175",  # centimetres: out of range, not guessed
        KVP="0",
        ContrastBolusAgent="",
        PixelSpacing=None,
    )
    study = crud.record_study(session, study_uid=STUDY_1, secret=TEST_SECRET, header=header)
    assert (study.sex, study.ethnic_group, study.ethnic_group_text) == ("unknown", "unknown", "Martian")
    assert (study.age_years, study.age_band, study.height_m, study.bmi, study.bmi_band) == (None,) * 5
    assert (study.weight_kg, study.kvp, study.contrast, study.pixel_spacing_mm) == (92.0, None, False, None)


def test_enhanced_multiframe_and_radiograph_spacing(session: Session) -> None:
    measures = Dataset()
    measures.PixelSpacing = ["0.5", "0.5"]
    measures.SliceThickness = "1.0"
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    header = _ct_header(PixelSpacing=None, SliceThickness=None)
    header.SharedFunctionalGroupsSequence = Sequence([shared])
    study = crud.record_study(session, study_uid=STUDY_1, secret=TEST_SECRET, header=header)
    assert (study.pixel_spacing_mm, study.slice_thickness_mm) == (0.5, 1.0)
    radiograph = _ct_header(PixelSpacing=None, SliceThickness=None, PatientID="PID-DX")
    radiograph.ImagerPixelSpacing = ["0.15", "0.15"]
    study = crud.record_study(session, study_uid=STUDY_2, secret=TEST_SECRET, header=radiograph)
    assert (study.pixel_spacing_mm, study.slice_thickness_mm) == (0.15, None)


def test_configured_site_and_the_processed_series_acquisition(session: Session) -> None:
    localiser = _ct_header(SliceThickness="10", KVP="100", ContrastBolusAgent=None, ManufacturerModelName="Scout")
    study = crud.record_study(session, study_uid=STUDY_1, secret=TEST_SECRET, header=localiser, site="Site A")
    assert (study.site, study.institution, study.slice_thickness_mm, study.contrast) == (
        "Site A",
        "North General",
        10.0,
        False,
    )
    assert study.id is not None
    study = crud.record_acquisition(session, study_id=study.id, header=_ct_header(), site="Site A")
    assert (study.site, study.scanner_model, study.slice_thickness_mm, study.kvp, study.contrast) == (
        "Site A",
        "SOMATOM Force",
        2.5,
        120.0,
        True,
    )
    assert study.sex == "F"  # demographics untouched
    with pytest.raises(crud.NotFoundError, match="study_id 999"):
        crud.record_acquisition(session, study_id=999, header=_ct_header())


def test_each_study_keeps_its_own_demographics(session: Session) -> None:
    old = crud.record_study(
        session, study_uid=STUDY_1, secret=TEST_SECRET, header=_ct_header(StudyDate="20200101", PatientAge="057Y")
    )
    new = crud.record_study(
        session, study_uid=STUDY_2, secret=TEST_SECRET, header=_ct_header(PatientWeight="80", PatientAge="061Y")
    )
    assert (old.age_years, old.weight_kg, new.age_years, new.weight_kg) == (57, 92.0, 61, 80.0)
    subject = session.get(Subject, new.pseudonym)
    assert subject is not None and (subject.age_years, subject.weight_kg) == (61, 80.0)


def test_record_quality_writes_one_case_structure_row_per_structure(session: Session) -> None:
    case_id = _case(session)
    crud.record_quality(session, case_id=case_id, quality=review_quality(hd95_mm=4.0), review_state="held")
    rows = session.exec(select(CaseStructure).where(CaseStructure.case_id == case_id)).all()
    by_name = {r.name: r for r in rows}
    assert sorted(by_name) == ["liver", "spleen"]
    liver, spleen = by_name["liver"], by_name["spleen"]
    assert (liver.label, liver.route, liver.reasons, liver.regions) == (1, Route.REVIEW, [LIVER_REASON], LIVER_REGIONS)
    assert (liver.predicted_dice, liver.predicted_low, liver.predicted_high, liver.coverage) == (0.62, 0.51, 0.73, 0.9)
    assert (liver.rca_max_dice, liver.rca_mean_dice, liver.rca_hd95_mm) == (0.66, 0.58, 4.0)
    assert (liver.volume, liver.mean_entropy, liver.sample_dice, liver.volume_cv) == (1500.0, 0.12, 0.94, 0.02)
    assert (liver.true_dice, liver.true_nsd, liver.true_hd95_mm, liver.truth_source, liver.truth_at) == (None,) * 5
    assert (spleen.route, spleen.predicted_dice, spleen.rca_max_dice, spleen.regions) == (Route.PASS, None, None, {})


def test_non_finite_scores_and_shares_are_null(session: Session) -> None:
    case_id = _case(session)
    quality = review_quality()  # the liver's RCA HD95 is NaN
    liver = next(s for s in quality.structures if s.name == "liver")
    regions = {"boundary": math.nan, "superior": 0.4}
    object.__setattr__(liver, "regions", regions)
    crud.record_quality(session, case_id=case_id, quality=quality, review_state="held")
    row = session.exec(select(CaseStructure).where(CaseStructure.name == "liver")).one()
    assert (row.rca_hd95_mm, row.regions) == (None, {"boundary": None, "superior": 0.4})


def test_truth_is_recorded_and_kept_when_quality_is_recorded_again(session: Session) -> None:
    case_id = _case(session)
    crud.record_quality(session, case_id=case_id, quality=review_quality(), review_state="held")
    row = crud.record_truth(
        session, case_id=case_id, structure="liver", dice=0.81, nsd=0.92, hd95_mm=math.inf, source="upload"
    )
    assert (row.true_dice, row.true_nsd, row.true_hd95_mm, row.truth_source) == (0.81, 0.92, None, "upload")
    assert row.truth_at is not None and row.truth_at.tzinfo is not None
    again = crud.record_truth(
        session, case_id=case_id, structure="liver", dice=0.85, nsd=None, hd95_mm=3, source="c-store"
    )
    assert (again.id, again.true_dice, again.true_nsd, again.true_hd95_mm) == (row.id, 0.85, None, 3.0)
    unmeasured = crud.record_truth(
        session, case_id=case_id, structure="spleen", dice=0.0, nsd=math.nan, hd95_mm=math.nan, source="cohort"
    )
    assert (unmeasured.true_dice, unmeasured.true_nsd, unmeasured.true_hd95_mm) == (0.0, None, None)
    crud.record_quality(session, case_id=case_id, quality=review_quality(hd95_mm=5.0), review_state="held")
    session.expire_all()
    kept = session.exec(select(CaseStructure).where(CaseStructure.name == "liver")).one()
    assert (kept.id, kept.rca_hd95_mm, kept.true_dice, kept.truth_source) == (row.id, 5.0, 0.85, "c-store")


def test_record_truth_refuses_what_it_cannot_store(session: Session) -> None:
    case_id = _case(session)
    with pytest.raises(crud.NotFoundError, match="its structures: none"):
        crud.record_truth(
            session, case_id=case_id, structure="liver", dice=0.8, nsd=None, hd95_mm=None, source="upload"
        )
    crud.record_quality(session, case_id=case_id, quality=review_quality(), review_state="held")
    with pytest.raises(crud.NotFoundError, match="no structure 'kidney'; its structures: liver, spleen"):
        crud.record_truth(session, case_id=case_id, structure="kidney", dice=0.8, nsd=None, hd95_mm=None, source="x")
    with pytest.raises(crud.NotFoundError, match="case_id 999"):
        crud.record_truth(session, case_id=999, structure="liver", dice=0.8, nsd=None, hd95_mm=None, source="upload")
    for bad in ({"dice": 1.2}, {"dice": math.nan}, {"nsd": -0.1}, {"nsd": "0.9"}, {"hd95_mm": -1.0}, {"source": ""}):
        arguments = {"dice": 0.8, "nsd": None, "hd95_mm": None, "source": "upload"} | bad
        with pytest.raises(ValueError, match=next(iter(bad))):
            crud.record_truth(session, case_id=case_id, structure="liver", **arguments)  # type: ignore[arg-type]
    row = session.exec(select(CaseStructure).where(CaseStructure.name == "liver")).one()
    assert row.true_dice is None


def test_structure_rows_follow_the_case(session: Session) -> None:
    case_id = _case(session)
    crud.record_quality(session, case_id=case_id, quality=pass_quality())
    assert session.exec(select(func.count()).select_from(CaseStructure)).one() == 1
    case = session.get(Case, case_id)
    session.delete(case)
    session.commit()
    assert session.exec(select(func.count()).select_from(CaseStructure)).one() == 0  # ON DELETE CASCADE
