"""EHR demographics import on both backends: the report, which value wins, and all or nothing."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select
from typer.testing import CliRunner

from fairness_registry import crud, ehr_import
from fairness_registry.db import get_engine, migrate
from fairness_registry.ehr_import import EhrFileError, import_file, read_file
from fairness_registry.ethnic_groups import default_mapping
from fairness_registry.models import Study, Subject
from fairness_registry.pseudonym import pseudonymise
from fairnode.cli import app
from tests.fairness_registry.conftest import TEST_SECRET

AS_OF = date(2025, 1, 10)
A_1, A_2, B_1, NEW_1 = (f"1.2.826.0.1.3680043.8.498.95{n}" for n in range(4))
EXPORT = """\
Patient ID,Sex,Date of Birth,Age,Ethnicity,Weight,Height_m,Patient Name
PID-A,F,1979-06-15,,Asian,90,1.75,Doe^Jane
PID-B,female,,52,Black,,,Roe^Ann
PID-NEW,M,,,Klingon,,,New^Kim
,F,,,,,,Nobody^Known
PID-A,F,,,,,,Doe^Jane
PID-X1,X,,,,,,Ex^One
PID-X2,F,31/02/1980,,,,,Ex^Two
PID-X3,,,,,900,,Ex^Three
PID-X4,,,,,,,Ex^Four
PID-X5,F,,,,,,Ex^Five,extra

"""
PATIENT_IDS = ("PID-A", "PID-B", "PID-NEW", "PID-X1", "PID-X2", "PID-X3", "PID-X4", "PID-X5")
EXPECTED_REJECTED = [
    (5, "patient ID is empty"),
    (6, "same patient as row 2; one row per patient"),
    (7, "sex 'X' is not recognised; accepted: M, F, O, male, female, other"),
    (8, "birth_date is not a plausible date (accepted: YYYY-MM-DD or YYYYMMDD, not in the future)"),
    (9, "weight_kg '900' is not a weight in kg (0 to 400)"),
    (10, "no demographic value given (only the patient ID)"),
    (11, "has 9 fields but the first row names 8"),
]


def _studies(session: Session) -> None:
    """Patient A: 2020 (M, 40 y, White, 80 kg) and 2024 (nothing but 82 kg); patient B: 2023 (F, 50 y, Black)."""
    record = crud.record_study
    record(
        session,
        study_uid=A_1,
        patient_id="PID-A",
        secret=TEST_SECRET,
        study_date="20200301",
        patient_sex="M",
        patient_age="040Y",
        ethnic_group="White",
        patient_weight="80",
    )
    record(session, study_uid=A_2, patient_id="PID-A", secret=TEST_SECRET, study_date="20240502", patient_weight="82")
    record(
        session,
        study_uid=B_1,
        patient_id="PID-B",
        secret=TEST_SECRET,
        study_date="20230110",
        patient_sex="F",
        patient_age="050Y",
        ethnic_group="Black",
    )


def _export(tmp_path: Path, text: str = EXPORT, name: str = "ehr.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _dump(url: str) -> list[tuple[object, ...]]:
    """Every row of subject and study, for comparing before and after."""
    with get_engine(url).connect() as connection:
        subjects = connection.execute(sa.text("SELECT * FROM subject ORDER BY pseudonym")).all()
        studies = connection.execute(sa.text("SELECT * FROM study ORDER BY id")).all()
    return [tuple(r) for r in (*subjects, *studies)]


def _study(session: Session, uid: str) -> Study:
    return session.exec(select(Study).where(Study.study_uid == uid)).one()


def test_import_report_and_rules(session: Session, tmp_path: Path) -> None:
    _studies(session)
    report = import_file(session, _export(tmp_path), secret=TEST_SECRET, mapping=default_mapping(), as_of=AS_OF)
    assert (report.rows, report.matched, report.new, report.conflicted) == (10, 2, 1, 1)
    assert report.rejected == EXPECTED_REJECTED
    assert report.conflicts == {"sex": 1, "ethnic_group": 1, "weight_kg": 1}
    assert (report.studies_updated, report.unmapped_ethnic_groups, report.committed) == (2, 1, True)
    assert report.ignored_columns == ["Patient Name"]

    session.expire_all()
    a_1, a_2, b_1 = (_study(session, uid) for uid in (A_1, A_2, B_1))
    # the EHR wins for sex, ethnic group and the age from the birth date ...
    assert (a_1.sex, a_1.ethnic_group, a_1.ethnic_group_text, a_1.age_years) == ("F", "Asian", "Asian", 40)
    assert (a_2.sex, a_2.ethnic_group, a_2.age_years, a_2.age_band) == ("F", "Asian", 44, "40-59")
    # ... the header for weight (the EHR fills the missing height)
    assert (a_1.weight_kg, a_1.height_m, a_2.weight_kg, a_2.height_m) == (80.0, 1.75, 82.0, 1.75)
    assert a_1.bmi == pytest.approx(80 / 1.75**2) and a_1.bmi_band == "overweight"
    assert (b_1.sex, b_1.age_years, b_1.ethnic_group) == ("F", 50, "Black")  # agreed: nothing changed
    subject = session.get(Subject, pseudonymise("PID-A", TEST_SECRET))
    assert subject is not None and (subject.sex, subject.ethnic_group, subject.age_years) == ("F", "Asian", 44)
    assert subject.ehr_imported_at is not None
    new = session.get(Subject, pseudonymise("PID-NEW", TEST_SECRET))
    assert new is not None and (new.sex, new.ethnic_group) == ("M", "unknown")


def test_later_studies_keep_the_ehr_sex_and_ethnic_group(session: Session, tmp_path: Path) -> None:
    _studies(session)
    import_file(session, _export(tmp_path), secret=TEST_SECRET, mapping=default_mapping(), as_of=AS_OF)
    later = crud.record_study(
        session,
        study_uid="1.2.826.0.1.3680043.8.498.959",
        patient_id="PID-A",
        secret=TEST_SECRET,
        study_date="20250105",
        patient_sex="M",
        ethnic_group="White",
        patient_age="045Y",
    )
    assert (later.sex, later.ethnic_group, later.ethnic_group_text, later.age_years) == ("F", "Asian", "White", 45)
    new = crud.record_study(session, study_uid=NEW_1, patient_id="PID-NEW", secret=TEST_SECRET, patient_sex="F")
    assert new.sex == "M"  # the subject created by the import
    subject = session.get(Subject, pseudonymise("PID-A", TEST_SECRET))
    assert subject is not None and (subject.sex, subject.age_years) == ("F", 45)


def test_age_column_fills_but_never_corrects(session: Session, tmp_path: Path) -> None:
    _studies(session)
    export = "patient_id,age\nPID-A,45\nPID-B,60\n"
    report = import_file(session, _export(tmp_path, export), secret=TEST_SECRET, mapping=default_mapping(), as_of=AS_OF)
    assert report.conflicts == {"age (approximate)": 1}  # B was 50 in 2023, not 58
    session.expire_all()
    assert _study(session, A_1).age_years == 40  # header kept; 45 on 2025-01-10 says 41 in 2020: within a year
    assert _study(session, A_2).age_years == 45  # filled: 2024-05-02 is 0 whole years before
    assert _study(session, B_1).age_years == 50


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("sex,age\nF,40\n", "no patient ID column; the first row must name one of patient_id, patientid, mrn, pid"),
        ("", "is empty; the first row must name the columns"),
        ("patient_id,mrn\n1,2\n", "columns 'patient_id' and 'mrn' both give patient_id"),
        (b"\xff\xfe\x00patient_id\n", "cannot read ehr.csv: not UTF-8 text"),
    ],
)
def test_a_malformed_file_changes_nothing(
    session: Session, registry_url: str, tmp_path: Path, content: str | bytes, message: str
) -> None:
    _studies(session)
    before = _dump(registry_url)
    path = tmp_path / "ehr.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(EhrFileError, match=message):
        import_file(session, path, secret=TEST_SECRET, mapping=default_mapping())
    assert _dump(registry_url) == before


def test_an_error_half_way_rolls_back_every_row(
    session: Session, registry_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _studies(session)
    before = _dump(registry_url)
    apply_subject = ehr_import._apply_subject
    calls: list[int] = []

    def failing_on_the_third(*args: object) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        apply_subject(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(ehr_import, "_apply_subject", failing_on_the_third)
    with pytest.raises(RuntimeError, match="disk full"):
        import_file(session, _export(tmp_path), secret=TEST_SECRET, mapping=default_mapping(), as_of=AS_OF)
    assert len(calls) == 3
    assert _dump(registry_url) == before


def test_dry_run_reports_and_writes_nothing(session: Session, registry_url: str, tmp_path: Path) -> None:
    _studies(session)
    before = _dump(registry_url)
    report = import_file(
        session, _export(tmp_path), secret=TEST_SECRET, mapping=default_mapping(), as_of=AS_OF, dry_run=True
    )
    assert (report.matched, report.new, report.conflicted, report.committed) == (2, 1, 1, False)
    assert _dump(registry_url) == before


def test_read_file_accepts_semicolons_a_bom_and_height_in_cm(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_text("\ufeffMRN;Gender;Height_cm\nP-1;male;181\nP-2;f;18\n", encoding="utf-8")
    records, report = read_file(path, secret=TEST_SECRET)
    assert [(r.row, r.sex, r.height_m) for r in records] == [(2, "M", 1.81)]
    assert report.rejected == [(3, "height_cm '18' is not a height in cm (50 to 250)")]


def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, registry_url: str) -> None:
    monkeypatch.delenv("FAIRNODE_CONFIG", raising=False)
    monkeypatch.setenv("FAIRNODE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FAIRNODE_REGISTRY_URL", registry_url)
    monkeypatch.setenv("FAIRNODE_PSEUDONYM_SECRET", TEST_SECRET)


def test_cli_prints_the_report_without_patient_ids(
    registry_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate(registry_url)
    with Session(get_engine(registry_url)) as session:
        _studies(session)
    _env(monkeypatch, tmp_path, registry_url)
    runner = CliRunner()
    result = runner.invoke(app, ["registry", "import-demographics", str(_export(tmp_path)), "--as-of", "2025-01-10"])
    assert result.exit_code == 0, result.output
    cells = {tuple(c.strip() for c in line.split("│")[1:-1]) for line in result.output.splitlines() if "│" in line}
    assert {
        ("read", "10"),
        ("matched (patient in the registry)", "2"),
        ("new (patient not in the registry yet)", "1"),
    } <= cells
    assert {("conflicted (a value differed)", "1"), ("rejected", "7"), ("study rows updated", "2")} <= cells
    assert ("sex", "1", "EHR") in {c[:3] for c in cells} and ("weight_kg", "1", "header") in {c[:3] for c in cells}
    assert ("5", "patient ID is empty") in cells
    assert "columns ignored (not demographics): Patient Name" in result.output
    assert [i for i in (*PATIENT_IDS, "Doe", "Jane", "1979") if i in result.output] == []

    missing = _export(tmp_path, "name,sex\nDoe,F\n", "bad.csv")
    before = _dump(registry_url)
    result = runner.invoke(app, ["registry", "import-demographics", str(missing)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "error: bad.csv: no patient ID column" in result.output and "nothing was imported" in result.output
    assert _dump(registry_url) == before
    result = runner.invoke(app, ["registry", "import-demographics", str(tmp_path / "absent.csv")])
    assert result.exit_code == 2 and "cannot read absent.csv: No such file or directory" in result.output


def test_cli_refuses_to_import_without_the_node_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, tmp_path, f"sqlite:///{tmp_path / 'r.db'}")
    monkeypatch.delenv("FAIRNODE_PSEUDONYM_SECRET")
    result = CliRunner().invoke(app, ["registry", "import-demographics", str(_export(tmp_path))])
    assert result.exit_code == 2 and "no pseudonymisation secret" in result.output
    assert not (tmp_path / "data" / "pseudonym.key").exists()
