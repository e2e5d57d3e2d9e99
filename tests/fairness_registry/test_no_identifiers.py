"""The registry holds no patient name, patient ID, birth date or accession number: not in its column
names, and not in any stored value (rows on both backends, and every byte of the SQLite files), whether
they came in a DICOM header or an EHR export."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

import pydicom
import sqlalchemy as sa
from sqlmodel import Session

from fairness_registry import crud
from fairness_registry.db import dispose_engines, get_engine, migrate, sqlite_url
from fairness_registry.ehr_import import import_file
from fairness_registry.ethnic_groups import default_mapping
from fairness_registry.models import REGISTRY_TABLES
from tests.fairness_registry.conftest import TEST_SECRET
from tests.fairness_registry.quality_samples import LIVER_REASON, review_quality

FORBIDDEN_COLUMN = re.compile(r"patient|birth|accession|mrn|dob|(^|_)name($|_)", re.IGNORECASE)
#: Columns whose names match FORBIDDEN_COLUMN but hold no patient data (the model card's structure names, a worker
#: process's name such as "gpu-1@host").
NOT_IDENTIFIERS = frozenset({"case_structure.name", "job_worker.name"})
STUDY_UID = "1.2.826.0.1.3680043.8.498.777"
SERIES_UID = "1.2.826.0.1.3680043.8.498.778"
PATIENT_ID = "MRN-00471123"
PATIENT_NAME = "Kowalska^Agnieszka"
BIRTH_DATE = "19610923"
ACCESSION = "ACC-55501234"
IDENTIFIERS = (
    PATIENT_ID,
    PATIENT_NAME,
    "Kowalska",
    "Agnieszka",
    BIRTH_DATE,
    date(1961, 9, 23).isoformat(),
    ACCESSION,
)


def _header() -> pydicom.Dataset:
    """A study header full of identifiers, as the node receives it."""
    ds = pydicom.Dataset()
    ds.PatientID = PATIENT_ID
    ds.PatientName = PATIENT_NAME
    ds.PatientBirthDate = BIRTH_DATE
    ds.AccessionNumber = ACCESSION
    ds.OtherPatientIDs = PATIENT_ID + "-OLD"
    ds.StudyDate = "20240502"
    ds.PatientSex = "F"
    ds.PatientWeight = "64"
    ds.PatientSize = "1.62"
    ds.EthnicGroup = "White"
    ds.InstitutionName = "General Hospital"
    ds.Manufacturer = "SIEMENS"
    return ds


def _record_everything(session: Session) -> None:
    """One study through every crud function, header passed whole (the careless caller's way), with its
    quality recorded and reviewed, and the worklist read."""
    study = crud.record_study(session, study_uid=STUDY_UID, secret=TEST_SECRET, header=_header())
    assert study.id is not None
    series = crud.record_series(session, study_id=study.id, series_uid=SERIES_UID, modality="CT")
    assert series.id is not None
    case = crud.record_case(session, series_id=series.id, model="m", model_version="1")
    assert case.id is not None
    crud.update_case(session, case_id=case.id, status="running", timings={"inference": 1.0})
    crud.record_quality(session, case_id=case.id, quality=review_quality(hd95_mm=4.0), review_state="held")
    items = crud.list_worklist(session)
    assert [i.case_id for i in items] == [case.id]
    shown = json.dumps([i.model_dump(mode="json") for i in items])
    assert [i for i in (*IDENTIFIERS, study.pseudonym) if i in shown] == []  # the worklist shows no identifier
    crud.set_review_state(session, case_id=case.id, state="reviewed")
    crud.record_truth(session, case_id=case.id, structure="liver", dice=0.8, nsd=0.9, hd95_mm=3.0, source="upload")
    crud.record_acquisition(session, study_id=study.id, header=_header())


def _import_ehr(session: Session, folder: Path) -> None:
    """An EHR export naming the same patient (ID, name, birth date, accession) and a new one, imported."""
    export = folder / "ehr.csv"
    export.write_text(
        "patient_id,patient_name,birth_date,accession,sex,ethnic_group,weight_kg\n"
        f"{PATIENT_ID},{PATIENT_NAME},{date(1961, 9, 23).isoformat()},{ACCESSION},F,Asian,65\n"
        f"{PATIENT_ID}-NEW,{PATIENT_NAME}-NEW,{BIRTH_DATE},{ACCESSION}-NEW,M,Kowalska,70\n",
        encoding="utf-8",
    )
    report = import_file(session, export, secret=TEST_SECRET, mapping=default_mapping())
    assert (report.matched, report.new, report.rejected) == (1, 1, [])


def test_no_column_is_named_like_an_identifier(registry_url: str) -> None:
    migrate(registry_url)
    inspector = sa.inspect(get_engine(registry_url))
    columns = [
        f"{table}.{column['name']}" for table in inspector.get_table_names() for column in inspector.get_columns(table)
    ]
    assert {c.split(".")[0] for c in columns} >= REGISTRY_TABLES
    assert len(columns) > 30
    assert [c for c in columns if FORBIDDEN_COLUMN.search(c.split(".")[1]) and c not in NOT_IDENTIFIERS] == []


def test_no_stored_value_holds_an_identifier(session: Session, registry_url: str, tmp_path: Path) -> None:
    _record_everything(session)
    _import_ehr(session, tmp_path)
    bind = get_engine(registry_url)
    stored: list[str] = []
    with bind.connect() as connection:
        for table in sa.inspect(bind).get_table_names():
            rows = connection.execute(sa.text(f"SELECT * FROM {bind.dialect.identifier_preparer.quote(table)}"))
            stored.extend(str(value) for row in rows for value in row)
    assert STUDY_UID in stored  # the scan sees what was recorded
    assert any(LIVER_REASON in v for v in stored)  # quality rows included
    assert "Asian" in stored and "upload" in stored  # the EHR import and case_structure rows included
    assert [(identifier, v) for v in stored for identifier in IDENTIFIERS if identifier in v] == []


def test_no_byte_of_the_sqlite_files_holds_an_identifier(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "registry.db")
    migrate(url)
    with Session(get_engine(url)) as session:
        _record_everything(session)
        _import_ehr(session, tmp_path)
    dispose_engines()  # close every connection: SQLite checkpoints the WAL into the main file
    files = sorted(tmp_path.glob("registry.db*"))
    content = b"".join(path.read_bytes() for path in files)
    assert STUDY_UID.encode() in content  # the scan sees what was recorded
    assert LIVER_REASON.encode() in content  # quality rows included
    assert [i for i in IDENTIFIERS if i.encode() in content] == []
