"""``fairnode model``: train (with bias mitigation), export, list and compare models."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import Progress, TaskID
from rich.table import Table

from fairnode.cli import model_compare
from fairnode.cli.common import console, fail, progress_bar

if TYPE_CHECKING:
    from inference.training import TrainingProgress

app = typer.Typer(help="The bundled segmentation models.", no_args_is_help=True)


def _rich_progress(progress: Progress) -> TrainingProgress:
    """Training stages as rich progress tasks."""
    from inference.training import TrainingProgress

    class _RichTrainingProgress(TrainingProgress):
        def __init__(self) -> None:
            self.task: TaskID | None = None

        def stage(self, name: str, total: int) -> None:
            if self.task is not None:
                progress.update(self.task, completed=progress.tasks[self.task].total)
            self.task = progress.add_task(name, total=total, info="")

        def advance(self, info: str = "") -> None:
            if self.task is not None:
                progress.update(self.task, advance=1, info=info)

    return _RichTrainingProgress()


@app.command("train")
def model_train(
    name: Annotated[str | None, typer.Argument(help="Model to train; see `fairnode model list`.")] = None,
    all_models: Annotated[bool, typer.Option("--all", help="Train every bundled model.")] = False,
    out: Annotated[Path | None, typer.Option(help="Models folder (default: the bundled models).")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes generating data.")] = 2,
    mitigation: Annotated[
        str | None,
        typer.Option(
            help="Bias mitigation: none, balanced, stratified-batches, reweighted, group-specific, group-dro. "
            "NAME is then the new model (e.g. xr-knee-balanced), trained from the recipe of --base."
        ),
    ] = None,
    group: Annotated[
        str,
        typer.Option(help="Group attribute(s) to balance: sex, ethnic_group, age_band, bmi_band; a,b = intersection."),
    ] = "sex",
    cohort_shift: Annotated[
        str | None, typer.Option(help="Training cohort: a shipped scenario name or a shift file (YAML).")
    ] = None,
    base: Annotated[str | None, typer.Option(help="Recipe to start from (default: the one NAME starts with).")] = None,
    iterations: Annotated[int | None, typer.Option(help="Training iterations (default: the recipe's).")] = None,
    n_train: Annotated[int | None, typer.Option(help="Training subjects (default: the recipe's).")] = None,
    grid_factor: Annotated[
        int, typer.Option(help="Coarser grid: spacing x factor, patch / factor (2: about 4x cheaper in 2D).")
    ] = 1,
    validate_model: Annotated[
        bool, typer.Option("--validate/--no-validate", help="Validate on held-out subjects.")
    ] = True,
    work: Annotated[Path, typer.Option(help="Cache of training images and weights (resumable).")] = Path(
        "data/mitigation"
    ),
) -> None:
    """Train a bundled model from scratch with fixed seeds, export its two ONNX graphs, validate it; or,
    with --mitigation / --cohort-shift, train a new model on a chosen cohort with a bias-mitigation strategy."""
    from inference.model_card import MODELS_DIR
    from inference.training import RECIPES, train_model

    if mitigation is not None or cohort_shift is not None:
        _train_mitigated(
            name,
            all_models,
            out or MODELS_DIR,
            workers,
            mitigation or "none",
            group,
            cohort_shift,
            base,
            iterations,
            n_train,
            grid_factor,
            validate_model,
            work,
        )
        return
    if all_models == (name is not None):
        fail(f"name one model ({', '.join(RECIPES)}) or pass --all")
    names = list(RECIPES) if all_models else [str(name)]
    for n in names:
        if n not in RECIPES:
            fail(f"unknown model '{n}'; choose one of: {', '.join(RECIPES)}")
    root = out or MODELS_DIR
    for n in names:
        with progress_bar() as progress:
            card = train_model(RECIPES[n], root / n, workers=workers, progress=_rich_progress(progress))
        dice = ", ".join(f"{k} {v:.3f}" for k, v in (card.validation.dice if card.validation else {}).items())
        console.print(f"{n}: validation Dice {dice}")


def _train_mitigated(
    name: str | None,
    all_models: bool,
    root: Path,
    workers: int,
    strategy: str,
    group: str,
    cohort_shift: str | None,
    base: str | None,
    iterations: int | None,
    n_train: int | None,
    grid_factor: int,
    validate_model: bool,
    work: Path,
) -> None:
    import dataclasses

    from cohorts.shift import BALANCED, ShiftFileError, load_shift, shipped_scenarios
    from inference.mitigation import MitigationError, check_strategy, parse_groups
    from inference.mitigation_training import coarser_grid, mitigation_recipe, train_mitigated
    from inference.model_card import load_card, save_card
    from inference.training import RECIPES, validate

    if all_models or name is None:
        fail("name the new model (e.g. xr-knee-balanced); --all does not combine with --mitigation/--cohort-shift")
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
        fail(f"model name '{name}' must be lower-case letters, digits and hyphens")
    recipe_name = base or next((r for r in sorted(RECIPES, key=len, reverse=True) if name.startswith(r)), None)
    if recipe_name is None or recipe_name not in RECIPES:
        fail(f"no recipe for '{name}'; pass --base with one of: {', '.join(RECIPES)}")
    try:
        check_strategy(strategy)
        attributes = parse_groups(group)
    except MitigationError as exc:
        fail(str(exc))
    shift = BALANCED
    if cohort_shift is not None:
        path = shipped_scenarios().get(cohort_shift, Path(cohort_shift))
        if not path.is_file():
            fail(
                f"cohort shift '{cohort_shift}' is neither a shipped scenario "
                f"({', '.join(shipped_scenarios())}) nor a file"
            )
        try:
            shift = load_shift(path)
        except ShiftFileError as exc:
            fail(str(exc))
    if grid_factor < 1:
        fail(f"--grid-factor must be >= 1, got {grid_factor}")
    recipe = RECIPES[recipe_name]
    recipe = coarser_grid(recipe, grid_factor) if grid_factor > 1 else recipe
    recipe = dataclasses.replace(recipe, iterations=iterations or recipe.iterations, n_train=n_train or recipe.n_train)
    recipe = mitigation_recipe(recipe, name, strategy, attributes, shift)
    try:
        with progress_bar() as progress:
            folders = train_mitigated(recipe, root, work / "cache", workers, _rich_progress(progress))
            if validate_model:
                for model_name, folder in folders.items():
                    v_recipe = dataclasses.replace(recipe, name=model_name)
                    p = _rich_progress(progress)
                    p.stage(f"{model_name}: validating on {recipe.n_validate} held-out subjects", recipe.n_validate)
                    validation = validate(v_recipe, folder, workers, p.advance)
                    save_card(load_card(folder).model_copy(update={"validation": validation}), folder)
    except MitigationError as exc:
        fail(str(exc))
    for model_name, folder in folders.items():
        card = load_card(folder)
        mit = card.mitigation
        groups = ", ".join(f"{g} {n}" for g, n in (mit.training_groups if mit else {}).items())
        dice = (
            ", ".join(f"{k} {v:.3f}" for k, v in card.validation.dice.items()) if card.validation else "not validated"
        )
        console.print(f"{model_name}: {strategy} over {','.join(attributes)} (training groups: {groups}); {dice}")


@app.command("export")
def model_export(
    name: Annotated[str, typer.Argument(help="Bundled model to export again from its weights.")],
) -> None:
    """Export a bundled model's two ONNX graphs again from its shipped torch weights, check them against
    torch (within 1e-4) and that MC-dropout samples differ, and update the card's file digests."""
    import numpy as np
    import torch

    from inference.export import export_graphs, max_abs_difference
    from inference.model_card import ModelCardError, bundled_models, load_card, save_card, sha256_of
    from inference.network import build_unet
    from inference.segmenter import Segmenter
    from inference.training import EXPORT_TOLERANCE

    models = bundled_models()
    if name not in models:
        fail(f"unknown model '{name}'; bundled: {', '.join(models) or 'none'}")
    folder = models[name]
    try:
        card = load_card(folder)
    except ModelCardError as exc:
        fail(str(exc))
    weights = folder / card.files.weights
    if sha256_of(weights) != card.files.weights_sha256:
        fail(f"{weights} does not match the sha256 in its card; retrain with `fairnode model train {name}`")
    model = build_unet(card.network, card.input.spatial_dims, card.n_classes)
    model.load_state_dict(torch.load(weights, weights_only=True))
    det, mc = export_graphs(model, card.input.patch_size, folder)
    x = np.random.default_rng(0).random((1, 1, *card.input.patch_size), dtype=np.float32)
    diff = max_abs_difference(model, det, x)
    if diff > EXPORT_TOLERANCE:
        fail(f"{det} differs from torch by {diff:.2e} (allowed {EXPORT_TOLERANCE})")
    files = card.files.model_copy(update={"deterministic_sha256": sha256_of(det), "mc_dropout_sha256": sha256_of(mc)})
    save_card(card.model_copy(update={"files": files}), folder)
    seg = Segmenter(folder, prefer_gpu=False)
    a = seg.model_grid_probabilities(x[0], mc_dropout=True)
    b = seg.model_grid_probabilities(x[0], mc_dropout=True)
    console.print(
        f"{name}: exported {det.name} (max |ONNX - torch| {diff:.1e}) and {mc.name} "
        f"(MC-dropout samples differ by up to {float(np.abs(a - b).max()):.3f}); card updated"
    )


@app.command("list")
def model_list() -> None:
    """The bundled models with their validation Dice per label."""
    from inference.model_card import ModelCardError, bundled_models, load_card

    table = Table("model", "version", "modality", "labels: validation Dice (held-out n)", "training n", "mitigation")
    for folder in bundled_models().values():
        try:
            card = load_card(folder)
        except ModelCardError as exc:
            fail(str(exc))
        v = card.validation
        dice = ", ".join(f"{k} {d:.3f}" for k, d in v.dice.items()) + f" (n={v.cohort.n})" if v else "not validated"
        mit = card.mitigation
        mitigation = f"{mit.strategy} ({','.join(mit.group_by)})" if mit else "none"
        table.add_row(card.name, card.version, card.input.modality, dice, str(card.training.cohort.n), mitigation)
    console.print(table)


app.command("compare")(model_compare.model_compare)
