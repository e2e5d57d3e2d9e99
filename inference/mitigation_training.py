"""Train models with a bias-mitigation strategy: one model, or for ``group-specific`` one per group plus a
fallback, each written as a deployable model folder (two ONNX graphs, weights, card with its mitigation).

Training images are prepared once per (task, cohort, grid) and cached as ``.npz`` under ``cache``; trained
weights are cached by a digest of everything that defines them (not the model's name), so the
``group-specific`` fallback reuses the ``none`` model of the same cohort and an interrupted experiment
resumes without training anything twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from cohorts.shift import ShiftSpec
from cohorts.subjects import draw_subject
from inference.mitigation import (
    Mitigation,
    MitigationError,
    check_strategy,
    group_subsets,
    model_name_for_group,
    parse_groups,
)
from inference.model_card import CohortSpec, MitigationSpec, ModelCard, save_card
from inference.network import build_unet
from inference.training import (
    Example,
    Recipe,
    TrainingProgress,
    build_card,
    export_and_check,
    prepare_examples,
    train_network,
    training_spec,
)

logger = logging.getLogger(__name__)


def expected_groups(shift: ShiftSpec, attributes: tuple[str, ...]) -> list[str]:
    """Groups a shift file pins down on every one of ``attributes`` (each must appear in training)."""
    out = []
    for g in shift.groups:
        values = [getattr(g.match, a) for a in attributes]
        if all(v is not None for v in values):
            out.append("/".join(str(v) for v in values))
    return sorted(set(out))


def mitigation_recipe(
    base: Recipe, name: str, strategy: str, group_by: str | tuple[str, ...], shift: ShiftSpec
) -> Recipe:
    """``base`` renamed, trained on ``shift`` with ``strategy`` balancing ``group_by`` (checked)."""
    return dataclasses.replace(
        base,
        name=name,
        description=f"{base.description} Trained on {shift.name} with bias mitigation '{check_strategy(strategy)}'.",
        train_shift=shift,
        mitigation=strategy,
        group_by=parse_groups(group_by),
    )


def _examples_key(recipe: Recipe) -> str:
    spec = {
        "kind": recipe.kind,
        "n": recipe.n_train,
        "seed": recipe.train_seed,
        "shift": recipe.train_shift.model_dump(),
        "input": recipe.input.model_dump(),
        "generate": [list(kv) for kv in recipe.train_generate_kwargs],
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_examples(
    recipe: Recipe, cache: Path, workers: int, progress: TrainingProgress | None = None
) -> list[Example]:
    """The recipe's training examples, generated once and kept in ``cache`` (``.npz``)."""
    path = cache / f"examples-{recipe.kind}-{_examples_key(recipe)}.npz"
    subjects = [draw_subject(recipe.kind, i, recipe.train_seed, recipe.train_shift) for i in range(recipe.n_train)]
    if path.is_file():
        with np.load(path) as data:
            return [
                Example(subject=s, image=data[f"image_{i}"], labels=data[f"labels_{i}"]) for i, s in enumerate(subjects)
            ]
    p = progress or TrainingProgress()
    p.stage(f"{recipe.name}: generating {recipe.n_train} training subjects", recipe.n_train)
    examples = prepare_examples(recipe, recipe.n_train, recipe.train_seed, workers, lambda: p.advance())
    cache.mkdir(parents=True, exist_ok=True)
    arrays = {f"image_{i}": ex.image for i, ex in enumerate(examples)}
    arrays |= {f"labels_{i}": ex.labels for i, ex in enumerate(examples)}
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]
    tmp.replace(path)
    return examples


def _weights_key(recipe: Recipe, strategy: str, members: list[int]) -> str:
    spec = dataclasses.asdict(recipe) | {"name": "", "description": "", "mitigation": strategy, "members": members}
    spec["train_shift"] = recipe.train_shift.model_dump()
    spec["input"] = recipe.input.model_dump()
    spec["network"] = recipe.network.model_dump()
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _train_cached(
    recipe: Recipe,
    strategy: str,
    examples: list[Example],
    members: list[int],
    cache: Path,
    progress: TrainingProgress,
) -> tuple[torch.nn.Module, Mitigation, float]:
    """Train (or load from ``cache``) the network of ``strategy`` on ``examples[members]``."""
    subset = [examples[i] for i in members]
    mitigation = Mitigation(strategy, recipe.group_by, [ex.subject for ex in subset])
    key = _weights_key(recipe, strategy, members)
    path = cache / f"weights-{key}.pt"
    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file():
        model: torch.nn.Module = build_unet(recipe.network, recipe.input.spatial_dims, _n_classes(recipe))
        model.load_state_dict(torch.load(path, weights_only=True))
        model.eval()
        info = json.loads(meta.read_text(encoding="utf-8"))
        if info.get("dro_history") and mitigation.dro is not None:
            mitigation.dro.history = [info["dro_history"]]
        logger.info("%s: trained weights %s reused", recipe.name, path.name)
        return model, mitigation, float(info["seconds"])
    t0 = time.perf_counter()
    progress.stage(
        f"{recipe.name}: training {recipe.iterations} iterations ({strategy}, {len(subset)} subjects)",
        recipe.iterations,
    )
    model = train_network(recipe, subset, lambda it, loss: progress.advance(f"loss {loss:.3f}"), mitigation)
    seconds = time.perf_counter() - t0
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    history = mitigation.dro.history[-1] if mitigation.dro is not None and mitigation.dro.history else None
    meta.write_text(json.dumps({"seconds": seconds, "dro_history": history}), encoding="utf-8")
    return model, mitigation, seconds


def _n_classes(recipe: Recipe) -> int:
    from cohorts.kinds import get_kind

    return len(get_kind(recipe.kind).labels) + 1


def _write_model(
    recipe: Recipe,
    folder: Path,
    model: torch.nn.Module,
    examples: list[Example],
    mitigation: Mitigation,
    seconds: float,
    group: str | None,
) -> ModelCard:
    export_and_check(recipe, model, folder)
    training = training_spec(recipe, examples, seconds)
    training = training.model_copy(
        update={
            "cohort": CohortSpec(
                kind=recipe.kind, n=len(examples), seed=recipe.train_seed, shift=recipe.train_shift.name
            )
        }
    )
    summary = mitigation.summary()
    spec = MitigationSpec(
        strategy=recipe.mitigation,
        group_by=recipe.group_by,
        training_groups=summary["training_groups"],
        sample_weights=summary["sample_weights"],
        dro_final_weights=summary.get("dro_final_weights"),
        group=group,
        note=""
        if group is None or recipe.mitigation != "group-specific"
        else f"serves {'/'.join(recipe.group_by)}={group}",
    )
    card = build_card(recipe, folder, training, None).model_copy(update={"mitigation": spec})
    card = card.model_copy(
        update={
            "reproduce": (
                "make install",
                f".venv/bin/fairnode model train {recipe.name} --mitigation {recipe.mitigation} "
                f"--group {','.join(recipe.group_by)} --cohort-shift {recipe.train_shift.name}",
            )
        }
    )
    save_card(card, folder)
    return card


def train_mitigated(
    recipe: Recipe,
    root: Path,
    cache: Path,
    workers: int = 1,
    progress: TrainingProgress | None = None,
) -> dict[str, Path]:
    """Train ``recipe`` with its mitigation into ``root``; returns the model folders by model name.

    ``group-specific`` gives the fallback ``recipe.name`` (trained on everyone, as ``none``) and one model
    per group (:func:`~inference.mitigation.model_name_for_group`), each trained on its group's subjects.

    Raises
    ------
    MitigationError
        If a group the shift file names has no training subject, or a group attribute is unknown.
    """
    p = progress or TrainingProgress()
    # subjects are cheap to draw: check the attributes, that no group the cohort's shift names is empty
    # and that each group-specific model has subjects before any image is generated
    subjects = [draw_subject(recipe.kind, i, recipe.train_seed, recipe.train_shift) for i in range(recipe.n_train)]
    Mitigation(recipe.mitigation, recipe.group_by, subjects, expected_groups(recipe.train_shift, recipe.group_by))
    subsets = group_subsets(subjects, recipe.group_by)
    small = {g: len(m) for g, m in subsets.items() if len(m) < 2}
    if recipe.mitigation == "group-specific" and small:
        raise MitigationError(f"groups {small} have fewer than 2 training subjects; group-specific needs >= 2 each")
    examples = cached_examples(recipe, cache, workers, p)
    everyone = list(range(len(examples)))
    out: dict[str, Path] = {}
    if recipe.mitigation != "group-specific":
        model, mitigation, seconds = _train_cached(recipe, recipe.mitigation, examples, everyone, cache, p)
        _write_model(recipe, root / recipe.name, model, examples, mitigation, seconds, None)
        out[recipe.name] = root / recipe.name
        return out
    model, mitigation, seconds = _train_cached(recipe, "none", examples, everyone, cache, p)
    _write_model(recipe, root / recipe.name, model, examples, mitigation, seconds, None)
    out[recipe.name] = root / recipe.name
    for group, members in subsets.items():
        name = model_name_for_group(recipe.name, group)
        sub_recipe = dataclasses.replace(recipe, name=name)
        model, mitigation, seconds = _train_cached(sub_recipe, "none", examples, members, cache, p)
        _write_model(sub_recipe, root / name, model, [examples[i] for i in members], mitigation, seconds, group)
        out[name] = root / name
    return out


def remove_models(folders: dict[str, Path]) -> None:
    """Delete model folders (tests, failed experiments)."""
    for f in folders.values():
        shutil.rmtree(f, ignore_errors=True)


def coarser_grid(recipe: Recipe, factor: int) -> Recipe:
    """``recipe`` on a grid ``factor`` times coarser: spacing x factor, patch / factor (same field of view)."""
    spec = recipe.input.model_dump() | {
        "spacing_mm": tuple(s * factor for s in recipe.input.spacing_mm),
        "patch_size": tuple(max(16, p // factor) for p in recipe.input.patch_size),
    }
    return dataclasses.replace(recipe, input=type(recipe.input).model_validate(spec))
