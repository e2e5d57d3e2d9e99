"""``fairnode quality``: calibration and validation of the quality estimates."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from fairnode.cli.common import console, fail, progress_bar

app = typer.Typer(help="Quality without ground truth: calibration and validation.", no_args_is_help=True)


def _model_folder(name: str) -> Path:
    from inference.model_card import bundled_models

    folders = bundled_models()
    if name not in folders:
        fail(f"model '{name}' is not bundled (have: {', '.join(folders) or 'none'})")
    return folders[name]


def _shift(shift: str) -> tuple[str, object]:
    from cohorts.shift import ShiftFileError, load_shift, shipped_scenarios

    path = shipped_scenarios().get(shift, Path(shift))
    try:
        return shift, load_shift(path)
    except ShiftFileError as exc:
        fail(str(exc))


@app.command("calibrate")
def quality_calibrate(
    model: Annotated[str, typer.Option(help="Bundled model; see `fairnode model list`.")],
    shift: Annotated[str, typer.Option(help="Scenario (or shift file) of the calibration cohort.")] = "",
    n_bank: Annotated[int, typer.Option(help="References in the RCA bank (held-out, balanced).")] = 20,
    n: Annotated[int, typer.Option(help="Subjects in the calibration cohort.")] = 60,
    samples: Annotated[int, typer.Option(help="Stochastic samples per case (>= 2).")] = 6,
    coverage: Annotated[float, typer.Option(help="Stated coverage of the Dice interval.")] = 0.9,
    work: Annotated[Path, typer.Option(help="Folder for per-case measurements (resumable).")] = Path("data/quality"),
) -> None:
    """Build the RCA reference bank, measure a calibration cohort, fit the Dice predictor and the gate's
    thresholds, and write them into the model card."""
    from fairnode.calibration import calibrate
    from fairnode.pipeline import QualitySettings
    from inference.model_card import load_card

    folder = _model_folder(model)
    card = load_card(folder)
    shift_name, spec = _shift(shift or f"stress-{card.training.cohort.kind}")
    if n < 10 or n_bank < 2 or samples < 2 or not 0 < coverage < 1:
        fail("need --n >= 10, --n-bank >= 2, --samples >= 2 and 0 < --coverage < 1")
    with progress_bar() as progress:
        task = progress.add_task(f"calibrating {model}", total=n_bank + n, info="")
        updated = calibrate(
            folder,
            card,
            shift_name=shift_name,
            spec=spec,  # type: ignore[arg-type]
            n_bank=n_bank,
            n_calibration=n,
            coverage=coverage,
            settings=QualitySettings(method="mc-dropout", samples=samples),
            work=work,
            step=lambda info: progress.update(task, advance=1, info=info),
        )
    q = updated.quality
    assert q is not None and q.gate is not None and q.predictor is not None
    console.print(
        f"{model}: conformal half-width {q.predictor.half_width:.3f} at {q.predictor.coverage:.0%}; gate: predicted "
        f"Dice lower bound < {q.gate.predicted_low_min:.3f} or RCA < {q.gate.rca_min:.3f} -> REVIEW; on calibration "
        f"cases it caught {q.gate.calibration_caught:.0%} of {q.gate.calibration_failures} failing structures "
        f"reviewing {q.gate.calibration_review_rate:.0%} of {q.gate.calibration_cases} cases"
    )


def _fmt(v: object) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _figures_table(title: str, rows: dict[str, dict[str, object]]) -> Table:
    table = Table(title=title)
    for col in (
        "subset",
        "n",
        "fail<0.8",
        "RCA r",
        "RCA rho",
        "RCA MAE",
        "pred r",
        "pred rho",
        "pred MAE",
        "AUROC<0.7",
        "AUROC<0.8",
        "review",
        "caught",
        "coverage",
    ):
        table.add_column(col, justify="right" if col != "subset" else "left")
    for name, f in rows.items():
        rca, pred = f["rca"], f["predictor"]
        assert isinstance(rca, dict) and isinstance(pred, dict)
        table.add_row(
            name,
            _fmt(f["structures"]),
            _fmt(f["failures"]),
            _fmt(rca["pearson"]),
            _fmt(rca["spearman"]),
            _fmt(rca["mae"]),
            _fmt(pred["pearson"]),
            _fmt(pred["spearman"]),
            _fmt(pred["mae"]),
            _fmt(pred["auroc_dice_below_0.7"]),
            _fmt(pred["auroc_dice_below_0.8"]),
            _fmt(f["review_rate"]),
            _fmt(f["failures_caught"]),
            _fmt(f["coverage"]),
        )
    return table


@app.command("validate")
def quality_validate(
    cohort: Annotated[Path, typer.Option(help="Cohort folder with ground truth (from `fairnode cohort make`).")],
    model: Annotated[str, typer.Option(help="Bundled model; see `fairnode model list`.")],
    json_out: Annotated[Path, typer.Option("--json", help="Write the figures here (JSON).")],
    samples: Annotated[int | None, typer.Option(help="Stochastic samples (default: the card's).")] = None,
    method: Annotated[str | None, typer.Option(help="mc-dropout or tta-flip (default: the card's).")] = None,
    rca: Annotated[bool, typer.Option(help="Compute RCA.")] = True,
    work: Annotated[Path, typer.Option(help="Folder for per-case measurements (resumable).")] = Path("data/quality"),
) -> None:
    """Run segmentation and quality estimation on a cohort with ground truth; print and write how well the
    estimates track true Dice, per structure and per demographic group."""
    import json

    from fairnode.calibration import validate
    from fairnode.pipeline import QualitySettings
    from inference.model_card import ModelCardError

    folder = _model_folder(model)
    if not (cohort / "manifest.csv").is_file():
        fail(f"--cohort {cohort} is not a cohort folder (no manifest.csv); make one with 'fairnode cohort make'")
    if method not in (None, "mc-dropout", "tta-flip"):
        fail(f"--method {method} is not known (accepted: mc-dropout, tta-flip)")
    if samples is not None and samples < 2:
        fail(f"--samples must be at least 2, got {samples}")
    from cohorts.make import read_manifest

    total = len(read_manifest(cohort / "manifest.csv"))
    with progress_bar() as progress:
        task = progress.add_task(f"validating {model}", total=total, info="")
        try:
            figures, _ = validate(
                cohort,
                folder,
                work,
                QualitySettings(method=method, samples=samples, rca=rca),
                step=lambda info: progress.update(task, advance=1, info=info),
            )
        except ModelCardError as exc:
            fail(str(exc))
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    f: dict[str, Any] = figures
    console.print(_figures_table(f"{model} on {cohort}", {"all": f["overall"], **f["by_structure"]}))
    for attr, groups in f["by_group"].items():
        console.print(_figures_table(f"by {attr}", groups))
    console.print("median seconds per case: " + ", ".join(f"{k} {v:.2f}" for k, v in f["seconds_per_case"].items()))
    console.print(f"figures written to {json_out}")
