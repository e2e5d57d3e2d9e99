"""Alembic environment of the registry.

Normally run by :func:`fairness_registry.db.migrate`, which hands over an open connection in
``config.attributes["connection"]``. Offline mode (``command.upgrade(cfg, "head", sql=True)`` with
``sqlalchemy.url`` set in the config) writes the SQL instead, for a DBA to review.

``target_metadata`` only serves ``alembic revision --autogenerate`` while developing a new revision; the
schema at runtime comes from the revision files alone.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from fairness_registry.db import VERSION_TABLE
from fairness_registry.models import REGISTRY_TABLES

config = context.config


def include_name(name: str | None, type_: str, _parent_names: object) -> bool:
    """Autogenerate looks only at the registry's tables (another package may share the database)."""
    return type_ != "table" or name in REGISTRY_TABLES


def run_migrations_offline() -> None:
    """Emit the migration SQL for ``sqlalchemy.url`` without connecting."""
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError(
            "offline migration needs sqlalchemy.url in the alembic config, e.g. "
            "cfg.set_main_option('sqlalchemy.url', 'postgresql+psycopg://user@host/db')"
        )
    context.configure(
        url=url,
        target_metadata=SQLModel.metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online(connection: Connection) -> None:
    """Run the pending revisions on ``connection`` (inside the caller's transaction)."""
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        version_table=VERSION_TABLE,
        include_name=include_name,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    handed_over = config.attributes.get("connection")
    if not isinstance(handed_over, Connection):
        raise RuntimeError(
            "no database connection: run migrations with fairness_registry.db.migrate(url), or set "
            "cfg.attributes['connection'] on fairness_registry.db.alembic_config()"
        )
    run_migrations_online(handed_over)
