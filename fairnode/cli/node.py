"""``fairnode serve``, ``run``, ``send`` and ``deliveries``: the node and its wire."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.table import Table

from fairnode.cli.common import ConfigOption, console, fail, load

if TYPE_CHECKING:
    from fairnode.jobs.observe import MetricsServer
    from fairnode.node import Node
    from fairnode.settings import Settings
    from review.audits import AuditRunner

app = typer.Typer()
deliveries_app = typer.Typer(help="Results waiting for or given up on delivery to PACS.", invoke_without_command=True)


Role = Literal["receiver", "worker", "all"]


@app.command()
def serve(
    config: ConfigOption = None,
    role: Annotated[
        Role,
        typer.Option(
            help="all: the whole node (with jobs.mode celery: a receiver and a worker on every model's queue); "
            "receiver: DICOM, spool, assembly, enqueueing, forwarding, web app (jobs.mode celery); "
            "worker: a Celery worker on every installed model's queue."
        ),
    ] = "all",
) -> None:
    """Start the node: DICOM SCP, study assembly, pipeline, forwarding and the review web app."""
    import signal
    import threading

    from fairnode.node import build_node
    from review.app import build_context, ensure_first_admin
    from review.app import serve as serve_review
    from review.config import SecretError, session_secret

    settings = load(config)
    logging.getLogger().setLevel(settings.log_level)
    if role == "worker":
        _run_worker(settings, None, 1, None)
        return
    if role == "receiver" and settings.jobs.mode != "celery":
        fail("--role receiver needs jobs.mode celery (set FAIRNODE_JOBS__MODE=celery and the broker URL)")
    companion = _companion_worker(config) if role == "all" and settings.jobs.mode == "celery" else None
    try:
        session_secret(settings.review, settings.data_dir)  # refused before anything starts
    except SecretError as exc:
        fail(str(exc))
    try:
        node = build_node(settings)
        node.start(listen=False)  # the DICOM port opens last, once the web app is up too
        metrics = _receiver_metrics(node, settings)
    except (OSError, ValueError) as exc:  # ValueError: e.g. a selection rule naming a model not installed
        fail(f"cannot start the node: {exc}")
    try:
        context = build_context(
            settings.review,
            data_dir=settings.data_dir,
            status=_status_with_instances(node),
            registry_url=settings.registry,
            retry_dead=node.spool.retry_dead,
            accession_of=_accession_reader(node),
            extras={
                "spool_dir": node.spool.root,
                "outbox": node.spool.outbox,
                "models_dir": settings.models_dir,
                "run_audit": _audit_runner(settings, config),
            },
        )
        one_time = ensure_first_admin(context)
    except SecretError as exc:
        node.stop()
        fail(str(exc))
    try:
        http = serve_review(context, settings.http_bind, settings.http_port)
    except OSError as exc:
        node.stop()
        fail(f"cannot serve the web app on {settings.http_bind}:{settings.http_port} ({exc}); set http_port")
    try:
        node.listen()
    except OSError as exc:
        node.stop()
        fail(f"cannot listen for DICOM on {settings.bind}:{settings.port} ({exc})")
    if settings.review.dev_mode:
        console.print("[bold yellow]review app in dev mode: default session secret accepted; never in production")
    if one_time is not None:
        console.print(
            f"first admin [bold]{settings.review.first_admin}[/] created; one-time password: [bold]{one_time}[/] "
            "(shown once; change it with `fairnode users passwd`)"
        )
    console.print(
        f"fairnode {settings.ae_title} listening for DICOM on {settings.bind}:{node.server.port}; "
        f"web app http://{settings.http_bind}:{http.port}/ ; data in {settings.data_dir.resolve()}"
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    console.print("stopping")
    if companion is not None:
        companion.terminate()  # its warm shutdown runs while the receiver stops
    http.stop()
    node.stop()
    if metrics is not None:
        metrics.stop()
    if companion is not None:
        companion.wait(timeout=60)


def _receiver_metrics(node: Node, settings: Settings) -> MetricsServer | None:
    """A Celery receiver's job metrics and health on ``jobs.metrics_port`` (when set)."""
    from fairnode.jobs.dispatch import Dispatcher
    from fairnode.jobs.observe import serve_metrics

    if settings.jobs.metrics_port is None or not isinstance(node.runner, Dispatcher):
        return None
    return serve_metrics(
        settings.jobs.metrics_bind, settings.jobs.metrics_port, node.runner.metrics, node.runner.health
    )


def _companion_worker(config: Path | None) -> subprocess.Popen[bytes]:
    """``serve --role all`` in Celery mode: a worker process beside the receiver, on every model's queue."""
    argv = [sys.executable, "-m", "fairnode", "worker"] + (["--config", str(config)] if config else [])
    return subprocess.Popen(argv)


def _run_worker(settings: Settings, queues: list[str] | None, concurrency: int, name: str | None) -> None:
    from fairnode.jobs.worker import run_worker

    if settings.jobs.mode != "celery":
        fail("a worker needs jobs.mode celery (set FAIRNODE_JOBS__MODE=celery and FAIRNODE_JOBS__BROKER_URL)")
    try:
        run_worker(settings, queues, concurrency, name, loglevel=settings.log_level)
    except ValueError as exc:
        fail(str(exc))


@app.command()
def worker(
    config: ConfigOption = None,
    queues: Annotated[
        str | None, typer.Option(help="Comma-separated model queues, e.g. ct-abdomen,xr-knee (default: all installed).")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Pool processes (studies processed at once).")] = 1,
    name: Annotated[str | None, typer.Option(help="Worker name (default fairnode-<pid>@<host>).")] = None,
) -> None:
    """Run a Celery worker: take studies from the model queues, run the pipeline, record the results."""
    settings = load(config)
    logging.getLogger().setLevel(settings.log_level)
    wanted = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    if wanted is not None:
        from inference.model_card import bundled_models

        installed = set(bundled_models(settings.models_dir) if settings.models_dir else bundled_models())
        unknown = sorted({q.removeprefix(settings.jobs.queue_prefix) for q in wanted} - installed)
        if unknown:
            fail(
                f"--queues names models not installed here: {', '.join(unknown)}; "
                f"installed: {', '.join(sorted(installed))}"
            )
        wanted = [settings.jobs.queue(q.removeprefix(settings.jobs.queue_prefix)) for q in wanted]
    _run_worker(settings, wanted, concurrency, name)


def _status_with_instances(node: Node) -> Callable[[], dict[str, object]]:
    """The node's status plus the number of instances in the spool (for the metrics)."""

    def status() -> dict[str, object]:
        s = node.status()
        s["instances_received"] = sum(len(node.spool.instances(st.study_uid)) for st in node.spool.studies())
        return s

    return status


def _accession_reader(node: Node) -> Callable[[str], str | None]:
    """Study UID -> the accession number in the first spooled instance's header (shown only if allowed)."""
    import pydicom

    def accession(study_uid: str) -> str | None:
        instances = node.spool.instances(study_uid)
        if not instances:
            return None
        try:
            ds = pydicom.dcmread(instances[0].path, stop_before_pixels=True, specific_tags=["AccessionNumber"])
        except (OSError, pydicom.errors.InvalidDicomError):
            return None
        return str(ds.get("AccessionNumber", "")) or None

    return accession


def _audit_runner(settings: Settings, config: Path | None) -> AuditRunner:
    """Runs ``fairnode audit --period P [--model M]`` in the background (reports kept in <data_dir>/audits)."""
    import sys

    from review.audits import AuditRunner

    def command(period: str, model: str | None) -> list[str]:
        argv = [sys.executable, "-m", "fairnode", "audit", "--period", period]
        if model:
            argv += ["--model", model]
        if config is not None:
            argv += ["--config", str(config)]
        return argv

    return AuditRunner(command, settings.data_dir / "audits" / "runs")


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
    settings = load(config)
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


@deliveries_app.callback()
def deliveries_list(ctx: typer.Context, config: ConfigOption = None) -> None:
    """List deliveries (pending, sent, dead)."""
    if ctx.invoked_subcommand is not None:
        return
    from dicom_node.spool import Spool

    settings = load(config)
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

    settings = load(config)
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
