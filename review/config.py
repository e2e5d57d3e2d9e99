"""Settings of the review app (:class:`ReviewSettings`, the ``review`` field of ``fairnode.settings.Settings``)
and the session secret they resolve to (:func:`session_secret`).

The session secret signs every session cookie. Outside dev mode it must be given (``review.session_secret``,
``FAIRNODE_REVIEW__SESSION_SECRET``) with at least :data:`MIN_SECRET_LENGTH` characters and not a well-known
placeholder, or it is generated once into ``<data_dir>/review-session.key`` (mode 0600) — the embedded set-up
of ``make run``. In dev mode any secret is accepted and an unset one is a fixed, insecure development value.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr

__all__ = [
    "DEV_SECRET",
    "KEY_FILE",
    "MIN_SECRET_LENGTH",
    "PLACEHOLDER_SECRETS",
    "ReviewSettings",
    "SecretError",
    "session_secret",
]

#: Shortest session secret accepted outside dev mode (characters).
MIN_SECRET_LENGTH = 32
#: The secret of dev mode when none is set (never accepted outside dev mode).
DEV_SECRET = "fairnode-dev-insecure-session-secret"
#: Values that are defaults somewhere and never secret (compared case-insensitively).
PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "change-me", "changethis", "secret", "password", "default", DEV_SECRET}
)
#: File under the data folder holding the generated session secret.
KEY_FILE = "review-session.key"


class SecretError(ValueError):
    """A session secret that is refused (empty, a placeholder, too short outside dev mode)."""


class ReviewSettings(BaseModel):
    """How the review app signs people in and what it shows."""

    model_config = ConfigDict(extra="forbid")

    session_secret: SecretStr | None = Field(
        None, description=f"signs session cookies; default: generated into <data_dir>/{KEY_FILE}"
    )
    idle_minutes: float = Field(30.0, gt=0, le=24 * 60, description="a session idle this long is signed out")
    show_accession: bool = Field(False, description="show the accession number on the worklist (read from the spool)")
    first_admin: str | None = Field(
        "admin", description="user created as admin on first start when there is no user; None: create none"
    )
    first_admin_password: SecretStr | None = Field(
        None, description="its password; default: a one-time password printed once at start"
    )
    dev_mode: bool = Field(False, description="accept a default secret (never in production)")
    login_attempts_per_user: str = Field("5/minute", description="sign-in attempts per user name (limits syntax)")
    login_attempts_per_address: str = Field("20/minute", description="sign-in attempts per client address")
    secure_cookies: bool | None = Field(None, description="Secure cookie flag; default: when the request is HTTPS")


def _check(secret: str, *, dev_mode: bool, where: str) -> bytes:
    if not dev_mode:
        if secret.strip().lower() in PLACEHOLDER_SECRETS:
            raise SecretError(
                f"the review session secret from {where} is empty or a well-known default; set "
                f"review.session_secret to at least {MIN_SECRET_LENGTH} random characters (or leave it unset to "
                f"have one generated into <data_dir>/{KEY_FILE}); only dev mode accepts defaults"
            )
        if len(secret) < MIN_SECRET_LENGTH:
            raise SecretError(
                f"the review session secret from {where} has {len(secret)} characters; at least "
                f"{MIN_SECRET_LENGTH} are needed outside dev mode"
            )
    return secret.encode("utf-8")


def session_secret(settings: ReviewSettings, data_dir: Path) -> bytes:
    """The secret that signs session cookies.

    Parameters
    ----------
    settings : ReviewSettings
    data_dir : pathlib.Path
        Where the generated key file lives when no secret is set (outside dev mode).

    Returns
    -------
    bytes

    Raises
    ------
    SecretError
        Outside dev mode: a set secret that is empty, a placeholder or shorter than :data:`MIN_SECRET_LENGTH`,
        or a key file holding one.
    """
    if settings.session_secret is not None:
        return _check(settings.session_secret.get_secret_value(), dev_mode=settings.dev_mode, where="settings")
    if settings.dev_mode:
        return DEV_SECRET.encode("utf-8")
    key = data_dir / KEY_FILE
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first: read theirs
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
    return _check(key.read_text(encoding="utf-8").strip(), dev_mode=False, where=str(key))
