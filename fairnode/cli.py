"""The ``fairnode`` command line: the node, cohorts and bundled models.

Errors a user can act on are printed as one line on stderr (``error: ...``) with exit status 2; no
traceback.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

app = typer.Typer(
    name="fairnode",
    help="fairnode: a DICOM node that segments studies, estimates their quality without ground truth "
    "and keeps a pseudonymised fairness registry.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
cohort_app = typer.Typer(help="Synthetic cohorts with ground truth and demographics.", no_args_is_help=True)
model_app = typer.Typer(help="The bundled segmentation models.", no_args_is_help=True)
app.add_typer(cohort_app, name="cohort")
app.add_typer(model_app, name="model")

console = Console()
err_console = Console(stderr=True)


def fail(message: str) -> NoReturn:
    """Print a one-line error and exit with status 2."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
    )


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at DEBUG level.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@app.command()
def serve() -> None:
    """Start the DICOM node (not built yet: the foundation ships cohorts and models first)."""
    fail("the DICOM node is not built yet; this release provides `fairnode cohort` and `fairnode model`")


@cohort_app.command("make")
def cohort_make(
    kind: Annotated[str, typer.Option(help="ct-abdomen, xr-knee or mr-brain.")],
    n: Annotated[int, typer.Option(help="Number of subjects (>= 1).")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same cohort.")] = 0,
    shift: Annotated[
        str | None,
        typer.Option(
            help="Shift file (YAML) or the name of a shipped scenario; see `fairnode cohort scenarios`."
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="Parallel worker processes.")] = 1,
) -> None:
    """Write a cohort: one DICOM study and ground-truth SEG per subject, and manifest.csv."""
    from cohorts.kinds import UnknownKindError
    from cohorts.make import CohortRequest, make_cohort
    from cohorts.shift import BALANCED, ShiftFileError, load_shift, shipped_scenarios

    spec = BALANCED
    if shift is not None:
        path = shipped_scenarios().get(shift, Path(shift))
        try:
            spec = load_shift(path)
        except ShiftFileError as exc:
            fail(str(exc))
    if workers < 1:
        fail(f"--workers must be at least 1, got {workers}")
    try:
        request = CohortRequest(kind=kind, n=n, seed=seed, spec=spec)
    except (UnknownKindError, ValueError) as exc:
        fail(str(exc))
    if out.exists() and not out.is_dir():
        fail(f"--out {out} exists and is not a folder")
    with _progress() as progress:
        task = progress.add_task(f"{kind} cohort", total=n, info="")
        manifest = make_cohort(
            request,
            out,
            workers=workers,
            on_subject=lambda row: progress.update(task, advance=1, info=f"{row['patient_id']}"),
        )
    console.print(f"wrote {n} {kind} studies and {manifest}")


@cohort_app.command("scenarios")
def cohort_scenarios() -> None:
    """List the shift scenarios shipped with fairnode."""
    from cohorts.shift import load_shift, shipped_scenarios

    table = Table("scenario", "groups (share)", "what it reproduces")
    for name, path in shipped_scenarios().items():
        spec = load_shift(path)
        groups = "; ".join(f"{g.match.describe()} ({g.share:.0%})" for g in spec.groups)
        table.add_row(name, groups, spec.description)
    console.print(table)


@model_app.command("train")
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
        with _progress() as progress:
            card = train_model(
                RECIPES[n], root / n, workers=workers, progress=_RichTrainingProgress(progress)
            )
        dice = ", ".join(f"{k} {v:.3f}" for k, v in (card.validation.dice if card.validation else {}).items())
        console.print(f"{n}: validation Dice {dice}")


@model_app.command("export")
def model_export(
    name: Annotated[str, typer.Argument(help="Model to check.")],
) -> None:
    """Check a bundled model's ONNX graphs: files match the card, MC-dropout graph samples differ."""
    import numpy as np

    from inference.model_card import ModelCardError, bundled_models, load_card, sha256_of
    from inference.segmenter import Segmenter

    models = bundled_models()
    if name not in models:
        fail(f"unknown model '{name}'; bundled: {', '.join(models) or 'none'}")
    try:
        card = load_card(models[name])
    except ModelCardError as exc:
        fail(str(exc))
    folder = models[name]
    for file, digest in (
        (card.files.deterministic, card.files.deterministic_sha256),
        (card.files.mc_dropout, card.files.mc_dropout_sha256),
    ):
        if sha256_of(folder / file) != digest:
            fail(
                f"{folder / file} does not match the sha256 in its card; "
                f"retrain with `fairnode model train {name}`"
            )
    seg = Segmenter(folder, prefer_gpu=False)
    x = np.random.default_rng(0).random((1, *card.input.patch_size), dtype=np.float32)
    a = seg.model_grid_probabilities(x, mc_dropout=True)
    b = seg.model_grid_probabilities(x, mc_dropout=True)
    console.print(
        f"{name}: graphs match the card; MC-dropout samples differ by up to {float(np.abs(a - b).max()):.3f}"
    )


@model_app.command("list")
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
        dice = (
            ", ".join(f"{k} {d:.3f}" for k, d in v.dice.items()) + f" (n={v.cohort.n})"
            if v
            else "not validated"
        )
        table.add_row(card.name, card.version, card.input.modality, dice, str(card.training.cohort.n))
    console.print(table)
