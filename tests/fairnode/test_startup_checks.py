"""Start-up checks of the composition root: a node that cannot serve what its settings promise does not start."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dicom_node.selection import DEFAULT_RULES, SeriesRule
from fairnode.cli import app
from fairnode.node import offline_context
from fairnode.settings import load_settings
from inference.model_card import ModelCardError

BUNDLED = Path(__file__).resolve().parents[2] / "inference" / "models"


def _config(tmp_path: Path, model: str) -> Path:
    config = tmp_path / "fairnode.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "rules": [{"model": model, "modalities": ["CT"]}, {"model": "xr-knee", "modalities": ["DX"]}],
            }
        ),
        encoding="utf-8",
    )
    return config


def test_rule_naming_a_missing_model_is_refused(tmp_path: Path) -> None:
    settings = load_settings(_config(tmp_path, "ct-liver-typo"))
    with pytest.raises(ModelCardError, match=r"ct-liver-typo \(installed: .*ct-abdomen.*xr-knee"):
        offline_context(settings)


def test_rules_naming_installed_models_are_accepted(tmp_path: Path) -> None:
    ctx = offline_context(load_settings(_config(tmp_path, "ct-abdomen")))
    assert [r.model for r in ctx.rules] == ["ct-abdomen", "xr-knee"]
    assert isinstance(ctx.rules[0], SeriesRule)


def test_serve_says_which_model_is_missing_and_starts_nothing(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["serve", "--config", str(_config(tmp_path, "ct-liver-typo"))])
    assert result.exit_code != 0
    assert "cannot start the node" in result.output and "ct-liver-typo" in result.output
    assert "Traceback" not in result.output


def test_default_rules_drop_models_that_are_not_installed(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "xr-knee").symlink_to(BUNDLED / "xr-knee", target_is_directory=True)
    ctx = offline_context(load_settings(None, data_dir=tmp_path / "data", models_dir=models))
    assert set(ctx.models.folders) == {"xr-knee"}
    assert ctx.rules == [r for r in DEFAULT_RULES if r.model == "xr-knee"]


def test_the_node_opens_models_with_the_configured_backend(tmp_path: Path) -> None:
    ctx = offline_context(load_settings(None, data_dir=tmp_path / "data", inference={"backend": "torch-cpu"}))
    segmenter = ctx.models.get("xr-knee")
    assert segmenter.backend == "torch-cpu", segmenter.providers_in_use


def test_a_started_node_keeps_its_long_lived_objects_out_of_the_collector(tmp_path: Path) -> None:
    import gc

    from fairnode.node import build_node
    from fairnode.settings import Settings

    node = build_node(Settings(data_dir=tmp_path / "data", port=0, http_port=0, pseudonym_secret="b" * 40))
    node.start()
    try:
        assert gc.get_freeze_count() > 100_000  # modules, models and settings: never walked by a collection
    finally:
        node.stop()
    assert gc.get_freeze_count() == 0
