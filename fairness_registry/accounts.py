"""Review accounts: local users, their API tokens, and the append-only trail of review actions.

Tables (revision ``0004_review_accounts``)
------------------------------------------
``review_user``
    One row per person who signs in to the review app: ``username``, :class:`Role`, an argon2 password hash
    (hashing is the review app's job; this module stores what it is given), ``active``, and a
    ``session_version`` that signs out every session of the user when bumped (sign-out, disable).
``review_api_token``
    Bearer tokens for PACS-side tools, stored as SHA-256 of the token (tokens are 256-bit random, so a fast
    hash is enough); the token itself is shown once when made.
``review_action``
    Who did what, when, to which case, with the state before and after: appended, never edited (an UPDATE is
    refused by a trigger on both backends). Deleting a case (an erasure request) deletes its actions.

No patient identifier is stored: users are staff, actions name cases by id.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, select, update

from fairness_registry.models import UTCDateTime, checked_enum, utcnow

__all__ = [
    "ACCOUNT_TABLES",
    "ApiToken",
    "DuplicateUserError",
    "ReviewAction",
    "ReviewActionPublic",
    "Role",
    "User",
    "UserPublic",
    "add_token",
    "append_action",
    "bump_session",
    "count_users",
    "create_user",
    "disable_user",
    "get_user",
    "get_user_by_id",
    "list_actions",
    "list_users",
    "record_login",
    "set_password",
    "user_for_token",
]

#: The tables of this module (part of ``fairness_registry.models.REGISTRY_TABLES``).
ACCOUNT_TABLES = frozenset({"review_user", "review_api_token", "review_action"})
USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,62}$")
ACTION_RE = re.compile(r"^[a-z][a-z0-9_.-]{1,31}$")


class Role(StrEnum):
    """What a user may do: read and act on cases, read aggregate audits, run the node."""

    RADIOLOGIST = "radiologist"
    GOVERNANCE = "governance"
    ADMIN = "admin"


ROLE_TYPE = checked_enum(Role, name="ck_review_user_role", length=16)


class DuplicateUserError(ValueError):
    """A user name that is already taken."""


class User(SQLModel, table=True):
    """A person who signs in to the review app."""

    __tablename__ = "review_user"
    __table_args__ = (sa.UniqueConstraint("username", name="uq_review_user_username"),)

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(max_length=64)
    role: Role = Field(sa_type=ROLE_TYPE, nullable=False)
    password_hash: str = Field(max_length=255)
    active: bool = Field(default=True, nullable=False)
    session_version: int = Field(default=1, nullable=False, description="bumped to end every session")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    disabled_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_login_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class UserPublic(SQLModel):
    """A user as the API and the CLI show it (no hash)."""

    id: int
    username: str
    role: Role
    active: bool
    created_at: datetime
    disabled_at: datetime | None = None
    last_login_at: datetime | None = None


class ApiToken(SQLModel, table=True):
    """A bearer token of one user, stored hashed."""

    __tablename__ = "review_api_token"
    __table_args__ = (sa.UniqueConstraint("token_hash", name="uq_review_api_token_token_hash"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="review_user.id", ondelete="CASCADE", index=True)
    token_hash: str = Field(max_length=64, description="hex SHA-256 of the token")
    label: str = Field(default="", max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    last_used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class ReviewAction(SQLModel, table=True):
    """One review action, appended and never edited."""

    __tablename__ = "review_action"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    user_id: int = Field(foreign_key="review_user.id", ondelete="RESTRICT", index=True)
    case_id: int | None = Field(default=None, foreign_key="case.id", ondelete="CASCADE", index=True)
    action: str = Field(max_length=32, description="e.g. accept, reject, correct, audit.run, dead_letters.retry")
    before: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    after: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    detail: str = Field(default="", sa_type=sa.Text, nullable=False)


class ReviewActionPublic(SQLModel):
    """A review action as pages and the API show it (with the user's name)."""

    id: int
    at: datetime
    username: str
    case_id: int | None
    action: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    detail: str


def _check_username(username: str) -> str:
    if not isinstance(username, str) or not USERNAME_RE.fullmatch(username):
        raise ValueError(
            f"user name {username!r} is not accepted; use 2-63 characters: lower-case letters, digits, '.', '_' "
            "or '-', starting with a letter or digit"
        )
    return username


def _check_role(role: Role | str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise ValueError(f"role {role!r} is not known; accepted: {', '.join(r.value for r in Role)}") from None


def create_user(session: Session, *, username: str, role: Role | str, password_hash: str) -> User:
    """Add a user.

    Raises
    ------
    ValueError
        For a user name or role that is not accepted, or an empty hash.
    DuplicateUserError
        When the name is taken.
    """
    _check_username(username)
    checked_role = _check_role(role)
    if not password_hash:
        raise ValueError("password_hash is empty; hash the password first (review.security.hash_password)")
    if get_user(session, username=username) is not None:
        raise DuplicateUserError(f"user {username!r} exists already; choose another name")
    user = User(username=username, role=checked_role, password_hash=password_hash)
    session.add(user)
    try:
        session.commit()
    except IntegrityError as exc:  # the same name created at the same moment by another process
        session.rollback()
        raise DuplicateUserError(f"user {username!r} exists already; choose another name") from exc
    session.refresh(user)
    return user


def get_user(session: Session, *, username: str) -> User | None:
    """The user of that name, or ``None``."""
    return session.exec(select(User).where(col(User.username) == username)).first()


def get_user_by_id(session: Session, *, user_id: int) -> User | None:
    """The user of that id, or ``None``."""
    return session.get(User, user_id, populate_existing=True)


def count_users(session: Session) -> int:
    """How many users there are (disabled ones included)."""
    return int(session.exec(select(sa.func.count()).select_from(User)).one())


def list_users(session: Session) -> list[User]:
    """Every user, by name."""
    return list(session.exec(select(User).order_by(col(User.username))).all())


def _existing(session: Session, username: str) -> User:
    user = get_user(session, username=username)
    if user is None:
        raise LookupError(f"no user {username!r}; see `fairnode users list`")
    return user


def disable_user(session: Session, *, username: str) -> User:
    """Disable a user: their sessions end and their tokens are revoked (the row stays, for the trail).

    Raises
    ------
    LookupError
        For an unknown user.
    """
    user = _existing(session, username)
    now = utcnow()
    user.active = False
    user.disabled_at = user.disabled_at or now
    user.session_version += 1
    session.add(user)
    session.exec(
        update(ApiToken)
        .where(col(ApiToken.user_id) == user.id, col(ApiToken.revoked_at).is_(None))
        .values(revoked_at=now)
    )
    session.commit()
    session.refresh(user)
    return user


def set_password(session: Session, *, username: str, password_hash: str) -> User:
    """Replace a user's password hash; their sessions end."""
    if not password_hash:
        raise ValueError("password_hash is empty; hash the password first (review.security.hash_password)")
    user = _existing(session, username)
    user.password_hash = password_hash
    user.session_version += 1
    session.add(user)
    session.commit()
    session.refresh(user)
    return user


def bump_session(session: Session, *, user_id: int) -> None:
    """End every session of a user (sign-out)."""
    session.exec(update(User).where(col(User.id) == user_id).values(session_version=User.session_version + 1))
    session.commit()


def record_login(session: Session, *, user_id: int, password_hash: str | None = None) -> None:
    """Note a successful sign-in (and store a re-hashed password when the hash parameters changed)."""
    values: dict[str, object] = {"last_login_at": utcnow()}
    if password_hash:
        values["password_hash"] = password_hash
    session.exec(update(User).where(col(User.id) == user_id).values(**values))
    session.commit()


def add_token(session: Session, *, user_id: int, token_hash: str, label: str = "") -> ApiToken:
    """Store a token's hash for a user."""
    if not re.fullmatch(r"[0-9a-f]{64}", token_hash):
        raise ValueError("token_hash must be the 64 hex digits of a SHA-256 (review.security.hash_token)")
    token = ApiToken(user_id=user_id, token_hash=token_hash, label=label[:64])
    session.add(token)
    session.commit()
    session.refresh(token)
    return token


def user_for_token(session: Session, *, token_hash: str) -> User | None:
    """The active user holding an unrevoked token of that hash (its last use noted), else ``None``."""
    row = session.exec(
        select(ApiToken, User)
        .join(User, col(ApiToken.user_id) == col(User.id))
        .where(col(ApiToken.token_hash) == token_hash, col(ApiToken.revoked_at).is_(None), col(User.active))
    ).first()
    if row is None:
        return None
    token, user = row
    token.last_used_at = utcnow()
    session.add(token)
    session.commit()
    session.refresh(user)
    return user


def append_action(
    session: Session,
    *,
    user_id: int,
    action: str,
    case_id: int | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    detail: str = "",
) -> ReviewAction:
    """Append one action to the trail (the only way a row gets there)."""
    if not isinstance(action, str) or not ACTION_RE.fullmatch(action):
        raise ValueError(f"action {action!r} is not accepted; use 2-32 lower-case letters, digits, '.', '_', '-'")
    row = ReviewAction(user_id=user_id, action=action, case_id=case_id, before=before, after=after, detail=detail)
    session.add(row)
    session.commit()
    session.refresh(row)
    return row


def list_actions(
    session: Session, *, case_id: int | None = None, action: str | None = None, limit: int = 100
) -> list[ReviewActionPublic]:
    """The trail, newest first (of one case, and of one kind of action, when given)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise ValueError(f"limit {limit!r} must be an int between 1 and 1000")
    statement = select(ReviewAction, User.username).join(User, col(ReviewAction.user_id) == col(User.id))
    if case_id is not None:
        statement = statement.where(col(ReviewAction.case_id) == case_id)
    if action is not None:
        statement = statement.where(col(ReviewAction.action) == action)
    statement = statement.order_by(col(ReviewAction.at).desc(), col(ReviewAction.id).desc()).limit(limit)
    return [
        ReviewActionPublic(
            id=row.id or 0,
            at=row.at,
            username=username,
            case_id=row.case_id,
            action=row.action,
            before=row.before,
            after=row.after,
            detail=row.detail,
        )
        for row, username in session.exec(statement).all()
    ]
