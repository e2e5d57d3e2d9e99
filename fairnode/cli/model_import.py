"""``fairnode model import`` and ``fairnode model benchmark``: models from elsewhere, and their fairness benchmark.

Registered on the ``model`` command group (:mod:`fairnode.cli.model`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fairnode.cli.common import ConfigOption, console, fail, load, progress_bar
from fairnode.cli.model import app

__all__ = ["model_benchmark", "model_bundle", "model_import"]


@app.command("import")
def model_import(
    path: Annotated[Path, typer.Argument(help="A MONAI bundle folder, or an .onnx graph.")],
    name: Annotated[str | None, typer.Option(help="Name of the model here (default: the source's own).")] = None,
    answers: Annotated[
        Path | None,
        typer.Option(help="YAML of what the source cannot say (default: <data_dir>/imports/<source>.yaml)."),
    ] = None,
    backend: Annotated[str, typer.Option(help="auto (ONNX when it matches torch), onnx or torch.")] = "auto",
    replace: Annotated[bool, typer.Option("--replace", help="Replace an imported model of that name.")] = False,
    config: ConfigOption = None,
) -> None:
    """Import a MONAI bundle (or an ONNX graph with an answers file) into <data_dir>/models/NAME: the card
    from the bundle's metadata, labels coded with SNOMED CT, exported to ONNX (or kept for torch), sampling
    by MC dropout when the network has dropout and by test-time augmentation otherwise."""
    from inference.bundle import BundleError
    from inference.model_card import ModelCardError, bundled_models
    from inference.model_import import import_model
    from inference.model_store import imported_models_dir

    if backend not in ("auto", "onnx", "torch"):
        fail(f"--backend {backend!r} is not one of auto, onnx, torch")
    if not path.exists():
        fail(f"{path} does not exist; give a MONAI bundle folder or an .onnx file")
    settings = load(config)
    root = imported_models_dir(settings.data_dir)
    answers = answers or settings.data_dir / "imports" / f"{path.resolve().name}.yaml"
    bundled = frozenset(bundled_models(settings.models_dir) if settings.models_dir else bundled_models())
    try:
        card = import_model(
            path,
            root,
            answers_path=answers,
            name=name,
            backend=backend,  # type: ignore[arg-type]
            replace=replace,
            reserved=bundled,
        )
    except (BundleError, ModelCardError) as exc:
        fail(str(exc))
    source = card.source
    table = Table(show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("model", f"{card.name} {card.version} in {root / card.name}")
    labels = ", ".join(f"{lab.value} {lab.name} (SCT {lab.code})" for lab in card.labels)
    table.add_row("labels", labels)
    table.add_row("input", f"{card.input.modality} {card.input.spatial_dims}D, {card.input.spacing_mm} mm, "
                  f"patch {card.input.patch_size}, intensity {card.input.intensity.mode} "
                  f"{card.input.intensity.low:g}..{card.input.intensity.high:g}")  # fmt: skip
    if source is not None:
        diff = source.export_max_abs_difference
        table.add_row("backend", source.backend + (f" (max |ONNX - torch| {diff:.1e})" if diff is not None else ""))
        table.add_row("sampling", f"{source.sampling}: {source.sampling_reason}")
    console.print(table)
    console.print(
        f"next: fairnode quality calibrate --model {card.name} --cohort DIR; "
        f"fairnode model benchmark {card.name} --cohort DIR"
    )


@app.command("bundle")
def model_bundle(
    name: Annotated[str, typer.Argument(help="A bundled model.")],
    out: Annotated[Path, typer.Option(help="New folder for the MONAI bundle.")],
    torchscript: Annotated[bool, typer.Option("--torchscript", help="models/model.ts instead of model.pt.")] = False,
) -> None:
    """Write a bundled model as a MONAI bundle (configs/metadata.json, configs/inference.json, models/model.pt)."""
    from inference.bundle import BundleError, export_bundle
    from inference.model_card import bundled_models

    folders = bundled_models()
    if name not in folders:
        fail(f"unknown model '{name}'; bundled: {', '.join(folders) or 'none'}")
    try:
        export_bundle(folders[name], out, torchscript=torchscript)
    except BundleError as exc:
        fail(str(exc))
    console.print(f"{name}: MONAI bundle written to {out}")


@app.command("benchmark")
def model_benchmark(
    name: Annotated[str, typer.Argument(help="A bundled or imported model.")],
    cohort: Annotated[Path, typer.Option(help="Labelled cohort folder (from `fairnode cohort make`).")],
    out: Annotated[Path | None, typer.Option(help="Report folder (default: <data_dir>/benchmarks/NAME).")] = None,
    pdf: Annotated[bool, typer.Option("--pdf/--no-pdf", help="Also write report.pdf.")] = True,
    config: ConfigOption = None,
) -> None:
    """Per group and intersection Dice, NSD and HD95 with bootstrap CIs, disparities, an adjusted regression
    and where the errors fall, on a labelled cohort; written as report.json, report.html and report.pdf."""
    from fairnode.benchmark.run import BenchmarkError, run_benchmark
    from inference.model_store import find_models, imported_models_dir

    settings = load(config)
    folders = find_models(settings.models_dir, imported_models_dir(settings.data_dir))
    if name not in folders:
        fail(f"model '{name}' is not installed (have: {', '.join(folders) or 'none'})")
    target = out or settings.data_dir / "benchmarks" / name
    with progress_bar() as progress:
        task = progress.add_task(f"benchmark {name}", total=None, info="")
        try:
            written, result = run_benchmark(
                folders[name],
                cohort,
                target,
                settings=settings.benchmark,
                work=settings.data_dir / "benchmarks" / "cases",
                pdf=pdf,
                step=lambda info, total: progress.update(task, advance=1, total=total, info=info),
            )
        except (BenchmarkError, FileNotFoundError) as exc:
            fail(str(exc))
    table = Table("structure", "n", "Dice (95% CI)", "NSD (95% CI)", "HD95 mm (95% CI)")
    for column, width in zip(table.columns, (9, 3, 21, 21, 21), strict=True):
        column.min_width, column.overflow = width, "fold"
    for row in result["overall"]:
        table.add_row(
            row["structure"],
            str(row["n"]),
            *(_ci(row[m]) for m in ("dice", "nsd", "hd95_mm")),
        )
    console.print(table)
    console.print(", ".join(f"{fmt}: {p}" for fmt, p in written.items()))


def _ci(value: dict[str, float | None] | None) -> str:
    if not value or value.get("mean") is None:
        return "–"
    return f"{value['mean']:.3f} ({value['low']:.3f}–{value['high']:.3f})"
