from pathlib import Path

import pytest
import yaml

from inference.model_card import ModelCardError, bundled_models, load_card, sha256_of


def test_every_bundled_model_has_a_valid_card() -> None:
    models = bundled_models()
    assert {"ct-abdomen", "xr-knee"} <= set(models)
    for name, folder in models.items():
        card = load_card(folder)
        assert card.name == name
        assert sha256_of(folder / card.files.deterministic) == card.files.deterministic_sha256
        assert sha256_of(folder / card.files.mc_dropout) == card.files.mc_dropout_sha256
        assert sha256_of(folder / card.files.weights) == card.files.weights_sha256
        assert card.validation is not None and card.validation.cohort.n >= 40
        assert set(card.validation.dice) == {lab.name for lab in card.labels}
        for attr in ("sex", "age_band", "ethnic_group", "bmi_band"):
            assert card.validation.dice_by_group[attr], attr
            assert set(card.training.composition[attr]), attr
        assert any("fairnode model train" in cmd for cmd in card.reproduce)


def test_bundled_models_fit_the_size_budget() -> None:
    total = sum(p.stat().st_size for f in bundled_models().values() for p in f.iterdir())
    assert total <= 25 * 1024 * 1024


def _card_dict() -> dict:  # type: ignore[type-arg]
    folder = bundled_models()["ct-abdomen"]
    return yaml.safe_load((folder / "card.yaml").read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["labels"][0].update(code="liver"), "labels.0.code"),
        (lambda d: d["input"].update(spacing_mm=[3.0, 3.0]), "spacing_mm has 2 values"),
        (lambda d: d["input"]["intensity"].update(low=500.0), "must exceed low"),
        (lambda d: d.update(version="one"), "version"),
        (lambda d: d["labels"].reverse(), "label values must be 1.."),
        (lambda d: d.update(surprise=1), "surprise"),
    ],
)
def test_card_schema_rejects_bad_cards(tmp_path: Path, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    data = _card_dict()
    mutate(data)
    path = tmp_path / "card.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ModelCardError, match=message):
        load_card(path)
