"""Quality and routing on the case: route, review_reasons, quality, sampling, review_state, reviewed_at.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-30

Written by hand (the revision must not import the models). Every new column is nullable, so existing cases
keep their rows and read as "quality not known". SQLite cannot add a CHECK constraint to an existing table,
so there the table is rebuilt (alembic batch, copy and rename); PostgreSQL gets plain ``ALTER TABLE``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROUTES = ("PASS", "REVIEW")
REVIEW_STATES = ("not_needed", "held", "forwarded", "sent_for_review", "reviewed")


def _recreate() -> Literal["always", "auto"]:
    """``always`` on SQLite (to get the CHECK constraints in), ``auto`` (plain ALTER) elsewhere."""
    return "always" if op.get_bind().dialect.name == "sqlite" else "auto"


def upgrade() -> None:
    """Add the quality columns to ``case``, with CHECK constraints on the two enums and their indexes."""
    with op.batch_alter_table("case", recreate=_recreate()) as batch:
        batch.add_column(
            sa.Column(
                "route",
                sa.Enum(*ROUTES, name="ck_case_route", native_enum=False, create_constraint=True, length=8),
                nullable=True,
            )
        )
        batch.add_column(sa.Column("review_reasons", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("quality", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("sampling", sa.JSON(), nullable=True))
        batch.add_column(
            sa.Column(
                "review_state",
                sa.Enum(
                    *REVIEW_STATES, name="ck_case_review_state", native_enum=False, create_constraint=True, length=16
                ),
                nullable=True,
            )
        )
        batch.add_column(sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_case_route", ["route"])
        batch.create_index("ix_case_review_state", ["review_state"])


def downgrade() -> None:
    """Drop the quality columns (and what they hold); the cases themselves stay."""
    with op.batch_alter_table("case", recreate=_recreate()) as batch:
        batch.drop_index("ix_case_review_state")
        batch.drop_index("ix_case_route")
        # Named explicitly: SQLite's rebuild would otherwise carry the reflected CHECKs over to the new table.
        batch.drop_constraint("ck_case_review_state", type_="check")
        batch.drop_constraint("ck_case_route", type_="check")
        batch.drop_column("reviewed_at")
        batch.drop_column("review_state")
        batch.drop_column("sampling")
        batch.drop_column("quality")
        batch.drop_column("review_reasons")
        batch.drop_column("route")
