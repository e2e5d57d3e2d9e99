"""``fairnode model``: train, export and list the bundled models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, TaskID
from rich.table import Table

from fairnode.cli.common import console, fail, progress_bar

app = typer.Typer(help="The bundled segmentation models.", no_args_is_help=True)


@app.command("train")
def model_train(
    name: Annotated[str | None, typer.Argument(help="Model to train; see `fairnode model list`.")] = None,
    all_models: Annotated[bool, typer.Option("--all", help="Train every bundled model.")] = False,
    out: Annotated[Path | None, typer.Option(help="Models folder (default: the bundled models).")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes generating data.")] = 2,
) -> None:
    """Train a bundled model from scratch with fixed seeds, export its two ONNX graphs, validate it."""
    from inference.model_card import MODELS_DIR
    from inference.training import RECIPES, TrainingProgress, train_model

    class _RichTrainingProgress(TrainingProgress):
        def __init__(self, progress: Progress):
            self.progress = progress
            self.task: TaskID | None = None

        def stage(self, name: str, total: int) -> None:
            if self.task is not None:
                self.progress.update(self.task, completed=self.progress.tasks[self.task].total)
            self.task = self.progress.add_task(name, total=total, info="")

        def advance(self, info: str = "") -> None:
            if self.task is not None:
                self.progress.update(self.task, advance=1, info=info)

    if all_models == (name is not None):
        fail(f"name one model ({', '.join(RECIPES)}) or pass --all")
    names = list(RECIPES) if all_models else [str(name)]
    for n in names:
        if n not in RECIPES:
            fail(f"unknown model '{n}'; choose one of: {', '.join(RECIPES)}")
    root = out or MODELS_DIR
    for n in names:
        with progress_bar() as progress:
            card = train_model(RECIPES[n], root / n, workers=workers, progress=_RichTrainingProgress(progress))
        dice = ", ".join(f"{k} {v:.3f}" for k, v in (card.validation.dice if card.validation else {}).items())
        console.print(f"{n}: validation Dice {dice}")


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

    table = Table("model", "version", "modality", "labels: validation Dice (held-out n)", "training n")
    for folder in bundled_models().values():
        try:
            card = load_card(folder)
        except ModelCardError as exc:
            fail(str(exc))
        v = card.validation
        dice = ", ".join(f"{k} {d:.3f}" for k, d in v.dice.items()) + f" (n={v.cohort.n})" if v else "not validated"
        table.add_row(card.name, card.version, card.input.modality, dice, str(card.training.cohort.n))
    console.print(table)
