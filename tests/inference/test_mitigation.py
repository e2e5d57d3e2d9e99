"""Bias mitigation: what each strategy promises (shares, batches, weights, group DRO) and tiny trainings."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest
import torch

from cohorts.shift import load_shift, shipped_scenarios
from cohorts.subjects import Subject, draw_subject
from inference.mitigation import (
    STRATEGIES,
    GroupDRO,
    Mitigation,
    MitigationError,
    StratifiedBatchSampler,
    group_key,
    inverse_frequency_weights,
    model_name_for_group,
    parse_groups,
)
from inference.model_card import NetworkSpec
from inference.training import RECIPES, Example, Recipe, train_network


@pytest.fixture(scope="module")
def women15() -> list[Subject]:
    """120 subjects of the under-represented-women scenario (15% women): demographics only, no images."""
    shift = load_shift(shipped_scenarios()["under-represented-women"])
    return [draw_subject("xr-knee", i, 1000, shift) for i in range(120)]


def test_balanced_sampler_draws_every_group_in_equal_share(women15: list[Subject]) -> None:
    counts = Counter(s.sex for s in women15)
    assert counts["F"] < 0.3 * len(women15)  # the cohort is imbalanced
    m = Mitigation("balanced", ["sex"], women15)
    drawn = Counter(m.labels[i] for batch in m.batches(1000, 4, seed=1) for i in batch)
    share_f = drawn["F"] / sum(drawn.values())
    assert abs(share_f - 0.5) < 0.03, share_f
    none = Mitigation("none", ["sex"], women15)
    drawn_none = Counter(none.labels[i] for batch in none.batches(1000, 4, seed=1) for i in batch)
    assert drawn_none["F"] / sum(drawn_none.values()) < 0.25  # uniform sampling keeps the imbalance


def test_stratified_batches_hold_every_group_in_equal_share(women15: list[Subject]) -> None:
    m = Mitigation("stratified-batches", ["sex"], women15)
    for batch in m.batches(50, 4, seed=2):
        assert Counter(m.labels[i] for i in batch) == {"F": 2, "M": 2}
    # an intersection: 2 sexes x the ethnic groups present; every batch holds each one
    inter = Mitigation("stratified-batches", ["sex", "ethnic_group"], women15)
    groups = set(inter.labels)
    assert len(groups) >= 6 and all("/" in g for g in groups)
    size = len(groups) + 1
    for batch in inter.batches(20, size, seed=3):
        assert {inter.labels[i] for i in batch} == groups
    with pytest.raises(MitigationError, match="cannot hold each"):
        list(StratifiedBatchSampler(inter.labels, 2, 1, 0))


def test_weights_are_inverse_group_frequencies(women15: list[Subject]) -> None:
    m = Mitigation("reweighted", ["sex"], women15)
    n, n_f = len(women15), m.labels.count("F")
    f = m.weights[m.labels.index("F")]
    assert f == pytest.approx(n / (2 * n_f))
    assert m.weights.mean() == pytest.approx(1.0)
    sums = {g: m.weights[[lab == g for lab in m.labels]].sum() for g in ("F", "M")}
    assert sums["F"] == pytest.approx(sums["M"])
    assert inverse_frequency_weights(["a", "a", "a", "b"]).tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3, 2.0])
    # the reweighted loss is the weighted mean of the per-sample losses
    per = torch.tensor([1.0, 1.0, 3.0, 3.0])
    idx = [m.labels.index("M")] * 2 + [m.labels.index("F")] * 2
    expected = (1.0 * 2 * m.weights[idx[0]] + 3.0 * 2 * f) / (2 * m.weights[idx[0]] + 2 * f)
    assert float(m.loss(per, idx)) == pytest.approx(expected)


def test_group_dro_raises_the_weight_of_the_worst_group() -> None:
    dro = GroupDRO(["F", "M"], step=0.1)
    for _ in range(50):
        dro.update({"F": 1.0, "M": 0.2})
    assert dro.q[0] > 0.9 and dro.q.sum() == pytest.approx(1.0)
    assert dro.history[0][0] < dro.history[-1][0]


def _fake_examples(n: int, hard_group: str) -> list[Example]:
    """Tiny 32 x 32 examples: four labelled squares (classes 1-4) drawn bright in the image; for
    ``hard_group`` the image is blank and the squares sit at a random offset (nothing to learn from)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        s = draw_subject("xr-knee", i, 1000)
        img = np.zeros((1, 32, 32), np.float32)
        lab = np.zeros((1, 32, 32), np.uint8)
        hard = s.sex == hard_group
        dy, dx = (int(v) for v in rng.integers(-6, 7, 2)) if hard else (0, 0)
        for k, (y, x) in enumerate([(8, 8), (8, 16), (16, 8), (16, 16)], start=1):
            lab[0, y + dy : y + dy + 8, x + dx : x + dx + 8] = k
            if not hard:
                img[0, y : y + 8, x : x + 8] = 0.25 * k
        out.append(Example(subject=s, image=img, labels=lab))
    return out


def _tiny_recipe(iterations: int, batch_size: int = 4) -> Recipe:
    base = RECIPES["xr-knee"]
    grid = base.input.model_copy(update={"spacing_mm": (8.0, 8.0), "patch_size": (32, 32)})
    return dataclasses.replace(
        base,
        input=grid,
        network=NetworkSpec(channels=(4, 8), strides=(2,), num_res_units=0, dropout=0.1),
        iterations=iterations,
        batch_size=batch_size,
        foreground_ratio=0.5,
    )


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "group-specific"])
def test_each_strategy_trains_a_tiny_model(strategy: str) -> None:
    examples = _fake_examples(12, hard_group="")
    m = Mitigation(strategy, ["sex"], [ex.subject for ex in examples])
    losses: list[float] = []
    model = train_network(_tiny_recipe(6), examples, lambda it, loss: losses.append(loss), m)
    assert len(losses) == 6 and all(np.isfinite(losses))
    out = model(torch.zeros(1, 1, 32, 32))
    assert out.shape == (1, 5, 32, 32)


def test_group_dro_training_upweights_the_group_it_fails() -> None:
    examples = _fake_examples(16, hard_group="F")
    m = Mitigation("group-dro", ["sex"], [ex.subject for ex in examples])
    train_network(_tiny_recipe(25), examples, None, m)
    assert m.dro is not None
    q = dict(zip(m.groups, m.dro.history[-1], strict=True))
    assert q["F"] > q["M"], q
    assert m.summary()["dro_final_weights"] == q


def test_bad_input_is_a_clear_error(women15: list[Subject]) -> None:
    with pytest.raises(MitigationError, match="unknown mitigation 'fair'; choose one of: none, balanced"):
        Mitigation("fair", ["sex"], women15)
    with pytest.raises(MitigationError, match="unknown group attribute 'height'"):
        parse_groups("sex,height")
    with pytest.raises(MitigationError, match=r"group Asian/F, Black/F .*has no subject"):
        Mitigation("balanced", ["ethnic_group", "sex"], women15[:3], expected=["Asian/F", "Black/F"])
    assert parse_groups("sex, ethnic_group") == ("sex", "ethnic_group")


def test_group_names() -> None:
    s = draw_subject("xr-knee", 0, 1000)
    assert group_key(s, ["sex", "ethnic_group"]) == f"{s.sex}/{s.ethnic_group}"
    assert model_name_for_group("xr-knee-gs", "F/Black") == "xr-knee-gs-f-black"
