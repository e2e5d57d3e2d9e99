"""Revision by revision, on both backends: a database holding rows moves 0001 -> 0002 -> 0001 -> 0002 intact."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic import command
from sqlmodel import Session

from fairness_registry import crud
from fairness_registry.db import alembic_config, current_revision, get_engine, migrate
from fairness_registry.models import CaseStatus, ReviewState, UTCDateTime
from tests.fairness_registry.conftest import TEST_SECRET
from tests.fairness_registry.quality_samples import review_quality

STUDY_UID = "1.2.826.0.1.3680043.8.498.601"
SERIES_UID = "1.2.826.0.1.3680043.8.498.602"
SEG_UID = "1.2.826.0.1.3680043.8.498.603"
CREATED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
QUALITY_COLUMNS = {"route", "review_reasons", "quality", "sampling", "review_state", "reviewed_at"}

# The case table as revision 0001 left it (the model now has more columns).
CASE_0001 = sa.table(
    "case",
    sa.column("id", sa.Integer()),
    sa.column("series_id", sa.Integer()),
    sa.column("model", sa.String()),
    sa.column("model_version", sa.String()),
    sa.column("run", sa.Integer()),
    sa.column("status", sa.String()),
    sa.column("timings", sa.JSON()),
    sa.column("seg_sop_uid", sa.String()),
    sa.column("created_at", UTCDateTime()),
)


def _alembic(url: str, action: str, revision: str) -> None:
    """``alembic upgrade|downgrade <revision>`` on the registry at ``url``."""
    config = alembic_config()
    with get_engine(url).begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, action)(config, revision)


def _case_columns(url: str) -> set[str]:
    return {c["name"] for c in sa.inspect(get_engine(url)).get_columns("case")}


def _case_indexes(url: str) -> set[str]:
    return {str(i["name"]) for i in sa.inspect(get_engine(url)).get_indexes("case") if str(i["name"]).startswith("ix_")}


def test_0001_database_with_rows_upgrades_and_downgrades(registry_url: str) -> None:
    engine = get_engine(registry_url)
    _alembic(registry_url, "upgrade", "0001")
    assert current_revision(registry_url) == "0001"
    assert not QUALITY_COLUMNS & _case_columns(registry_url)
    with Session(engine) as session:  # subject, study and series are as they were at 0001
        study = crud.record_study(session, study_uid=STUDY_UID, patient_id="PID-M", secret=TEST_SECRET)
        assert study.id is not None
        series = crud.record_series(session, study_id=study.id, series_uid=SERIES_UID, modality="MR")
        series_id = series.id
    with engine.begin() as connection:
        connection.execute(
            CASE_0001.insert(),
            [
                {
                    "series_id": series_id,
                    "model": "mr_knee",
                    "model_version": "0.9",
                    "run": run,
                    "status": status,
                    "timings": {"inference": 1.5},
                    "seg_sop_uid": SEG_UID if status == "done" else None,
                    "created_at": CREATED,
                }
                for run, status in ((1, "done"), (2, "running"))
            ],
        )

    assert migrate(registry_url) == "0002"
    assert _case_columns(registry_url) >= QUALITY_COLUMNS
    assert {"ix_case_status", "ix_case_route", "ix_case_review_state"} <= _case_indexes(registry_url)
    with Session(engine) as session:
        done, running = crud.list_cases(session, series_id=series_id)
        assert (done.status, done.run, done.timings, done.seg_sop_uid) == (
            CaseStatus.DONE,
            1,
            {"inference": 1.5},
            SEG_UID,
        )
        assert done.created_at == CREATED
        assert (done.route, done.review_state, done.quality, done.review_reasons, done.sampling) == (None,) * 5
        assert running.id is not None
        # a case from before the migration takes quality like a new one
        crud.record_quality(session, case_id=running.id, quality=review_quality(), review_state="held")
        assert [i.case_id for i in crud.list_worklist(session)] == [running.id]
        assert crud.worklist_counts(session)[ReviewState.HELD] == 1

    _alembic(registry_url, "downgrade", "0001")
    assert current_revision(registry_url) == "0001"
    assert not QUALITY_COLUMNS & _case_columns(registry_url)
    assert _case_indexes(registry_url) == {"ix_case_status"}
    with engine.connect() as connection:
        rows = connection.execute(sa.select(CASE_0001.c.run, CASE_0001.c.status).order_by(CASE_0001.c.run)).all()
        assert [tuple(r) for r in rows] == [(1, "done"), (2, "running")]
        # the status CHECK constraint survived SQLite's table rebuilds
        with pytest.raises(sa.exc.IntegrityError, match=r"ck_case_status|CHECK constraint"):
            connection.execute(sa.update(CASE_0001).values(status="bogus"))

    assert migrate(registry_url) == "0002"
    with Session(engine) as session:
        assert [c.run for c in crud.list_cases(session)] == [1, 2]
