"""Quality, routing and the review worklist on both backends: record_quality, list_worklist, set_review_state."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import StatementError
from sqlmodel import Session

from fairness_registry import crud
from fairness_registry.db import get_engine
from fairness_registry.models import QUALITY_KEYS, Case, CasePublic, CaseStatus, ReviewState, Route
from quality.types import SamplingMethod
from tests.fairness_registry.conftest import TEST_SECRET
from tests.fairness_registry.quality_samples import LIVER_REASON, pass_quality, review_quality, structure

STUDY_UID = "1.2.826.0.1.3680043.8.498.501"
SERIES_UID = "1.2.826.0.1.3680043.8.498.502"
T0 = datetime(2025, 3, 4, 9, 0, tzinfo=UTC)


def _series_id(session: Session) -> int:
    study = crud.record_study(session, study_uid=STUDY_UID, patient_id="PID-Q", secret=TEST_SECRET)
    assert study.id is not None
    series = crud.record_series(session, study_id=study.id, series_uid=SERIES_UID, modality="CT")
    assert series.id is not None
    return series.id


def _running_case(session: Session, series_id: int, *, created_at: datetime | None = None) -> int:
    """A new run of the abdomen model on the series, status ``running``."""
    case = crud.record_case(session, series_id=series_id, model="ct_abdomen_organs", model_version="1.2.0")
    assert case.id is not None
    if created_at is not None:
        case.created_at = created_at
        session.add(case)
        session.commit()
    crud.update_case(session, case_id=case.id, status="running")
    return case.id


def test_record_quality_stores_flat_scores_with_nan_as_null(session: Session) -> None:
    case_id = _running_case(session, _series_id(session))
    crud.record_quality(session, case_id=case_id, quality=review_quality(), review_state="held")
    session.expire_all()
    case = session.get(Case, case_id)
    assert case is not None
    assert (case.route, case.review_state, case.review_reasons) == (Route.REVIEW, ReviewState.HELD, [LIVER_REASON])
    assert case.sampling == {"method": "mc-dropout", "samples": 8}
    assert case.quality is not None
    assert list(case.quality) == ["liver", "spleen"]  # label order
    assert tuple(case.quality["liver"]) == QUALITY_KEYS
    assert case.quality["liver"] == {
        "label": 1,
        "volume": 1500.0,
        "mean_entropy": 0.12,
        "mean_mutual_information": 0.03,
        "sample_dice": 0.94,
        "volume_cv": 0.02,
        "rca_max_dice": 0.66,
        "rca_mean_dice": 0.58,
        "rca_hd95_mm": None,  # NaN
        "predicted_dice": 0.62,
        "predicted_low": 0.51,
        "predicted_high": 0.73,
        "coverage": 0.9,
        "route": "REVIEW",
        "reasons": [LIVER_REASON],
        "rca_calibrated_dice": None,  # raw RCA
    }
    spleen = case.quality["spleen"]
    assert spleen["volume"] == 210.0
    assert [spleen[k] for k in ("rca_max_dice", "rca_hd95_mm", "predicted_dice", "coverage")] == [None] * 4
    public = CasePublic.model_validate(case)
    assert public.route == "REVIEW" and public.review_state == "held"


def test_stored_quality_is_strict_json(session: Session, registry_url: str) -> None:
    case_id = _running_case(session, _series_id(session))
    quality = review_quality(hd95_mm=float("inf"))
    liver = replace(quality.structures[1], uncertainty=replace(quality.structures[1].uncertainty, volume_cv=math.nan))
    crud.record_quality(session, case_id=case_id, quality=replace(quality, structures=(liver,)), review_state="held")
    with get_engine(registry_url).connect() as connection:
        text = connection.execute(sa.text('SELECT CAST(quality AS TEXT) FROM "case"')).scalar_one()

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} stored in the quality JSON")

    stored = json.loads(text, parse_constant=refuse)
    assert (stored["liver"]["rca_hd95_mm"], stored["liver"]["volume_cv"]) == (None, None)


def test_a_nan_written_around_crud_is_refused_not_stored(session: Session) -> None:
    case_id = _running_case(session, _series_id(session))
    case = session.get(Case, case_id)
    assert case is not None
    case.quality = {"liver": {"rca_hd95_mm": math.nan}}
    session.add(case)
    with pytest.raises((ValueError, StatementError), match="not JSON compliant"):
        session.commit()
    session.rollback()
    session.expire_all()
    stored = session.get(Case, case_id)
    assert stored is not None and stored.quality is None


def test_pass_case_is_not_needed_by_default_and_not_on_the_worklist(session: Session) -> None:
    case_id = _running_case(session, _series_id(session))
    case = crud.record_quality(session, case_id=case_id, quality=pass_quality())
    assert (case.route, case.review_state) == (Route.PASS, ReviewState.NOT_NEEDED)
    assert case.sampling == {"method": SamplingMethod.TTA_FLIP.value, "samples": 4}
    assert crud.list_worklist(session, include_reviewed=True) == []
    item = crud.worklist_item(session, case_id=case_id)
    assert (item.route, item.review_state, item.reasons) == (Route.PASS, ReviewState.NOT_NEEDED, [])


def test_record_quality_refuses_what_does_not_fit(session: Session) -> None:
    series_id = _series_id(session)
    case_id = _running_case(session, series_id)
    with pytest.raises(TypeError, match="a REVIEW case needs review_state, one of held, forwarded, sent_for_review"):
        crud.record_quality(session, case_id=case_id, quality=review_quality())
    with pytest.raises(ValueError, match="'not_needed' does not fit route REVIEW; accepted for REVIEW: held"):
        crud.record_quality(session, case_id=case_id, quality=review_quality(), review_state="not_needed")
    with pytest.raises(ValueError, match="'held' does not fit route PASS; accepted for PASS: not_needed"):
        crud.record_quality(session, case_id=case_id, quality=pass_quality(), review_state=ReviewState.HELD)
    with pytest.raises(ValueError, match="review state 'parked' is not known; accepted: not_needed, held, forwarded"):
        crud.record_quality(session, case_id=case_id, quality=review_quality(), review_state="parked")
    with pytest.raises(TypeError, match=r"quality must be a quality\.types\.CaseQuality, got dict"):
        crud.record_quality(session, case_id=case_id, quality={"route": "PASS"})  # type: ignore[arg-type]
    twice = replace(pass_quality(), structures=(structure("liver", 1), structure("liver", 2)))
    with pytest.raises(ValueError, match="structure name 'liver' appears twice"):
        crud.record_quality(session, case_id=case_id, quality=twice)
    with pytest.raises(ValueError, match=r"quality\.samples 0 must be an int >= 1"):
        crud.record_quality(session, case_id=case_id, quality=replace(pass_quality(), samples=0))
    with pytest.raises(crud.NotFoundError, match="case_id 999999 is not in the registry"):
        crud.record_quality(session, case_id=999999, quality=pass_quality())
    queued = crud.record_case(session, series_id=series_id, model="other", model_version="1")
    assert queued.id is not None
    with pytest.raises(ValueError, match=f"case {queued.id} is queued; quality is recorded for a case that is done or"):
        crud.record_quality(session, case_id=queued.id, quality=pass_quality())
    session.expire_all()
    stored = session.get(Case, case_id)
    assert stored is not None and (stored.route, stored.quality, stored.review_state) == (None, None, None)


def test_quality_is_recorded_once_per_run(session: Session) -> None:
    case_id = _running_case(session, _series_id(session))
    crud.record_quality(session, case_id=case_id, quality=review_quality(), review_state="held")
    # the same route and state again (a retried job) replaces the scores
    again = crud.record_quality(session, case_id=case_id, quality=review_quality(hd95_mm=7.5), review_state="held")
    assert again.quality is not None and again.quality["liver"]["rca_hd95_mm"] == 7.5
    crud.update_case(session, case_id=case_id, status="done")
    with pytest.raises(crud.ReviewTransitionError, match="already has route REVIEW and review state 'held'"):
        crud.record_quality(session, case_id=case_id, quality=pass_quality())
    with pytest.raises(crud.ReviewTransitionError, match="changes through set_review_state"):
        crud.record_quality(session, case_id=case_id, quality=review_quality(), review_state="forwarded")


def test_worklist_lists_open_review_cases_newest_first(session: Session) -> None:
    series_id = _series_id(session)
    hours = [3.0, 5.0, 1.0, 2.0, 0.5, 0.25]  # ids ascend, creation times do not
    ids = [_running_case(session, series_id, created_at=T0 - timedelta(hours=h)) for h in hours]
    held, passed, forwarded, for_review, reviewed, _no_quality_yet = ids
    crud.record_quality(session, case_id=held, quality=review_quality(hd95_mm=6.25), review_state="held")
    crud.record_quality(session, case_id=passed, quality=pass_quality())
    crud.record_quality(session, case_id=forwarded, quality=review_quality(), review_state="forwarded")
    crud.record_quality(session, case_id=for_review, quality=review_quality(), review_state="sent_for_review")
    crud.record_quality(session, case_id=reviewed, quality=review_quality(), review_state="held")
    crud.set_review_state(session, case_id=reviewed, state="reviewed")

    assert [i.case_id for i in crud.list_worklist(session)] == [forwarded, for_review, held]
    assert [i.case_id for i in crud.list_worklist(session, include_reviewed=True)] == [
        reviewed,
        forwarded,
        for_review,
        held,
    ]
    assert [i.case_id for i in crud.list_worklist(session, limit=2)] == [forwarded, for_review]
    assert [i.case_id for i in crud.list_worklist(session, offset=2)] == [held]
    assert crud.worklist_counts(session) == {
        ReviewState.NOT_NEEDED: 1,
        ReviewState.HELD: 1,
        ReviewState.FORWARDED: 1,
        ReviewState.SENT_FOR_REVIEW: 1,
        ReviewState.REVIEWED: 1,
    }

    item = crud.list_worklist(session)[-1]
    assert (item.case_id, item.study_uid, item.series_uid, item.modality) == (held, STUDY_UID, SERIES_UID, "CT")
    assert (item.model, item.model_version, item.run, item.status) == (
        "ct_abdomen_organs",
        "1.2.0",
        1,
        CaseStatus.RUNNING,
    )
    assert (item.route, item.review_state, item.reasons) == (Route.REVIEW, ReviewState.HELD, [LIVER_REASON])
    assert item.created_at == T0 - timedelta(hours=3)
    liver, spleen = item.structures
    assert (liver.name, liver.predicted_dice, liver.predicted_low, liver.predicted_high) == ("liver", 0.62, 0.51, 0.73)
    assert (liver.rca_max_dice, liver.rca_mean_dice, liver.rca_hd95_mm, liver.route) == (0.66, 0.58, 6.25, "REVIEW")
    assert (spleen.name, spleen.predicted_dice, spleen.rca_max_dice) == ("spleen", None, None)
    dumped = json.dumps(item.model_dump(mode="json"))
    assert "pseudonym" not in dumped and "PID-Q" not in dumped


def test_worklist_limits_are_checked(session: Session) -> None:
    with pytest.raises(ValueError, match="limit 0 must be an int between 1 and 1000"):
        crud.list_worklist(session, limit=0)
    with pytest.raises(ValueError, match="offset -1 must be an int >= 0"):
        crud.list_worklist(session, offset=-1)
    assert crud.worklist_counts(session) == dict.fromkeys(ReviewState, 0)


def test_review_state_transitions_are_enforced(session: Session) -> None:
    series_id = _series_id(session)
    held, forwarded, passed, no_quality = (_running_case(session, series_id) for _ in range(4))
    crud.record_quality(session, case_id=held, quality=review_quality(), review_state="held")
    crud.record_quality(session, case_id=forwarded, quality=review_quality(), review_state="forwarded")
    crud.record_quality(session, case_id=passed, quality=pass_quality())

    with pytest.raises(crud.ReviewTransitionError, match="from review state 'forwarded' to 'held'; allowed: reviewed"):
        crud.set_review_state(session, case_id=forwarded, state="held")
    with pytest.raises(crud.ReviewTransitionError, match="'not_needed' to 'reviewed'; allowed: nothing"):
        crud.set_review_state(session, case_id=passed, state="reviewed")
    with pytest.raises(crud.ReviewTransitionError, match="has no review state yet: its quality is not recorded"):
        crud.set_review_state(session, case_id=no_quality, state="reviewed")
    with pytest.raises(ValueError, match="'done' is not known; accepted: not_needed, held, forwarded, sent_for_review"):
        crud.set_review_state(session, case_id=held, state="done")
    with pytest.raises(crud.NotFoundError, match="case_id 999999"):
        crud.set_review_state(session, case_id=999999, state="reviewed")

    released = crud.set_review_state(session, case_id=held, state=ReviewState.SENT_FOR_REVIEW)
    assert (released.review_state, released.reviewed_at) == (ReviewState.SENT_FOR_REVIEW, None)
    closed = crud.set_review_state(session, case_id=held, state="reviewed")
    assert closed.review_state is ReviewState.REVIEWED
    assert closed.reviewed_at is not None and closed.reviewed_at.tzinfo is not None
    assert crud.set_review_state(session, case_id=held, state="reviewed").reviewed_at == closed.reviewed_at  # no-op
    with pytest.raises(crud.ReviewTransitionError, match="'reviewed' to 'held'; allowed: nothing") as info:
        crud.set_review_state(session, case_id=held, state="held")
    error = info.value
    assert (error.case_id, error.current, error.requested, error.allowed) == (
        held,
        ReviewState.REVIEWED,
        ReviewState.HELD,
        frozenset(),
    )


def test_a_stale_session_cannot_undo_another_sessions_review(session: Session) -> None:
    case_id = _running_case(session, _series_id(session))
    crud.record_quality(session, case_id=case_id, quality=review_quality(), review_state="held")
    assert session.get(Case, case_id) is not None  # this session has the case as 'held' in its identity map
    with Session(session.get_bind()) as other:
        crud.set_review_state(other, case_id=case_id, state="reviewed")
    with pytest.raises(crud.ReviewTransitionError, match="from review state 'reviewed' to 'forwarded'"):
        crud.set_review_state(session, case_id=case_id, state="forwarded")


def test_route_and_review_state_columns_have_check_constraints(session: Session) -> None:
    case_id = _running_case(session, _series_id(session))
    for column in ("route", "review_state"):
        with pytest.raises(sa.exc.IntegrityError, match=r"ck_case_route|ck_case_review_state|CHECK constraint"):
            session.connection().execute(
                sa.text(f'UPDATE "case" SET {column} = :value WHERE id = :id'), {"value": "bogus", "id": case_id}
            )
        session.rollback()


def test_a_change_landing_between_read_and_update_is_not_overwritten(session: Session) -> None:
    case_id = _running_case(session, _series_id(session))
    crud.record_quality(session, case_id=case_id, quality=review_quality(), review_state="held")
    engine = session.get_bind()
    assert isinstance(engine, sa.Engine)
    raced: list[str] = []

    def another_radiologist_first(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        """Just before this session's UPDATE runs, another connection closes the case."""
        if raced or not statement.lstrip().upper().startswith('UPDATE "CASE"'):
            return
        raced.append(statement)
        with engine.begin() as other:
            other.execute(sa.text("UPDATE \"case\" SET review_state = 'reviewed' WHERE id = :id"), {"id": case_id})

    sa.event.listen(engine, "before_cursor_execute", another_radiologist_first)
    try:
        with pytest.raises(crud.ReviewTransitionError, match="from review state 'reviewed' to 'forwarded'"):
            crud.set_review_state(session, case_id=case_id, state="forwarded")
    finally:
        sa.event.remove(engine, "before_cursor_execute", another_radiologist_first)
    assert len(raced) == 1
    session.expire_all()
    stored = session.get(Case, case_id)
    assert stored is not None and stored.review_state is ReviewState.REVIEWED
