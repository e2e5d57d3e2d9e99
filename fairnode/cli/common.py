"""What every command module shares: the consoles, the one-line error, the progress bar and settings loading."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

if TYPE_CHECKING:
    from fairnode.settings import Settings

__all__ = ["ConfigOption", "console", "err_console", "fail", "load", "progress_bar"]

console = Console()
err_console = Console(stderr=True)


def fail(message: str) -> NoReturn:
    """Print a one-line error and exit with status 2."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def progress_bar() -> Progress:
    """A rich progress bar on stderr (so tables on stdout stay clean when piped)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
    )


ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="Settings YAML (see deploy/fairnode.example.yaml).")
]


def load(config: Path | None, **overrides: object) -> Settings:
    """The settings from ``config`` (and the environment); a bad file or value is a one-line error."""
    from pydantic import ValidationError

    from fairnode.settings import SettingsFileError, load_settings

    try:
        return load_settings(config, **overrides)
    except SettingsFileError as exc:
        fail(str(exc))
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"setting {'.'.join(str(p) for p in first['loc'])}: {first['msg']}")
