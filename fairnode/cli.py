"""The ``fairnode`` command line: the node, cohorts and bundled models.

Errors a user can act on are printed as one line on stderr (``error: ...``) with exit status 2; no
traceback.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

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

if TYPE_CHECKING:
    from fairnode.settings import Settings

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
quality_app = typer.Typer(help="Quality without ground truth: calibration and validation.", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(quality_app, name="quality")

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


ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="Settings YAML (see deploy/fairnode.example.yaml).")
]


def _settings(config: Path | None, **overrides: object) -> Settings:
    from pydantic import ValidationError

    from fairnode.settings import SettingsFileError, load_settings

    try:
        return load_settings(config, **overrides)
    except SettingsFileError as exc:
        fail(str(exc))
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"setting {'.'.join(str(p) for p in first['loc'])}: {first['msg']}")


@app.command()
def serve(config: ConfigOption = None) -> None:
    """Start the node: DICOM SCP, study assembly, pipeline, forwarding and the status page."""
    import signal
    import threading

    from fairnode.node import build_node
    from review.app import RegistryWorklist, serve_status_page

    settings = _settings(config)
    logging.getLogger().setLevel(settings.log_level)
    try:
        node = build_node(settings)
        node.start()
    except OSError as exc:
        fail(f"cannot start the node: {exc}")
    try:
        http = serve_status_page(
            node.status, settings.http_bind, settings.http_port, worklist=RegistryWorklist.from_url(settings.registry)
        )
    except OSError as exc:
        node.stop()
        fail(f"cannot serve the status page on {settings.http_bind}:{settings.http_port} ({exc}); set http_port")
    console.print(
        f"fairnode {settings.ae_title} listening for DICOM on {settings.bind}:{node.server.port}; "
        f"status page http://{settings.http_bind}:{http.port}/ ; data in {settings.data_dir.resolve()}"
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    console.print("stopping")
    http.stop()
    node.stop()


@app.command()
def run(
    folder: Annotated[Path, typer.Argument(help="Folder of DICOM files (searched recursively).")],
    out: Annotated[Path, typer.Option(help="Output folder: <study>/<series>/seg.dcm, sr.dcm, summary.json.")],
    config: ConfigOption = None,
) -> None:
    """Process a folder of DICOM files offline through the node's pipeline (no network, no registry)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from fairnode.node import offline_context
    from fairnode.pipeline import process_study

    if not folder.is_dir():
        fail(f"{folder} is not a folder")
    settings = _settings(config)
    studies: dict[str, list[Path]] = {}
    skipped = 0
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
            studies.setdefault(str(ds.StudyInstanceUID), []).append(f)
        except (InvalidDicomError, AttributeError, OSError):
            skipped += 1
    if not studies:
        fail(f"no DICOM studies found in {folder} ({skipped} files are not DICOM)")
    ctx = offline_context(settings)
    table = Table("study", "series", "model", "status", "measurements / reason", "seconds")
    for study_uid, files in studies.items():
        outcome = process_study(files, study_uid=study_uid, run=1, out_dir=out / study_uid, ctx=ctx)
        for s in outcome.series:
            detail = (
                ", ".join(f"{k} {v:.1f}" for k, v in s.measurements.items()) if s.status == "done" else s.reason[:90]
            )
            table.add_row(
                study_uid[-12:], s.series_uid[-12:], s.model or "-", s.status, detail, f"{sum(s.timings.values()):.1f}"
            )
    console.print(table)
    console.print(f"outputs and summary.json in {out}")


deliveries_app = typer.Typer(help="Results waiting for or given up on delivery to PACS.", invoke_without_command=True)
app.add_typer(deliveries_app, name="deliveries")


@deliveries_app.callback()
def deliveries_list(ctx: typer.Context, config: ConfigOption = None) -> None:
    """List deliveries (pending, sent, dead)."""
    if ctx.invoked_subcommand is not None:
        return
    from dicom_node.spool import Spool

    settings = _settings(config)
    table = Table("id", "study", "file", "destination", "state", "attempts", "last error")
    for d in Spool(settings.spool_dir).deliveries():
        table.add_row(
            str(d.id), d.study_uid[-16:], d.path.name, d.destination, d.state, str(d.attempts), d.last_error[:80]
        )
    console.print(table)


@deliveries_app.command("retry")
def deliveries_retry(config: ConfigOption = None) -> None:
    """Give every dead delivery a fresh retry budget (the running node sends them)."""
    from dicom_node.spool import Spool

    settings = _settings(config)
    n = Spool(settings.spool_dir).retry_dead()
    console.print(f"{n} dead deliveries queued again")


@app.command()
def send(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders to send.")],
    host: Annotated[str, typer.Option(help="Peer host.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Peer port.")] = 11112,
    called_ae: Annotated[str, typer.Option("--aec", help="Peer AE title.")] = "FAIRNODE",
    calling_ae: Annotated[str, typer.Option("--aet", help="Our AE title.")] = "FAIRNODE-SCU",
) -> None:
    """Send DICOM files to a node or PACS with C-STORE (one association)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from dicom_node.scu import Destination, send_files

    files = [f for p in paths for f in (sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p])]
    datasets = []
    for f in files:
        try:
            datasets.append(pydicom.dcmread(f))
        except (InvalidDicomError, OSError) as exc:
            fail(f"{f} is not a readable DICOM file: {exc}")
    if not datasets:
        fail("no files to send")
    try:
        send_files(datasets, Destination("cli", called_ae, host, port), calling_ae, timeout=30)
    except ConnectionError as exc:
        fail(str(exc))
    console.print(f"sent {len(datasets)} instances to {called_ae}@{host}:{port}")


@cohort_app.command("make")
def cohort_make(
    kind: Annotated[str, typer.Option(help="ct-abdomen, xr-knee or mr-brain.")],
    n: Annotated[int, typer.Option(help="Number of subjects (>= 1).")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same cohort.")] = 0,
    shift: Annotated[
        str | None,
        typer.Option(help="Shift file (YAML) or the name of a shipped scenario; see `fairnode cohort scenarios`."),
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
            card = train_model(RECIPES[n], root / n, workers=workers, progress=_RichTrainingProgress(progress))
        dice = ", ".join(f"{k} {v:.3f}" for k, v in (card.validation.dice if card.validation else {}).items())
        console.print(f"{n}: validation Dice {dice}")


@model_app.command("export")
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
        dice = ", ".join(f"{k} {d:.3f}" for k, d in v.dice.items()) + f" (n={v.cohort.n})" if v else "not validated"
        table.add_row(card.name, card.version, card.input.modality, dice, str(card.training.cohort.n))
    console.print(table)


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


@quality_app.command("calibrate")
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
    with _progress() as progress:
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


@quality_app.command("validate")
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
    with _progress() as progress:
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
