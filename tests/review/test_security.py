"""Passwords, the session secret, CSRF, the sign-in rate limits, idle expiry, sign-out and bearer tokens."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import itsdangerous.timed
import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlmodel import Session

from fairness_registry import accounts
from fairness_registry.accounts import Role
from fairness_registry.db import get_engine
from review.app import build_context, create_app, ensure_first_admin
from review.config import DEV_SECRET, KEY_FILE, SecretError, session_secret
from review.security import COOKIE_NAME, SessionData, hash_password, hash_token, new_token, verify_password
from tests.review.conftest import PASSWORDS, SESSION_SECRET, Registry, csrf_of, review_settings, sign_in, status

Client = Callable[[Role | None], TestClient]


# -- passwords -----------------------------------------------------------------------------------------------
def test_passwords_are_argon2id_hashes_that_verify() -> None:
    hashed = hash_password("correct horse battery")
    assert hashed.startswith("$argon2id$") and "correct horse" not in hashed
    assert hash_password("correct horse battery") != hashed  # salted
    assert verify_password(hashed, "correct horse battery") == (True, None)
    assert verify_password(hashed, "correct horse battery!") == (False, None)
    assert verify_password("not a hash", "correct horse battery") == (False, None)
    with pytest.raises(ValueError, match="at least 10"):
        hash_password("short")


def test_a_hash_with_old_parameters_is_upgraded_at_sign_in(registry: Registry, client_for: Client) -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8192).hash("old-params-password")
    ok, upgraded = verify_password(weak, "old-params-password")
    assert ok and upgraded is not None and upgraded != weak
    with Session(get_engine(registry.url)) as session:
        accounts.create_user(session, username="olduser", role=Role.RADIOLOGIST, password_hash=weak)
    client = client_for(None)
    sign_in(client, "olduser", "old-params-password")
    with Session(get_engine(registry.url)) as session:
        stored = accounts.get_user(session, username="olduser")
        assert stored is not None and stored.password_hash != weak and stored.last_login_at is not None
        assert verify_password(stored.password_hash, "old-params-password") == (True, None)


# -- the session secret --------------------------------------------------------------------------------------
@pytest.mark.parametrize("secret", ["", "changeme", "SECRET", DEV_SECRET, "short-but-random-8f3a"])
def test_default_empty_or_short_secrets_are_refused_outside_dev_mode(secret: str, tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="review session secret"):
        session_secret(review_settings(session_secret=SecretStr(secret)), tmp_path)
    assert session_secret(review_settings(session_secret=SecretStr(secret), dev_mode=True), tmp_path) == (
        secret.encode()
    )


def test_an_unset_secret_is_generated_once_into_the_data_folder(tmp_path: Path) -> None:
    settings = review_settings(session_secret=None)
    first = session_secret(settings, tmp_path)
    key = tmp_path / KEY_FILE
    assert len(first) >= 48 and key.read_text().strip().encode() == first
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert session_secret(settings, tmp_path) == first
    assert session_secret(review_settings(session_secret=None, dev_mode=True), tmp_path) == DEV_SECRET.encode()
    key.write_text("changeme")  # a key file someone edited to a placeholder
    with pytest.raises(SecretError, match=KEY_FILE):
        session_secret(settings, tmp_path)


def test_first_admin_gets_a_one_time_password_once(registry: Registry, tmp_path: Path) -> None:
    with Session(get_engine(registry.url)) as session:  # an empty user table
        from sqlalchemy import text

        session.execute(text("DELETE FROM review_user"))
        session.commit()
    context = build_context(
        review_settings(first_admin="root"), data_dir=tmp_path, status=status, registry_url=registry.url
    )
    password = ensure_first_admin(context)
    assert password is not None and len(password) >= 12
    assert ensure_first_admin(context) is None  # not again
    client = TestClient(create_app(context))
    sign_in(client, "root", password)
    assert client.get("/ops").status_code == 200
    given = build_context(
        review_settings(first_admin="root", first_admin_password=SecretStr("from-settings-1")),
        data_dir=tmp_path,
        status=status,
        registry_url=registry.url,
    )
    assert ensure_first_admin(given) is None  # users exist: nothing made


# -- CSRF ----------------------------------------------------------------------------------------------------
def test_state_changes_without_the_csrf_token_are_refused(radiologist: TestClient, registry: Registry) -> None:
    url = f"/api/worklist/{registry.held}/state"
    token = radiologist.headers.pop("X-CSRF-Token")
    missing = radiologist.post(url, json={"state": "reviewed"})
    assert missing.status_code == 403 and "CSRF token missing or wrong" in missing.json()["detail"]
    wrong = radiologist.post(url, json={"state": "reviewed"}, headers={"X-CSRF-Token": token[:-2] + "xx"})
    assert wrong.status_code == 403
    form = radiologist.post("/logout", data={"csrf_token": "forged"})
    assert form.status_code == 403
    assert radiologist.get("/api/worklist/counts").json()["held"] == 1  # nothing changed, still signed in
    assert radiologist.post(url, json={"state": "reviewed"}, headers={"X-CSRF-Token": token}).status_code == 200
    assert radiologist.post("/logout", data={"csrf_token": token}, follow_redirects=False).status_code == 303


def test_signing_in_needs_the_sign_in_page_token(client_for: Client) -> None:
    client = client_for(None)
    form = {"username": "radiologist", "password": PASSWORDS[Role.RADIOLOGIST]}
    assert client.post("/login", data=form).status_code == 403  # no pre-sign-in session
    csrf_of(client.get("/login").text)
    refused = client.post("/login", data={**form, "csrf_token": "guessed"}, follow_redirects=False)
    assert refused.status_code == 403 and "form expired" in refused.text
    assert client.get("/api/me").status_code == 401


def test_a_bearer_token_needs_no_csrf_token_and_dies_with_its_user(registry: Registry, client_for: Client) -> None:
    value = new_token()
    with Session(get_engine(registry.url)) as session:
        user = accounts.get_user(session, username="radiologist")
        assert user is not None and user.id is not None
        accounts.add_token(session, user_id=user.id, token_hash=hash_token(value), label="pacs")
        stored = session.exec(accounts.select(accounts.ApiToken)).all()  # type: ignore[attr-defined]
        assert [t.token_hash for t in stored] == [hash_token(value)] and value not in str(stored)
    client = client_for(None)
    bearer = {"Authorization": f"Bearer {value}"}
    assert client.get("/api/me", headers=bearer).json()["username"] == "radiologist"
    response = client.post(f"/api/worklist/{registry.held}/state", json={"state": "reviewed"}, headers=bearer)
    assert response.status_code == 200
    assert client.get("/api/me", headers={"Authorization": "Bearer wrong"}).status_code == 401
    with Session(get_engine(registry.url)) as session:
        accounts.disable_user(session, username="radiologist")
    assert client.get("/api/me", headers=bearer).status_code == 401


# -- sign-in rate limits -------------------------------------------------------------------------------------
def _attempt(client: TestClient, username: str, password: str) -> int:
    token = csrf_of(client.get("/login").text)
    data = {"username": username, "password": password, "csrf_token": token}
    return client.post("/login", data=data, follow_redirects=False).status_code


def test_sign_in_is_rate_limited_per_user(registry: Registry, tmp_path: Path) -> None:
    settings = review_settings(login_attempts_per_user="3/minute", login_attempts_per_address="100/minute")
    app = create_app(build_context(settings, data_dir=tmp_path, status=status, registry_url=registry.url))
    client = TestClient(app)
    assert [_attempt(client, "radiologist", "wrong-password") for _ in range(3)] == [401, 401, 401]
    token = csrf_of(client.get("/login").text)
    limited = client.post(
        "/login",
        data={"username": "radiologist", "password": PASSWORDS[Role.RADIOLOGIST], "csrf_token": token},
        follow_redirects=False,
    )
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert "Too many sign-in attempts" in limited.text
    assert _attempt(client, "governance", PASSWORDS[Role.GOVERNANCE]) == 303  # another user still signs in


def test_sign_in_is_rate_limited_per_address(registry: Registry, tmp_path: Path) -> None:
    settings = review_settings(login_attempts_per_user="100/minute", login_attempts_per_address="3/minute")
    app = create_app(build_context(settings, data_dir=tmp_path, status=status, registry_url=registry.url))
    client = TestClient(app)
    assert [_attempt(client, name, "wrong-password") for name in ("a1", "b2", "c3", "d4")] == [401, 401, 401, 429]


# -- idle expiry and sign-out --------------------------------------------------------------------------------
def test_an_idle_session_expires_and_an_active_one_slides(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = review_settings(idle_minutes=10)
    context = build_context(settings, data_dir=tmp_path, status=status, registry_url=registry.url)
    client = TestClient(create_app(context))
    sign_in(client, "radiologist", PASSWORDS[Role.RADIOLOGIST])
    me = client.get("/api/me")
    assert me.status_code == 200
    assert "HttpOnly" in me.headers["set-cookie"] and "SameSite=strict" in me.headers["set-cookie"]
    assert "Secure" not in me.headers["set-cookie"]  # plain HTTP here
    data = context.codec.loads(client.cookies[COOKIE_NAME])
    assert data is not None and data.user_id is not None

    real = itsdangerous.timed.time.time
    monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: real() - 11 * 60)
    stale = context.codec.dumps(data)  # signed 11 minutes ago: last activity then
    monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: real() - 9 * 60)
    recent = context.codec.dumps(data)
    monkeypatch.undo()

    app = create_app(context)
    fresh = TestClient(app).get("/api/me", headers={"Cookie": f"{COOKIE_NAME}={recent}"})
    assert fresh.status_code == 200
    renewed = fresh.headers["set-cookie"].split(";")[0].split("=", 1)[1]
    assert renewed != recent and context.codec.loads(renewed) is not None  # re-signed now: the idle clock restarted
    idle = TestClient(app)
    assert idle.get("/api/me", headers={"Cookie": f"{COOKIE_NAME}={stale}"}).status_code == 401
    page = idle.get("/worklist", headers={"Cookie": f"{COOKIE_NAME}={stale}"}, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login?next=/worklist"


def test_secure_cookie_under_tls(registry: Registry, tmp_path: Path) -> None:
    context = build_context(review_settings(), data_dir=tmp_path, status=status, registry_url=registry.url)
    client = TestClient(create_app(context), base_url="https://testserver")
    sign_in(client, "radiologist", PASSWORDS[Role.RADIOLOGIST])
    assert "Secure" in client.get("/api/me").headers["set-cookie"]


def test_sign_out_ends_the_session_even_for_a_copied_cookie(radiologist: TestClient, app: object) -> None:
    cookie = radiologist.cookies[COOKIE_NAME]
    response = radiologist.post("/logout", data={"csrf_token": radiologist.headers["X-CSRF-Token"]})
    assert response.url.path == "/login"
    assert radiologist.get("/api/me").status_code == 401
    replay = TestClient(app)  # type: ignore[arg-type]
    assert replay.get("/api/me", headers={"Cookie": f"{COOKIE_NAME}={cookie}"}).status_code == 401


def test_a_forged_cookie_is_refused(app: object) -> None:
    from review.security import SessionCodec

    forged = SessionCodec(b"another-secret-" * 3, 600).dumps(SessionData(csrf="x", user_id=1, version=1))
    client = TestClient(app)  # type: ignore[arg-type]
    assert client.get("/api/me", headers={"Cookie": f"{COOKIE_NAME}={forged}"}).status_code == 401
    assert SESSION_SECRET not in forged


def test_next_only_goes_to_a_local_path(client_for: Client) -> None:
    client = client_for(None)
    for target, landing in (("/governance/audits", "/governance/audits"), ("https://evil.example/", "/worklist"),
                            ("//evil.example/", "/worklist")):
        token = csrf_of(client.get("/login").text)
        response = client.post(
            "/login",
            data={"username": "radiologist", "password": PASSWORDS[Role.RADIOLOGIST], "csrf_token": token,
                  "next": target},
            follow_redirects=False,
        )
        assert response.headers["location"] == landing
