"""``fairnode cohort``: synthetic cohorts with ground truth and demographics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fairnode.cli.common import console, fail, progress_bar

app = typer.Typer(help="Synthetic cohorts with ground truth and demographics.", no_args_is_help=True)


@app.command("make")
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
    with progress_bar() as progress:
        task = progress.add_task(f"{kind} cohort", total=n, info="")
        manifest = make_cohort(
            request,
            out,
            workers=workers,
            on_subject=lambda row: progress.update(task, advance=1, info=f"{row['patient_id']}"),
        )
    console.print(f"wrote {n} {kind} studies and {manifest}")


@app.command("scenarios")
def cohort_scenarios() -> None:
    """List the shift scenarios shipped with fairnode."""
    from cohorts.shift import load_shift, shipped_scenarios

    table = Table("scenario", "groups (share)", "what it reproduces")
    for name, path in shipped_scenarios().items():
        spec = load_shift(path)
        groups = "; ".join(f"{g.match.describe()} ({g.share:.0%})" for g in spec.groups)
        table.add_row(name, groups, spec.description)
    console.print(table)
