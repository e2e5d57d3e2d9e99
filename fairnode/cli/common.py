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
    from sqlalchemy import Engine

    from fairnode.settings import Settings

__all__ = ["ConfigOption", "console", "err_console", "fail", "load", "progress_bar", "registry_engine"]

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


def registry_engine(settings: Settings) -> Engine:
    """The registry's engine, its schema brought to the newest revision; a registry without a schema (the node
    never started) or one that cannot be opened is a one-line error."""
    from sqlalchemy.exc import SQLAlchemyError

    from fairness_registry.db import current_revision, get_engine, migrate

    url = settings.registry
    options = settings.registry_options.engine_options()
    try:
        revision = current_revision(url, options)
    except ValueError as exc:
        fail(str(exc))
    except SQLAlchemyError as exc:
        first_line = (str(getattr(exc, "orig", None) or exc).splitlines() or [""])[0]
        fail(f"cannot open the registry: {type(exc).__name__}: {first_line}")
    if revision is None:
        fail(
            f"the registry at {get_engine(url, options).url.render_as_string(hide_password=True)} has no schema yet; "
            "start the node once (fairnode serve) or check registry_url / data_dir"
        )
    migrate(url, options)
    return get_engine(url, options)
