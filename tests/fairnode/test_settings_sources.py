"""Where settings come from: code overrides, then the environment, then the settings file, then defaults —
merged value by value inside a section."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fairnode.settings import SettingsFileError, load_settings


def _file(tmp_path: Path) -> Path:
    path = tmp_path / "fairnode.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "port": 11113,
                "jobs": {"mode": "celery", "broker_url": "redis://broker.example:6379/2"},
            }
        ),
        encoding="utf-8",
    )
    return path


def test_an_environment_value_changes_one_value_of_a_file_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAIRNODE_JOBS__METRICS_PORT", "9100")
    settings = load_settings(_file(tmp_path))
    assert (settings.jobs.mode, settings.jobs.broker_url, settings.jobs.metrics_port) == (
        "celery",
        "redis://broker.example:6379/2",
        9100,
    )


def test_environment_beats_file_and_code_beats_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIRNODE_PORT", "4242")
    monkeypatch.setenv("FAIRNODE_JOBS__MODE", "in-process")
    assert load_settings(_file(tmp_path)).port == 4242
    assert load_settings(_file(tmp_path)).jobs.mode == "in-process"
    assert load_settings(_file(tmp_path), port=5000).port == 5000
    monkeypatch.delenv("FAIRNODE_PORT")
    assert load_settings(_file(tmp_path)).port == 11113


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("- port: 1\n", encoding="utf-8")
    with pytest.raises(SettingsFileError, match="must hold a mapping"):
        load_settings(path)
