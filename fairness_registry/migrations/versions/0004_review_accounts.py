"""Review accounts: ``review_user``, ``review_api_token`` and the append-only ``review_action`` trail.

Revision ID: 0004_review_accounts
Revises: 0003_audit_ready
Create Date: 2026-12-01

Written by hand (the revision must not import the models). ``review_action`` refuses UPDATE through a trigger
on both backends: the trail is appended to, never edited. Deleting a case deletes its actions (erasure).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_review_accounts"
down_revision: str | Sequence[str] | None = "0003_audit_ready"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLES = ("radiologist", "governance", "admin")
_REFUSE = "review_action is append-only: rows are never updated"


def upgrade() -> None:
    """Create the three tables, their indexes and the append-only trigger."""
    op.create_table(
        "review_user",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column(
            "role",
            sa.Enum(*ROLES, name="ck_review_user_role", native_enum=False, create_constraint=True, length=16),
            nullable=False,
        ),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("session_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_review_user"),
        sa.UniqueConstraint("username", name="uq_review_user_username"),
    )
    op.create_table(
        "review_api_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_review_api_token"),
        sa.UniqueConstraint("token_hash", name="uq_review_api_token_token_hash"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["review_user.id"], name="fk_review_api_token_user_id_review_user", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_review_api_token_user_id", "review_api_token", ["user_id"])
    op.create_table(
        "review_action",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_review_action"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["review_user.id"], name="fk_review_action_user_id_review_user", ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(["case_id"], ["case.id"], name="fk_review_action_case_id_case", ondelete="CASCADE"),
    )
    op.create_index("ix_review_action_user_id", "review_action", ["user_id"])
    op.create_index("ix_review_action_case_id", "review_action", ["case_id"])
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "CREATE TRIGGER review_action_append_only BEFORE UPDATE ON review_action "
            f"BEGIN SELECT RAISE(ABORT, '{_REFUSE}'); END"
        )
    else:
        op.execute(
            "CREATE FUNCTION review_action_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{_REFUSE}'; END $$"
        )
        op.execute(
            "CREATE TRIGGER review_action_append_only BEFORE UPDATE ON review_action "
            "FOR EACH ROW EXECUTE FUNCTION review_action_append_only()"
        )


def downgrade() -> None:
    """Drop the review tables (and the trail in them)."""
    op.execute("DROP TRIGGER IF EXISTS review_action_append_only" + ("" if _sqlite() else " ON review_action"))
    if not _sqlite():
        op.execute("DROP FUNCTION IF EXISTS review_action_append_only()")
    op.drop_index("ix_review_action_case_id", table_name="review_action")
    op.drop_index("ix_review_action_user_id", table_name="review_action")
    op.drop_table("review_action")
    op.drop_index("ix_review_api_token_user_id", table_name="review_api_token")
    op.drop_table("review_api_token")
    op.drop_table("review_user")


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"
