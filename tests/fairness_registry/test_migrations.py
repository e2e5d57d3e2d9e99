"""Revision by revision, on both backends: a database holding rows moves up and down intact.

Rows are written with table definitions of the revision under test (the models describe the newest schema
only): 0001 -> 0002 -> 0001 -> 0002, and 0002 -> 0003_audit_ready -> 0002 -> head.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
import sqlalchemy as sa
from alembic import command
from sqlmodel import Session

from fairness_registry import crud
from fairness_registry.db import alembic_config, current_revision, get_engine, migrate
from fairness_registry.models import UTCDateTime
from tests.fairness_registry.quality_samples import review_quality

STUDY_UID = "1.2.826.0.1.3680043.8.498.601"
SERIES_UID = "1.2.826.0.1.3680043.8.498.602"
SEG_UID = "1.2.826.0.1.3680043.8.498.603"
CREATED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
PSEUDONYM = "a" * 64
QUALITY_COLUMNS = {"route", "review_reasons", "quality", "sampling", "review_state", "reviewed_at"}
AUDIT_COLUMNS = {
    "sex",
    "age_years",
    "age_band",
    "ethnic_group",
    "ethnic_group_text",
    "weight_kg",
    "height_m",
    "bmi",
    "bmi_band",
    "scanner_model",
    "site",
    "slice_thickness_mm",
    "pixel_spacing_mm",
    "kvp",
    "contrast",
}

# The tables as revision 0001 left them (the models now have more columns).
SUBJECT_0001 = sa.table(
    "subject",
    sa.column("pseudonym", sa.String()),
    sa.column("sex", sa.String()),
    sa.column("age_band", sa.String()),
    sa.column("ethnic_group", sa.String()),
    sa.column("bmi_band", sa.String()),
    sa.column("updated_at", UTCDateTime()),
)
STUDY_0001 = sa.table(
    "study",
    sa.column("id", sa.Integer()),
    sa.column("study_uid", sa.String()),
    sa.column("study_date", sa.Date()),
    sa.column("institution", sa.String()),
    sa.column("manufacturer", sa.String()),
    sa.column("pseudonym", sa.String()),
    sa.column("received_at", UTCDateTime()),
)
SERIES_0001 = sa.table(
    "series",
    sa.column("id", sa.Integer()),
    sa.column("study_id", sa.Integer()),
    sa.column("series_uid", sa.String()),
    sa.column("modality", sa.String()),
    sa.column("body_part", sa.String()),
    sa.column("description", sa.String()),
    sa.column("n_instances", sa.Integer()),
)
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
CASE_0002 = sa.table("case", *(sa.column(c.name, c.type) for c in CASE_0001.columns), sa.column("route", sa.String()))


def _alembic(url: str, action: str, revision: str) -> None:
    """``alembic upgrade|downgrade <revision>`` on the registry at ``url``."""
    config = alembic_config()
    with get_engine(url).begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, action)(config, revision)


def _columns(url: str, table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(get_engine(url)).get_columns(table)}


def _case_indexes(url: str) -> set[str]:
    return {str(i["name"]) for i in sa.inspect(get_engine(url)).get_indexes("case") if str(i["name"]).startswith("ix_")}


def _rows_at_0001(url: str) -> int:
    """A subject, a study, a series and two cases (done, running), written with the 0001 schema; the series id."""
    with get_engine(url).begin() as connection:
        connection.execute(
            SUBJECT_0001.insert(),
            {"pseudonym": PSEUDONYM, "sex": "F", "age_band": "40-59", "ethnic_group": "unknown", "bmi_band": "unknown"}
            | {"updated_at": CREATED},
        )
        study_id = connection.execute(
            STUDY_0001.insert().returning(STUDY_0001.c.id),
            {
                "study_uid": STUDY_UID,
                "study_date": date(2025, 1, 2),
                "institution": "General Hospital",
                "manufacturer": "SIEMENS",
                "pseudonym": PSEUDONYM,
                "received_at": CREATED,
            },
        ).scalar_one()
        series_id: int = connection.execute(
            SERIES_0001.insert().returning(SERIES_0001.c.id),
            {
                "study_id": study_id,
                "series_uid": SERIES_UID,
                "modality": "MR",
                "body_part": "",
                "description": "",
                "n_instances": 3,
            },
        ).scalar_one()
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
    return series_id


def test_0001_database_with_rows_upgrades_and_downgrades(registry_url: str) -> None:
    engine = get_engine(registry_url)
    _alembic(registry_url, "upgrade", "0001")
    assert current_revision(registry_url) == "0001"
    assert not QUALITY_COLUMNS & _columns(registry_url, "case")
    _rows_at_0001(registry_url)

    _alembic(registry_url, "upgrade", "0002")
    assert current_revision(registry_url) == "0002"
    assert _columns(registry_url, "case") >= QUALITY_COLUMNS
    assert {"ix_case_status", "ix_case_route", "ix_case_review_state"} <= _case_indexes(registry_url)
    with engine.connect() as connection:
        quality = map(sa.column, sorted(QUALITY_COLUMNS))
        case = sa.table("case", *(sa.column(c.name, c.type) for c in CASE_0001.columns), *quality)
        done, running = connection.execute(sa.select(case).order_by(case.c.run)).mappings().all()
        assert (done["status"], done["timings"], done["seg_sop_uid"]) == ("done", {"inference": 1.5}, SEG_UID)
        assert [done[c] for c in sorted(QUALITY_COLUMNS)] == [None] * len(QUALITY_COLUMNS)
        assert running["status"] == "running"

    _alembic(registry_url, "downgrade", "0001")
    assert current_revision(registry_url) == "0001"
    assert not QUALITY_COLUMNS & _columns(registry_url, "case")
    assert _case_indexes(registry_url) == {"ix_case_status"}
    with engine.connect() as connection:
        rows = connection.execute(sa.select(CASE_0001.c.run, CASE_0001.c.status).order_by(CASE_0001.c.run)).all()
        assert [tuple(r) for r in rows] == [(1, "done"), (2, "running")]
        # the status CHECK constraint survived SQLite's table rebuilds
        with pytest.raises(sa.exc.IntegrityError, match=r"ck_case_status|CHECK constraint"):
            connection.execute(sa.update(CASE_0001).values(status="bogus"))

    _alembic(registry_url, "upgrade", "0002")
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(CASE_0001)).scalar_one() == 2


def test_0002_database_with_rows_becomes_audit_ready_and_back(registry_url: str) -> None:
    engine = get_engine(registry_url)
    _alembic(registry_url, "upgrade", "0002")
    series_id = _rows_at_0001(registry_url)
    with engine.begin() as connection:
        connection.execute(sa.update(CASE_0002).where(CASE_0002.c.run == 1).values(route="PASS"))

    _alembic(registry_url, "upgrade", "0003_audit_ready")
    assert current_revision(registry_url) == "0003_audit_ready"
    assert _columns(registry_url, "study") >= AUDIT_COLUMNS
    assert "ehr_imported_at" in _columns(registry_url, "subject")
    assert "case_structure" in sa.inspect(engine).get_table_names()
    with engine.connect() as connection:  # nothing is made up for the studies recorded before
        study = sa.table("study", *map(sa.column, sorted(AUDIT_COLUMNS)))
        assert list(connection.execute(sa.select(study)).one()) == [None] * len(AUDIT_COLUMNS)

    migrate(registry_url)  # head, whatever revisions follow
    with Session(engine) as session:
        cases = crud.list_cases(session, series_id=series_id)
        assert [(c.run, c.route) for c in cases] == [(1, "PASS"), (2, None)]
        running = cases[1]
        assert running.id is not None
        # a case from before the migration takes quality (and case_structure rows) like a new one
        crud.record_quality(session, case_id=running.id, quality=review_quality(), review_state="held")
        crud.record_truth(
            session, case_id=running.id, structure="liver", dice=0.8, nsd=0.9, hd95_mm=2.0, source="cohort"
        )
        assert [i.case_id for i in crud.list_worklist(session)] == [running.id]

    _alembic(registry_url, "downgrade", "0002")
    assert current_revision(registry_url) == "0002"
    assert not AUDIT_COLUMNS & _columns(registry_url, "study")
    assert "ehr_imported_at" not in _columns(registry_url, "subject")
    assert "case_structure" not in sa.inspect(engine).get_table_names()
    with engine.connect() as connection:  # no table rebuild cascaded into the series and cases
        rows = connection.execute(sa.select(CASE_0002.c.run, CASE_0002.c.route).order_by(CASE_0002.c.run)).all()
        assert [tuple(r) for r in rows] == [(1, "PASS"), (2, "REVIEW")]
        assert connection.execute(sa.select(sa.func.count()).select_from(SERIES_0001)).scalar_one() == 1
        assert connection.execute(sa.select(STUDY_0001.c.study_uid)).scalars().all() == [STUDY_UID]

    migrate(registry_url)
    with Session(engine) as session:
        assert [c.run for c in crud.list_cases(session)] == [1, 2]
