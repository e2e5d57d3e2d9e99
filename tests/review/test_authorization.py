"""Authorization matrix: every route of the app's route table x every role x signed out.

``RULES`` says who may call what, by path; a route no rule matches fails the test (so a new route needs a
rule here), a route whose declared guard disagrees with its rule fails, and every cell of the matrix is
requested: signed out -> 401 (API) or a redirect to the sign-in page; wrong role -> 403; allowed -> neither.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from fairness_registry.accounts import Role
from review import app as review_app
from review.deps import ReviewContext, route_rules
from tests.review.conftest import Registry

Client = Callable[[Role | None], TestClient]
PUBLIC = "public"
RADIOLOGIST = frozenset({Role.RADIOLOGIST})
GOVERNANCE = frozenset({Role.GOVERNANCE, Role.ADMIN})
ADMIN = frozenset({Role.ADMIN})
ANYONE = frozenset(Role)

#: (path pattern, who may call it). The first match wins.
RULES: list[tuple[str, frozenset[Role] | str]] = [
    (r"/login", PUBLIC),
    (r"/health", PUBLIC),
    (r"/ready", PUBLIC),
    (r"/logout", ANYONE),
    (r"/", ANYONE),
    (r"/api/me", ANYONE),
    (r"/api/status", ANYONE),
    (r"/worklist.*", RADIOLOGIST),
    (r"/api/worklist.*", RADIOLOGIST),
    (r"/cases/.*", RADIOLOGIST),
    (r"/api/cases/.*", RADIOLOGIST),
    (r"/api/actions", frozenset({Role.RADIOLOGIST, Role.ADMIN})),
    (r"/governance/.*", GOVERNANCE),
    (r"/api/audits.*", GOVERNANCE),
    (r"/ops.*", ADMIN),
    (r"/metrics", ADMIN),
    (r"/api/ops/.*", ADMIN),
    (r"/api/users", ADMIN),
]
#: Routes FastAPI adds (not APIRoutes): the schema and its pages, public by design (they hold no data).
FRAMEWORK_ROUTES = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def _rule(path: str) -> frozenset[Role] | str | None:
    for pattern, allowed in RULES:
        if re.fullmatch(pattern, path):
            return allowed
    return None


def _concrete(path: str, registry: Registry) -> str:
    values = {"case_id": str(registry.held), "model": "ct_abdomen_organs", "period": "2026Q3", "fmt": "json"}
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: values.get(m.group(1), "1"), path)


def _is_api(path: str) -> bool:
    return path.startswith(("/api/", "/metrics", "/health", "/ready"))


def test_every_route_has_a_rule_and_declares_it(app: FastAPI) -> None:
    rules = route_rules(app)
    assert len(rules) >= 20
    for path, methods, guard in rules:
        expected = _rule(path)
        assert expected is not None, f"{sorted(methods)} {path} has no rule in RULES: add one"
        assert guard is not None
        if expected == PUBLIC:
            assert guard.public, f"{path} should be public"
        else:
            assert not guard.public and guard.roles == expected, f"{path} declares {guard!r}, RULES say {expected}"


def test_a_route_without_an_access_rule_is_refused(context: ReviewContext, monkeypatch: pytest.MonkeyPatch) -> None:
    rogue = APIRouter()

    @rogue.get("/api/rogue")
    def rogue_route() -> dict[str, str]:
        return {"open": "to anyone"}

    monkeypatch.setattr(review_app, "ROUTERS", (*review_app.ROUTERS, rogue))
    with pytest.raises(RuntimeError, match=r"routes without an access rule.*/api/rogue"):
        review_app.create_app(context)


def test_the_framework_routes_are_the_only_others(app: FastAPI) -> None:
    from fastapi.routing import APIRoute, iter_route_contexts
    from starlette.routing import Mount

    others = {
        str(c.path)
        for c in iter_route_contexts(app.routes)
        if not isinstance(c.original_route, APIRoute | Mount)
    }
    assert others == FRAMEWORK_ROUTES


def test_authorization_matrix(app: FastAPI, client_for: Client, registry: Registry) -> None:
    clients = {role: client_for(role) for role in (None, *Role)}
    routes = sorted(route_rules(app), key=lambda r: r[0] == "/logout")  # sign-out last: it ends the session
    checked = 0
    for path, methods, _guard in routes:
        allowed = _rule(path)
        url = _concrete(path, registry)
        for method in sorted(methods - {"HEAD"}):
            for role, client in clients.items():
                response = client.request(method, url, follow_redirects=False, json={} if method == "POST" else None)
                cell = f"{method} {url} as {role.value if role else 'signed out'}: {response.status_code}"
                assert response.status_code != 500, cell + " " + response.text[:300]
                if allowed == PUBLIC:  # (POST /login without its form answers 403: no CSRF token)
                    assert response.status_code != 401, cell
                elif role is None:
                    if _is_api(path):
                        assert response.status_code == 401, cell
                    else:
                        assert response.status_code == 303, cell
                        assert response.headers["location"].startswith("/login?next="), cell
                elif role in allowed:
                    assert response.status_code not in (401, 403), cell + " " + response.text[:300]
                else:
                    assert response.status_code == 403, cell
                checked += 1
    assert checked >= 4 * 20
