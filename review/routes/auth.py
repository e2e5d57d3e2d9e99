"""Sign-in and sign-out.

``GET /login`` sets a pre-sign-in session (its CSRF token goes in the form); ``POST /login`` checks that
token, the rate limits (per user name and per address: 429 with ``Retry-After``) and the password, then starts
the session (new CSRF token) and redirects to ``next`` (a local path only) or the role's home page.
``POST /logout`` ends every session of the user. Each sign-in, refusal and sign-out is a DICOM audit
message (User Authentication) on the node's audit trail.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from dicom_node import audit_messages as am
from dicom_node import audit_trail
from fairness_registry import accounts
from fairness_registry.accounts import Role
from review.deps import (
    PUBLIC,
    ContextDep,
    CurrentUser,
    OptionalUser,
    client_address,
    request_session,
    require_role,
    templates,
)
from review.security import CSRF_FIELD, SessionData, csrf_matches, hash_password, verify_password

logger = logging.getLogger(__name__)

router = APIRouter(tags=["sign-in"])
#: Checked when the user name is unknown, so that both cases take as long.
_DUMMY_HASH = hash_password("no user has this password")

#: Where each role lands after signing in.
HOME: dict[Role, str] = {
    Role.RADIOLOGIST: "/worklist",
    Role.GOVERNANCE: "/governance/audits",
    Role.ADMIN: "/ops",
}


def _safe_next(target: str | None) -> str | None:
    """``target`` when it is a path on this site (no scheme, no host, no ``//``), else ``None``."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    return target


def _login_page(request: Request, *, error: str | None = None, next_: str | None = None, code: int = 200) -> Response:
    data = request_session(request) or SessionData.anonymous()
    request.state.session_out = data
    return templates.TemplateResponse(
        request,
        "login.html",
        {"error": error, "next": _safe_next(next_) or "", "csrf_token": data.csrf},
        status_code=code,
    )


@router.get("/login", dependencies=[PUBLIC], include_in_schema=False)
def login_page(request: Request, user: OptionalUser, next: str | None = None) -> Response:
    """The sign-in form (a signed-in user goes on to ``next`` or their home page)."""
    if user is not None:
        return RedirectResponse(_safe_next(next) or HOME[user.role], status_code=303)
    return _login_page(request, next_=next)


@router.post("/login", dependencies=[PUBLIC], include_in_schema=False)
def login(
    request: Request,
    context: ContextDep,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=1024)],
    csrf_token: Annotated[str, Form(alias=CSRF_FIELD, max_length=128)] = "",
    next: Annotated[str, Form(max_length=2048)] = "",
) -> Response:
    """Check the form and start a session."""
    data = request_session(request)
    address = client_address(request)
    if data is None or not csrf_matches(data.csrf, csrf_token):
        audit_trail.record(am.user_authentication(user=username, ok=False, address=address, reason="no CSRF token"))
        return _login_page(request, error="The sign-in form expired; please try again.", next_=next, code=403)
    wait = context.limiter.hit(username=username, address=address)
    if wait is not None:
        audit_trail.record(am.user_authentication(user=username, ok=False, address=address, reason="rate limited"))
        response = _login_page(
            request, error=f"Too many sign-in attempts; try again in {wait} s.", next_=next, code=429
        )
        response.headers["Retry-After"] = str(wait)
        return response
    if context.registry is None:
        return _login_page(request, error="This node runs without a registry: nobody can sign in.", code=503)
    with context.registry() as db:
        user = accounts.get_user(db, username=username.strip().lower())
    # an unknown name costs the same hash check as a known one: no telling them apart by time
    ok, rehash = verify_password(user.password_hash if user is not None else _DUMMY_HASH, password)
    if user is None or user.id is None or not ok or not user.active:
        logger.info("sign-in refused for a user name from %s", address)
        reason = "user disabled" if user is not None and ok else "unknown user name or wrong password"
        audit_trail.record(am.user_authentication(user=username, ok=False, address=address, reason=reason))
        return _login_page(request, error="Unknown user name or wrong password.", next_=next, code=401)
    with context.registry() as db:
        accounts.record_login(db, user_id=user.id, password_hash=rehash)
    request.state.session_out = data.signed_in(user.id, user.session_version)
    logger.info("user %s signed in", user.username)
    audit_trail.record(am.user_authentication(user=user.username, ok=True, address=address))
    return RedirectResponse(_safe_next(next) or HOME[user.role], status_code=303)


@router.post("/logout", dependencies=[require_role(*Role)], include_in_schema=False)
def logout(request: Request, context: ContextDep, user: CurrentUser) -> Response:
    """End every session of the user and go back to the sign-in page."""
    if context.registry is not None and user.id is not None:
        with context.registry() as db:
            accounts.bump_session(db, user_id=user.id)
    request.state.session_out = None
    request.state.session_clear = True
    audit_trail.record(
        am.user_authentication(user=user.username, ok=True, address=client_address(request), logout=True)
    )
    return RedirectResponse("/login", status_code=303)
