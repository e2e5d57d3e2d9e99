"""Fixtures of the review app: a SQLite registry with cases, one user per role, signed-in clients.

``client_for(role)`` gives a TestClient signed in through the real sign-in form (``None``: signed out);
``client.headers["X-CSRF-Token"]`` then holds the session's CSRF token, as a page's script would send it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlmodel import Session

from fairness_registry import accounts, crud
from fairness_registry.accounts import Role
from fairness_registry.db import dispose_engines, get_engine, migrate, sqlite_url
from quality.types import CaseQuality, Route, SamplingMethod
from review.app import build_context, create_app
from review.config import ReviewSettings
from review.deps import ReviewContext
from review.security import hash_password
from tests.fairness_registry.conftest import TEST_SECRET
from tests.fairness_registry.quality_samples import pass_quality, review_quality, structure

STUDY_UID = "1.2.826.0.1.3680043.8.498.901"
SERIES_UID = "1.2.826.0.1.3680043.8.498.902"
PATIENT_ID = "MRN-31337"
T0 = datetime(2025, 5, 6, 7, 0, tzinfo=UTC)
STUDY_DATE = date(2025, 5, 5)
#: What a gate's reason looks like: it has a '<' the page must escape.
REASON = "liver: predicted Dice 0.62 < 0.75 <b>"
#: The reason of the most doubtful case (another kind: "RCA estimate").
RCA_REASON = "liver: RCA estimate 0.40 under 0.70"
SESSION_SECRET = "review-test-secret-" + "0123456789abcdef" * 3
#: One user per role, named after it, with this password.
PASSWORDS: dict[Role, str] = {role: f"{role.value}-password-1" for role in Role}


def status() -> dict[str, Any]:
    """What a node reports."""
    return {
        "ae_title": "FAIRNODE",
        "dicom_port": 11112,
        "free_disk_mb": 5000,
        "studies": {"done": 2, "ready": 1},
        "deliveries": {"sent": 3, "dead": 1},
        "dead_letters": [
            {"id": 7, "study_uid": STUDY_UID, "destination": "pacs", "attempts": 8, "last_error": "refused"}
        ],
        "recent_studies": [{"study_uid": STUDY_UID, "state": "done", "run": 1, "reason": ""}],
        "models": {"ct_abdomen_organs": {"providers": ["CPUExecutionProvider"]}},
        "instances_received": 42,
    }


def doubtful_quality() -> CaseQuality:
    """A REVIEW case more doubtful than :func:`review_quality`'s (liver's predicted interval 0.30-0.60)."""
    liver = structure(
        "liver", 1, predicted=(0.45, 0.30, 0.60), rca=(0.40, 0.35, 9.0), route=Route.REVIEW, reasons=(RCA_REASON,)
    )
    return CaseQuality(
        route=Route.REVIEW, reasons=(RCA_REASON,), structures=(liver,), method=SamplingMethod.MC_DROPOUT, samples=8
    )


@dataclass(frozen=True)
class Registry:
    """Cases recorded in a SQLite registry: ids by what they are."""

    url: str
    held: int  # REVIEW, oldest (REASON, to be escaped)
    forwarded: int  # REVIEW, newer, the most doubtful (RCA_REASON)
    passed: int  # PASS
    reviewed: int  # REVIEW, already closed


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    url = sqlite_url(tmp_path / "registry.db")
    migrate(url)
    with Session(get_engine(url)) as session:
        study = crud.record_study(session, study_uid=STUDY_UID, patient_id=PATIENT_ID, secret=TEST_SECRET)
        assert study.id is not None
        study.study_date = STUDY_DATE
        session.add(study)
        session.commit()
        series = crud.record_series(session, study_id=study.id, series_uid=SERIES_UID, modality="CT")
        assert series.id is not None
        ids: list[int] = []
        for hours in (3, 1, 2, 0.5):
            case = crud.record_case(session, series_id=series.id, model="ct_abdomen_organs", model_version="1.2.0")
            assert case.id is not None
            case.created_at = T0 - timedelta(hours=hours)
            session.add(case)
            session.commit()
            crud.update_case(session, case_id=case.id, status="running", timings={"inference": 2.0, "rca": 1.0})
            ids.append(case.id)
        held, forwarded, passed, reviewed = ids
        quality = replace(review_quality(hd95_mm=6.25), reasons=(REASON,))
        crud.record_quality(session, case_id=held, quality=quality, review_state="held")
        crud.record_quality(session, case_id=forwarded, quality=doubtful_quality(), review_state="forwarded")
        crud.record_quality(session, case_id=passed, quality=pass_quality())
        crud.record_quality(session, case_id=reviewed, quality=review_quality(), review_state="sent_for_review")
        crud.set_review_state(session, case_id=reviewed, state="reviewed")
        for role, password in PASSWORDS.items():
            accounts.create_user(session, username=role.value, role=role, password_hash=hash_password(password))
    yield Registry(url, held=held, forwarded=forwarded, passed=passed, reviewed=reviewed)
    dispose_engines()


@dataclass
class Retries:
    """Counts calls of the dead-letter retry."""

    calls: int = 0

    def __call__(self) -> int:
        self.calls += 1
        return 1


@pytest.fixture
def retries() -> Retries:
    return Retries()


def review_settings(**changes: Any) -> ReviewSettings:
    """Test settings: a real secret, no first admin, sign-in limits out of the way (their own test lowers them)."""
    values: dict[str, Any] = {
        "session_secret": SecretStr(SESSION_SECRET),
        "first_admin": None,
        "login_attempts_per_user": "1000/minute",
        "login_attempts_per_address": "1000/minute",
    }
    values.update(changes)
    return ReviewSettings(**values)


@pytest.fixture
def context(registry: Registry, tmp_path: Path, retries: Retries) -> ReviewContext:
    return build_context(
        review_settings(),
        data_dir=tmp_path,
        status=status,
        registry_url=registry.url,
        retry_dead=retries,
        extras={},
    )


@pytest.fixture
def app(context: ReviewContext) -> FastAPI:
    return create_app(context)


def csrf_of(html: str) -> str:
    """The CSRF token in a page's form."""
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found is not None, "no CSRF field on the page"
    return found.group(1)


def sign_in(client: TestClient, username: str, password: str) -> str:
    """Sign in through the form; the session's CSRF token (also set as the client's X-CSRF-Token header)."""
    token = csrf_of(client.get("/login").text)
    response = client.post(
        "/login", data={"username": username, "password": password, "csrf_token": token}, follow_redirects=False
    )
    assert response.status_code == 303, response.text
    page = client.get(response.headers["location"])
    csrf = csrf_of(page.text)  # the sign-out form of every page carries it
    client.headers["X-CSRF-Token"] = csrf
    return csrf


@pytest.fixture
def client_for(app: FastAPI) -> Callable[[Role | None], TestClient]:
    def make(role: Role | None) -> TestClient:
        client = TestClient(app, raise_server_exceptions=False)
        if role is not None:
            sign_in(client, role.value, PASSWORDS[role])
        return client

    return make


@pytest.fixture
def radiologist(client_for: Callable[[Role | None], TestClient]) -> TestClient:
    return client_for(Role.RADIOLOGIST)
