"""Engines and migrations, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

from fairness_registry import models
from fairness_registry.db import VERSION_TABLE, current_revision, get_engine, migrate, sqlite_url
from fairness_registry.models import REGISTRY_TABLES


def _schema(url: str) -> dict[str, list[str]]:
    """Table -> column names, as the database reports them."""
    inspector = sa.inspect(get_engine(url))
    return {table: [c["name"] for c in inspector.get_columns(table)] for table in inspector.get_table_names()}


def test_migrate_creates_the_schema_and_is_idempotent(registry_url: str) -> None:
    assert current_revision(registry_url) is None
    revision = migrate(registry_url)
    assert revision is not None
    schema = _schema(registry_url)
    assert set(schema) == REGISTRY_TABLES | {VERSION_TABLE}
    assert migrate(registry_url) == revision
    assert current_revision(registry_url) == revision
    assert _schema(registry_url) == schema


def test_models_and_migrations_agree(registry_url: str) -> None:
    migrate(registry_url)

    def registry_only(name: str | None, type_: str, _parents: object) -> bool:
        return type_ != "table" or name in REGISTRY_TABLES

    with get_engine(registry_url).connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True, "include_name": registry_only})
        differences = compare_metadata(context, SQLModel.metadata)
    assert differences == []


def test_registry_tables_constant_lists_the_model_tables() -> None:
    model_tables = {
        sa.inspect(model).local_table.description
        for model in (models.Subject, models.Study, models.Series, models.Case, models.CaseStructure)
    }
    assert model_tables <= REGISTRY_TABLES
    assert set(SQLModel.metadata.tables) >= REGISTRY_TABLES  # every listed table has a model


def test_one_engine_per_url(tmp_path: Path) -> None:
    first = sqlite_url(tmp_path / "a.db")
    assert get_engine(first) is get_engine(first)
    assert get_engine(first) is not get_engine(sqlite_url(tmp_path / "b.db"))


def test_sqlite_enforces_foreign_keys(tmp_path: Path) -> None:
    with get_engine(sqlite_url(tmp_path / "fk.db")).connect() as connection:
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql+pymysql://user@host/db", "unsupported backend 'mysql'"),
        ("sqlite://", "in-memory SQLite"),
        ("sqlite:///:memory:", "in-memory SQLite"),
        ("not a url", "cannot be parsed"),
    ],
)
def test_unsupported_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_engine(url)


def test_password_is_not_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        get_engine("mysql://user:hunter2@host/db")
    assert "hunter2" not in str(info.value)
