"""``fairnode registry``: the ethnic group texts the mapping table leaves unmapped, and EHR demographics import."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from fairnode.cli.common import ConfigOption, console, err_console, fail, load, registry_engine

if TYPE_CHECKING:
    pass

app = typer.Typer(help="The pseudonymised registry: ethnic group mapping, EHR demographics.", no_args_is_help=True)


@app.command("unmapped")
def registry_unmapped(
    config: ConfigOption = None,
    show_all: Annotated[bool, typer.Option("--all", help="List every text with its group, mapped or not.")] = False,
) -> None:
    """List the EthnicGroup texts in the registry that the mapping table leaves unmapped, with their counts.

    Texts the table declares as "not recorded" (unknown, declined, ...) are not listed. Extend the table
    (setting registry_options.ethnic_groups) and the next studies map; the counts are from the study rows.
    """
    from sqlmodel import Session

    from fairness_registry import crud
    from fairness_registry.ethnic_groups import MappingFileError, MatchKind

    settings = load(config)
    try:
        mapping = settings.registry_options.mapping()
    except MappingFileError as exc:
        fail(str(exc))
    with Session(registry_engine(settings)) as session:
        texts = crud.ethnic_group_texts(session)
    table = Table(title="Ethnic group texts" if show_all else "Ethnic group texts the mapping table leaves unmapped")
    for column in ("text", "group now", "stored as", "studies", "patients"):
        table.add_column(column, justify="right" if column in ("studies", "patients") else "left")
    shown = studies_total = 0
    for text, stored, studies, patients in texts:
        group, kind = mapping.match(text)
        if not show_all and kind is not MatchKind.UNMAPPED:
            continue
        shown += 1
        studies_total += studies
        now = group if kind is not MatchKind.UNMAPPED else "unmapped"
        table.add_row(Text(text), now, stored or "", str(studies), str(patients))
    if shown == 0:
        distinct = len({t for t, *_ in texts})
        console.print(f"every ethnic group text in the registry is mapped ({distinct} distinct texts)")
        return
    console.print(table)
    if not show_all:
        console.print(
            f"{shown} unmapped texts on {studies_total} studies; add them to the mapping table "
            f"({mapping.source}) and set registry_options.ethnic_groups to your copy"
        )


@app.command("remap")
def registry_remap(
    config: ConfigOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would change; write nothing.")] = False,
) -> None:
    """Apply the current mapping table to studies stored as unknown (after adding their texts to the table).

    Only unknown groups change; a group already known (from a header or the EHR) is kept.
    """
    from sqlmodel import Session

    from fairness_registry import crud
    from fairness_registry.ethnic_groups import MappingFileError

    settings = load(config)
    try:
        mapping = settings.registry_options.mapping()
    except MappingFileError as exc:
        fail(str(exc))
    with Session(registry_engine(settings)) as session:
        changed = crud.remap_ethnic_groups(session, mapping=mapping, dry_run=dry_run)
    console.print(f"{changed} studies {'would get' if dry_run else 'got'} an ethnic group from {mapping.source}")


@app.command("import-demographics")
def registry_import_demographics(
    file: Annotated[Path, typer.Argument(help="EHR export (CSV keyed by patient ID).", show_default=False)],
    config: ConfigOption = None,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Date the 'age' column refers to (YYYY-MM-DD); default today.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would change; write nothing.")] = False,
) -> None:
    """Add or correct demographics from an EHR export, in one transaction, and print what happened.

    Columns (first row, any case): patient_id (required; also patientid, mrn, pid), sex (gender),
    birth_date (date_of_birth, dob), age, ethnic_group (ethnicity, race), weight_kg (weight), height_m
    (height) or height_cm. The EHR wins over the header for sex, ethnic group and the age from a birth date;
    the header wins for weight, height and an age given without a birth date. Patient IDs are pseudonymised
    with the registry's secret and never stored or printed.
    """
    from sqlmodel import Session

    from fairness_registry.ehr_import import RULES, EhrFileError, import_file
    from fairness_registry.ethnic_groups import MappingFileError

    settings = load(config)
    when = None
    if as_of is not None:
        try:
            when = date.fromisoformat(as_of)
        except ValueError:
            fail(f"--as-of {as_of!r} is not a date; expected YYYY-MM-DD")
    if settings.pseudonym_secret is None and not (settings.data_dir / "pseudonym.key").exists():
        fail(
            f"no pseudonymisation secret: FAIRNODE_PSEUDONYM_SECRET is unset and {settings.data_dir / 'pseudonym.key'} "
            "does not exist; import with the secret the node uses, or every patient would look new"
        )
    try:
        mapping = settings.registry_options.mapping()
    except MappingFileError as exc:
        fail(str(exc))
    engine = registry_engine(settings)
    try:
        with Session(engine) as session:
            report = import_file(session, file, secret=settings.secret(), mapping=mapping, as_of=when, dry_run=dry_run)
    except EhrFileError as exc:
        fail(f"{exc}; nothing was imported")

    summary = Table(title=f"EHR import of {file.name}" + (" (dry run: nothing written)" if dry_run else ""))
    summary.add_column("rows")
    summary.add_column("count", justify="right")
    for label, count in (
        ("read", report.rows),
        ("matched (patient in the registry)", report.matched),
        ("new (patient not in the registry yet)", report.new),
        ("conflicted (a value differed)", report.conflicted),
        ("rejected", len(report.rejected)),
        ("study rows updated", report.studies_updated),
    ):
        summary.add_row(label, str(count))
    console.print(summary)
    if report.conflicts:
        conflicts = Table(title="Conflicts: which value won")
        for column in ("field", "rows", "winner", "why"):
            conflicts.add_column(column)
        for name, count in sorted(report.conflicts.items()):
            winner, why = RULES[name]
            conflicts.add_row(name, str(count), winner, why)
        console.print(conflicts)
    if report.rejected:
        rejected = Table(title="Rejected rows (nothing from them was imported)")
        rejected.add_column("row", justify="right")
        rejected.add_column("reason")
        for number, reason in report.rejected:
            rejected.add_row(str(number), Text(reason))
        console.print(rejected)
    if report.ignored_columns:
        err_console.print(f"columns ignored (not demographics): {', '.join(report.ignored_columns)}", highlight=False)
    if report.unmapped_ethnic_groups:
        err_console.print(
            f"{report.unmapped_ethnic_groups} rows have an ethnic group the mapping table leaves unmapped "
            "(stored as unknown; see fairnode registry unmapped)",
            highlight=False,
        )
