"""Cases for the case-viewer tests, laid out as the node leaves them: source images in the spool's
``incoming/``, fairnode's outputs in ``outbox/<study>/run-<n>/<series>/``, rows in a registry.

No model runs: fairnode's SEG is written from the phantom's ground-truth labels (optionally perturbed), the
entropy map from a noisy softmax of them, with the bundled model's card, so tests know the true answer.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from sqlmodel import Session

from cohorts import ct_abdomen, xr_knee
from cohorts.dicom_writer import WrittenStudy, write_study
from cohorts.subjects import draw_subject
from dicom_node.writers import OutputSettings, build_seg, build_uncertainty_map
from fairness_registry import crud
from inference.model_card import ModelCard, bundled_models, load_card
from quality.types import CaseQuality, Route, SamplingMethod
from tests.fairness_registry.conftest import TEST_SECRET
from tests.fairness_registry.quality_samples import structure

SETTINGS = OutputSettings()


@dataclass(frozen=True)
class SampleCase:
    """One case on disk and in the registry."""

    case_id: int
    study_uid: str
    series_uid: str
    run: int
    labels: np.ndarray  # what fairnode's SEG holds, (slices, rows, columns) or (rows, columns)
    truth: np.ndarray  # the phantom's ground truth, same shape
    truth_seg: Path  # the cohort's ground-truth SEG (a "corrected" SEG that references the series)
    seg: Path  # fairnode's SEG
    card: ModelCard
    spacing: tuple[float, ...]


def card_of(name: str) -> ModelCard:
    return load_card(bundled_models()[name])


def entropy_of(labels: np.ndarray, classes: int, seed: int) -> np.ndarray:
    """Entropy (bits) as a model's would look: high on the label boundaries, near zero elsewhere (float32)."""
    rng = np.random.default_rng(seed)
    edge = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        edge |= np.roll(labels, 1, axis=axis) != labels
    noise = rng.random(labels.shape, dtype=np.float32)
    entropy = np.where(edge, 0.8 + 0.8 * noise, 0.02 * noise).astype(np.float32)
    return np.clip(entropy, 0.0, np.log2(classes)).astype(np.float32)


def erode_label(labels: np.ndarray, label: int, voxels: int) -> np.ndarray:
    """``labels`` with ``label`` shrunk by ``voxels`` in-plane (a perturbed segmentation)."""
    out = labels.copy()
    mask = labels == label
    for _ in range(voxels):
        inner = mask.copy()
        for axis in (-1, -2):
            inner &= np.roll(mask, 1, axis=axis) & np.roll(mask, -1, axis=axis)
        mask = inner
    out[(labels == label) & ~mask] = 0
    return out


def _quality(card: ModelCard, doubt: float) -> CaseQuality:
    """A REVIEW case whose first structure's predicted Dice is ``doubt`` (lower bound ``doubt - 0.1``)."""
    first, *others = card.labels
    reason = f"{first.name}: predicted Dice {doubt:.2f} below 0.75"
    structures = [
        structure(
            first.name, first.value, predicted=(doubt, doubt - 0.1, doubt + 0.08), route=Route.REVIEW, reasons=(reason,)
        ),
        *(structure(lab.name, lab.value) for lab in others),
    ]
    return CaseQuality(
        route=Route.REVIEW, reasons=(reason,), structures=tuple(structures), method=SamplingMethod.MC_DROPOUT, samples=6
    )


def write_case(
    spool: Path,
    session: Session,
    written: WrittenStudy,
    truth: np.ndarray,
    labels: np.ndarray,
    card: ModelCard,
    spacing: tuple[float, ...],
    *,
    doubt: float = 0.6,
    run: int = 1,
    review_state: str = "held",
) -> SampleCase:
    """Copy the images into ``spool/incoming``, write SEG and entropy map into ``spool/outbox``, record the case."""
    incoming = spool / "incoming" / written.study_uid / written.series_uid
    incoming.mkdir(parents=True, exist_ok=True)
    sources = []
    for path in written.image_paths:
        ds = pydicom.dcmread(path)
        shutil.copyfile(path, incoming / f"{ds.SOPInstanceUID}.dcm")
        sources.append(ds)
    out = spool / "outbox" / written.study_uid / f"run-{run}" / written.series_uid
    out.mkdir(parents=True, exist_ok=True)
    frames = labels if labels.ndim == 3 else labels[np.newaxis]
    seg = build_seg(sources, frames, card, SETTINGS, run=run)
    seg.save_as(out / "seg.dcm", enforce_file_format=True)
    entropy = entropy_of(labels, len(card.labels) + 1, seed=run)
    build_uncertainty_map(sources, entropy, card, SETTINGS, run=run).save_as(
        out / "uncertainty.dcm", enforce_file_format=True
    )
    study = crud.record_study(session, study_uid=written.study_uid, header=sources[0], secret=TEST_SECRET)
    assert study.id is not None
    series = crud.record_series(
        session,
        study_id=study.id,
        series_uid=written.series_uid,
        modality=str(sources[0].Modality),
        n_instances=len(sources),
        selected_model=card.name,
        selection_reason="test",
    )
    assert series.id is not None
    case = crud.record_case(session, series_id=series.id, model=card.name, model_version=card.version, run=run)
    assert case.id is not None
    crud.update_case(session, case_id=case.id, status="running")
    crud.update_case(session, case_id=case.id, status="done", seg_sop_uid=str(seg.SOPInstanceUID))
    crud.record_quality(session, case_id=case.id, quality=_quality(card, doubt), review_state=review_state)
    return SampleCase(
        case_id=case.id,
        study_uid=written.study_uid,
        series_uid=written.series_uid,
        run=run,
        labels=labels,
        truth=truth,
        truth_seg=written.seg_path,
        seg=out / "seg.dcm",
        card=card,
        spacing=spacing,
    )


def ct_case(
    spool: Path,
    session: Session,
    folder: Path,
    *,
    index: int = 0,
    matrix: int = 64,
    thickness: float = 5.0,
    perturb: int = 0,
    doubt: float = 0.6,
) -> SampleCase:
    """An abdominal CT phantom case; ``perturb`` > 0 shrinks fairnode's liver by that many voxels."""
    subject = draw_subject("ct-abdomen", 0, 100 + index)
    image = ct_abdomen.generate(subject, matrix=matrix, slice_thickness=thickness)
    written = write_study(image, subject, folder)
    truth = image.labels.astype(np.uint8)
    labels = erode_label(truth, 1, perturb) if perturb else truth
    spacing = tuple(float(s) for s in image.spacing)
    return write_case(spool, session, written, truth, labels, card_of("ct-abdomen"), spacing, doubt=doubt)


def dx_case(spool: Path, session: Session, folder: Path, *, doubt: float = 0.7) -> SampleCase:
    """A knee radiograph phantom case."""
    subject = draw_subject("xr-knee", 0, 200)
    image = xr_knee.generate(subject)
    written = write_study(image, subject, folder)
    truth = image.labels.astype(np.uint8)
    spacing = tuple(float(s) for s in image.spacing)
    return write_case(spool, session, written, truth, truth, card_of("xr-knee"), spacing, doubt=doubt)
