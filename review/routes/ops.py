"""Operations: the status page, health and readiness, Prometheus metrics, dead letters, models in use.

``GET /`` (any signed-in role): the node at a glance (refreshes every 5 s). ``GET /health`` and
``GET /ready`` are public (probes cannot sign in) and say only ok / not ok with the failed checks.
``GET /ops``, ``GET /metrics``, ``POST /ops/dead-letters/retry`` are for admins (Prometheus scrapes with an
admin's bearer token).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy import text

from fairness_registry import accounts
from fairness_registry.accounts import Role
from fairness_registry.models import ReviewState
from review.deps import PUBLIC, ContextDep, CurrentUser, ReviewContext, require_role, templates
from review.metrics import render_metrics
from review.worklist import OPEN_STATES

logger = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])


def worklist_counts(context: ReviewContext) -> Mapping[ReviewState, int] | None:
    """Cases per review state; ``None`` without a worklist, empty when the registry cannot be read (logged)."""
    if context.worklist is None:
        return None
    try:
        return context.worklist.counts()
    except Exception:  # the status page must still show when the registry is down; logged, shown
        logger.exception("worklist counts unavailable for the status page")
        return {}


def readiness(context: ReviewContext) -> dict[str, Any]:
    """The readiness checks: the node answers, the registry answers."""
    checks: dict[str, str] = {}
    try:
        context.status()
        checks["node"] = "ok"
    except Exception as exc:  # a probe reports, it does not crash
        logger.exception("node status unavailable")
        checks["node"] = f"failed: {type(exc).__name__}"
    if context.registry is not None:
        try:
            with context.registry() as db:
                db.exec(text("SELECT 1"))  # type: ignore[call-overload]
            checks["registry"] = "ok"
        except Exception as exc:  # a probe reports, it does not crash
            logger.exception("registry unavailable")
            checks["registry"] = f"failed: {type(exc).__name__}"
    return {"ready": all(v == "ok" for v in checks.values()), "checks": checks}


@router.get("/", dependencies=[require_role(*Role)], include_in_schema=False)
def status_page(request: Request, context: ContextDep) -> Response:
    """The status page (it reloads itself every 5 s, which is not activity: the session is not renewed)."""
    request.state.session_out = None
    counts = worklist_counts(context)
    waiting = sum(counts.get(s, 0) for s in OPEN_STATES) if counts else 0
    return templates.TemplateResponse(
        request,
        "status.html",
        {
            "s": context.status(),
            "counts": counts,
            "waiting": waiting,
            "open_states": [(s.value.replace("_", " "), (counts or {}).get(s, 0)) for s in OPEN_STATES],
        },
    )


@router.get("/health", dependencies=[PUBLIC])
def health() -> dict[str, str]:
    """Liveness: the app answers."""
    return {"status": "ok"}


@router.get("/ready", dependencies=[PUBLIC], responses={503: {"description": "a check failed"}})
def ready(context: ContextDep) -> JSONResponse:
    """Readiness: the node and the registry answer."""
    result = readiness(context)
    return JSONResponse(result, status_code=200 if result["ready"] else 503)


@router.get("/metrics", dependencies=[require_role(Role.ADMIN)], response_class=Response)
def metrics(context: ContextDep) -> Response:
    """Prometheus metrics (text exposition format)."""
    return Response(render_metrics(context), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/ops", dependencies=[require_role(Role.ADMIN)], include_in_schema=False)
def ops_page(request: Request, context: ContextDep, retried: int | None = None) -> Response:
    """Health, readiness, dead letters with the retry button, models in use, users."""
    users = []
    if context.registry is not None:
        with context.registry() as db:
            users = [accounts.UserPublic.model_validate(u, from_attributes=True) for u in accounts.list_users(db)]
    return templates.TemplateResponse(
        request,
        "ops.html",
        {
            "s": context.status(),
            "ready": readiness(context),
            "can_retry": context.retry_dead is not None,
            "retried": retried,
            "users": users,
        },
    )


def retry_dead_letters(context: ReviewContext, user_id: int | None) -> int:
    """Re-queue every dead delivery and note it in the trail."""
    if context.retry_dead is None:
        raise HTTPException(503, "this app was started without the node's spool; run `fairnode deliveries retry`")
    n = context.retry_dead()
    if context.registry is not None and user_id is not None:
        with context.registry() as db:
            accounts.append_action(db, user_id=user_id, action="dead_letters.retry", after={"requeued": n})
    logger.info("%d dead deliveries queued again from the web app", n)
    return n


@router.post("/ops/dead-letters/retry", dependencies=[require_role(Role.ADMIN)], include_in_schema=False)
def retry_page(context: ContextDep, user: CurrentUser) -> Response:
    """The retry button: every dead delivery gets a fresh retry budget."""
    n = retry_dead_letters(context, user.id)
    return RedirectResponse(f"/ops?retried={n}", status_code=303)
