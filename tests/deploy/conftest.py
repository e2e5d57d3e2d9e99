"""Helpers of the deployment checks: where the assets are, and the fairnode command lines they run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from fairnode.cli import app

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def parse_command(args: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse ``fairnode ARGS`` as the CLI would, without running it; returns the subcommand's name and its
    parameters. An unknown command or option, or a bad value, raises the CLI's usage error (a
    :class:`typer.exceptions.TyperException`)."""
    group: Any = typer.main.get_command(app)
    with group.make_context("fairnode", list(args), resilient_parsing=False) as ctx:
        name, command, rest = group.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        assert name is not None and command is not None
        with command.make_context(name, rest, parent=ctx) as sub:
            return name, dict(sub.params)
