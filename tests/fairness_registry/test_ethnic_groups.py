"""The EthnicGroup mapping table: the shipped YAML, a site's own table, and `fairnode registry unmapped`."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import Session
from typer.testing import CliRunner

from fairness_registry import crud
from fairness_registry.db import get_engine, migrate
from fairness_registry.demographics import EthnicGroup, normalise_ethnic_group
from fairness_registry.ethnic_groups import (
    DEFAULT_MAPPING_PATH,
    EthnicGroupMapping,
    MappingFileError,
    MatchKind,
    default_mapping,
)
from fairness_registry.settings import RegistrySettings
from fairnode.cli import app
from tests.fairness_registry.conftest import TEST_SECRET

SITE_TABLE = """
mixed: Mixed
groups:
  European: [white, caucasian, european]
  African: [black, african]
  Pacific: [maori, samoan, tongan, pacific islander]
  Mixed: [mixed]
unknown: [unknown, declined]
"""


def _site_table(tmp_path: Path, text: str = SITE_TABLE) -> Path:
    path = tmp_path / "groups.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_table_is_the_default() -> None:
    mapping = default_mapping()
    assert mapping.source == str(DEFAULT_MAPPING_PATH)
    assert set(mapping.groups) == {g.value for g in EthnicGroup} - {"unknown"}
    assert mapping.match("Black or African American") == ("Black", MatchKind.GROUP)
    assert mapping.match("White and Black Caribbean") == ("Other", MatchKind.MIXED)
    assert mapping.match("Declined") == ("unknown", MatchKind.UNKNOWN_TERM)
    assert mapping.match("Not Hispanic or Latino") == ("unknown", MatchKind.UNMAPPED)
    assert mapping.match("Klingon") == ("unknown", MatchKind.UNMAPPED)
    assert normalise_ethnic_group("Caucasian") is EthnicGroup.WHITE


def test_a_site_table_replaces_the_groups(tmp_path: Path) -> None:
    mapping = RegistrySettings(ethnic_groups=_site_table(tmp_path)).mapping()
    assert mapping.group("Maori") == "Pacific"
    assert mapping.group("Samoan / Tongan") == "Pacific"
    assert mapping.match("Caucasian and Samoan") == ("Mixed", MatchKind.MIXED)
    assert mapping.match("Hispanic") == ("unknown", MatchKind.UNMAPPED)  # not in this table
    assert normalise_ethnic_group("Tongan", mapping) == "Pacific"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("groups: [white]", "expected a mapping with 'groups'"),
        ("groups: {A: [x], B: [x]}", "listed under both 'A' and 'B'"),
        ("groups: {unknown: [x]}", "'unknown' is not a group"),
        ("groups: {ThisNameIsFarTooLong: [x]}", "at most 16 characters"),
        ("groups: {A: [x]}\nmixed: B", "mixed group 'B' is not one of the groups"),
        ("groups: {A: [x]}\ncolours: [red]", "unknown keys"),
        ("groups: {A: x}", "must list its synonyms"),
        ("groups: {A: [x]\n", "cannot read"),
    ],
)
def test_a_broken_table_is_refused_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(MappingFileError, match=message):
        EthnicGroupMapping.from_yaml(_site_table(tmp_path, text))


def test_missing_table_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(MappingFileError, match=r"cannot read the ethnic group mapping table .*nowhere\.yaml"):
        EthnicGroupMapping.from_yaml(tmp_path / "nowhere.yaml")


def test_record_study_uses_the_configured_table(session: Session, tmp_path: Path) -> None:
    mapping = RegistrySettings(ethnic_groups=_site_table(tmp_path)).mapping()
    study = crud.record_study(
        session,
        study_uid="1.2.3.4.1",
        patient_id="PID-PACIFIC",
        secret=TEST_SECRET,
        ethnic_group="Maori",
        ethnic_groups=mapping,
    )
    assert (study.ethnic_group, study.ethnic_group_text) == ("Pacific", "Maori")
    default = crud.record_study(
        session, study_uid="1.2.3.4.2", patient_id="PID-OTHER", secret=TEST_SECRET, ethnic_group="Maori"
    )
    assert default.ethnic_group == "Other"


def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, registry_url: str) -> None:
    monkeypatch.delenv("FAIRNODE_CONFIG", raising=False)
    monkeypatch.setenv("FAIRNODE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FAIRNODE_REGISTRY_URL", registry_url)
    monkeypatch.setenv("FAIRNODE_PSEUDONYM_SECRET", TEST_SECRET)


def test_unmapped_lists_the_texts_with_their_counts(
    registry_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate(registry_url)
    with Session(get_engine(registry_url)) as session:
        for number, (patient, text) in enumerate(
            [
                ("P1", "Klingon"),
                ("P1", "Klingon"),
                ("P2", "Klingon"),
                ("P3", "Vulcan"),
                ("P4", "White"),
                ("P5", "Declined"),
            ]
        ):
            crud.record_study(
                session, study_uid=f"1.2.3.5.{number}", patient_id=patient, secret=TEST_SECRET, ethnic_group=text
            )
    _env(monkeypatch, tmp_path, registry_url)
    runner = CliRunner()
    result = runner.invoke(app, ["registry", "unmapped"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "Klingon" in line or "Vulcan" in line]
    assert [[cell.strip() for cell in line.split("│")[1:6]] for line in lines] == [
        ["Klingon", "unmapped", "unknown", "3", "2"],  # text, group now, stored as, studies, patients
        ["Vulcan", "unmapped", "unknown", "1", "1"],
    ]
    assert "White" not in result.output and "Declined" not in result.output
    assert "2 unmapped texts on 4 studies" in result.output

    # a site table that maps them leaves nothing unmapped; --all shows every text with its group
    table = _site_table(tmp_path, "groups: {Klingon: [klingon], Vulcan: [vulcan], White: [white]}\nunknown: [declined]")
    monkeypatch.setenv("FAIRNODE_REGISTRY_OPTIONS__ETHNIC_GROUPS", str(table))
    result = runner.invoke(app, ["registry", "unmapped"])
    assert (
        result.exit_code == 0
        and "every ethnic group text in the registry is mapped (4 distinct texts)" in result.output
    )
    result = runner.invoke(app, ["registry", "unmapped", "--all"])
    assert "Klingon" in result.output and "Declined" in result.output

    # remap gives the studies stored as unknown their new group; nothing else changes
    result = runner.invoke(app, ["registry", "remap", "--dry-run"])
    assert result.exit_code == 0 and "4 studies would get an ethnic group" in result.output
    result = runner.invoke(app, ["registry", "remap"])
    assert result.exit_code == 0 and "4 studies got an ethnic group" in result.output
    with Session(get_engine(registry_url)) as session:
        texts = crud.ethnic_group_texts(session)
    assert texts == [
        ("Klingon", "Klingon", 3, 2),
        ("Declined", "unknown", 1, 1),
        ("Vulcan", "Vulcan", 1, 1),
        ("White", "White", 1, 1),
    ]
    assert "0 studies got" in runner.invoke(app, ["registry", "remap"]).output


def test_unmapped_on_a_registry_without_schema_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, tmp_path, f"sqlite:///{tmp_path / 'empty.db'}")
    result = CliRunner().invoke(app, ["registry", "unmapped"])
    assert result.exit_code == 2
    assert "has no schema yet" in result.output and "Traceback" not in result.output
