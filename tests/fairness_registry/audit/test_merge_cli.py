"""``fairnode audit export`` at two sites' registries, then ``fairnode audit merge``: the group report in JSON,
HTML and PDF through the single-site renderer, with no identifier and no suppressed group in any file."""

from __future__ import annotations

import json
from pathlib import Path

from sqlmodel import Session
from typer.testing import CliRunner

from fairness_registry.audit.synthetic import synthetic_frame
from fairness_registry.db import get_engine, migrate
from fairnode.cli import app
from tests.fairness_registry.audit.registry_cases import record_frame
from tests.fairness_registry.conftest import TEST_SECRET

TINY = "Tinytown"


def _site(root: Path, name: str, seed: int) -> tuple[dict[str, str], list[str]]:
    """A site's SQLite registry of 2026Q3 cases; returns its environment and every identifier that went in."""
    data_dir = root / name
    data_dir.mkdir()
    url = f"sqlite:///{data_dir / 'registry.db'}"
    migrate(url)
    frame = synthetic_frame(30, seed=seed, sites=(name,))
    frame["pseudonym"] = name + frame["pseudonym"]
    patients = sorted(frame["pseudonym"].unique())
    frame.loc[frame["pseudonym"].isin(patients[:3]), "site"] = TINY  # 3 patients: suppressed
    with Session(get_engine(url)) as session:
        recorded = record_frame(session, frame)
    env = {
        "FAIRNODE_DATA_DIR": str(data_dir),
        "FAIRNODE_REGISTRY_URL": url,
        "FAIRNODE_PSEUDONYM_SECRET": TEST_SECRET,
        "FAIRNODE_AUDIT__BOOTSTRAP": "200",
    }
    return env, recorded.identifiers


def test_export_then_merge_writes_the_group_report(tmp_path: Path) -> None:
    runner = CliRunner()
    files, identifiers = [], []
    for name, seed in (("North", 41), ("South", 42)):
        env, ids = _site(tmp_path, name, seed)
        identifiers += ids
        out = tmp_path / "exports" / f"{name}.json"
        result = runner.invoke(
            app, ["audit", "export", "--period", "2026Q3", "--name", name, "--out", str(out)], env=env
        )
        assert result.exit_code == 0, result.output
        files.append(out)
    group = tmp_path / "group"
    result = runner.invoke(app, ["audit", "merge", *map(str, files), "--out", str(group)])
    assert result.exit_code == 0, result.output
    report = json.loads((group / "report.json").read_text())
    assert report["group"]["sites"] == ["North", "South"] and report["meta"]["period"] == "2026Q3"
    assert report["summary"]["patients"] == 60 and report["regression"] == []
    html = (group / "report.html").read_text()
    assert "Group-level audit merged from the aggregates of 2 sites" in html and ">Wald<" in html
    assert (group / "report.pdf").read_bytes().startswith(b"%PDF")
    texts = [p.read_text(errors="ignore") for p in [*files, group / "report.json", group / "report.html"]]
    for text in texts:
        assert TINY not in text
        leaks = [i for i in identifiers if len(i) >= 4 and i in text]
        assert not leaks, leaks[:5]


def test_merge_refuses_a_file_that_is_not_an_export(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    result = CliRunner().invoke(app, ["audit", "merge", str(bad), str(bad), "--out", str(tmp_path / "out")])
    assert result.exit_code != 0 and "not a site export" in result.output
