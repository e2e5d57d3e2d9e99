"""crud on both backends: studies and subjects, series, the case life cycle, constraints."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pydicom
import pytest
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, func, select

from fairness_registry import crud
from fairness_registry.models import Case, CasePublic, CaseStatus, Series, Study, StudyPublic, Subject
from fairness_registry.pseudonym import UNLINKED, pseudonymise
from tests.fairness_registry.conftest import TEST_SECRET

STUDY_1 = "1.2.826.0.1.3680043.8.498.101"
STUDY_2 = "1.2.826.0.1.3680043.8.498.102"
SERIES_1 = "1.2.826.0.1.3680043.8.498.201"
SEG_UID = "1.2.826.0.1.3680043.8.498.301"
SR_UID = "1.2.826.0.1.3680043.8.498.302"


def _count(session: Session, model: type[Subject] | type[Study] | type[Series] | type[Case]) -> int:
    return session.exec(select(func.count()).select_from(model)).one()


def _series(session: Session) -> Series:
    study = crud.record_study(session, study_uid=STUDY_1, patient_id="PID-1", secret=TEST_SECRET, study_date="20240301")
    assert study.id is not None
    return crud.record_series(
        session,
        study_id=study.id,
        series_uid=SERIES_1,
        modality="CT",
        body_part="ABDOMEN",
        description="Abdomen 1.0 B30f",
        n_instances=120,
        selected_model="ct_abdomen_organs",
        selection_reason="CT of the abdomen",
    )


def test_two_studies_of_one_patient_give_one_subject(session: Session) -> None:
    first = crud.record_study(
        session,
        study_uid=STUDY_1,
        patient_id="PID-1",
        secret=TEST_SECRET,
        study_date="20230301",
        patient_sex="F",
        patient_age="053Y",
        patient_weight="70",
        patient_size="1.70",
        ethnic_group="Caucasian",
        institution="General Hospital",
        manufacturer="SIEMENS",
    )
    second = crud.record_study(
        session,
        study_uid=STUDY_2,
        patient_id="PID-1",
        secret=TEST_SECRET,
        study_date=date(2024, 3, 1),
        patient_age="054Y",
        patient_weight="90",  # no sex, size or ethnic group in this study's header
    )
    assert _count(session, Subject) == 1
    assert _count(session, Study) == 2
    assert first.pseudonym == second.pseudonym == pseudonymise("PID-1", TEST_SECRET)
    assert first.study_date == date(2023, 3, 1)
    assert first.institution == "General Hospital"
    subject = session.get(Subject, first.pseudonym)
    assert subject is not None
    # latest known values: age and weight from the second study, the rest kept from the first
    assert (subject.sex, subject.age_years, subject.age_band, subject.ethnic_group) == (
        "F",
        54,
        "40-59",
        "White",
    )
    assert (subject.weight_kg, subject.height_m) == (90.0, 1.70)
    assert subject.bmi == pytest.approx(90 / 1.70**2)
    assert subject.bmi_band == "obese"
    assert subject.updated_at.tzinfo is not None


def test_an_older_study_does_not_overwrite_newer_demographics(session: Session) -> None:
    crud.record_study(
        session,
        study_uid=STUDY_2,
        patient_id="PID-1",
        secret=TEST_SECRET,
        study_date="20240301",
        patient_age="054Y",
    )
    older = crud.record_study(
        session,
        study_uid=STUDY_1,
        patient_id="PID-1",
        secret=TEST_SECRET,
        study_date="20200301",
        patient_age="050Y",
        patient_sex="F",
    )
    subject = session.get(Subject, older.pseudonym)
    assert subject is not None
    assert subject.age_years == 54  # kept
    assert subject.sex == "F"  # was unknown: filled


def test_recording_a_study_again_updates_it(session: Session) -> None:
    first = crud.record_study(
        session, study_uid=STUDY_1, patient_id="PID-1", secret=TEST_SECRET, study_date=None, institution="A"
    )
    again = crud.record_study(
        session, study_uid=STUDY_1, patient_id="PID-1", secret=TEST_SECRET, study_date=None, institution="B"
    )
    assert again.id == first.id
    assert again.institution == "B"
    assert _count(session, Study) == 1
    with pytest.raises(ValueError, match=f"study {STUDY_1} is already recorded for another patient"):
        crud.record_study(session, study_uid=STUDY_1, patient_id="PID-2", secret=TEST_SECRET, study_date=None)


def test_record_study_reads_a_dataset_header(session: Session) -> None:
    header = pydicom.Dataset()
    header.PatientID = "PID-9"
    header.StudyDate = "20240412"
    header.PatientBirthDate = "19700412"
    header.PatientSex = "M"
    with pytest.warns(UserWarning, match="exceeds the maximum length"):
        header.InstitutionName = "X" * 80  # longer than LO allows: cut
    study = crud.record_study(session, study_uid=STUDY_1, secret=TEST_SECRET, header=header, manufacturer="GE")
    subject = session.get(Subject, study.pseudonym)
    assert subject is not None
    assert study.pseudonym == pseudonymise("PID-9", TEST_SECRET)
    assert (study.study_date, study.manufacturer, study.institution) == (date(2024, 4, 12), "GE", "X" * 64)
    assert (subject.sex, subject.age_years) == ("M", 54)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"study_uid": "not-a-uid", "patient_id": "PID-1"}, "'not-a-uid' is not a DICOM UID"),
        ({"study_uid": STUDY_1, "patient_id": "PID-1", "secret": "short"}, "at least 32 bytes"),
    ],
)
def test_record_study_refuses_bad_input(session: Session, kwargs: dict[str, str], message: str) -> None:
    arguments: dict[str, str] = {"secret": TEST_SECRET, **kwargs}
    with pytest.raises(ValueError, match=message):
        crud.record_study(session, **arguments)  # type: ignore[arg-type]
    assert _count(session, Study) == 0


@pytest.mark.parametrize("patient_id", [None, "", "   "])
def test_study_without_patient_id_is_recorded_unlinked_without_demographics(
    session: Session, patient_id: str | None
) -> None:
    header = pydicom.Dataset()
    if patient_id is not None:
        header.PatientID = patient_id
    header.PatientSex = "F"
    header.PatientAge = "045Y"
    header.StudyDate = "20240412"
    study = crud.record_study(session, study_uid=STUDY_1, secret=TEST_SECRET, header=header)
    assert study.pseudonym == UNLINKED
    assert (study.sex, study.age_years, study.ethnic_group, study.bmi) == (None, None, None, None)
    assert study.age_years is None and study.study_date == date(2024, 4, 12)
    other = crud.record_study(session, study_uid=STUDY_2, secret=TEST_SECRET, header=header)
    assert other.pseudonym == UNLINKED
    subject = session.get(Subject, UNLINKED)
    assert subject is not None and subject.sex == "unknown" and subject.age_years is None
    with pytest.raises(ValueError, match="at least 32 bytes"):
        crud.record_study(session, study_uid=STUDY_1, secret="short", header=header)


def test_case_lifecycle_queued_running_done(session: Session) -> None:
    series = _series(session)
    assert series.id is not None
    case = crud.record_case(session, series_id=series.id, model="ct_abdomen_organs", model_version="1.0.0")
    assert (case.status, case.run, case.timings, case.finished_at) == (CaseStatus.QUEUED, 1, {}, None)
    assert case.id is not None
    case_id = case.id
    case = crud.update_case(session, case_id=case_id, status="running", timings={"preprocess": 0.5})
    assert case.status is CaseStatus.RUNNING
    case = crud.update_case(
        session,
        case_id=case_id,
        status=CaseStatus.DONE,
        timings={"inference": 2.25, "postprocess": 0.125},
        seg_sop_uid=SEG_UID,
        sr_sop_uid=SR_UID,
    )
    session.expire_all()  # read back from the database, not from the identity map
    stored = session.get(Case, case_id)
    assert stored is not None
    assert stored.status is CaseStatus.DONE
    assert stored.timings == {"preprocess": 0.5, "inference": 2.25, "postprocess": 0.125}
    assert (stored.seg_sop_uid, stored.sr_sop_uid) == (SEG_UID, SR_UID)
    assert stored.finished_at is not None and stored.finished_at.tzinfo is not None
    assert stored.finished_at.utcoffset() == timedelta(0)
    assert stored.created_at <= stored.finished_at <= datetime.now(UTC)
    public = CasePublic.model_validate(stored)
    assert public.status == "done" and public.timings["inference"] == 2.25
    assert [c.id for c in crud.list_cases(session, status="done")] == [case_id]
    assert crud.list_cases(session, status=CaseStatus.QUEUED) == []


def test_failed_case_needs_a_reason_and_final_states_stay_final(session: Session) -> None:
    series = _series(session)
    assert series.id is not None
    case = crud.record_case(session, series_id=series.id, model="m", model_version="1")
    assert case.id is not None
    with pytest.raises(ValueError, match="cannot go from 'queued' to 'done'; allowed: failed, running"):
        crud.update_case(session, case_id=case.id, status="done")
    with pytest.raises(ValueError, match="needs a failure_reason"):
        crud.update_case(session, case_id=case.id, status="failed")
    with pytest.raises(ValueError, match="'finished' is not a case status; accepted: queued, running"):
        crud.update_case(session, case_id=case.id, status="finished")
    failed = crud.update_case(session, case_id=case.id, status="failed", failure_reason="volume: spacing varies")
    assert failed.failure_reason == "volume: spacing varies"
    with pytest.raises(ValueError, match="allowed: nothing"):
        crud.update_case(session, case_id=case.id, status="running")
    with pytest.raises(ValueError, match="timing for stage 'x' is -1"):
        crud.update_case(session, case_id=case.id, timings={"x": -1.0})
    with pytest.raises(crud.NotFoundError, match="case_id 999999"):
        crud.update_case(session, case_id=999999, status="running")


def test_reruns_get_the_next_run_number(session: Session) -> None:
    series = _series(session)
    assert series.id is not None
    runs = [crud.record_case(session, series_id=series.id, model="m", model_version="1").run for _ in range(3)]
    other = crud.record_case(session, series_id=series.id, model="other", model_version="1")
    assert runs == [1, 2, 3]
    assert other.run == 1
    assert [c.run for c in crud.list_cases(session, series_id=series.id, model="m", offset=1, limit=5)] == [
        2,
        3,
    ]


def test_unique_run_per_series_and_model(session: Session) -> None:
    series = _series(session)
    assert series.id is not None
    crud.record_case(session, series_id=series.id, model="m", model_version="1", run=1)
    with pytest.raises(IntegrityError, match=r"uq_case_series_model_run|UNIQUE constraint failed"):
        crud.record_case(session, series_id=series.id, model="m", model_version="1.1", run=1)
    # the session is usable again and the first row is intact
    assert [(c.model_version, c.run) for c in crud.list_cases(session)] == [("1", 1)]


def test_series_of_an_unknown_study_is_refused(session: Session) -> None:
    with pytest.raises(crud.NotFoundError, match="study_id 424242 is not in the registry"):
        crud.record_series(session, study_id=424242, series_uid=SERIES_1)


def test_deleting_a_subject_erases_its_rows(session: Session) -> None:
    series = _series(session)
    assert series.id is not None
    crud.record_case(session, series_id=series.id, model="m", model_version="1")
    subject = session.get(Subject, pseudonymise("PID-1", TEST_SECRET))
    session.delete(subject)
    session.commit()
    session.expire_all()
    assert [_count(session, model) for model in (Subject, Study, Series, Case)] == [0, 0, 0, 0]


def test_study_public_hides_the_pseudonym(session: Session) -> None:
    study = crud.record_study(session, study_uid=STUDY_1, patient_id="PID-1", secret=TEST_SECRET, study_date="20240301")
    public = StudyPublic.model_validate(study)
    assert "pseudonym" not in public.model_dump()
    assert public.study_uid == STUDY_1
    assert public.received_at.tzinfo is not None
