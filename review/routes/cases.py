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
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, Field
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool

from dicom_node import audit_messages as am
from dicom_node import audit_trail
from dicom_node.volume import VolumeError
from fairness_registry import accounts, crud
from fairness_registry.accounts import ReviewActionPublic, Role
from fairness_registry.models import CaseStructure, ReviewState, WorklistItem
from inference.model_card import LabelSpec, ModelCardError, bundled_models, load_card
from review.case_files import CaseFilesError, locate_case_files
from review.corrections import CorrectionError, evaluate_correction, read_seg, record_truths
from review.deps import CaseId, ContextDep, CurrentUser, ReviewContext, require_role, templates
from review.slices import CaseImages, SliceCache, SliceError
from review.worklist import doubt

__all__ = ["REJECT_REASONS", "CaseView", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["cases"])
RADIOLOGIST = require_role(Role.RADIOLOGIST)

#: Reasons offered for a rejection (plus free text).
REJECT_REASONS: tuple[str, ...] = (
    "segmentation wrong",
    "structure missing or extra",
    "wrong series or protocol",
    "image quality too poor to judge",
    "anatomy outside the model's scope",
    "other",
)
#: Largest corrected SEG accepted by upload (bytes).
MAX_UPLOAD = 512 * 1024 * 1024
#: Context extras the viewer reads.
SPOOL_DIR_KEY, OUTBOX_KEY, MODELS_DIR_KEY, CACHE_KEY = "spool_dir", "outbox", "models_dir", "slice_cache"

Preset = Annotated[str | None, Query(max_length=16, pattern=r"^[a-z]+$")]


class CaseStructureView(BaseModel):
    """One structure on the case page: display, the estimates, and the truth once a correction came."""

    name: str
    label: int | None = None
    color: str | None = Field(None, description="#rrggbb of the overlay")
    largest_slice: int | None = Field(None, description="0-based slice where the SEG holds most of it")
    route: str | None = None
    predicted_dice: float | None = None
    predicted_low: float | None = None
    predicted_high: float | None = None
    coverage: float | None = None
    rca_max_dice: float | None = None
    rca_hd95_mm: float | None = None
    reasons: list[str] = Field(default_factory=list)
    true_dice: float | None = None
    true_nsd: float | None = None
    true_hd95_mm: float | None = None
    truth_source: str | None = None


class PresetView(BaseModel):
    name: str
    title: str


class CaseView(BaseModel):
    """What the case page shows (no patient identifier)."""

    case_id: int
    study_uid: str
    series_uid: str
    modality: str
    model: str
    model_version: str
    run: int
    route: str
    review_state: ReviewState
    reasons: list[str]
    n_slices: int
    start_slice: int = Field(description="the largest slice of the most doubtful structure")
    presets: list[PresetView]
    has_heatmap: bool
    structures: list[CaseStructureView]
    actions: list[ReviewActionPublic]


class Rejection(BaseModel):
    """Body of ``POST /api/cases/{case_id}/reject``."""

    reason: str = Field(max_length=200, description="one of REJECT_REASONS")
    text: str = Field("", max_length=2000, description="free text for the trail")


class Note(BaseModel):
    """Body of ``POST /api/cases/{case_id}/accept`` (optional)."""

    text: str = Field("", max_length=2000)


class TruthView(BaseModel):
    structure: str
    dice: float
    nsd: float | None
    hd95_mm: float | None


class CorrectionOutcome(BaseModel):
    """What a correction gave."""

    case_id: int
    review_state: ReviewState
    structures: list[TruthView]


# --- reading ---------------------------------------------------------------------------------------------


def _registry(context: ReviewContext) -> Callable[[], Any]:
    if context.registry is None:
        raise HTTPException(503, "this node runs without a registry, so it has no cases; configure a registry")
    return context.registry


def _spool(context: ReviewContext) -> Path:
    spool = context.extras.get(SPOOL_DIR_KEY)
    if spool is None and context.extras.get(OUTBOX_KEY) is not None:
        spool = Path(context.extras[OUTBOX_KEY]).parent  # the outbox lies in the spool folder
    if spool is None:
        raise HTTPException(503, "the case viewer has no spool folder (extras['spool_dir']); start it with the node")
    return Path(spool)


def _cache(context: ReviewContext) -> SliceCache:
    found = context.extras.get(CACHE_KEY)
    if not isinstance(found, SliceCache):
        found = context.extras.setdefault(CACHE_KEY, SliceCache())
    return found


@cache
def _card_labels(model: str, models_dir: Path | None) -> tuple[LabelSpec, ...]:
    folders = bundled_models(models_dir) if models_dir else bundled_models()
    if model not in folders:
        return ()
    return load_card(folders[model]).labels


def _labels(context: ReviewContext, model: str) -> tuple[LabelSpec, ...]:
    models_dir = context.extras.get(MODELS_DIR_KEY)
    try:
        return _card_labels(model, Path(models_dir) if models_dir else None)
    except ModelCardError as exc:
        logger.warning("model card of %s unreadable, showing the SEG's own labels: %s", model, exc)
        return ()


def _item(context: ReviewContext, case_id: int) -> WorklistItem:
    with _registry(context)() as db:
        try:
            return crud.worklist_item(db, case_id=case_id)
        except crud.NotFoundError as exc:
            raise HTTPException(404, f"{exc}; the viewer shows cases whose quality was assessed") from None


def _images(context: ReviewContext, item: WorklistItem) -> CaseImages:
    spool = _spool(context)

    def load() -> CaseImages:
        files = locate_case_files(spool, study_uid=item.study_uid, series_uid=item.series_uid, run=item.run)
        return CaseImages.load(files, _labels(context, item.model))

    try:
        return _cache(context).images(item.case_id, load)
    except CaseFilesError as exc:
        raise HTTPException(404, f"the outputs of case {item.case_id} are not on disk: {exc}") from None
    except (VolumeError, SliceError) as exc:
        raise HTTPException(422, f"case {item.case_id} cannot be shown: {exc}") from None


def prefetch_next(context: ReviewContext, after: int) -> threading.Thread | None:
    """Decode, in the background, the most doubtful open case other than ``after`` that is not cached yet, so
    that the radiologist's next case opens at once (None when there is nothing to fetch)."""
    if context.worklist is None or context.extras.get(SPOOL_DIR_KEY, context.extras.get(OUTBOX_KEY)) is None:
        return None
    cache = _cache(context)
    items = [i for i in context.worklist.items(limit=50) if i.case_id != after and not cache.has(i.case_id)]
    if not items:
        return None
    nxt = min(items, key=lambda i: (-1.0 if doubt(i.structures) is None else doubt(i.structures), i.case_id))

    def fetch() -> None:
        try:
            _images(context, nxt)
        except HTTPException as exc:  # the case page will show the same error when it is opened
            logger.warning("prefetch of case %d failed: %s", nxt.case_id, exc.detail)

    thread = threading.Thread(target=fetch, name=f"prefetch-case-{nxt.case_id}", daemon=True)
    thread.start()
    return thread


def _truths(db: Session, case_id: int) -> dict[str, CaseStructure]:
    rows = db.exec(select(CaseStructure).where(col(CaseStructure.case_id) == case_id)).all()
    return {row.name: row for row in rows}


def case_view(context: ReviewContext, case_id: int) -> CaseView:
    """Everything the page shows of a case (404 unknown or without outputs, 503 without registry/spool)."""
    item = _item(context, case_id)
    images = _images(context, item)
    with _registry(context)() as db:
        truths = _truths(db, case_id)
        actions = accounts.list_actions(db, case_id=case_id, limit=200)
    estimates = {s.name: s for s in item.structures}
    names = [s.name for s in images.structures] + [n for n in estimates if images.structure(n) is None]
    structures: list[CaseStructureView] = []
    for name in names:
        shown, est, truth = images.structure(name), estimates.get(name), truths.get(name)
        structures.append(
            CaseStructureView(
                name=name,
                label=shown.label if shown else (est.label if est else None),
                color=shown.hex_color if shown else None,
                largest_slice=shown.largest_slice if shown else None,
                route=est.route.value if est and est.route else None,
                predicted_dice=est.predicted_dice if est else None,
                predicted_low=est.predicted_low if est else None,
                predicted_high=est.predicted_high if est else None,
                coverage=est.coverage if est else None,
                rca_max_dice=est.rca_max_dice if est else None,
                rca_hd95_mm=est.rca_hd95_mm if est else None,
                reasons=list(est.reasons) if est else [],
                true_dice=truth.true_dice if truth else None,
                true_nsd=truth.true_nsd if truth else None,
                true_hd95_mm=truth.true_hd95_mm if truth else None,
                truth_source=truth.truth_source if truth else None,
            )
        )
    doubtful = sorted(
        (s for s in structures if s.largest_slice is not None),
        key=lambda s: (s.predicted_low if s.predicted_low is not None else 2.0, s.name),
    )
    return CaseView(
        case_id=case_id,
        study_uid=item.study_uid,
        series_uid=item.series_uid,
        modality=item.modality,
        model=item.model,
        model_version=item.model_version,
        run=item.run,
        route=item.route.value,
        review_state=item.review_state,
        reasons=list(item.reasons),
        n_slices=images.n_slices,
        start_slice=(doubtful[0].largest_slice or 0) if doubtful else images.n_slices // 2,
        presets=[PresetView(name=p.name, title=p.title) for p in images.presets],
        has_heatmap=images.entropy is not None,
        structures=structures,
        actions=actions,
    )


# --- acting ---------------------------------------------------------------------------------------------


def _close(
    context: ReviewContext, user_id: int | None, case_id: int, action: str, after: dict[str, Any], detail: str
) -> ReviewState:
    """Move the case to ``reviewed`` and append the action to the trail (409 when the state does not allow it)."""
    with _registry(context)() as db:
        try:
            before = crud.worklist_item(db, case_id=case_id).review_state
            case = crud.set_review_state(db, case_id=case_id, state=ReviewState.REVIEWED)
        except crud.NotFoundError as exc:
            raise HTTPException(404, str(exc)) from None
        except crud.ReviewTransitionError as exc:
            raise HTTPException(409, str(exc)) from None
        state = case.review_state or ReviewState.REVIEWED
        user = accounts.get_user_by_id(db, user_id=user_id) if user_id is not None else None
        username = user.username if user is not None else "unknown"
        if user_id is not None:
            accounts.append_action(
                db,
                user_id=user_id,
                case_id=case_id,
                action=action,
                before={"review_state": before.value},
                after={"review_state": state.value, **after},
                detail=detail,
            )
        study_uid = crud.worklist_item(db, case_id=case_id).study_uid
    audit_trail.record(
        am.review_action(user=username, action=action, case_id=case_id, study_uid=study_uid)
    )
    logger.info("case %d %s by user %s", case_id, action, user_id)
    return state


def accept(context: ReviewContext, user_id: int | None, case_id: int, text: str = "") -> ReviewState:
    """Accept fairnode's segmentation of a case."""
    _item(context, case_id)
    return _close(context, user_id, case_id, "accept", {"verdict": "accepted"}, text.strip())


def reject(context: ReviewContext, user_id: int | None, case_id: int, reason: str, text: str = "") -> ReviewState:
    """Reject a case with one of :data:`REJECT_REASONS` and free text."""
    if reason not in REJECT_REASONS:
        raise HTTPException(422, f"reason {reason!r} is not accepted; use one of: {'; '.join(REJECT_REASONS)}")
    _item(context, case_id)
    return _close(context, user_id, case_id, "reject", {"verdict": "rejected", "reason": reason}, text.strip())


def correct(
    context: ReviewContext, user_id: int | None, case_id: int, data: bytes, source: str = "upload"
) -> CorrectionOutcome:
    """Score a corrected SEG against the case's SEG, store the truths, close the case (422 on a bad SEG)."""
    item = _item(context, case_id)
    spool = _spool(context)
    try:
        corrected = read_seg(data)
        files = locate_case_files(spool, study_uid=item.study_uid, series_uid=item.series_uid, run=item.run)
        truths = evaluate_correction(corrected, files, _labels(context, item.model))
    except CaseFilesError as exc:
        raise HTTPException(404, f"the outputs of case {case_id} are not on disk: {exc}") from None
    except (CorrectionError, VolumeError) as exc:
        raise HTTPException(422, f"the corrected SEG cannot be used: {exc}") from None
    with _registry(context)() as db:
        try:
            record_truths(db, case_id=case_id, truths=truths, source=source)
        except crud.NotFoundError as exc:
            raise HTTPException(422, f"the corrected SEG cannot be stored: {exc}") from None
    dice = {t.structure: t.dice for t in truths}
    state = _close(context, user_id, case_id, "correct", {"verdict": "corrected", "true_dice": dice}, "")
    return CorrectionOutcome(
        case_id=case_id,
        review_state=state,
        structures=[TruthView(structure=t.structure, dice=t.dice, nsd=t.nsd, hd95_mm=t.hd95_mm) for t in truths],
    )


async def _read_upload(file: UploadFile) -> bytes:
    data = await file.read(MAX_UPLOAD + 1)
    if not data:
        raise HTTPException(422, "the uploaded file is empty; choose the corrected DICOM-SEG file")
    if len(data) > MAX_UPLOAD:
        raise HTTPException(413, f"the uploaded file is larger than {MAX_UPLOAD // (1024 * 1024)} MB")
    return data


# --- pages ----------------------------------------------------------------------------------------------


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
    item = _item(context, case_id)
    images = _images(context, item)
    chosen = preset or images.presets[0].name
    try:
        images.check(k, chosen)
        png = _cache(context).png(
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


# --- API ------------------------------------------------------------------------------------------------

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
