"""The case page: the image with fairnode's SEG and entropy heatmap, the structures with their estimates,
and the radiologist's verdict (accept, reject with a reason, or a corrected SEG that becomes ground truth).

Pages (radiologists; forms carry the CSRF field)
------------------------------------------------
``GET /cases/{case_id}`` the page · ``GET /cases/{case_id}/slices/{k}.png?overlay=&heatmap=&preset=`` one
rendered slice (:mod:`review.slices`) · ``POST /cases/{case_id}/accept`` · ``POST /cases/{case_id}/reject``
(``reason`` from :data:`REJECT_REASONS`, ``text``) · ``POST /cases/{case_id}/correction`` (multipart ``file``:
a DICOM-SEG). Each POST appends to the audit trail, moves the case to ``reviewed`` and redirects back.

API (same rules; JSON)
----------------------
``GET /api/cases/{case_id}`` · ``POST /api/cases/{case_id}/accept`` · ``POST /api/cases/{case_id}/reject``
(``{"reason": ..., "text": ...}``) · ``POST /api/cases/{case_id}/correction`` (multipart ``file``).

The files are found from the registry row in the spool (:mod:`review.case_files`): the app's context
carries the spool folder as ``extras["spool_dir"]`` (or its ``outbox`` folder as ``extras["outbox"]``) and
optionally the models folder as ``extras["models_dir"]``. Without either folder the viewer answers 503.

The routes are here; what they show is in :mod:`review.routes.case_views`, the work behind them (reading
the case and its images, recording verdicts) in :mod:`review.routes.case_actions`.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from fairness_registry.accounts import Role
from review.deps import CaseId, ContextDep, CurrentUser, ReviewContext, require_role, templates
from review.routes.case_actions import (
    CACHE_KEY,
    MODELS_DIR_KEY,
    OUTBOX_KEY,
    REJECT_REASONS,
    SPOOL_DIR_KEY,
    accept,
    case_images,
    case_item,
    case_view,
    correct,
    prefetch_next,
    reject,
    slice_cache,
)
from review.routes.case_views import CaseView, CorrectionOutcome, Note, Rejection
from review.slices import SliceError

__all__ = [
    "CACHE_KEY",
    "MODELS_DIR_KEY",
    "OUTBOX_KEY",
    "REJECT_REASONS",
    "SPOOL_DIR_KEY",
    "CaseView",
    "prefetch_next",
    "router",
]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["cases"])

RADIOLOGIST = require_role(Role.RADIOLOGIST)

#: Largest corrected SEG accepted by upload (bytes).
MAX_UPLOAD = 512 * 1024 * 1024

Preset = Annotated[str | None, Query(max_length=16, pattern=r"^[a-z]+$")]


async def _read_upload(file: UploadFile) -> bytes:
    data = await file.read(MAX_UPLOAD + 1)
    if not data:
        raise HTTPException(422, "the uploaded file is empty; choose the corrected DICOM-SEG file")
    if len(data) > MAX_UPLOAD:
        raise HTTPException(413, f"the uploaded file is larger than {MAX_UPLOAD // (1024 * 1024)} MB")
    return data


def _done(request: Request) -> str | None:
    """The verdict just given (``?done=``), one of the three; anything else is not echoed."""
    done = request.query_params.get("done")
    return done if done in ("accepted", "rejected", "corrected") else None


def _page(
    request: Request, context: ReviewContext, case_id: int, error: str | None = None, status: int = 200
) -> Response:
    view = case_view(context, case_id)
    prefetch_next(context, case_id)
    return templates.TemplateResponse(
        request,
        "case.html",
        {"case": view, "reject_reasons": REJECT_REASONS, "error": error, "done": _done(request)},
        status_code=status,
    )


@router.get("/cases/{case_id}", dependencies=[RADIOLOGIST], include_in_schema=False)
def case_page(request: Request, context: ContextDep, case_id: CaseId) -> Response:
    """The case page."""
    return _page(request, context, case_id)


@router.get(
    "/cases/{case_id}/slices/{k}.png",
    dependencies=[RADIOLOGIST],
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def slice_png(
    context: ContextDep,
    case_id: CaseId,
    k: int,
    preset: Preset = None,
    overlay: bool = True,
    heatmap: bool = False,
) -> Response:
    """Slice ``k`` (0-based) of the case as PNG, with the SEG overlay and/or the entropy heatmap."""
    item = case_item(context, case_id)
    images = case_images(context, item)
    chosen = preset or images.presets[0].name
    try:
        images.check(k, chosen)
        png = slice_cache(context).png(
            case_id, lambda: images, k, preset=chosen, overlay=overlay, heatmap=heatmap and images.entropy is not None
        )
    except SliceError as exc:
        raise HTTPException(422 if "preset" in str(exc) else 404, str(exc)) from None
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})


@router.post("/cases/{case_id}/accept", dependencies=[RADIOLOGIST], include_in_schema=False)
def accept_form(
    context: ContextDep, user: CurrentUser, case_id: CaseId, text: Annotated[str, Form(max_length=2000)] = ""
) -> Response:
    """The page's Accept button."""
    accept(context, user.id, case_id, text)
    return RedirectResponse(f"/cases/{case_id}?done=accepted", status_code=303)


@router.post("/cases/{case_id}/reject", dependencies=[RADIOLOGIST], include_in_schema=False)
def reject_form(
    request: Request,
    context: ContextDep,
    user: CurrentUser,
    case_id: CaseId,
    reason: Annotated[str, Form(max_length=200)] = "",
    text: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """The page's Reject form."""
    if reason not in REJECT_REASONS:
        return _page(request, context, case_id, f"choose a reason for the rejection: {'; '.join(REJECT_REASONS)}", 422)
    reject(context, user.id, case_id, reason, text)
    return RedirectResponse(f"/cases/{case_id}?done=rejected", status_code=303)


@router.post("/cases/{case_id}/correction", dependencies=[RADIOLOGIST], include_in_schema=False)
async def correction_form(
    request: Request, context: ContextDep, user: CurrentUser, case_id: CaseId, file: Annotated[UploadFile, File()]
) -> Response:
    """The page's Corrected form: a DICOM-SEG upload."""
    try:
        data = await _read_upload(file)
        await run_in_threadpool(correct, context, user.id, case_id, data)
    except HTTPException as exc:
        if exc.status_code not in (413, 422):
            raise
        return _page(request, context, case_id, str(exc.detail), exc.status_code)
    return RedirectResponse(f"/cases/{case_id}?done=corrected#structures", status_code=303)


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "signed out"},
    403: {"description": "not a radiologist, or CSRF token missing"},
    404: {"description": "unknown case, or its outputs are not on disk"},
    503: {"description": "no registry or spool folder"},
}


@router.get("/api/cases/{case_id}", dependencies=[RADIOLOGIST], responses=ERRORS)
def case_api(context: ContextDep, case_id: CaseId) -> CaseView:
    """The case as its page shows it: estimates, truths, slices, presets and the trail."""
    return case_view(context, case_id)


@router.post(
    "/api/cases/{case_id}/accept", dependencies=[RADIOLOGIST], responses={**ERRORS, 409: {"description": "closed"}}
)
def accept_api(context: ContextDep, user: CurrentUser, case_id: CaseId, note: Note | None = None) -> CaseView:
    """Accept fairnode's segmentation; the case becomes ``reviewed``."""
    accept(context, user.id, case_id, note.text if note else "")
    return case_view(context, case_id)


@router.post(
    "/api/cases/{case_id}/reject", dependencies=[RADIOLOGIST], responses={**ERRORS, 409: {"description": "closed"}}
)
def reject_api(context: ContextDep, user: CurrentUser, case_id: CaseId, body: Rejection) -> CaseView:
    """Reject with a reason; the case becomes ``reviewed``."""
    reject(context, user.id, case_id, body.reason, body.text)
    return case_view(context, case_id)


@router.post(
    "/api/cases/{case_id}/correction",
    dependencies=[RADIOLOGIST],
    responses={
        **ERRORS,
        409: {"description": "closed"},
        413: {"description": "too large"},
        422: {"description": "bad SEG"},
    },
)
async def correction_api(
    context: ContextDep, user: CurrentUser, case_id: CaseId, file: Annotated[UploadFile, File()]
) -> CorrectionOutcome:
    """Upload a corrected DICOM-SEG: true Dice, NSD and HD95 per structure are stored; the case becomes ``reviewed``."""
    data = await _read_upload(file)
    return await run_in_threadpool(correct, context, user.id, case_id, data)
