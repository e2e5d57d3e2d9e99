"""The JSON API (OpenAPI at ``/openapi.json``, pages at ``/docs``): the same actions as the pages.

Authenticate with the session cookie (and the ``X-CSRF-Token`` header on POST) or ``Authorization: Bearer
<token>`` (``fairnode users token NAME``). Errors: 401 signed out, 403 wrong role or CSRF, 404 unknown,
409 a state change the case does not allow (the body lists the allowed ones), 422 a value not accepted
(the body lists the accepted ones), 503 a part of the node this app runs without.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from fairness_registry import accounts, crud
from fairness_registry.accounts import ReviewActionPublic, Role, UserPublic
from fairness_registry.models import ReviewState, WorklistItem
from review.audits import AuditEntry, audit_file, list_audits
from review.deps import MAX_ID, CaseId, ContextDep, CurrentUser, SessionDep, client_address, require_role
from review.routes.governance import run_audit
from review.routes.ops import retry_dead_letters
from review.routes.worklist import StateFilter, worklist_page_data
from review.worklist import WorklistPage

router = APIRouter(prefix="/api", tags=["api"])
RADIOLOGIST = require_role(Role.RADIOLOGIST)
GOVERNANCE = require_role(Role.GOVERNANCE, Role.ADMIN)
ADMIN = require_role(Role.ADMIN)
ANYONE = require_role(*Role)


class StateChange(BaseModel):
    """Body of ``POST /api/worklist/{case_id}/state``."""

    state: str = Field(max_length=32)
    detail: str = Field("", max_length=2000, description="a note for the trail")


class AuditRun(BaseModel):
    """Body of ``POST /api/audits/run``."""

    period: str = Field(max_length=16, description="2026Q3, 2026-07 or 2026")
    model: str | None = Field(None, max_length=64)


class Started(BaseModel):
    """What was started."""

    started: str


class Requeued(BaseModel):
    """How many dead deliveries were queued again."""

    requeued: int


class Detail(BaseModel):
    """An error."""

    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Detail, "description": "signed out"},
    403: {"model": Detail, "description": "wrong role, or CSRF token missing"},
}


@router.get("/me", dependencies=[ANYONE], responses=ERRORS)
def me(user: CurrentUser) -> UserPublic:
    """The signed-in user."""
    return UserPublic.model_validate(user, from_attributes=True)


@router.get("/status", dependencies=[ANYONE], responses=ERRORS)
def status(context: ContextDep) -> dict[str, Any]:
    """What the node reports (listener, studies and deliveries by state, dead letters, models)."""
    return dict(context.status())


@router.get("/worklist", dependencies=[RADIOLOGIST], responses=ERRORS)
def worklist(
    request: Request,
    context: ContextDep,
    user: CurrentUser,
    model: Annotated[str | None, Query(max_length=64)] = None,
    reason: Annotated[str | None, Query(max_length=200)] = None,
    state: StateFilter | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> WorklistPage:
    """REVIEW cases, most doubtful first, with the counts and what the filters can choose from."""
    return worklist_page_data(
        context,
        model=model,
        reason=reason,
        state=state,
        limit=limit,
        user=user.username,
        address=client_address(request),
    )


@router.get("/worklist/counts", dependencies=[RADIOLOGIST], responses=ERRORS)
def worklist_counts(context: ContextDep) -> dict[str, int]:
    """Cases per review state."""
    if context.worklist is None:
        raise HTTPException(503, "this node runs without a registry, so it has no worklist; configure a registry")
    return {state.value: count for state, count in context.worklist.counts().items()}


@router.post(
    "/worklist/{case_id}/state",
    dependencies=[RADIOLOGIST],
    responses={**ERRORS, 404: {"model": Detail}, 409: {"description": "transition not allowed"}},
)
def set_state(case_id: CaseId, change: StateChange, context: ContextDep, user: CurrentUser) -> WorklistItem:
    """Change a case's review state (e.g. ``{"state": "reviewed"}``); the change is added to the trail."""
    if context.worklist is None or context.registry is None:
        raise HTTPException(503, "this node runs without a registry, so it has no worklist; configure a registry")
    try:
        with context.registry() as db:
            before = crud.worklist_item(db, case_id=case_id).review_state
        item = context.worklist.set_state(case_id, change.state)
    except crud.NotFoundError as exc:
        raise HTTPException(404, str(exc)) from None
    except crud.ReviewTransitionError as exc:
        return JSONResponse(  # type: ignore[return-value]
            status_code=409,
            content={
                "detail": str(exc),
                "current": None if exc.current is None else exc.current.value,
                "allowed": [s.value for s in ReviewState if s in exc.allowed],
            },
        )
    except ValueError as exc:
        return JSONResponse(  # type: ignore[return-value]
            status_code=422, content={"detail": str(exc), "accepted": [s.value for s in ReviewState]}
        )
    if before is not item.review_state and user.id is not None:
        with context.registry() as db:
            accounts.append_action(
                db,
                user_id=user.id,
                case_id=case_id,
                action="state",
                before={"review_state": before.value},
                after={"review_state": item.review_state.value},
                detail=change.detail,
            )
    return item


@router.get("/actions", dependencies=[require_role(Role.RADIOLOGIST, Role.ADMIN)], responses=ERRORS)
def actions(
    db: SessionDep,
    case_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[ReviewActionPublic]:
    """The trail of review actions, newest first (of one case with ``case_id``)."""
    return accounts.list_actions(db, case_id=case_id, limit=limit)


@router.get("/audits", dependencies=[GOVERNANCE], responses=ERRORS)
def audits(context: ContextDep) -> list[AuditEntry]:
    """The audits found in the audits folder, newest period first."""
    return list_audits(context.audits_dir)


@router.get(
    "/audits/{model}/{period}", dependencies=[GOVERNANCE], responses={**ERRORS, 404: {"model": Detail}}
)
def audit(context: ContextDep, model: str, period: str) -> dict[str, Any]:
    """One audit's JSON result (aggregates only)."""
    path = audit_file(context.audits_dir, model, period, "json")
    if path is None:
        raise HTTPException(404, f"no JSON report for {model} {period}; see GET /api/audits")
    result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return result


@router.post("/audits/run", dependencies=[GOVERNANCE], responses={**ERRORS, 400: {"model": Detail}})
def audits_run(body: AuditRun, context: ContextDep, user: CurrentUser) -> Started:
    """Run an audit for a period (all models, or one)."""
    return Started(started=run_audit(context, period=body.period.strip(), model=body.model, user_id=user.id))


@router.get("/ops/dead-letters", dependencies=[ADMIN], responses=ERRORS)
def dead_letters(context: ContextDep) -> list[dict[str, Any]]:
    """Deliveries given up on."""
    return list(context.status().get("dead_letters", []))


@router.post("/ops/dead-letters/retry", dependencies=[ADMIN], responses=ERRORS)
def dead_letters_retry(context: ContextDep, user: CurrentUser) -> Requeued:
    """Give every dead delivery a fresh retry budget."""
    return Requeued(requeued=retry_dead_letters(context, user.id))


@router.get("/ops/models", dependencies=[ADMIN], responses=ERRORS)
def models(context: ContextDep) -> dict[str, Any]:
    """The models opened so far and the execution providers each runs on."""
    return dict(context.status().get("models", {}))


@router.get("/users", dependencies=[ADMIN], responses=ERRORS)
def users(db: SessionDep) -> list[UserPublic]:
    """Every user (no hashes)."""
    return [UserPublic.model_validate(u, from_attributes=True) for u in accounts.list_users(db)]
