"""``fairnode users``: the review app's local accounts (argon2 password hashes in the registry)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from fairnode.cli.common import ConfigOption, console, fail, load

if TYPE_CHECKING:
    from sqlmodel import Session

app = typer.Typer(help="Review app users: add, list, disable, passwords and API tokens.", no_args_is_help=True)

RoleOption = Annotated[str, typer.Option("--role", help="radiologist, governance or admin.")]
StdinOption = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from the first line of stdin (no prompt).")
]


def _session(config: ConfigOption) -> Session:
    from sqlmodel import Session

    from fairness_registry.db import get_engine, migrate

    settings = load(config)
    options = settings.registry_options.engine_options()
    try:
        migrate(settings.registry, options)
    except ValueError as exc:
        fail(str(exc))
    return Session(get_engine(settings.registry, options))


def _password(password_stdin: bool) -> str:
    """The new password (stdin or a prompt asked twice), hashed with argon2."""
    from review.security import hash_password

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        return hash_password(password)
    except ValueError as exc:
        fail(str(exc))


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="User name (lower-case letters, digits, '.', '_', '-').")],
    role: RoleOption,
    password_stdin: StdinOption = False,
    config: ConfigOption = None,
) -> None:
    """Add a user with a role and a password."""
    from fairness_registry import accounts

    try:
        checked = accounts.Role(role)
    except ValueError:
        fail(f"role {role!r} is not known; accepted: {', '.join(r.value for r in accounts.Role)}")
    password_hash = _password(password_stdin)
    with _session(config) as session:
        try:
            user = accounts.create_user(session, username=name, role=checked, password_hash=password_hash)
        except ValueError as exc:
            fail(str(exc))
    console.print(f"user {user.username} added ({user.role.value})")


@app.command("list")
def list_(config: ConfigOption = None) -> None:
    """List users."""
    from fairness_registry import accounts

    table = Table("user", "role", "active", "created", "last sign-in")
    with _session(config) as session:
        for u in accounts.list_users(session):
            table.add_row(
                u.username,
                u.role.value,
                "yes" if u.active else f"no (since {u.disabled_at:%Y-%m-%d})" if u.disabled_at else "no",
                f"{u.created_at:%Y-%m-%d %H:%M}",
                f"{u.last_login_at:%Y-%m-%d %H:%M}" if u.last_login_at else "never",
            )
    console.print(table)


@app.command("disable")
def disable(name: Annotated[str, typer.Argument(help="User name.")], config: ConfigOption = None) -> None:
    """Disable a user: their sessions end and their API tokens are revoked (the trail keeps their name)."""
    from fairness_registry import accounts

    with _session(config) as session:
        try:
            accounts.disable_user(session, username=name)
        except LookupError as exc:
            fail(str(exc.args[0]))
    console.print(f"user {name} disabled")


@app.command("passwd")
def passwd(
    name: Annotated[str, typer.Argument(help="User name.")],
    password_stdin: StdinOption = False,
    config: ConfigOption = None,
) -> None:
    """Set a user's password (their sessions end)."""
    from fairness_registry import accounts

    password_hash = _password(password_stdin)
    with _session(config) as session:
        try:
            accounts.set_password(session, username=name, password_hash=password_hash)
        except LookupError as exc:
            fail(str(exc.args[0]))
    console.print(f"password of {name} changed")


@app.command("token")
def token(
    name: Annotated[str, typer.Argument(help="User name.")],
    label: Annotated[str, typer.Option(help="What the token is for (e.g. the PACS tool).")] = "",
    config: ConfigOption = None,
) -> None:
    """Make an API bearer token for a user; printed once, stored hashed."""
    from fairness_registry import accounts
    from review.security import hash_token, new_token

    value = new_token()
    with _session(config) as session:
        user = accounts.get_user(session, username=name)
        if user is None or user.id is None or not user.active:
            fail(f"no active user {name!r}; see `fairnode users list`")
        accounts.add_token(session, user_id=user.id, token_hash=hash_token(value), label=label)
    console.print(value, highlight=False, soft_wrap=True)
