"""Corrected SEGs that arrive by C-STORE: scored against fairnode's SEG and stored as ground truth.

A radiologist corrects fairnode's segmentation in their own viewer and sends the result to the node. It
lands in the spool like any instance, in the study it belongs to, and starts a new run of that study;
:func:`take_corrections` (called first by :func:`fairnode.pipeline.process_study`) finds it there: a SEG
series whose ReferencedSeriesSequence names a series with a finished case becomes a correction of the
latest such case, scored by :func:`review.corrections.evaluate_correction` (Dice, NSD, HD95 per structure)
and stored with ``crud.record_truth(..., source="c-store")``; the case's review state becomes
``reviewed``. A SEG that is fairnode's own output (the case's SEG, a probability SEG, or any AUTOMATIC SEG
of the node's manufacturer, e.g. from an earlier run) is set aside.

Neither kind of SEG is segmented, and when a study holds one, its series that already have a finished case
are not segmented again: the new run exists because of the correction, not because of new images.
Series without a case (images that arrived with the correction) are processed as usual.

Without a registry (``fairnode run DIR``) nothing is taken: there are no cases to correct.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pydicom
from sqlmodel import Session, col, select

from dicom_node.volume import VolumeError
from fairness_registry import crud
from fairness_registry.models import Case, CaseStatus, CaseStructure, ReviewState, Series
from inference.model_card import ModelCardError, load_card
from review.case_files import SEG_NAME, CaseFiles
from review.corrections import (
    SEG_SOP_CLASS_UID,
    CorrectionError,
    case_for_series,
    evaluate_correction,
    is_automatic_output,
    record_truths,
    referenced_series,
)

__all__ = ["TakenSeg", "take_corrections"]

logger = logging.getLogger(__name__)

Headers = dict[str, list[tuple[Path, pydicom.Dataset]]]


@dataclass(frozen=True)
class TakenSeg:
    """A SEG series taken out of a study before segmentation.

    ``status`` is ``corrected`` (truths stored), ``applied`` (stored by an earlier run, or replaced by a later
    correction since: not scored again), ``own-output`` (fairnode's own SEG, ignored) or ``failed`` (the
    correction could not be scored; ``reason`` says why).
    """

    series_uid: str
    case_id: int
    model: str
    status: str
    reason: str


def _is_seg(ds: pydicom.Dataset) -> bool:
    return str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS_UID or str(ds.get("Modality", "")) == "SEG"


def _finished_series(session: Session, series_uids: list[str]) -> set[str]:
    """Those of ``series_uids`` that have a finished case."""
    if not series_uids:
        return set()
    statement = (
        select(Series.series_uid)
        .join(Case, col(Case.series_id) == col(Series.id))
        .where(col(Series.series_uid).in_(series_uids), Case.status == CaseStatus.DONE)
    )
    return set(session.exec(statement).all())


def take_corrections(
    headers: Headers,
    *,
    out_dir: Path,
    registry_session: Callable[[], object] | None,
    model_folders: Mapping[str, Path],
    manufacturer: str = "fairnode",
) -> list[TakenSeg]:
    """Take correction SEGs (and the series they make a re-run of) out of ``headers``, scoring each correction.

    Parameters
    ----------
    headers
        SeriesInstanceUID -> (file, header) of the study's instances; changed in place: taken SEG series
        and series that already have a finished case (when a SEG was taken) are removed.
    out_dir
        this run's output folder, ``<outbox>/<study>/run-<N>``; fairnode's SEG of run ``M`` is at
        ``<outbox>/<study>/run-<M>/<series>/seg.dcm``.
    registry_session
        opens a registry session (``None``: nothing is taken).
    model_folders
        model name -> its folder (the card gives the structures).
    manufacturer
        the node's Manufacturer in what it writes: an AUTOMATIC SEG of it is its own output, not a correction.

    Returns
    -------
    list of TakenSeg
        one per SEG series taken.
    """
    if registry_session is None:
        return []
    taken: list[TakenSeg] = []
    for seg_series, items in list(headers.items()):
        if not all(_is_seg(ds) for _, ds in items):
            continue
        with registry_session() as session:  # type: ignore[attr-defined]
            # oldest first, so that of two corrections of one case the newer is stored last
            for path, header in sorted(items, key=lambda item: item[0].stat().st_mtime):
                case = case_for_series(session, referenced_series(header))
                if case is None or case.id is None:
                    continue
                headers.pop(seg_series, None)
                sources = tuple(p for p, _ in headers.get(_series_uid(session, case), []))
                own = (
                    is_automatic_output(header, manufacturer) or str(header.get("SegmentationType", "")) == "FRACTIONAL"
                )
                taken.append(
                    _take(session, path, header, case, case.id, sources, seg_series, out_dir, model_folders, own=own)
                )
    if taken:
        with registry_session() as session:  # type: ignore[attr-defined]
            for uid in _finished_series(session, list(headers)):
                logger.info("series %s already processed: not segmented again for a correction", uid)
                headers.pop(uid, None)
    return taken


def _truth_newer_than(session: Session, case_id: int, path: Path) -> bool:
    """Whether the case got a truth (from any source) after ``path`` arrived: the SEG in it was applied in an
    earlier run, or a later correction replaced it. The file's modification time is its arrival."""
    arrived = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    rows = session.exec(select(CaseStructure).where(col(CaseStructure.case_id) == case_id)).all()
    return any(r.truth_at is not None and r.truth_at >= arrived for r in rows)


def _series_uid(session: Session, case: Case) -> str:
    series = session.get(Series, case.series_id)
    return series.series_uid if series is not None else ""


def _take(
    session: Session,
    path: Path,
    header: pydicom.Dataset,
    case: Case,
    case_id: int,
    sources: tuple[Path, ...],
    seg_series: str,
    out_dir: Path,
    model_folders: Mapping[str, Path],
    *,
    own: bool,
) -> TakenSeg:
    sop = str(header.get("SOPInstanceUID", ""))
    if own or (sop and sop == case.seg_sop_uid):
        logger.info("SEG %s is fairnode's own output of case %d: ignored", sop, case_id)
        return TakenSeg(seg_series, case_id, case.model, "own-output", f"fairnode's own SEG of case {case_id}")
    if _truth_newer_than(session, case_id, path):
        return TakenSeg(seg_series, case_id, case.model, "applied", f"correction of case {case_id} already applied")
    try:
        series_uid = _series_uid(session, case)
        seg = out_dir.parent / f"run-{case.run}" / series_uid / SEG_NAME
        if not sources or not seg.is_file():
            raise CorrectionError(
                f"case {case_id}'s images ({len(sources)} in this study) or its SEG ({seg}) are not on disk"
            )
        if case.model not in model_folders:
            raise CorrectionError(f"model {case.model!r} of case {case_id} is not installed on this node")
        labels = load_card(model_folders[case.model]).labels
        files = CaseFiles(sources=sources, seg=seg, uncertainty=None, probability_seg=None, sr=None)
        truths = evaluate_correction(pydicom.dcmread(path), files, labels)
        record_truths(session, case_id=case_id, truths=truths, source="c-store")
    except (CorrectionError, VolumeError, ModelCardError, crud.NotFoundError, OSError) as exc:
        logger.error("correction %s of case %d not used: %s", sop, case_id, exc)
        return TakenSeg(seg_series, case_id, case.model, "failed", f"correction of case {case_id} not used: {exc}")
    try:
        crud.set_review_state(session, case_id=case_id, state=ReviewState.REVIEWED)
    except crud.ReviewTransitionError as exc:
        logger.warning("case %d keeps its review state after the correction: %s", case_id, exc)
    summary = ", ".join(f"{t.structure} Dice {t.dice:.3f}" for t in truths)
    logger.info("correction %s of case %d by C-STORE: %s", sop, case_id, summary)
    return TakenSeg(seg_series, case_id, case.model, "corrected", f"correction of case {case_id}: {summary}")
