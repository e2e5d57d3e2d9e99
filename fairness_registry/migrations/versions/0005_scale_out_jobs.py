"""Scale-out jobs: ``job`` (one study run per model, unique) and ``job_worker`` (worker heartbeats).

Revision ID: 0005_scale_out_jobs
Revises: 0004_review_accounts
Create Date: 2026-12-01

Written by hand (the revision must not import the models). ``uq_job_study_run_model`` is what makes a
redelivered Celery task idempotent: a second row for the same (study, run, model) cannot exist, and the
result of the first is found there. Together with ``uq_case_series_model_run`` (revision 0001: one case per
series, model and run, whatever its version) no result is written twice for a series, model, version and run.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_scale_out_jobs"
down_revision: str | Sequence[str] | None = "0004_review_accounts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOB_STATES = ("queued", "running", "done", "failed")


def upgrade() -> None:
    """Create the two tables and the index on the job state."""
    op.create_table(
        "job",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("run", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("queue", sa.String(length=64), nullable=False),
        sa.Column("receiver", sa.String(length=128), nullable=False),
        sa.Column(
            "state",
            sa.Enum(*JOB_STATES, name="ck_job_state", native_enum=False, create_constraint=True, length=16),
            nullable=False,
        ),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=128), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_job"),
        sa.UniqueConstraint("study_uid", "run", "model", name="uq_job_study_run_model"),
    )
    op.create_index("ix_job_state", "job", ["state"])
    op.create_table(
        "job_worker",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("host", sa.String(length=128), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("queues", sa.JSON(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=True),
        sa.Column("jobs_done", sa.Integer(), nullable=False),
        sa.Column("jobs_failed", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_job_worker"),
    )


def downgrade() -> None:
    """Drop the two tables (jobs in flight are forgotten: receivers enqueue their studies again)."""
    op.drop_table("job_worker")
    op.drop_index("ix_job_state", table_name="job")
    op.drop_table("job")
