"""The review app's DICOM audit messages: sign-in (and its refusals), sign-out, worklist queries, report
exports, on the node's audit trail (dicom_node.audit_trail)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dicom_node import audit_messages as am
from dicom_node import audit_trail
from dicom_node.audit_trail import AuditTrail, AuditTrailSettings, read_log
from fairness_registry.accounts import Role
from tests.review.conftest import csrf_of

Client = Callable[[Role | None], TestClient]


@pytest.fixture
def trail(tmp_path: Path) -> Iterator[Path]:
    log = tmp_path / "audit" / "audit.log"
    previous = audit_trail.configure(AuditTrail(AuditTrailSettings(), log, am.AuditSource("FAIRNODE")))
    yield log
    audit_trail.configure(previous)


def _events(log: Path) -> list[tuple[str, str, str, str | None]]:
    """(event, type, outcome, user) of each message."""
    found = []
    for message in read_log(log):
        event = message.find("EventIdentification")
        assert event is not None
        event_id = event.find("EventID")
        event_type = event.find("EventTypeCode")
        participant = message.find("ActiveParticipant")
        found.append(
            (
                event_id.get("csd-code", "") if event_id is not None else "",
                event_type.get("csd-code", "") if event_type is not None else "",
                event.get("EventOutcomeIndicator", ""),
                participant.get("UserID") if participant is not None else None,
            )
        )
    return found


def test_sign_in_sign_out_and_queries_are_audited(trail: Path, client_for: Client, tmp_path: Path) -> None:
    client = client_for(None)
    token = csrf_of(client.get("/login").text)
    client.post("/login", data={"username": "radiologist", "password": "wrong-password-0", "csrf_token": token})
    radiologist = client_for(Role.RADIOLOGIST)  # signs in and opens the worklist
    radiologist.get("/api/worklist", params={"reason": "RCA estimate"})
    radiologist.post("/logout", data={"csrf_token": radiologist.headers["X-CSRF-Token"]})
    events = _events(trail)
    assert events == [
        ("110114", "110122", "4", "radiologist"),  # User Authentication, Login, failed
        ("110114", "110122", "0", "radiologist"),  # signed in
        ("110112", "", "0", "radiologist"),  # Query: the worklist page
        ("110112", "", "0", "radiologist"),  # Query: the API, filtered
        ("110114", "110123", "0", "radiologist"),  # Logout
    ]
    text = trail.read_text()
    assert "wrong-password" not in text and "unknown user name or wrong password" in text


def test_a_report_download_is_an_export(trail: Path, client_for: Client, tmp_path: Path) -> None:
    folder = tmp_path / "audits" / "ct_abdomen_organs" / "2026Q3"
    folder.mkdir(parents=True)
    (folder / "report.json").write_text("{}")
    governance = client_for(Role.GOVERNANCE)
    assert governance.get("/governance/audits/ct_abdomen_organs/2026Q3/report.json").status_code == 200
    assert _events(trail)[-1][:3] == ("110106", "", "0")
    assert "fairness audit ct_abdomen_organs 2026Q3 (json)" in trail.read_text()
