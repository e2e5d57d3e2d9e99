"""Audit-ready registry: demographics and acquisition at study time, ``case_structure``, subject EHR import time.

Revision ID: 0003_audit_ready
Revises: 0002
Create Date: 2026-12-01

Written by hand (the revision must not import the models). Every new column is nullable, so existing
studies read as "not recorded" (missing stays missing); nothing is back-filled from the subject row, whose
values describe the latest study, not each one. ``case_structure`` is new and starts empty: cases recorded
before this revision keep their scores in ``case.quality``.

The columns added here have no constraint, index or default, so both backends get plain ``ALTER TABLE ...
ADD COLUMN`` and, on the way down, ``DROP COLUMN`` (SQLite >= 3.35). No table is rebuilt: on SQLite a
rebuild of ``study`` would drop the old table, and with foreign keys enforced that deletes its series and
cases (``ON DELETE CASCADE``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003_audit_ready"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROUTES = ("PASS", "REVIEW")

#: The columns added to ``study``, each nullable and without constraint.
STUDY_COLUMNS: tuple[tuple[str, sa.types.TypeEngine[Any]], ...] = (
    ("sex", sa.String(length=8)),
    ("age_years", sa.Integer()),
    ("age_band", sa.String(length=8)),
    ("ethnic_group", sa.String(length=16)),
    ("ethnic_group_text", sa.String(length=64)),
    ("weight_kg", sa.Float()),
    ("height_m", sa.Float()),
    ("bmi", sa.Float()),
    ("bmi_band", sa.String(length=16)),
    ("scanner_model", sa.String(length=64)),
    ("site", sa.String(length=64)),
    ("slice_thickness_mm", sa.Float()),
    ("pixel_spacing_mm", sa.Float()),
    ("kvp", sa.Float()),
    ("contrast", sa.Boolean()),
)


def upgrade() -> None:
    """Add the study-time columns to ``study``, ``ehr_imported_at`` to ``subject``, create ``case_structure``."""
    for name, type_ in STUDY_COLUMNS:
        op.add_column("study", sa.Column(name, type_, nullable=True))
    op.add_column("subject", sa.Column("ehr_imported_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "case_structure",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("label", sa.Integer(), nullable=False),
        sa.Column("volume", sa.Float(), nullable=True),
        sa.Column("mean_entropy", sa.Float(), nullable=True),
        sa.Column("sample_dice", sa.Float(), nullable=True),
        sa.Column("volume_cv", sa.Float(), nullable=True),
        sa.Column("rca_max_dice", sa.Float(), nullable=True),
        sa.Column("rca_mean_dice", sa.Float(), nullable=True),
        sa.Column("rca_hd95_mm", sa.Float(), nullable=True),
        sa.Column("predicted_dice", sa.Float(), nullable=True),
        sa.Column("predicted_low", sa.Float(), nullable=True),
        sa.Column("predicted_high", sa.Float(), nullable=True),
        sa.Column("coverage", sa.Float(), nullable=True),
        sa.Column(
            "route",
            sa.Enum(*ROUTES, name="ck_case_structure_route", native_enum=False, create_constraint=True, length=8),
            nullable=True,
        ),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("regions", sa.JSON(), nullable=False),
        sa.Column("true_dice", sa.Float(), nullable=True),
        sa.Column("true_nsd", sa.Float(), nullable=True),
        sa.Column("true_hd95_mm", sa.Float(), nullable=True),
        sa.Column("truth_source", sa.String(length=32), nullable=True),
        sa.Column("truth_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_case_structure"),
        sa.UniqueConstraint("case_id", "name", name="uq_case_structure_case_name"),
        sa.ForeignKeyConstraint(["case_id"], ["case.id"], name="fk_case_structure_case_id_case", ondelete="CASCADE"),
    )


def downgrade() -> None:
    """Drop ``case_structure`` and the columns added (and what they hold); studies and subjects stay."""
    op.drop_table("case_structure")
    op.drop_column("subject", "ehr_imported_at")
    for name, _type in reversed(STUDY_COLUMNS):
        op.drop_column("study", name)
