"""What routes depend on: the app's context, a registry session, the signed-in user, role checks, templates.

Every route declares who may call it with :func:`require_role` (or :data:`PUBLIC`); :func:`route_guard` reads
that back from the route table, :func:`review.app.create_app` refuses to build an app with a route that
declares nothing, and the tests check every route for every role and signed out.

``CurrentUser`` is the user of the request's bearer token (``Authorization: Bearer ...``) or session cookie.
Signed out, API routes answer 401 and pages redirect to the sign-in page; a signed-in user without the role
gets 403.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path as FilePath
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, HTTPException, Path, Request
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.templating import Jinja2Templates
from sqlmodel import Session

from fairness_registry import accounts
from fairness_registry.accounts import Role, User
from fairness_registry.models import ReviewState, WorklistItem
from review.config import ReviewSettings
from review.security import (
    COOKIE_NAME,
    CSRF_FIELD,
    CSRF_HEADER,
    LoginLimiter,
    SessionCodec,
    SessionData,
    csrf_matches,
    hash_token,
)

__all__ = [
    "PUBLIC",
    "CaseId",
    "ContextDep",
    "CurrentUser",
    "NotSignedInError",
    "OptionalUser",
    "ReviewContext",
    "RoleGuard",
    "SessionDep",
    "StatusProvider",
    "Worklist",
    "client_address",
    "require_role",
    "route_guard",
    "route_rules",
    "templates",
    "verify_csrf",
]

logger = logging.getLogger(__name__)

TEMPLATES_DIR = FilePath(__file__).resolve().parent / "templates"
STATIC_DIR = FilePath(__file__).resolve().parent / "static"

StatusProvider = Callable[[], Mapping[str, Any]]


class Worklist(Protocol):
    """What the worklist routes need (:class:`review.worklist.RegistryWorklist` serves one from the registry).

    ``set_state`` raises :class:`fairness_registry.crud.NotFoundError` for an unknown case,
    :class:`fairness_registry.crud.ReviewTransitionError` for a change the case's state does not allow, and
    ``ValueError`` for an unknown state.
    """

    def items(self, *, include_reviewed: bool = False, limit: int = 100) -> list[WorklistItem]:
        """REVIEW cases, newest first (closed ones only with ``include_reviewed``)."""
        ...

    def counts(self) -> Mapping[ReviewState, int]:
        """Cases per review state."""
        ...

    def set_state(self, case_id: int, state: str) -> WorklistItem:
        """Change a case's review state; the item as it is afterwards."""
        ...

    def study_dates(self, study_uids: Sequence[str]) -> Mapping[str, date | None]:
        """Study date by study UID."""
        ...


@dataclass
class ReviewContext:
    """Everything the app serves from, injected by whoever builds it (``fairnode serve``, a test).

    Attributes
    ----------
    settings : ReviewSettings
    codec : SessionCodec
        Signs session cookies (secret from :func:`review.config.session_secret`).
    status : callable returning a mapping
        What the node reports (listener, studies and deliveries by state, dead letters, models).
    registry : callable returning sqlmodel.Session, optional
        Opens a registry session (users, trail, worklist). Without it nobody can sign in.
    worklist : Worklist, optional
    audits_dir : pathlib.Path, optional
        Where audits are written (``<model>/<period>/report.{html,pdf,json}``).
    retry_dead : callable returning int, optional
        Gives every dead delivery a fresh retry budget; the number re-queued.
    accession_of : callable, optional
        Study UID -> accession number (read from the spool); used only when ``settings.show_accession``.
    extras : dict
        Anything more a router needs (e.g. the outputs folder of the case viewer).
    """

    settings: ReviewSettings
    codec: SessionCodec
    status: StatusProvider
    registry: Callable[[], Session] | None = None
    worklist: Worklist | None = None
    audits_dir: FilePath | None = None
    retry_dead: Callable[[], int] | None = None
    accession_of: Callable[[str], str | None] | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    limiter: LoginLimiter = field(init=False)

    def __post_init__(self) -> None:
        self.limiter = LoginLimiter(self.settings.login_attempts_per_user, self.settings.login_attempts_per_address)


class NotSignedInError(Exception):
    """No valid session or token (pages redirect to the sign-in page, the API answers 401)."""


def get_context(request: Request) -> ReviewContext:
    """The app's :class:`ReviewContext`."""
    context: ReviewContext = request.app.state.review
    return context


ContextDep = Annotated[ReviewContext, Depends(get_context)]


def get_db(context: ContextDep) -> Iterator[Session]:
    """A registry session for the request (503 when the node runs without a registry)."""
    if context.registry is None:
        raise HTTPException(503, "this node runs without a registry, so it has no users or worklist")
    with context.registry() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]

#: Largest row id (PostgreSQL INTEGER); bigger ids in a path are a 422, not a database error.
MAX_ID = 2**31 - 1
#: A case id in a path: ``def page(case_id: CaseId)``.
CaseId = Annotated[int, Path(ge=1, le=MAX_ID, description="the case's id in the registry")]


def request_session(request: Request) -> SessionData | None:
    """The request's signed session (pre-sign-in included), read once per request."""
    if not hasattr(request.state, "session"):
        context = get_context(request)
        request.state.session = context.codec.loads(request.cookies.get(COOKIE_NAME))
    session: SessionData | None = request.state.session
    return session


def client_address(request: Request) -> str:
    """The client's address as the connection shows it (the proxy's, behind a reverse proxy)."""
    return request.client.host if request.client else "unknown"


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header, if any."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _find_user(request: Request, context: ReviewContext) -> User | None:
    if context.registry is None:
        return None
    token = bearer_token(request)
    if token is not None:
        with context.registry() as db:
            return accounts.user_for_token(db, token_hash=hash_token(token))
    data = request_session(request)
    if data is None or data.user_id is None:
        return None
    with context.registry() as db:
        user = accounts.get_user_by_id(db, user_id=data.user_id)
    if user is None or not user.active or user.session_version != data.version:
        return None
    request.state.session_out = data  # re-signed on the way out: the idle clock restarts
    return user


def optional_user(request: Request, context: ContextDep) -> User | None:
    """The signed-in user, or ``None``."""
    if not hasattr(request.state, "user"):
        request.state.user = _find_user(request, context)
    user: User | None = request.state.user
    return user


OptionalUser = Annotated[User | None, Depends(optional_user)]


def current_user(user: OptionalUser) -> User:
    """The signed-in user (:class:`NotSignedInError` when there is none)."""
    if user is None:
        raise NotSignedInError()
    return user


CurrentUser = Annotated[User, Depends(current_user)]


class RoleGuard:
    """The access rule of a route: the roles allowed, or public (anyone, signed in or not)."""

    def __init__(self, roles: tuple[Role, ...], *, public: bool = False) -> None:
        self.roles = frozenset(roles)
        self.public = public

    def __call__(self, request: Request, context: ContextDep) -> User | None:
        """Check the request's user against the rule (for a public route, just the user or ``None``)."""
        user = optional_user(request, context)
        if self.public:
            return user
        if user is None:
            raise NotSignedInError()
        if user.role not in self.roles:
            raise HTTPException(
                403,
                f"user {user.username!r} has role {user.role.value!r}; this needs "
                f"{' or '.join(sorted(r.value for r in self.roles))}",
            )
        return user

    def __repr__(self) -> str:
        return "PUBLIC" if self.public else f"require_role({', '.join(sorted(r.value for r in self.roles))})"


def require_role(*roles: Role | str) -> Any:
    """A dependency allowing only users of these roles: ``dependencies=[require_role(Role.RADIOLOGIST)]``, or
    ``user: Annotated[User, require_role(Role.ADMIN)]``."""
    if not roles:
        raise TypeError("require_role needs at least one role; for a route anyone may call use PUBLIC")
    return Depends(RoleGuard(tuple(Role(r) for r in roles)))


#: The dependency of a route anyone may call (sign-in page, health, readiness, static files).
PUBLIC: Any = Depends(RoleGuard((), public=True))


def route_rules(app: FastAPI) -> list[tuple[str, frozenset[str], RoleGuard | None]]:
    """Every API route of the app (included routers flattened): full path, methods, declared access rule."""
    rules = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute):
            rules.append((str(context.path), frozenset(route.methods or ()), route_guard(route)))
    return rules


def route_guard(route: APIRoute) -> RoleGuard | None:
    """The access rule a route declares (looked up among its dependencies, nested ones included)."""
    stack = list(route.dependant.dependencies)
    while stack:
        dependant = stack.pop()
        if isinstance(dependant.call, RoleGuard):
            return dependant.call
        stack.extend(dependant.dependencies)
    return None


def _template_globals(request: Request) -> dict[str, Any]:
    """What every template sees: the user, the CSRF token, the nav entries of their role."""
    user: User | None = getattr(request.state, "user", None)
    session = getattr(request.state, "session_out", None) or getattr(request.state, "session", None)
    nav: list[tuple[str, str]] = []
    if user is not None:
        if user.role is Role.RADIOLOGIST:
            nav.append(("Worklist", "/worklist"))
        if user.role in (Role.GOVERNANCE, Role.ADMIN):
            nav.append(("Audits", "/governance/audits"))
        if user.role is Role.ADMIN:
            nav.append(("Operations", "/ops"))
        nav.append(("Status", "/"))
    return {"user": user, "csrf_token": session.csrf if session else "", "csrf_field": CSRF_FIELD, "nav": nav}


#: The Jinja2 templates of ``review/templates`` (autoescaped), with :func:`_template_globals` in every page.
templates = Jinja2Templates(directory=TEMPLATES_DIR, context_processors=[_template_globals])

#: Methods that change nothing and need no CSRF token.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


async def verify_csrf(request: Request) -> None:
    """Refuse (403) a state-changing request made with the session cookie but without its CSRF token.

    The token comes in the ``X-CSRF-Token`` header or the ``csrf_token`` form field. Requests with a bearer
    token, and requests without a signed-in session cookie (nothing ambient to abuse; the route's rule
    decides), need none; the sign-in form checks its own.
    """
    if request.method in SAFE_METHODS or bearer_token(request) is not None:
        return
    data = request_session(request)
    if data is None or data.user_id is None:
        return
    given = request.headers.get(CSRF_HEADER)
    content_type = request.headers.get("content-type", "")
    if given is None and content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        value = (await request.form()).get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    if not csrf_matches(data.csrf, given):
        raise HTTPException(
            403,
            f"CSRF token missing or wrong: send the page's {CSRF_FIELD} form field or the {CSRF_HEADER} header "
            "(or call the API with a bearer token)",
        )
