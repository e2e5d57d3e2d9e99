"""Database engines and schema migrations for the registry.

One engine per database URL per process (:func:`get_engine`); sessions are opened on it by the caller
(``with Session(get_engine(url)) as session: ...``). The schema is created and upgraded only by
:func:`migrate`, which runs the alembic revisions shipped in ``fairness_registry/migrations`` (the
alembic configuration is built here in code; there is no ``alembic.ini``).

Supported URLs
--------------
- ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (the embedded default; see
  :func:`sqlite_url`). Foreign keys are enforced, the journal is WAL, writers wait up to
  :attr:`EngineOptions.sqlite_busy_timeout_s` (30 s) for a lock.
- ``postgresql+psycopg://user:password@host:5432/dbname`` (or a Unix socket:
  ``postgresql+psycopg://user@/dbname?host=/run/postgresql``). ``postgresql://`` means the same. A connection
  that is not established within :attr:`EngineOptions.connect_timeout_s` (10 s; psycopg's own default is
  130 s) fails: a registry that cannot be reached, or whose packets are dropped, costs a write that long,
  and the write is then kept for a retry (:mod:`fairnode.registry_pending`), never holding a study up longer.

JSON columns are written as strict JSON on both backends: a NaN or infinity reaching one is a ``ValueError``
(PostgreSQL would refuse it, and SQLite would store text no other JSON reader accepts). The crud functions
store non-finite scores as ``null``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_S",
    "MIGRATIONS_DIR",
    "SQLITE_BUSY_TIMEOUT_S",
    "VERSION_TABLE",
    "EngineOptions",
    "alembic_config",
    "current_revision",
    "dispose_engines",
    "get_engine",
    "migrate",
    "sqlite_url",
]

logger = logging.getLogger(__name__)

#: The alembic script directory, shipped inside the package.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: Alembic's version table for this package (not the default name, so another package's migrations can
#: share the database).
VERSION_TABLE = "fairness_registry_alembic_version"
#: Seconds a SQLite writer waits for another writer's lock before failing (default).
SQLITE_BUSY_TIMEOUT_S = 30.0
#: Seconds a PostgreSQL connection may take to be established (TCP and start-up) before it fails (default).
DEFAULT_CONNECT_TIMEOUT_S = 10
#: libpq's (and psycopg's) smallest connect timeout: a smaller one is raised to it.
MIN_CONNECT_TIMEOUT_S = 2
# Key of the PostgreSQL advisory lock that serialises concurrent migrate() calls (ASCII "fair").
_PG_MIGRATION_LOCK_KEY = 0x66616972

#: How JSON columns are serialised: strict JSON (no NaN or infinity).
_json_serializer = functools.partial(json.dumps, allow_nan=False)


@dataclass(frozen=True)
class EngineOptions:
    """How long the registry's engine waits, so that a registry that hangs cannot hold up a write for long.

    Attributes
    ----------
    connect_timeout_s : int
        PostgreSQL: seconds to establish a connection (TCP connect, TLS, start-up and authentication) before
        it fails with ``OperationalError``; whole seconds, at least 2 (libpq's ``connect_timeout``).
    sqlite_busy_timeout_s : float
        SQLite: seconds a writer waits for another writer's lock before it fails (``database is locked``).

    Raises
    ------
    ValueError
        If a timeout is out of range (the message gives the value and the range).
    """

    connect_timeout_s: int = DEFAULT_CONNECT_TIMEOUT_S
    sqlite_busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_S

    def __post_init__(self) -> None:
        if isinstance(self.connect_timeout_s, bool) or not isinstance(self.connect_timeout_s, int):
            raise TypeError(f"connect_timeout_s must be whole seconds (int), got {self.connect_timeout_s!r}")
        if self.connect_timeout_s < MIN_CONNECT_TIMEOUT_S:
            raise ValueError(
                f"connect_timeout_s must be at least {MIN_CONNECT_TIMEOUT_S} s (libpq), got {self.connect_timeout_s}"
            )
        if not self.sqlite_busy_timeout_s > 0:
            raise ValueError(f"sqlite_busy_timeout_s must be above 0 s, got {self.sqlite_busy_timeout_s}")


_engines: dict[tuple[str, EngineOptions], Engine] = {}
_engines_lock = threading.Lock()


def sqlite_url(path: str | os.PathLike[str]) -> str:
    """The SQLAlchemy URL of a SQLite file, with the path made absolute."""
    return f"sqlite:///{Path(path).resolve()}"


def _parse_url(url: str) -> URL:
    """Parse and check a registry URL; ``ValueError`` names the URL (password hidden) and what is accepted."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ValueError(
            "registry URL cannot be parsed; use sqlite:///path/to/registry.db or "
            "postgresql+psycopg://user:password@host/dbname"
        ) from exc
    backend = parsed.get_backend_name()
    shown = parsed.render_as_string(hide_password=True)
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ValueError(
                f"registry URL {shown!r} is an in-memory SQLite database, which every connection sees empty; "
                "use a file: sqlite:///path/to/registry.db"
            )
        return parsed
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+psycopg") if parsed.drivername == "postgresql" else parsed
    raise ValueError(
        f"registry URL {shown!r} uses the unsupported backend {backend!r}; "
        "accepted: sqlite:///path/to/registry.db or postgresql+psycopg://user:password@host/dbname"
    )


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    """Per-connection SQLite settings: enforce foreign keys, use the WAL journal."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()


def _create_engine(url: str, options: EngineOptions) -> Engine:
    """A new engine for ``url`` with the per-backend settings described in the module docstring."""
    parsed = _parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        Path(parsed.database or "").parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            parsed, connect_args={"timeout": options.sqlite_busy_timeout_s}, json_serializer=_json_serializer
        )
        event.listen(engine, "connect", _sqlite_on_connect)
    else:
        engine = create_engine(
            parsed,
            pool_pre_ping=True,
            connect_args={"connect_timeout": options.connect_timeout_s},
            json_serializer=_json_serializer,
        )
    logger.info("registry engine created for %s", parsed.render_as_string(hide_password=True))
    return engine


def get_engine(url: str, options: EngineOptions | None = None) -> Engine:
    """The process-wide engine for a registry URL, created on first use.

    Parameters
    ----------
    url : str
        See the module docstring for the accepted forms.
    options : EngineOptions or None
        Timeouts of the engine; the defaults of :class:`EngineOptions` when ``None``.

    Returns
    -------
    sqlalchemy.Engine
        The same object for every call with the same URL and options (until :func:`dispose_engines`).

    Raises
    ------
    ValueError
        When the URL cannot be parsed or names an unsupported backend.
    """
    key = (url, options or EngineOptions())
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _create_engine(*key)
            _engines[key] = engine
        return engine


def dispose_engines() -> None:
    """Close the pooled connections of every engine and forget them (at shutdown, and between tests)."""
    with _engines_lock:
        engines = list(_engines.values())
        _engines.clear()
    for engine in engines:
        engine.dispose()


def alembic_config() -> Config:
    """The alembic configuration of the registry, built in code.

    To run a command yourself, hand it a connection: ``cfg.attributes["connection"] = connection``, e.g.
    ``command.revision(cfg, "add column x", autogenerate=True)`` while developing a new revision.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def current_revision(url: str, options: EngineOptions | None = None) -> str | None:
    """The alembic revision the registry at ``url`` is at (``None`` before the first :func:`migrate`)."""
    with get_engine(url, options).connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def migrate(url: str, options: EngineOptions | None = None) -> str | None:
    """Create or upgrade the registry schema to the newest revision (``alembic upgrade head``).

    Safe to call at every start: an up-to-date database is left as it is. On PostgreSQL, concurrent calls
    (several workers starting together) are serialised by an advisory lock.

    Parameters
    ----------
    url : str
        The registry URL (see the module docstring).
    options : EngineOptions or None
        Timeouts of the engine (see :func:`get_engine`).

    Returns
    -------
    str or None
        The revision the database is at afterwards.
    """
    engine = get_engine(url, options)
    config = alembic_config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK_KEY})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        revision = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()
    logger.info("registry schema at revision %s (%s)", revision, engine.url.render_as_string(hide_password=True))
    return revision
