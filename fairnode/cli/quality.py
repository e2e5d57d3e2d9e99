"""``fairnode quality``: calibration and validation of the quality estimates."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from fairnode.cli.common import ConfigOption, console, fail, load, progress_bar

app = typer.Typer(help="Quality without ground truth: calibration and validation.", no_args_is_help=True)


def _model_folder(name: str, config: Path | None = None) -> Path:
    """The folder of a bundled model or of one imported into the data folder (``fairnode model import``)."""
    from inference.model_store import find_models, imported_models_dir

    settings = load(config)
    folders = find_models(settings.models_dir, imported_models_dir(settings.data_dir))
    if name not in folders:
        fail(f"model '{name}' is not installed (bundled or imported: {', '.join(folders) or 'none'})")
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
    model: Annotated[str, typer.Option(help="Bundled or imported model; see `fairnode model list`.")],
    shift: Annotated[str, typer.Option(help="Scenario (or shift file) of the generated calibration cohort.")] = "",
    cohort: Annotated[
        Path | None,
        typer.Option(help="Labelled cohort folder (from `fairnode cohort make`) instead of a generated cohort."),
    ] = None,
    n_bank: Annotated[int, typer.Option(help="References in the RCA bank (held out).")] = 40,
    n: Annotated[int, typer.Option(help="Subjects of the generated calibration cohort.")] = 100,
    samples: Annotated[int, typer.Option(help="Stochastic samples per case (>= 2).")] = 6,
    coverage: Annotated[float, typer.Option(help="Stated coverage of the Dice interval.")] = 0.9,
    keep_bank: Annotated[bool, typer.Option(help="Keep the card's RCA bank and its RCA settings.")] = False,
    review_budget: Annotated[
        float | None, typer.Option(help="At most this share of a day's cases reviewed (default: settings).")
    ] = None,
    work: Annotated[Path, typer.Option(help="Folder for per-case measurements (resumable).")] = Path("data/quality"),
    config: ConfigOption = None,
) -> None:
    """Build the RCA reference bank, measure a calibration cohort, calibrate RCA per structure, fit the Dice
    predictor and the gate's per-structure thresholds, and write them into the model card."""
    from fairnode.calibration import CalibrationOptions, calibrate
    from fairnode.pipeline import QualitySettings
    from inference.model_card import ModelCardError, load_card
    from quality.predictor import PredictorError
    from quality.rca import RcaError

    folder = _model_folder(model, config)
    card = load_card(folder)
    cal = load(config).quality_calibration
    if cohort is not None and shift:
        fail("give either --shift (a generated cohort) or --cohort (a labelled cohort folder), not both")
    if cohort is not None and not (cohort / "manifest.csv").is_file():
        fail(f"--cohort {cohort} is not a cohort folder (no manifest.csv); make one with 'fairnode cohort make'")
    spec = None
    shift_name = shift or f"stress-{card.training.cohort.kind}"
    if cohort is None:
        shift_name, spec = _shift(shift_name)
    if n < 10 or n_bank < 2 or samples < 2 or not 0 < coverage < 1:
        fail("need --n >= 10, --n-bank >= 2, --samples >= 2 and 0 < --coverage < 1")
    budget = cal.review_budget if review_budget is None else review_budget
    if budget is not None and not 0 < budget <= 1:
        fail(f"--review-budget {budget} must be a share of cases in (0, 1]")
    options = CalibrationOptions(
        shift_name=shift_name,
        spec=spec,  # type: ignore[arg-type]
        n_bank=n_bank,
        n_calibration=n,
        coverage=coverage,
        keep_bank=keep_bank,
        cohort=cohort,
        review_budget=budget,
        expected_prevalence=cal.expected_prevalence,
        rca_method=cal.rca_calibration,
        min_failures=cal.min_failures,
        failure_dice=cal.failure_dice,
        target_catch=cal.target_catch,
    )
    total = (0 if keep_bank else n_bank) + (n if cohort is None else 0)
    with progress_bar() as progress:
        task = progress.add_task(f"calibrating {model}", total=total or None, info="")
        try:
            updated, chosen = calibrate(
                folder,
                card,
                options,
                settings=QualitySettings(method="mc-dropout", samples=samples),
                work=work,
                step=lambda info: progress.update(task, advance=1, info=info),
                inference=load(config).inference,
            )
        except (ModelCardError, PredictorError, RcaError, ValueError) as exc:
            fail(str(exc).splitlines()[0])
    q = updated.quality
    assert q is not None and q.gate is not None and q.predictor is not None
    table = _table(
        f"{model}: gate thresholds per structure (every calibration case, estimates out of fold)",
        ("structure", "low\n<", "RCA\n<", "cases", "fail.", "caught", "caught\n95% lo", "flag-\nged", "pooled"),
    )
    for name, t in q.gate.structures.items():
        table.add_row(
            name,
            _fmt(t.predicted_low_min),
            _fmt(t.rca_min),
            _fmt(t.cases),
            _fmt(t.failures),
            _fmt(t.caught),
            _fmt(t.caught_low95),
            _fmt(t.flagged),
            "yes" if t.pooled else "no",
        )
    console.print(table)
    console.print(
        f"{model}: conformal q {q.predictor.half_width:.3f} at {q.predictor.coverage:.0%} (half-width q x "
        f"(tree spread + 0.01)); on "
        f"{chosen.cases} calibration cases the gate caught {chosen.caught:.0%} of {chosen.failures} failing "
        f"structures at case level ({chosen.structure_caught:.0%} at structure level), reviewing "
        f"{chosen.review_rate:.0%} of cases ({chosen.expected_review_rate:.0%} at the expected prevalence "
        f"{_fmt(chosen.prevalence)}; budget {_fmt(chosen.budget)}, threshold shift {chosen.shift:+.2f})"
    )


def _fmt(v: object) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _agreement(f: dict[str, Any], key: str, what: str) -> str:
    a = f.get(key)
    return _fmt(a.get(what)) if isinstance(a, dict) else "-"


def _table(title: str, headers: tuple[str, ...]) -> Table:
    """A table that stays whole in 80 columns (piped output): two-line headers, no vertical rules, the first
    column folded when long, numbers never cut."""
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False, title_justify="left")
    table.add_column(headers[0], justify="left", overflow="fold", min_width=8, max_width=14)
    for h in headers[1:]:
        table.add_column(h, justify="right", no_wrap=True, min_width=5)
    return table


def _estimates_table(title: str, rows: dict[str, dict[str, Any]]) -> Table:
    table = _table(
        title,
        ("subset", "n", "fail\n<0.8", "RCA\nr", "RCA\nMAE", "cal.\nr", "cal.\nMAE", "pred\nr", "pred\nMAE", "cover"),
    )
    for name, f in rows.items():
        table.add_row(
            name,
            _fmt(f["structures"]),
            _fmt(f["failures"]),
            _agreement(f, "rca", "pearson"),
            _agreement(f, "rca", "mae"),
            _agreement(f, "rca_calibrated", "pearson"),
            _agreement(f, "rca_calibrated", "mae"),
            _agreement(f, "predictor", "pearson"),
            _agreement(f, "predictor", "mae"),
            _fmt(f["coverage"]),
        )
    return table


def _gate_table(title: str, rows: dict[str, dict[str, Any]]) -> Table:
    table = _table(
        title,
        (
            "subset",
            "cases",
            "fail\ncases",
            "prev.",
            "cases\nrev.",
            "caught",
            "fcase\ncaught",
            "str.\nrev.",
            "str.\ncaught",
        ),
    )
    for name, f in rows.items():
        table.add_row(
            name,
            _fmt(f["cases"]),
            _fmt(f.get("failing_cases")),
            _fmt(f.get("prevalence")),
            _fmt(f["review_rate"]),
            _fmt(f["failures_caught"]),
            _fmt(f.get("failing_cases_caught")),
            _fmt(f.get("structure_review_rate")),
            _fmt(f.get("structures_caught")),
        )
    return table


@app.command("validate")
def quality_validate(
    model: Annotated[str, typer.Option(help="Bundled or imported model; see `fairnode model list`.")],
    json_out: Annotated[Path, typer.Option("--json", help="Write the figures here (JSON).")],
    cohort: Annotated[
        Path | None, typer.Option(help="Cohort folder with ground truth (from `fairnode cohort make`).")
    ] = None,
    shift: Annotated[
        str | None, typer.Option(help="Instead of --cohort: generate subjects in memory under this scenario.")
    ] = None,
    n: Annotated[int, typer.Option(help="With --shift: subjects to generate.")] = 60,
    seed: Annotated[int, typer.Option(help="With --shift: seed (held-out validation uses 5000 and up).")] = 5000,
    label: Annotated[
        str | None, typer.Option(help="Name of this validation in the card (default: the cohort folder's name).")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the figure here (PNG; default: next to --json).")] = None,
    card: Annotated[bool, typer.Option(help="Record the figures in the model card's quality.validation.")] = True,
    samples: Annotated[int | None, typer.Option(help="Stochastic samples (default: the card's).")] = None,
    method: Annotated[str | None, typer.Option(help="mc-dropout or tta-flip (default: the card's).")] = None,
    rca: Annotated[bool, typer.Option(help="Compute RCA.")] = True,
    work: Annotated[Path, typer.Option(help="Folder for per-case measurements (resumable).")] = Path("data/quality"),
) -> None:
    """Run segmentation and quality estimation on a cohort with ground truth (cached per case); print and write
    how well the estimates track true Dice and what the gate caught, per structure and per demographic group;
    plot the estimates against true Dice and the risk-coverage curve; record the figures in the card."""
    import json

    from fairnode.calibration import card_summary, validate, write_card_validation
    from fairnode.calibration.plots import validation_plot
    from fairnode.calibration.validate import validate_generated
    from fairnode.pipeline import QualitySettings
    from inference.model_card import ModelCardError

    folder = _model_folder(model)
    if (cohort is None) == (shift is None):
        fail("give either --cohort (a labelled cohort folder) or --shift (subjects generated in memory)")
    if cohort is not None and not (cohort / "manifest.csv").is_file():
        fail(f"--cohort {cohort} is not a cohort folder (no manifest.csv); make one with 'fairnode cohort make'")
    if n < 1:
        fail(f"--n must be at least 1, got {n}")
    if method not in (None, "mc-dropout", "tta-flip"):
        fail(f"--method {method} is not known (accepted: mc-dropout, tta-flip)")
    if samples is not None and samples < 2:
        fail(f"--samples must be at least 2, got {samples}")
    from cohorts.make import read_manifest

    total = len(read_manifest(cohort / "manifest.csv")) if cohort is not None else n
    quality_settings = QualitySettings(method=method, samples=samples, rca=rca)
    with progress_bar() as progress:
        task = progress.add_task(f"validating {model}", total=total, info="")
        try:
            if cohort is not None:
                figures, scored = validate(
                    cohort,
                    folder,
                    work,
                    quality_settings,
                    step=lambda info: progress.update(task, advance=1, info=info),
                    inference=load(None).inference,
                )
            else:
                assert shift is not None
                shift_name, spec = _shift(shift)
                figures, scored = validate_generated(
                    folder,
                    spec,  # type: ignore[arg-type]
                    shift_name,
                    n,
                    seed,
                    work,
                    quality_settings,
                    step=lambda info: progress.update(task, advance=1, info=info),
                    inference=load(None).inference,
                )
        except ModelCardError as exc:
            fail(str(exc))
    name = label or (cohort.resolve().name if cohort is not None else f"{shift}-{seed}")
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    png = plot or json_out.with_suffix(".png")
    curve = figures.get("risk_coverage")
    validation_plot(scored, curve if isinstance(curve, list) else [], f"{model} on {name}", png)
    f: dict[str, Any] = figures
    subsets = {"all": f["overall"], **f["by_structure"]}
    console.print(_estimates_table(f"{model} on {name}: estimates against true Dice", subsets))
    console.print(_gate_table(f"{model} on {name}: the gate (case and structure level)", subsets))
    for attr, groups in f["by_group"].items():
        console.print(_estimates_table(f"by {attr}: estimates", groups))
        console.print(_gate_table(f"by {attr}: the gate", groups))
    console.print("median seconds per case: " + ", ".join(f"{k} {v:.2f}" for k, v in f["seconds_per_case"].items()))
    if card:
        options = f" --label {label}" if label else ""
        source = f"--cohort {cohort}" if cohort is not None else f"--shift {shift} --n {n} --seed {seed}"
        command = f"fairnode quality validate {source} --model {model} --json {json_out}{options}"
        write_card_validation(folder, name, card_summary(figures, name, json_out.name, command))
        console.print(f"recorded in the card of {model} as quality.validation.{name}")
    console.print(f"figures written to {json_out} and {png}")
