"""The radiologists' worklist page: REVIEW cases most doubtful first, filters by model, reason and state.

Each row links to the case page (``/cases/{case_id}``), where the case is accepted, rejected or corrected.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response

from dicom_node import audit_messages as am
from dicom_node import audit_trail
from fairness_registry.accounts import Role
from fairness_registry.models import ReviewState
from review.deps import ContextDep, CurrentUser, ReviewContext, client_address, require_role, templates
from review.worklist import WorklistPage, build_page

router = APIRouter(tags=["worklist"])

StateFilter = ReviewState | Literal["all"]


def worklist_page_data(
    context: ReviewContext,
    *,
    model: str | None,
    reason: str | None,
    state: StateFilter | None,
    limit: int = 1000,
    user: str,
    address: str,
) -> WorklistPage:
    """The filtered worklist (503 without a registry); the query goes on the audit trail."""
    shown = state.value if isinstance(state, ReviewState) else state or "open"
    audit_trail.record(
        am.registry_query(
            user=user, query=f"worklist model={model or 'any'} reason={reason or 'any'} state={shown}", address=address
        )
    )
    if context.worklist is None:
        raise HTTPException(503, "this node runs without a registry, so it has no worklist; configure a registry")
    return build_page(
        context.worklist,
        model=model or None,
        reason=reason or None,
        state=state,
        accession_of=context.accession_of,
        limit=limit,
    )


def _state_filter(value: str | None) -> StateFilter | None:
    if not value:
        return None
    if value == "all":
        return "all"
    try:
        return ReviewState(value)
    except ValueError:
        accepted = ", ".join(["all", *(s.value for s in ReviewState)])
        raise HTTPException(422, f"state {value!r} is not known; accepted: {accepted}, or empty for open") from None


@router.get("/worklist", dependencies=[require_role(Role.RADIOLOGIST)], include_in_schema=False)
def worklist_page(
    request: Request,
    context: ContextDep,
    user: CurrentUser,
    model: Annotated[str | None, Query(max_length=64)] = None,
    reason: Annotated[str | None, Query(max_length=200)] = None,
    state: Annotated[str | None, Query(max_length=32, description="a review state, 'all', or empty: open")] = None,
) -> Response:
    """The worklist page (the filter form sends empty values for "all" / "open")."""
    page = worklist_page_data(
        context,
        model=model,
        reason=reason,
        state=_state_filter(state),
        user=user.username,
        address=client_address(request),
    )
    return templates.TemplateResponse(
        request, "worklist.html", {"page": page, "show_accession": context.settings.show_accession}
    )
