"""The case page and its API against a real SQLite registry and real outputs on disk: the page, the slices,
accept / reject / corrected with the trail and the review state, the errors, and who may do what."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlmodel import Session

from fairness_registry import accounts
from fairness_registry.accounts import Role
from fairness_registry.db import dispose_engines, get_engine, migrate, sqlite_url
from inference.metrics import dice
from review.app import build_context, create_app
from review.routes.cases import CACHE_KEY, prefetch_next
from review.security import hash_password
from tests.review.case_samples import SampleCase, ct_case, dx_case
from tests.review.conftest import PASSWORDS, review_settings, sign_in, status


@dataclass(frozen=True)
class Site:
    app: Any
    url: str
    ct: SampleCase  # fairnode's liver shrunk by one voxel; the most doubtful
    dx: SampleCase


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    url = sqlite_url(tmp_path / "registry.db")
    migrate(url)
    with Session(get_engine(url)) as session:
        ct = ct_case(tmp_path / "spool", session, tmp_path / "cohort", perturb=1, doubt=0.5)
        dx = dx_case(tmp_path / "spool", session, tmp_path / "cohort", doubt=0.8)
        for role, password in PASSWORDS.items():
            accounts.create_user(session, username=role.value, role=role, password_hash=hash_password(password))
    context = build_context(
        review_settings(), data_dir=tmp_path, status=status, registry_url=url, extras={"spool_dir": tmp_path / "spool"}
    )
    yield Site(create_app(context), url, ct, dx)
    dispose_engines()


def _client(site: Site, role: Role | None = Role.RADIOLOGIST) -> TestClient:
    client = TestClient(site.app, raise_server_exceptions=False)
    if role is not None:
        sign_in(client, role.value, PASSWORDS[role])
    return client


def _open_ids(client: TestClient) -> list[int]:
    return [entry["case_id"] for entry in client.get("/api/worklist").json()["entries"]]


def test_page_shows_image_controls_structures_and_actions(site: Site) -> None:
    client = _client(site)
    page = client.get(f"/cases/{site.ct.case_id}")
    assert page.status_code == 200, page.text
    html = page.text
    n = site.ct.labels.shape[0]
    largest_liver = int((site.ct.labels == 1).sum(axis=(1, 2)).argmax())
    assert f'data-slices="{n}"' in html and f'max="{n - 1}"' in html
    assert f'data-start="{largest_liver}"' in html  # the most doubtful structure's largest slice
    assert f'data-slice="{largest_liver}"' in html and "#dd8265" in html
    assert re.findall(r'<option value="(\w+)">', html) == ["abdomen", "bone", "lung", "full"]
    assert "0.50 [0.40–0.58]" in html and "liver: predicted Dice 0.50 below 0.75" in html
    for form in ("accept-form", "reject-form", "correction-form"):
        assert f'id="{form}"' in html
    assert html.count('name="csrf_token"') >= 4  # sign-out + the three actions
    assert "/static/viewer.js" in html and client.get("/static/viewer.js").status_code == 200
    assert "MRN" not in html and "PatientName" not in html


def test_slices_are_pngs_and_bad_requests_are_named(site: Site) -> None:
    client = _client(site)
    base = f"/cases/{site.ct.case_id}/slices"
    plain = client.get(f"{base}/5.png?overlay=false&heatmap=false&preset=bone")
    seg = client.get(f"{base}/5.png?overlay=true&heatmap=true")
    assert plain.status_code == seg.status_code == 200 and plain.headers["content-type"] == "image/png"
    a, b = (np.asarray(Image.open(io.BytesIO(r.content))) for r in (plain, seg))
    assert a.shape == b.shape and (a != b).any()
    bad = client.get(f"{base}/5.png?preset=brain")
    assert bad.status_code == 422 and "use one of abdomen, bone, lung, full" in bad.text
    assert client.get(f"{base}/999.png").status_code == 404
    assert client.get(f"{base}/-1.png").status_code == 404
    assert client.get("/cases/9999/slices/0.png").status_code == 404
    dx = client.get(f"/cases/{site.dx.case_id}/slices/0.png?preset=full&heatmap=true")
    assert dx.status_code == 200
    assert client.get(f"/cases/{site.dx.case_id}/slices/0.png?preset=abdomen").status_code == 422


def test_accept_closes_the_case_and_is_on_the_trail(site: Site) -> None:
    client = _client(site)
    assert site.ct.case_id in _open_ids(client)
    csrf = client.headers["X-CSRF-Token"]
    no_token = TestClient(site.app, raise_server_exceptions=False, cookies=client.cookies)
    assert no_token.post(f"/cases/{site.ct.case_id}/accept", data={}).status_code == 403
    response = client.post(f"/cases/{site.ct.case_id}/accept", data={"csrf_token": csrf}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == f"/cases/{site.ct.case_id}?done=accepted"
    page = client.get(response.headers["location"]).text
    assert 'id="review-state">reviewed' in page
    assert re.search(r"<b>accept</b> by radiologist at [^<]* UTC\s*· held → reviewed", page)
    assert site.ct.case_id not in _open_ids(client)


def test_reject_needs_a_listed_reason(site: Site) -> None:
    client = _client(site)
    csrf = client.headers["X-CSRF-Token"]
    page = client.post(f"/cases/{site.dx.case_id}/reject", data={"csrf_token": csrf, "reason": "bored"})
    assert page.status_code == 422 and "choose a reason for the rejection" in page.text
    api = client.post(f"/api/cases/{site.dx.case_id}/reject", json={"reason": "bored"})
    assert api.status_code == 422 and "segmentation wrong" in api.text
    ok = client.post(
        f"/api/cases/{site.dx.case_id}/reject", json={"reason": "wrong series or protocol", "text": "lateral view"}
    )
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["review_state"] == "reviewed"
    action = body["actions"][0]
    assert action["action"] == "reject" and action["after"]["reason"] == "wrong series or protocol"
    assert action["detail"] == "lateral view" and action["before"] == {"review_state": "held"}


def test_correction_upload_gives_true_dice(site: Site) -> None:
    client = _client(site)
    csrf = client.headers["X-CSRF-Token"]
    expected = dice(site.ct.labels == 1, site.ct.truth == 1)
    # a file that is no SEG: the page says so and nothing changes
    image = (
        sorted((site.ct.truth_seg.parent / "image").glob("*.dcm"))[0]
        if (site.ct.truth_seg.parent / "image").is_dir()
        else None
    )
    if image is not None:
        bad = client.post(
            f"/cases/{site.ct.case_id}/correction",
            data={"csrf_token": csrf},
            files={"file": ("image.dcm", image.read_bytes(), "application/dicom")},
        )
        assert bad.status_code == 422 and "not a DICOM-SEG" in bad.text
    other = client.post(
        f"/api/cases/{site.ct.case_id}/correction", files={"file": ("seg.dcm", site.dx.truth_seg.read_bytes())}
    )
    assert other.status_code == 422 and "not this case's series" in other.json()["detail"]
    response = client.post(
        f"/cases/{site.ct.case_id}/correction",
        data={"csrf_token": csrf},
        files={"file": ("seg.dcm", site.ct.truth_seg.read_bytes(), "application/dicom")},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    view = client.get(f"/api/cases/{site.ct.case_id}").json()
    liver = next(s for s in view["structures"] if s["name"] == "liver")
    assert liver["true_dice"] == pytest.approx(expected, abs=1e-3) and liver["truth_source"] == "upload"
    assert liver["true_hd95_mm"] > 0 and 0 <= liver["true_nsd"] < 1
    spleen = next(s for s in view["structures"] if s["name"] == "spleen")
    assert spleen["true_dice"] == 1.0
    assert view["review_state"] == "reviewed" and view["actions"][0]["action"] == "correct"
    page = client.get(f"/cases/{site.ct.case_id}").text
    assert f'<span class="true-dice">{expected:.2f}</span>' in page


def test_who_may_see_and_act(site: Site) -> None:
    signed_out = _client(site, None)
    page = signed_out.get(f"/cases/{site.ct.case_id}", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login?next=")
    assert signed_out.get(f"/api/cases/{site.ct.case_id}").status_code == 401
    assert signed_out.get(f"/cases/{site.ct.case_id}/slices/0.png", follow_redirects=False).status_code == 303
    for role in (Role.GOVERNANCE, Role.ADMIN):
        client = _client(site, role)
        assert client.get(f"/cases/{site.ct.case_id}").status_code == 403
        assert client.post(f"/api/cases/{site.ct.case_id}/accept").status_code == 403
    assert _client(site).get("/api/cases/9999").status_code == 404


def test_api_accept_then_again_is_idempotent(site: Site) -> None:
    client = _client(site)
    first = client.post(f"/api/cases/{site.ct.case_id}/accept", json={"text": "fine"})
    assert first.status_code == 200 and first.json()["review_state"] == "reviewed"
    second = client.post(f"/api/cases/{site.ct.case_id}/accept")
    assert second.status_code == 200
    actions = second.json()["actions"]
    assert [a["action"] for a in actions] == ["accept", "accept"]
    assert actions[1]["detail"] == "fine" and actions[0]["before"] == {"review_state": "reviewed"}


def test_opening_a_case_decodes_the_next_one_in_the_background(site: Site) -> None:
    context = site.app.state.review
    client = _client(site)
    assert client.get(f"/cases/{site.ct.case_id}").status_code == 200
    cache = context.extras[CACHE_KEY]
    thread = prefetch_next(context, site.ct.case_id)  # already under way (or done) since the page was served
    if thread is not None:
        thread.join(timeout=60)
    assert cache.has(site.dx.case_id) and cache.has(site.ct.case_id)
    assert prefetch_next(context, site.ct.case_id) is None  # nothing left to fetch


def test_generated_requests_to_the_case_api_get_no_500(site: Site) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    from review.security import hash_token, new_token

    with Session(get_engine(site.url)) as session:
        user = accounts.get_user(session, username="radiologist")
        assert user is not None and user.id is not None
        token = new_token()
        accounts.add_token(session, user_id=user.id, token_hash=hash_token(token))
    api_schema = schemathesis.openapi.from_asgi("/openapi.json", site.app)
    operations = [r.ok() for r in api_schema.get_all_operations()]
    operations = [op for op in operations if "/cases/" in op.path]
    assert len(operations) == 5  # page data, slice, accept, reject, correction
    failures: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def run(case: schemathesis.Case) -> None:
            if "case_id" in (case.path_parameters or {}) and case.path_parameters["case_id"] % 2:
                case.path_parameters["case_id"] = site.dx.case_id  # real cases too, not only unknown ids
            response = case.call(headers={"Authorization": f"Bearer {token}"})
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}")

        run()
    assert failures == []


def test_verdicts_are_on_the_security_audit_trail(site: Site, tmp_path: Path) -> None:
    from dicom_node import audit_messages as am
    from dicom_node import audit_trail
    from dicom_node.audit_trail import AuditTrail, AuditTrailSettings, read_log

    log = tmp_path / "audit" / "audit.log"
    previous = audit_trail.configure(AuditTrail(AuditTrailSettings(), log, am.AuditSource("FAIRNODE")))
    try:
        client = _client(site)
        client.post(f"/api/cases/{site.ct.case_id}/accept")
        client.post(f"/api/cases/{site.dx.case_id}/reject", json={"reason": "wrong series or protocol"})
    finally:
        audit_trail.configure(previous)
    actions = []
    for message in read_log(log):
        event = message.find("EventIdentification")
        code = event.find("EventID") if event is not None else None
        if code is not None and code.get("csd-code") == "110103":  # DICOM Instances Accessed
            users = [p.get("UserID") for p in message.iter("ActiveParticipant")]
            objects = [o.get("ParticipantObjectID") for o in message.iter("ParticipantObjectIdentification")]
            actions.append((users, objects))
    assert len(actions) == 2
    assert all("radiologist" in users for users, _ in actions)
    assert str(site.ct.case_id) in actions[0][1] and str(site.dx.case_id) in actions[1][1]
