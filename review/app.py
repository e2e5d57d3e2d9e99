"""The node's web app: sign-in, the radiologists' worklist and case pages, governance audits, operations.

:func:`create_app` builds the app from a :class:`~review.deps.ReviewContext` (everything it serves from is
injected: the node's status, the registry, the audits folder, the dead-letter retry); :func:`build_context`
makes one from settings; :func:`serve` runs the app in a background thread beside the DICOM node.

Routers
-------
:data:`ROUTERS` are always included; :data:`OPTIONAL_ROUTERS` are modules included when they can be imported
(the case viewer). Every route declares its access rule (:func:`review.deps.require_role` or
:data:`review.deps.PUBLIC`): building an app with a route that declares none is a ``RuntimeError``.
"""

from __future__ import annotations

import importlib
import logging
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRouter
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DataError
from sqlmodel import Session
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.base import RequestResponseEndpoint

from fairness_registry import accounts
from fairness_registry.db import get_engine
from review.config import ReviewSettings, session_secret
from review.deps import (
    STATIC_DIR,
    NotSignedInError,
    ReviewContext,
    StatusProvider,
    Worklist,
    route_rules,
    templates,
    verify_csrf,
)
from review.routes import api, auth, governance, ops, worklist
from review.security import COOKIE_NAME, SessionCodec, SessionData, hash_password

__all__ = [
    "OPTIONAL_ROUTERS",
    "ROUTERS",
    "ReviewServer",
    "build_context",
    "create_app",
    "ensure_first_admin",
    "serve",
]

logger = logging.getLogger(__name__)

#: Routers every app includes.
ROUTERS: tuple[APIRouter, ...] = (auth.router, worklist.router, governance.router, ops.router, api.router)
#: Modules whose ``router`` is included when the module exists (the case viewer).
OPTIONAL_ROUTERS: tuple[str, ...] = ("review.routes.cases",)
#: Path prefixes answered as an API (401 JSON rather than a redirect to the sign-in page).
API_PREFIXES = ("/api/", "/metrics", "/health", "/ready", "/openapi.json", "/docs")


def _optional(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        return None


def _is_api(request: Request) -> bool:
    return request.url.path.startswith(API_PREFIXES)


def _secure(request: Request, settings: ReviewSettings) -> bool:
    return request.url.scheme == "https" if settings.secure_cookies is None else settings.secure_cookies


def set_session_cookie(response: Response, request: Request, data: SessionData | None) -> None:
    """Write (or with ``None`` delete) the session cookie on a response."""
    context: ReviewContext = request.app.state.review
    secure = _secure(request, context.settings)
    if data is None:
        response.delete_cookie(COOKIE_NAME, path="/", secure=secure, httponly=True, samesite="strict")
        return
    response.set_cookie(
        COOKIE_NAME,
        context.codec.dumps(data),
        max_age=int(context.codec.idle_seconds),
        path="/",
        secure=secure,
        httponly=True,
        samesite="strict",
    )


def create_app(context: ReviewContext) -> FastAPI:
    """The web app serving from ``context``.

    Raises
    ------
    RuntimeError
        When a route declares no access rule.
    """
    app = FastAPI(
        title="fairnode review",
        description="Sign-in, radiologist worklist and cases, governance audits and node operations. "
        "Call the API with a session cookie (and the X-CSRF-Token header on changes) or a bearer token "
        "(`fairnode users token NAME`).",
        version="0.2.0",
        dependencies=[Depends(verify_csrf)],
    )
    app.state.review = context
    for router in ROUTERS:
        app.include_router(router)
    for name in OPTIONAL_ROUTERS:
        module = _optional(name)
        if module is not None:
            app.include_router(module.router)
    missing = [f"{sorted(methods)} {path}" for path, methods, guard in route_rules(app) if guard is None]
    if missing:
        raise RuntimeError(f"routes without an access rule (add require_role(...) or PUBLIC): {', '.join(missing)}")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.middleware("http")
    async def session_cookie(request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        if getattr(request.state, "session_clear", False):
            set_session_cookie(response, request, None)
        elif (data := getattr(request.state, "session_out", None)) is not None:
            set_session_cookie(response, request, data)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    @app.exception_handler(NotSignedInError)
    async def sign_in_required(request: Request, exc: NotSignedInError) -> Response:
        if _is_api(request):
            return JSONResponse(
                {"detail": "sign in first: send the session cookie or Authorization: Bearer <token>"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        if request.method != "GET":  # a form posted after the session ended: back to the start after sign-in
            return RedirectResponse("/login?next=/", status_code=303)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)

    @app.exception_handler(OverflowError)
    @app.exception_handler(DataError)
    async def out_of_range(request: Request, exc: Exception) -> Response:
        # a number the database cannot hold (e.g. an id past INTEGER): the request's fault, not the server's
        logger.info("value out of the database's range in %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": "a number in the request is out of range"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if _is_api(request) or request.method not in ("GET", "POST"):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        return templates.TemplateResponse(
            request, "error.html", {"code": exc.status_code, "detail": exc.detail}, status_code=exc.status_code
        )

    return app


def build_context(
    settings: ReviewSettings,
    *,
    data_dir: Path,
    status: StatusProvider,
    registry_url: str | None,
    audits_dir: Path | None = None,
    retry_dead: Callable[[], int] | None = None,
    accession_of: Callable[[str], str | None] | None = None,
    extras: dict[str, Any] | None = None,
) -> ReviewContext:
    """A :class:`ReviewContext` from settings (the session secret resolved, the registry opened).

    Raises
    ------
    review.config.SecretError
        When the session secret is refused (see :func:`review.config.session_secret`).
    """
    from review.worklist import RegistryWorklist

    registry: Callable[[], Any] | None = None
    work: Worklist | None = None
    if registry_url is not None:
        engine = get_engine(registry_url)

        @contextmanager
        def registry_session() -> Iterator[Session]:
            with Session(engine) as session:
                yield session

        registry = registry_session
        work = RegistryWorklist(lambda: Session(engine))
    return ReviewContext(
        settings=settings,
        codec=SessionCodec(session_secret(settings, data_dir), settings.idle_minutes * 60),
        status=status,
        registry=registry,
        worklist=work,
        audits_dir=audits_dir if audits_dir is not None else data_dir / "audits",
        retry_dead=retry_dead,
        accession_of=accession_of if settings.show_accession else None,
        extras=dict(extras or {}),
    )


def ensure_first_admin(context: ReviewContext) -> str | None:
    """Create the first admin when there is no user yet.

    Returns
    -------
    str or None
        The one-time password made for it (to print once), or ``None`` when nothing was made or the password
        came from settings.
    """
    name = context.settings.first_admin
    if context.registry is None or not name:
        return None
    with context.registry() as db:
        if accounts.count_users(db) > 0:
            return None
        given = context.settings.first_admin_password
        password = given.get_secret_value() if given is not None else secrets.token_urlsafe(12)
        try:
            accounts.create_user(db, username=name, role=accounts.Role.ADMIN, password_hash=hash_password(password))
        except accounts.DuplicateUserError:  # another receiver on the same registry created it first
            return None
    logger.info("first admin %r created", name)
    return None if given is not None else password


class ReviewServer:
    """uvicorn serving the app in a background thread."""

    def __init__(self, app: FastAPI, host: str, port: int):
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="review-app", daemon=True)

    def start(self) -> None:
        """Start serving; ``OSError`` when it cannot (port in use)."""
        self._thread.start()
        while not self._server.started and self._thread.is_alive():
            threading.Event().wait(0.05)
        if not self._server.started:
            raise OSError("the web app could not start (is the port in use?)")

    @property
    def port(self) -> int:
        """The port it listens on (the real one when 0 was asked)."""
        servers = self._server.servers
        return int(servers[0].sockets[0].getsockname()[1]) if servers else 0

    def stop(self) -> None:
        """Stop serving."""
        self._server.should_exit = True
        self._thread.join(timeout=5)


def serve(context: ReviewContext, host: str, port: int) -> ReviewServer:
    """Start the app (:func:`create_app`) on ``host:port`` in a background thread and return its server."""
    server = ReviewServer(create_app(context), host, port)
    server.start()
    return server

