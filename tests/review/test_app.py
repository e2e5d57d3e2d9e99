"""The web app against a real SQLite registry: the worklist pages and API, and the status page's link to them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from fairness_registry import crud
from fairness_registry.db import dispose_engines, get_engine, migrate, sqlite_url
from review.app import RegistryWorklist, create_app
from tests.fairness_registry.conftest import TEST_SECRET
from tests.fairness_registry.quality_samples import pass_quality, review_quality

STUDY_UID = "1.2.826.0.1.3680043.8.498.901"
SERIES_UID = "1.2.826.0.1.3680043.8.498.902"
PATIENT_ID = "MRN-31337"
T0 = datetime(2025, 5, 6, 7, 0, tzinfo=UTC)
# What a gate's reason looks like: it has a '<' the page must escape.
REASON = "liver: predicted Dice 0.62 < 0.75 <b>"


def _status() -> dict[str, Any]:
    return {"ae_title": "FAIRNODE", "dicom_port": 11112, "free_disk_mb": 5000, "studies": {"done": 2}}


@dataclass(frozen=True)
class Registry:
    """Cases recorded in a SQLite registry: ids by what they are."""

    url: str
    held: int  # REVIEW, oldest
    forwarded: int  # REVIEW, newest
    passed: int  # PASS
    reviewed: int  # REVIEW, already closed


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    url = sqlite_url(tmp_path / "registry.db")
    migrate(url)
    with Session(get_engine(url)) as session:
        study = crud.record_study(session, study_uid=STUDY_UID, patient_id=PATIENT_ID, secret=TEST_SECRET)
        assert study.id is not None
        series = crud.record_series(session, study_id=study.id, series_uid=SERIES_UID, modality="CT")
        assert series.id is not None
        ids: list[int] = []
        for hours in (3, 1, 2, 0.5):
            case = crud.record_case(session, series_id=series.id, model="ct_abdomen_organs", model_version="1.2.0")
            assert case.id is not None
            case.created_at = T0 - timedelta(hours=hours)
            session.add(case)
            session.commit()
            crud.update_case(session, case_id=case.id, status="running")
            ids.append(case.id)
        held, forwarded, passed, reviewed = ids
        quality = replace(review_quality(hd95_mm=6.25), reasons=(REASON,))
        crud.record_quality(session, case_id=held, quality=quality, review_state="held")
        crud.record_quality(session, case_id=forwarded, quality=review_quality(), review_state="forwarded")
        crud.record_quality(session, case_id=passed, quality=pass_quality())
        crud.record_quality(session, case_id=reviewed, quality=review_quality(), review_state="sent_for_review")
        crud.set_review_state(session, case_id=reviewed, state="reviewed")
    yield Registry(url, held=held, forwarded=forwarded, passed=passed, reviewed=reviewed)
    dispose_engines()


@pytest.fixture
def client(registry: Registry) -> TestClient:
    return TestClient(create_app(_status, worklist=RegistryWorklist.from_url(registry.url)))


def test_api_worklist_lists_open_review_cases_newest_first(client: TestClient, registry: Registry) -> None:
    response = client.get("/api/worklist")
    assert response.status_code == 200
    items = response.json()
    assert [i["case_id"] for i in items] == [registry.forwarded, registry.held]
    held = items[1]
    assert (held["study_uid"], held["series_uid"], held["modality"]) == (STUDY_UID, SERIES_UID, "CT")
    assert (held["model"], held["model_version"], held["route"], held["review_state"]) == (
        "ct_abdomen_organs",
        "1.2.0",
        "REVIEW",
        "held",
    )
    assert held["reasons"] == [REASON]
    liver = held["structures"][0]
    assert (liver["name"], liver["predicted_dice"], liver["predicted_low"], liver["predicted_high"]) == (
        "liver",
        0.62,
        0.51,
        0.73,
    )
    assert (liver["rca_max_dice"], liver["rca_hd95_mm"]) == (0.66, 6.25)
    assert datetime.fromisoformat(held["created_at"]) == T0 - timedelta(hours=3)
    assert "pseudonym" not in response.text and PATIENT_ID not in response.text
    everything = client.get("/api/worklist", params={"include_reviewed": "true"}).json()
    assert [i["case_id"] for i in everything] == [registry.reviewed, registry.forwarded, registry.held]
    assert [i["case_id"] for i in client.get("/api/worklist", params={"limit": 1}).json()] == [registry.forwarded]
    assert client.get("/api/worklist", params={"limit": 0}).status_code == 422
    assert client.get("/api/worklist/counts").json() == {
        "not_needed": 1,
        "held": 1,
        "forwarded": 1,
        "sent_for_review": 0,
        "reviewed": 1,
    }


def test_marking_a_case_reviewed_through_the_api(client: TestClient, registry: Registry) -> None:
    response = client.post(f"/api/worklist/{registry.held}/state", json={"state": "reviewed"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["case_id"], body["review_state"]) == (registry.held, "reviewed")
    assert body["reviewed_at"] is not None
    assert [i["case_id"] for i in client.get("/api/worklist").json()] == [registry.forwarded]
    again = client.post(f"/api/worklist/{registry.held}/state", json={"state": "reviewed"})
    assert again.status_code == 200  # a repeated click changes nothing
    assert again.json()["reviewed_at"] == body["reviewed_at"]


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
    client: TestClient, registry: Registry, case: str, state: str, code: int, message: str, extra: dict[str, Any]
) -> None:
    case_id = 424242 if case == "unknown" else getattr(registry, case)
    before = client.get("/api/worklist/counts").json()
    response = client.post(f"/api/worklist/{case_id}/state", json={"state": state})
    assert response.status_code == code
    body = response.json()
    assert message in body["detail"]
    assert {k: body[k] for k in extra} == extra
    assert client.get("/api/worklist/counts").json() == before  # nothing changed


def test_a_body_without_state_is_refused(client: TestClient, registry: Registry) -> None:
    assert client.post(f"/api/worklist/{registry.held}/state", json={"status": "reviewed"}).status_code == 422


def test_worklist_page_shows_the_cases_and_marks_them_reviewed(client: TestClient, registry: Registry) -> None:
    page = client.get("/worklist")
    assert page.status_code == 200
    text = page.text
    rows = re.findall(r'<tr id="case-(\d+)">', text)
    assert [int(r) for r in rows] == [registry.forwarded, registry.held]  # newest first, PASS and reviewed left out
    held_row = text[text.index(f'id="case-{registry.held}"') :]
    held_row = held_row[: held_row.index("</tr>")]
    assert STUDY_UID in held_row and SERIES_UID in held_row
    assert "ct_abdomen_organs 1.2.0" in held_row
    assert "liver: predicted Dice 0.62 &lt; 0.75 &lt;b&gt;" in held_row  # escaped
    assert "<b>" not in held_row
    assert "liver: Dice 0.62 [0.51–0.73] · RCA 0.66 (mean 0.58), HD95 6.2 mm" in held_row
    assert "spleen: Dice – · RCA –" in held_row
    assert "held" in held_row
    assert f'action="worklist/{registry.held}/reviewed"' in held_row
    assert PATIENT_ID not in text

    response = client.post(f"/worklist/{registry.held}/reviewed", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].endswith("/worklist")
    after = client.get(response.headers["location"]).text
    assert [int(r) for r in re.findall(r'<tr id="case-(\d+)">', after)] == [registry.forwarded]
    everything = client.get("/worklist", params={"include_reviewed": "true"}).text
    assert f'id="case-{registry.held}"' in everything
    assert f'action="worklist/{registry.held}/reviewed"' not in everything  # no button on a reviewed case
    refused = client.post(f"/worklist/{registry.passed}/reviewed")
    assert refused.status_code == 409
    assert "allowed: nothing" in refused.text
    assert client.post("/worklist/424242/reviewed").status_code == 404


def test_status_page_links_to_the_worklist(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert (
        '<a href="worklist">Radiologist worklist</a>: 2 to review (held 1, forwarded 1, sent for review 0)' in page.text
    )
    assert "FAIRNODE" in page.text


def test_without_a_worklist_the_worklist_routes_answer_503() -> None:
    client = TestClient(create_app(_status))
    assert "No worklist: this node runs without a registry." in client.get("/").text
    assert client.get("/worklist").status_code == 503
    assert client.get("/api/worklist").status_code == 503
    assert client.get("/api/worklist/counts").status_code == 503
    response = client.post("/api/worklist/1/state", json={"state": "reviewed"})
    assert response.status_code == 503
    assert "without a registry" in response.json()["detail"]
    assert client.get("/api/status").json()["ae_title"] == "FAIRNODE"


class _RegistryDown:
    """A worklist whose database cannot be reached."""

    def items(self, *, include_reviewed: bool = False, limit: int = 100) -> list[Any]:
        raise ConnectionRefusedError("registry unreachable")

    def counts(self) -> dict[Any, int]:
        raise ConnectionRefusedError("registry unreachable")

    def set_state(self, case_id: int, state: str) -> Any:
        raise ConnectionRefusedError("registry unreachable")


def test_status_page_still_shows_when_the_registry_is_down(caplog: pytest.LogCaptureFixture) -> None:
    client = TestClient(create_app(_status, worklist=_RegistryDown()), raise_server_exceptions=False)
    page = client.get("/")
    assert page.status_code == 200
    assert "counts unavailable; see the log" in page.text and "FAIRNODE" in page.text
    assert "registry unreachable" in caplog.text
    assert client.get("/api/worklist").status_code == 500  # the worklist itself does not pretend to be empty
