"""Initial registry schema: subject, study, series, case.

Revision ID: 0001
Revises:
Create Date: 2025-11-23

Written by hand from ``fairness_registry.models`` (the revision must not import the models: it records the
schema as it was at this revision).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the four registry tables with their keys, constraints and indexes."""
    op.create_table(
        "subject",
        sa.Column("pseudonym", sa.String(length=64), nullable=False),
        sa.Column("sex", sa.String(length=8), nullable=False),
        sa.Column("age_years", sa.Integer(), nullable=True),
        sa.Column("age_band", sa.String(length=8), nullable=False),
        sa.Column("ethnic_group", sa.String(length=16), nullable=False),
        sa.Column("height_m", sa.Float(), nullable=True),
        sa.Column("weight_kg", sa.Float(), nullable=True),
        sa.Column("bmi", sa.Float(), nullable=True),
        sa.Column("bmi_band", sa.String(length=16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pseudonym", name="pk_subject"),
    )
    op.create_table(
        "study",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("study_date", sa.Date(), nullable=True),
        sa.Column("institution", sa.String(length=64), nullable=False),
        sa.Column("manufacturer", sa.String(length=64), nullable=False),
        sa.Column("pseudonym", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_study"),
        sa.UniqueConstraint("study_uid", name="uq_study_study_uid"),
        sa.ForeignKeyConstraint(
            ["pseudonym"], ["subject.pseudonym"], name="fk_study_pseudonym_subject", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_study_pseudonym", "study", ["pseudonym"])
    op.create_table(
        "series",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("body_part", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=64), nullable=False),
        sa.Column("n_instances", sa.Integer(), nullable=False),
        sa.Column("selected_model", sa.String(length=64), nullable=True),
        sa.Column("selection_reason", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_series"),
        sa.UniqueConstraint("series_uid", name="uq_series_series_uid"),
        sa.ForeignKeyConstraint(["study_id"], ["study.id"], name="fk_series_study_id_study", ondelete="CASCADE"),
    )
    op.create_index("ix_series_study_id", "series", ["study_id"])
    op.create_table(
        "case",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=32), nullable=False),
        sa.Column("run", sa.Integer(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "queued",
                "running",
                "done",
                "failed",
                name="ck_case_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("failure_reason", sa.String(), nullable=True),
        sa.Column("timings", sa.JSON(), nullable=False),
        sa.Column("seg_sop_uid", sa.String(length=64), nullable=True),
        sa.Column("sr_sop_uid", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_case"),
        sa.UniqueConstraint("series_id", "model", "run", name="uq_case_series_model_run"),
        sa.ForeignKeyConstraint(["series_id"], ["series.id"], name="fk_case_series_id_series", ondelete="CASCADE"),
    )
    op.create_index("ix_case_status", "case", ["status"])


def downgrade() -> None:
    """Drop the registry tables (and every row in them)."""
    op.drop_index("ix_case_status", table_name="case")
    op.drop_table("case")
    op.drop_index("ix_series_study_id", table_name="series")
    op.drop_table("series")
    op.drop_index("ix_study_pseudonym", table_name="study")
    op.drop_table("study")
    op.drop_table("subject")
