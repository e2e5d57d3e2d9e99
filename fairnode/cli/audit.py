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

#: The options that choose what is audited, shared by ``audit`` and ``audit export``.
PeriodOption = Annotated[str | None, typer.Option("--period", help="Quarter (2026Q3), month (2026-07) or year.")]
FromOption = Annotated[str | None, typer.Option("--from", help="First day, YYYY-MM-DD (with --to).")]
ToOption = Annotated[str | None, typer.Option("--to", help="Last day, YYYY-MM-DD (inclusive).")]
ModelOption = Annotated[str | None, typer.Option("--model", help="Model to audit (default: the only one).")]


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
    period: PeriodOption = None,
    start: FromOption = None,
    end: ToOption = None,
    model: ModelOption = None,
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


def _site_name(settings: Settings, site: str | None, name: str | None) -> str:
    """The name the group audit gives this site: --name, else --site, else the registry's site setting."""
    chosen = name or site or settings.registry_options.site
    if not chosen:
        fail("name this site in the group audit: --name NAME (or set registry_options.site)")
    return chosen


@app.command("export")
def export(
    out: Annotated[Path, typer.Option("--out", help="JSON file for this site's aggregates.")],
    period: PeriodOption = None,
    start: FromOption = None,
    end: ToOption = None,
    model: ModelOption = None,
    site: Annotated[str | None, typer.Option("--site", help="Export one site of the registry only.")] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="This site's name in the group audit (default: --site).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Export this site's audit aggregates for a group-level audit (`fairnode audit merge`).

    Counts, sums, patient-level moments and bootstrap summaries of every cell the site's own audit shows;
    suppressed cells stay out, and no case-level row is written.
    """
    import json

    from sqlmodel import Session

    from fairness_registry.audit import AuditError
    from fairness_registry.audit.data import load_frame
    from fairness_registry.audit.export import site_export

    first, last, label = _period(period, start, end)
    settings = load(config)
    site_name = _site_name(settings, site, name)
    try:
        with Session(registry_engine(settings)) as session:
            chosen = _model(session, model)
            frame = load_frame(session, start=first, end=last, model=chosen, site=site)
        if frame.empty:
            fail(f"no finished case of model {chosen} was received from {first} to {last}; choose another period")
        meta = {"period": label, "start": first.isoformat(), "end": last.isoformat(), "model": chosen}
        document = site_export(frame, settings=settings.audit, site=site_name, meta=meta)
    except AuditError as exc:
        fail(str(exc))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(document, indent=1, allow_nan=False, ensure_ascii=False), encoding="utf-8")
    tmp.replace(out)
    _record_export(settings, f"fairness audit aggregates {chosen} {label} site {site_name}", out.parent)
    table = Table(title=f"Audit export of {site_name}: {chosen}, {label}")
    table.add_column("")
    table.add_column("", overflow="fold")
    table.add_row("patients, cases", f"{document['summary']['patients']}, {document['summary']['cases']}")
    table.add_row("cells", str(len(document["cells"])))
    table.add_row("json", str(out))
    console.print(table)


@app.command("merge")
def merge(
    exports: Annotated[list[Path], typer.Argument(help="Site exports (`fairnode audit export`), two or more.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the group-level report.")],
    label: Annotated[str | None, typer.Option("--label", help="Period label (default: the exports').")] = None,
    pdf: Annotated[bool, typer.Option("--pdf/--no-pdf", help="Also write report.pdf.")] = True,
) -> None:
    """Merge sites' exports into a group-level audit: report.html, report.pdf and report.json.

    Group estimates are those of the pooled cases; cells a site suppressed stay out; no case row is needed.
    """
    import json

    from fairness_registry.audit import AuditError
    from fairness_registry.audit.merge import group_figures, merge_exports
    from fairness_registry.audit.render import ReportMeta, build_report, write_report

    documents = []
    for path in exports:
        try:
            documents.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            fail(f"cannot read the site export {path} (JSON from `fairnode audit export` expected): {exc}")
    if not all(isinstance(d, dict) and isinstance(d.get("meta"), dict) for d in documents):
        fail("a file is not a site export (JSON from `fairnode audit export` expected)")
    periods = sorted({str(d["meta"].get("period")) for d in documents})
    chosen_label = label or (periods[0] if len(periods) == 1 else "group audit")
    try:
        result = merge_exports(documents, label=chosen_label)
        first = min(date.fromisoformat(str(d["meta"]["start"])) for d in documents)
        last = max(date.fromisoformat(str(d["meta"]["end"])) for d in documents)
    except AuditError as exc:
        fail(str(exc))
    except (KeyError, ValueError) as exc:
        fail(f"a site export lacks its period (meta.start, meta.end as YYYY-MM-DD): {exc}")
    model = str(documents[0]["meta"].get("model"))
    report = build_report(result, ReportMeta(period=chosen_label, start=first, end=last, model=model))
    with progress_bar() as progress:
        task = progress.add_task("group audit", total=1, info="writing the report")
        written = write_report(out, report, group_figures(result), pdf=pdf)
        progress.update(task, advance=1, info="done")
    table = Table(title=f"Group audit of {model}, {chosen_label}: {', '.join(result['group']['sites'])}")
    table.add_column("")
    table.add_column("", overflow="fold")
    table.add_row("patients, cases", f"{result['summary']['patients']}, {result['summary']['cases']}")
    table.add_row("alerts", str(len(result["alerts"])))
    for finding in result["findings"]:
        table.add_row("finding", finding["title"])
    for kind, path in written.items():
        table.add_row(kind, str(path))
    console.print(table)
