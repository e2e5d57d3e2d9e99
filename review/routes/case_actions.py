"""The case viewer's work behind :mod:`review.routes.cases`: the case and its images read from the registry
and the spool (with the slice cache and the prefetch of the next case), and the verdicts (accept, reject,
correct) recorded with their audit messages.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from sqlmodel import Session, col, select

from dicom_node import audit_messages as am
from dicom_node import audit_trail
from dicom_node.volume import VolumeError
from fairness_registry import accounts, crud
from fairness_registry.models import CaseStructure, ReviewState, WorklistItem
from inference.model_card import LabelSpec, ModelCardError, bundled_models, load_card
from review.case_files import CaseFilesError, locate_case_files
from review.corrections import CorrectionError, evaluate_correction, read_seg, record_truths
from review.deps import ReviewContext
from review.routes.case_views import CaseStructureView, CaseView, CorrectionOutcome, PresetView, TruthView
from review.slices import CaseImages, SliceCache, SliceError
from review.worklist import doubt

logger = logging.getLogger(__name__)

#: Reasons offered for a rejection (plus free text).
REJECT_REASONS: tuple[str, ...] = (
    "segmentation wrong",
    "structure missing or extra",
    "wrong series or protocol",
    "image quality too poor to judge",
    "anatomy outside the model's scope",
    "other",
)

#: Context extras the viewer reads.
SPOOL_DIR_KEY, OUTBOX_KEY, MODELS_DIR_KEY, CACHE_KEY = "spool_dir", "outbox", "models_dir", "slice_cache"


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


def slice_cache(context: ReviewContext) -> SliceCache:
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


def case_labels(context: ReviewContext, model: str) -> tuple[LabelSpec, ...]:
    models_dir = context.extras.get(MODELS_DIR_KEY)
    try:
        return _card_labels(model, Path(models_dir) if models_dir else None)
    except ModelCardError as exc:
        logger.warning("model card of %s unreadable, showing the SEG's own labels: %s", model, exc)
        return ()


def case_item(context: ReviewContext, case_id: int) -> WorklistItem:
    with _registry(context)() as db:
        try:
            return crud.worklist_item(db, case_id=case_id)
        except crud.NotFoundError as exc:
            raise HTTPException(404, f"{exc}; the viewer shows cases whose quality was assessed") from None


def case_images(context: ReviewContext, item: WorklistItem) -> CaseImages:
    spool = _spool(context)

    def load() -> CaseImages:
        files = locate_case_files(spool, study_uid=item.study_uid, series_uid=item.series_uid, run=item.run)
        return CaseImages.load(files, case_labels(context, item.model))

    try:
        return slice_cache(context).images(item.case_id, load)
    except CaseFilesError as exc:
        raise HTTPException(404, f"the outputs of case {item.case_id} are not on disk: {exc}") from None
    except (VolumeError, SliceError) as exc:
        raise HTTPException(422, f"case {item.case_id} cannot be shown: {exc}") from None


def prefetch_next(context: ReviewContext, after: int) -> threading.Thread | None:
    """Decode, in the background, the most doubtful open case other than ``after`` that is not cached yet, so
    that the radiologist's next case opens at once (None when there is nothing to fetch)."""
    if context.worklist is None or context.extras.get(SPOOL_DIR_KEY, context.extras.get(OUTBOX_KEY)) is None:
        return None
    cache = slice_cache(context)
    items = [i for i in context.worklist.items(limit=50) if i.case_id != after and not cache.has(i.case_id)]
    if not items:
        return None
    nxt = min(items, key=lambda i: (-1.0 if doubt(i.structures) is None else doubt(i.structures), i.case_id))

    def fetch() -> None:
        try:
            case_images(context, nxt)
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
    item = case_item(context, case_id)
    images = case_images(context, item)
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
    audit_trail.record(am.review_action(user=username, action=action, case_id=case_id, study_uid=study_uid))
    logger.info("case %d %s by user %s", case_id, action, user_id)
    return state


def accept(context: ReviewContext, user_id: int | None, case_id: int, text: str = "") -> ReviewState:
    """Accept fairnode's segmentation of a case."""
    case_item(context, case_id)
    return _close(context, user_id, case_id, "accept", {"verdict": "accepted"}, text.strip())


def reject(context: ReviewContext, user_id: int | None, case_id: int, reason: str, text: str = "") -> ReviewState:
    """Reject a case with one of :data:`REJECT_REASONS` and free text."""
    if reason not in REJECT_REASONS:
        raise HTTPException(422, f"reason {reason!r} is not accepted; use one of: {'; '.join(REJECT_REASONS)}")
    case_item(context, case_id)
    return _close(context, user_id, case_id, "reject", {"verdict": "rejected", "reason": reason}, text.strip())


def correct(
    context: ReviewContext, user_id: int | None, case_id: int, data: bytes, source: str = "upload"
) -> CorrectionOutcome:
    """Score a corrected SEG against the case's SEG, store the truths, close the case (422 on a bad SEG)."""
    item = case_item(context, case_id)
    spool = _spool(context)
    try:
        corrected = read_seg(data)
        files = locate_case_files(spool, study_uid=item.study_uid, series_uid=item.series_uid, run=item.run)
        truths = evaluate_correction(corrected, files, case_labels(context, item.model))
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
