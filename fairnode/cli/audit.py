"""``fairnode audit``: the fairness audit of one period, written as report.html, report.pdf and report.json.

Each report is also kept in ``<data_dir>/audits/<model>/<period>/`` (read back for the trend of later
audits, and listed by the review app's governance pages).
"""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from fairnode.cli.common import ConfigOption, console, fail, load, progress_bar, registry_engine

if TYPE_CHECKING:
    from sqlmodel import Session

    from fairnode.settings import Settings

app = typer.Typer(help="Fairness audit of the registry for the governance committee.")


def _period(period: str | None, start: str | None, end: str | None) -> tuple[date, date, str]:
    """First day, last day and label from --period or --from/--to."""
    from fairness_registry.audit import AuditError
    from fairness_registry.audit.data import parse_period, period_label

    if period is not None and (start or end):
        fail("give either --period or --from/--to, not both")
    try:
        if period is not None:
            first, last = parse_period(period)
            return first, last, period_label(first, last)
        if start is None or end is None:
            fail("say which period to audit: --period 2026Q3, or --from 2026-07-01 --to 2026-09-30")
        first, last = date.fromisoformat(start), date.fromisoformat(end)
    except AuditError as exc:
        fail(str(exc))
    except ValueError as exc:
        fail(f"--from/--to must be dates as YYYY-MM-DD ({exc})")
    if last < first:
        fail(f"--to {last} is before --from {first}")
    return first, last, period_label(first, last)


def _model(session: Session, model: str | None) -> str:
    """The model asked for, or the registry's only model."""
    from sqlmodel import select

    from fairness_registry.models import Case

    if model is not None:
        return model
    models = sorted(set(session.exec(select(Case.model).distinct())))
    if len(models) == 1:
        return models[0]
    if not models:
        fail("the registry holds no case yet; send studies to the node first")
    fail(f"the registry holds cases of several models ({', '.join(models)}); choose one with --model")


def _record_export(settings: Settings, report: str, folder: Path) -> None:
    """Put the export of a report on the security audit trail (DICOM Export message), as the node does."""
    import getpass

    from dicom_node import audit_messages as am
    from dicom_node import audit_trail
    from fairnode.security import start_audit_trail, stop_audit_trail

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name in this environment (e.g. a container)
        user = "unknown"
    start_audit_trail(settings)
    try:
        event = am.audit_export(user=f"{user} (command line)", report=report, destination=str(folder.resolve()))
        audit_trail.record(event)
    finally:
        stop_audit_trail()


@app.callback(invoke_without_command=True)
def audit(
    ctx: typer.Context,
    period: Annotated[str | None, typer.Option("--period", help="Quarter (2026Q3), month (2026-07) or year.")] = None,
    start: Annotated[str | None, typer.Option("--from", help="First day, YYYY-MM-DD (with --to).")] = None,
    end: Annotated[str | None, typer.Option("--to", help="Last day, YYYY-MM-DD (inclusive).")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model to audit (default: the only one).")] = None,
    site: Annotated[str | None, typer.Option("--site", help="Audit one site only (default: all sites).")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for the report (default: <data_dir>/audits/<model>/<period>).")
    ] = None,
    pdf: Annotated[bool, typer.Option("--pdf/--no-pdf", help="Also write report.pdf.")] = True,
    config: ConfigOption = None,
) -> None:
    """Audit one period: counts, group estimates with CIs, disparities, adjusted effects, trend and alerts.

    Writes report.html (self-contained), report.pdf and report.json with the same numbers. Groups with fewer
    than audit.min_cell patients appear nowhere.
    """
    if ctx.invoked_subcommand is not None:
        return
    from sqlmodel import Session

    from fairness_registry.audit import AuditError
    from fairness_registry.audit.archive import archive_dir, previous_results
    from fairness_registry.audit.compute import compute_audit
    from fairness_registry.audit.data import load_frame
    from fairness_registry.audit.plots import report_figures
    from fairness_registry.audit.render import REPORT_FILES, ReportMeta, build_report, write_report

    first, last, label = _period(period, start, end)
    settings = load(config)
    audits_dir = settings.data_dir / "audits"
    engine = registry_engine(settings)
    try:
        with Session(engine) as session:
            chosen = _model(session, model)
            frame = load_frame(session, start=first, end=last, model=chosen, site=site)
    except AuditError as exc:
        fail(str(exc))
    if frame.empty:
        where = f" at site {site}" if site else ""
        fail(
            f"no finished case of model {chosen}{where} was received from {first} to {last}; "
            "choose another period (--period, --from/--to)"
        )
    previous = previous_results(
        audits_dir, model=chosen, site=site, before=first, limit=settings.audit.previous_quarters
    )
    with progress_bar() as progress:
        task = progress.add_task("audit", total=4, info=f"{frame['case_id'].nunique()} cases; computing")
        try:
            result = compute_audit(frame, settings=settings.audit, previous=previous, label=label)
        except AuditError as exc:
            progress.update(task, visible=False)  # the one-line error alone, no bar left behind
            progress.stop()
            fail(str(exc))
        progress.update(task, advance=1, info="drawing the figures")
        figures = report_figures(result, frame)
        progress.update(task, advance=1, info="writing the report")
        report = build_report(result, ReportMeta(period=label, start=first, end=last, model=chosen, site=site))
        archive = archive_dir(audits_dir, chosen, label, site)
        target = out or archive
        written = write_report(target, report, figures, pdf=pdf)
        progress.update(task, advance=1, info="keeping a copy for the trend")
        if target.resolve() != archive.resolve():
            archive.mkdir(parents=True, exist_ok=True)
            for path in written.values():
                shutil.copyfile(path, archive / path.name)
            for name in set(REPORT_FILES.values()) - {p.name for p in written.values()}:
                (archive / name).unlink(missing_ok=True)  # no stale PDF beside a newer JSON
        progress.update(task, advance=1, info="done")
    _record_export(settings, f"fairness audit {chosen} {label}" + (f" site {site}" if site else ""), target)
    table = Table(title=f"Fairness audit of {chosen}, {label}" + (f", site {site}" if site else ""))
    table.add_column("")
    table.add_column("", justify="left")
    summary = result["summary"]
    table.add_row("patients, cases", f"{summary['patients']}, {summary['cases']}")
    table.add_row("alerts", str(len(result["alerts"])))
    for finding in result["findings"]:
        table.add_row("finding", finding["title"])
    for kind, path in written.items():
        table.add_row(kind, str(path))
    console.print(table)
