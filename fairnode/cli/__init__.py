"""The ``fairnode`` command line: one module per command group, registered here.

Errors a user can act on are printed as one line on stderr (``error: ...``) with exit status 2; no
traceback. Tables go to stdout, progress bars to stderr.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

# model_import registers `model import` and `model benchmark` on the model group
from fairnode.cli import audit, cohort, model, model_import, node, quality, registry, tls, users  # noqa: F401

__all__ = ["app"]

app = typer.Typer(
    name="fairnode",
    help="fairnode: a DICOM node that segments studies, estimates their quality without ground truth "
    "and keeps a pseudonymised fairness registry.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at DEBUG level.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


for command in node.app.registered_commands:
    app.registered_commands.append(command)
app.add_typer(node.deliveries_app, name="deliveries")
app.add_typer(cohort.app, name="cohort")
app.add_typer(model.app, name="model")
app.add_typer(quality.app, name="quality")
app.add_typer(registry.app, name="registry")
app.add_typer(users.app, name="users")
app.add_typer(audit.app, name="audit")
app.add_typer(tls.app, name="tls")
