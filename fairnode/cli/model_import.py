"""``fairnode model import`` and ``fairnode model benchmark``: models from elsewhere, and their fairness benchmark.

Registered on the ``model`` command group (:mod:`fairnode.cli.model`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fairnode.cli.common import ConfigOption, console, fail, load
from fairnode.cli.model import app

__all__ = ["model_import"]


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
    table = Table("", "imported", show_header=False)
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
