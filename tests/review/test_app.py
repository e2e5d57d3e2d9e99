"""The web app against a real SQLite registry: worklist pages and API, the status page, the trail."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from fairness_registry import accounts
from fairness_registry.accounts import Role
from fairness_registry.db import get_engine
from review.app import build_context, create_app
from review.worklist import reason_kind
from tests.review.conftest import (
    PATIENT_ID,
    RCA_REASON,
    REASON,
    SERIES_UID,
    STUDY_UID,
    T0,
    Registry,
    review_settings,
    status,
)

Client = Callable[[Role | None], TestClient]


def test_api_worklist_lists_open_review_cases_most_doubtful_first(radiologist: TestClient, registry: Registry) -> None:
    response = radiologist.get("/api/worklist")
    assert response.status_code == 200, response.text
    page = response.json()
    entries = page["entries"]
    # forwarded's lower bound 0.30 < held's 0.51, although held is older
    assert [e["case_id"] for e in entries] == [registry.forwarded, registry.held]
    assert [e["lowest_predicted_low"] for e in entries] == [0.30, 0.51]
    held = entries[1]
    assert (held["study_uid"], held["modality"], held["study_date"]) == (STUDY_UID, "CT", "2025-05-05")
    assert (held["model"], held["model_version"], held["review_state"]) == ("ct_abdomen_organs", "1.2.0", "held")
    assert held["reasons"] == [REASON] and held["reason_kinds"] == ["predicted Dice"]
    liver = next(s for s in held["structures"] if s["name"] == "liver")
    assert (liver["predicted_dice"], liver["predicted_low"], liver["predicted_high"]) == (0.62, 0.51, 0.73)
    assert (liver["rca_max_dice"], liver["rca_hd95_mm"]) == (0.66, 6.25)
    assert datetime.fromisoformat(held["created_at"]) == T0 - timedelta(hours=3)
    assert held["age_hours"] > 24 * 200  # T0 is in 2025
    assert held["accession"] is None  # not allowed by default
    assert page["counts"] == {"not_needed": 1, "held": 1, "forwarded": 1, "sent_for_review": 0, "reviewed": 1}
    assert page["models"] == ["ct_abdomen_organs"]
    assert page["reason_kinds"] == {"RCA estimate": 1, "predicted Dice": 1}
    assert "pseudonym" not in response.text and PATIENT_ID not in response.text and SERIES_UID not in response.text


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"reason": "predicted Dice"}, ["held"]),
        ({"reason": "RCA estimate"}, ["forwarded"]),
        ({"model": "other_model"}, []),
        ({"model": "ct_abdomen_organs"}, ["forwarded", "held"]),
        ({"state": "held"}, ["held"]),
        ({"state": "reviewed"}, ["reviewed"]),
        ({"state": "all"}, ["forwarded", "held", "reviewed"]),
        ({"limit": 1}, ["forwarded"]),
    ],
)
def test_worklist_filters(
    radiologist: TestClient, registry: Registry, params: dict[str, Any], expected: list[str]
) -> None:
    response = radiologist.get("/api/worklist", params=params)
    assert response.status_code == 200, response.text
    assert [e["case_id"] for e in response.json()["entries"]] == [getattr(registry, name) for name in expected]


def test_worklist_refuses_an_unknown_state_and_limit(radiologist: TestClient) -> None:
    assert radiologist.get("/api/worklist", params={"state": "approved"}).status_code == 422
    assert radiologist.get("/api/worklist", params={"limit": 0}).status_code == 422


def test_reason_kinds() -> None:
    assert reason_kind(REASON) == "predicted Dice"
    assert reason_kind(RCA_REASON) == "RCA estimate"
    assert reason_kind("input: spacing 3.00 mm on axis 0 outside the expected 0.50-2.00 mm") == "input spacing"
    assert reason_kind("the model has no quality calibration: every case is reviewed") == (
        "the model has no quality calibration: every case is reviewed"
    )


def test_marking_a_case_reviewed_through_the_api_is_in_the_trail(radiologist: TestClient, registry: Registry) -> None:
    response = radiologist.post(f"/api/worklist/{registry.held}/state", json={"state": "reviewed", "detail": "ok"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["case_id"], body["review_state"]) == (registry.held, "reviewed")
    assert body["reviewed_at"] is not None
    assert [e["case_id"] for e in radiologist.get("/api/worklist").json()["entries"]] == [registry.forwarded]
    again = radiologist.post(f"/api/worklist/{registry.held}/state", json={"state": "reviewed"})
    assert again.status_code == 200  # a repeated click changes nothing
    assert again.json()["reviewed_at"] == body["reviewed_at"]
    trail = radiologist.get("/api/actions", params={"case_id": registry.held}).json()
    assert len(trail) == 1  # the repeat added nothing
    assert (trail[0]["username"], trail[0]["action"], trail[0]["detail"]) == ("radiologist", "state", "ok")
    assert (trail[0]["before"], trail[0]["after"]) == ({"review_state": "held"}, {"review_state": "reviewed"})


@pytest.mark.parametrize(
    ("case", "state", "code", "message", "extra"),
    [
        ("unknown", "reviewed", 404, "case_id 424242 is not in the registry", {}),
        (
            "forwarded",
            "held",
            409,
            "from review state 'forwarded' to 'held'; allowed: reviewed",
            {"allowed": ["reviewed"]},
        ),
        (
            "reviewed",
            "held",
            409,
            "'reviewed' to 'held'; allowed: nothing (final)",
            {"allowed": [], "current": "reviewed"},
        ),
        ("passed", "reviewed", 409, "'not_needed' to 'reviewed'; allowed: nothing", {"allowed": []}),
        (
            "held",
            "approved",
            422,
            "review state 'approved' is not known; accepted: not_needed, held, forwarded, sent_for_review, reviewed",
            {"accepted": ["not_needed", "held", "forwarded", "sent_for_review", "reviewed"]},
        ),
    ],
)
def test_state_change_errors(
    radiologist: TestClient,
    registry: Registry,
    case: str,
    state: str,
    code: int,
    message: str,
    extra: dict[str, Any],
) -> None:
    case_id = 424242 if case == "unknown" else getattr(registry, case)
    before = radiologist.get("/api/worklist/counts").json()
    response = radiologist.post(f"/api/worklist/{case_id}/state", json={"state": state})
    assert response.status_code == code
    body = response.json()
    assert message in body["detail"]
    assert {k: body[k] for k in extra} == extra
    assert radiologist.get("/api/worklist/counts").json() == before  # nothing changed
    assert radiologist.get("/api/actions").json() == []


def test_a_body_without_state_is_refused(radiologist: TestClient, registry: Registry) -> None:
    assert radiologist.post(f"/api/worklist/{registry.held}/state", json={"status": "reviewed"}).status_code == 422


def test_worklist_page_shows_the_cases_escaped_with_links_to_the_case_pages(
    radiologist: TestClient, registry: Registry
) -> None:
    page = radiologist.get("/worklist")
    assert page.status_code == 200
    text = page.text
    rows = re.findall(r'<tr id="case-(\d+)">', text)
    assert [int(r) for r in rows] == [registry.forwarded, registry.held]  # most doubtful first
    held_row = text[text.index(f'id="case-{registry.held}"') :]
    held_row = held_row[: held_row.index("</tr>")]
    assert f'href="/cases/{registry.held}"' in held_row
    assert STUDY_UID not in held_row and SERIES_UID not in held_row  # study date, modality (accession if allowed)
    assert "ct_abdomen_organs 1.2.0" in held_row and "<td class=\"nowrap\">2025-05-05</td>" in held_row
    assert "liver: predicted Dice 0.62 &lt; 0.75 &lt;b&gt;" in held_row  # escaped
    assert "<b>" not in held_row
    assert "liver: Dice 0.62 [0.51–0.73] · RCA 0.66 (mean 0.58), HD95 6.2 mm" in held_row
    assert "spleen: Dice – · RCA –" in held_row
    assert PATIENT_ID not in text
    assert "accession" not in text
    filtered = radiologist.get("/worklist", params={"reason": "RCA estimate"}).text
    assert [int(r) for r in re.findall(r'<tr id="case-(\d+)">', filtered)] == [registry.forwarded]
    assert '<option value="RCA estimate" selected>' in filtered


def test_accession_shown_only_when_settings_allow(registry: Registry, tmp_path: Path) -> None:
    from tests.review.conftest import sign_in

    def reader(uid: str) -> str:
        return "ACC-1234"

    for allowed in (False, True):
        context = build_context(
            review_settings(show_accession=allowed),
            data_dir=tmp_path,
            status=status,
            registry_url=registry.url,
            accession_of=reader,
        )
        client = TestClient(create_app(context))
        sign_in(client, "radiologist", "radiologist-password-1")
        assert ("ACC-1234" in client.get("/worklist").text) is allowed
        assert {e["accession"] for e in client.get("/api/worklist").json()["entries"]} == (
            {"ACC-1234"} if allowed else {None}
        )


def test_status_page_shows_the_worklist_counts_and_links_radiologists_to_it(client_for: Client) -> None:
    for role in Role:
        page = client_for(role).get("/")
        assert page.status_code == 200
        assert "Radiologist worklist</a>: 2 to review (held 1, forwarded 1, sent for review 0)" in page.text or (
            role is not Role.RADIOLOGIST and "Radiologist worklist: 2 to review (held 1, forwarded" in page.text
        )
        assert ('<a href="/worklist">' in page.text) is (role is Role.RADIOLOGIST)
        assert "set-cookie" not in page.headers  # its 5 s reloads do not keep an idle session alive
        assert "FAIRNODE" in page.text


def test_without_a_registry_nobody_signs_in_and_health_still_answers(tmp_path: Path) -> None:
    context = build_context(review_settings(), data_dir=tmp_path, status=status, registry_url=None)
    client = TestClient(create_app(context))
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"ready": True, "checks": {"node": "ok"}}
    assert client.get("/api/worklist").status_code == 401
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
    assert token is not None
    response = client.post("/login", data={"username": "admin", "password": "x" * 12, "csrf_token": token.group(1)})
    assert response.status_code == 503
    assert "without a registry" in response.text


class _RegistryDown:
    """A worklist whose database cannot be reached."""

    def items(self, *, include_reviewed: bool = False, limit: int = 100) -> list[Any]:
        raise ConnectionRefusedError("registry unreachable")

    def counts(self) -> dict[Any, int]:
        raise ConnectionRefusedError("registry unreachable")

    def set_state(self, case_id: int, state: str) -> Any:
        raise ConnectionRefusedError("registry unreachable")

    def study_dates(self, study_uids: Any) -> dict[str, Any]:
        raise ConnectionRefusedError("registry unreachable")


def test_status_page_still_shows_when_the_worklist_is_down(
    client_for: Client, app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client = client_for(Role.RADIOLOGIST)
    app.state.review.worklist = _RegistryDown()
    page = client.get("/")
    assert page.status_code == 200
    assert "counts unavailable; see the log" in page.text and "FAIRNODE" in page.text
    assert "registry unreachable" in caplog.text
    assert client.get("/api/worklist").status_code == 500  # the worklist itself does not pretend to be empty


def test_the_trail_refuses_updates(registry: Registry) -> None:
    import sqlalchemy as sa

    with Session(get_engine(registry.url)) as session:
        user = accounts.get_user(session, username="radiologist")
        assert user is not None and user.id is not None
        row = accounts.append_action(session, user_id=user.id, action="accept", case_id=registry.held)
        with pytest.raises(sa.exc.DatabaseError, match="append-only"):
            session.execute(sa.text("UPDATE review_action SET detail = 'edited' WHERE id = :id"), {"id": row.id})
        session.rollback()
        assert [a.detail for a in accounts.list_actions(session, case_id=registry.held)] == [""]
