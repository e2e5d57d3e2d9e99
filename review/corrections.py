"""A radiologist's corrected DICOM-SEG -> true Dice, NSD and HD95 per structure against the SEG fairnode wrote.

A correction arrives as an upload on the case page or by C-STORE (:mod:`fairnode.corrections`); both end
here. The corrected SEG is matched to its case by the series it references (ReferencedSeriesSequence):
the latest finished case of that series (:func:`case_for_series`). Its segments are matched to the model
card's labels by SegmentedPropertyTypeCodeSequence (SNOMED CT code), else by SegmentLabel (the card's
label name, case-insensitive). Each structure is then scored with MONAI's metrics, fairnode's SEG as the
prediction and the correction as the reference:

* Dice: :func:`monai.metrics.compute_dice` (1.0 when both are empty: nothing to find, nothing found);
* NSD (normalised surface Dice): :func:`monai.metrics.compute_surface_dice` at a tolerance of
  :data:`DEFAULT_NSD_TOLERANCE_MM` mm (the model card carries no tolerance of its own);
* HD95: :func:`monai.metrics.compute_hausdorff_distance` with ``percentile=95``, in mm

(all three through :func:`inference.metrics.monai_scores`, whose conventions for empty masks apply).

Distances use the voxel spacing of the source series (slice, row, column; row, column for a radiograph).
Each structure is cropped to the bounding box of both masks plus a margin before scoring, which changes no
distance and keeps a 512×512×200 CT within memory. NSD and HD95 are ``None`` where undefined (a structure
empty in one of the two SEGs).

Errors (:class:`CorrectionError`, each naming what was found and what is accepted): a file that is not a
SEG, or a FRACTIONAL one; a SEG that references no series of a finished case; a SEG whose frames do not lie
on the case's images (different rows/columns or instances of another series); a segment whose label
matches no structure of the model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from sqlmodel import Session, col, select

from dicom_node.volume import load_volume, read_series
from fairness_registry import crud
from fairness_registry.models import Case, CaseStatus, Series
from inference.metrics import monai_scores
from inference.model_card import LabelSpec
from review.case_files import CaseFiles

__all__ = [
    "DEFAULT_NSD_TOLERANCE_MM",
    "SEG_SOP_CLASS_UID",
    "CorrectionError",
    "StructureTruth",
    "case_for_series",
    "evaluate_correction",
    "is_automatic_output",
    "read_structures",
    "record_truths",
    "referenced_series",
    "score_structures",
]

logger = logging.getLogger(__name__)

#: Tolerance (mm) of the normalised surface Dice when the model card states none.
DEFAULT_NSD_TOLERANCE_MM = 2.0
#: Segmentation Storage.
SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"
#: Voxels added on every side of a structure's bounding box before scoring.
CROP_MARGIN = 2
#: Accepted values of a truth's ``source``.
SOURCES = ("upload", "c-store")


class CorrectionError(ValueError):
    """A corrected SEG that cannot be scored; the message says what was wrong and what is accepted."""


@dataclass(frozen=True)
class StructureTruth:
    """One structure scored against a correction. Dice and NSD in [0, 1], HD95 in mm; ``None`` if undefined."""

    structure: str
    label: int
    dice: float
    nsd: float | None
    hd95_mm: float | None


def read_seg(data: bytes | Path | Dataset) -> Dataset:
    """The SEG in ``data`` (file contents, a path or a dataset); :class:`CorrectionError` if it is not one."""
    if isinstance(data, Dataset):
        ds = data
    else:
        try:
            ds = pydicom.dcmread(data if isinstance(data, Path) else pydicom.filebase.DicomBytesIO(data))
        except (pydicom.errors.InvalidDicomError, EOFError, OSError, ValueError) as exc:
            raise CorrectionError(f"the file is not readable as DICOM ({exc}); send a DICOM-SEG file") from exc
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class != SEG_SOP_CLASS_UID:
        raise CorrectionError(
            f"the file is not a DICOM-SEG: SOPClassUID {sop_class or 'missing'} (Modality "
            f"{ds.get('Modality', 'missing')}); accepted: Segmentation Storage {SEG_SOP_CLASS_UID}"
        )
    if str(ds.get("SegmentationType", "")).upper() == "FRACTIONAL":
        raise CorrectionError(
            "the SEG is FRACTIONAL (probabilities, like fairnode's own probability SEG), not a correction; "
            "accepted: a BINARY or LABELMAP SEG"
        )
    return ds


def is_automatic_output(seg: Dataset, manufacturer: str) -> bool:
    """Whether a SEG looks like an algorithm's output of ``manufacturer`` rather than a correction: made by that
    manufacturer and every segment's SegmentAlgorithmType AUTOMATIC (a corrected segment is MANUAL or
    SEMIAUTOMATIC)."""
    segments = seg.get("SegmentSequence", [])
    automatic = bool(segments) and all(str(s.get("SegmentAlgorithmType", "")) == "AUTOMATIC" for s in segments)
    return automatic and str(seg.get("Manufacturer", "")) == manufacturer


def referenced_series(seg: Dataset) -> list[str]:
    """SeriesInstanceUIDs the SEG names in its ReferencedSeriesSequence (in order, without repeats)."""
    uids: list[str] = []
    for item in seg.get("ReferencedSeriesSequence", []):
        uid = str(item.get("SeriesInstanceUID", ""))
        if uid and uid not in uids:
            uids.append(uid)
    return uids


def case_for_series(session: Session, series_uids: Sequence[str]) -> Case | None:
    """The latest finished case (highest run) of the first of ``series_uids`` the registry has one for."""
    for uid in series_uids:
        statement = (
            select(Case)
            .join(Series, col(Series.id) == col(Case.series_id))
            .where(Series.series_uid == uid, Case.status == CaseStatus.DONE)
            .order_by(col(Case.run).desc(), col(Case.id).desc())
        )
        case = session.exec(statement).first()
        if case is not None:
            return case
    return None


def _match_segments(seg: hd.seg.Segmentation, labels: Sequence[LabelSpec]) -> dict[int, LabelSpec]:
    """Segment number -> card label, by property type code, else by segment label."""
    by_code = {lab.code: lab for lab in labels}
    by_name = {lab.name.lower(): lab for lab in labels}
    matched: dict[int, LabelSpec] = {}
    unknown: list[str] = []
    for item in seg.SegmentSequence:
        number = int(item.SegmentNumber)
        name = str(item.get("SegmentLabel", ""))
        codes = item.get("SegmentedPropertyTypeCodeSequence", [])
        code = str(codes[0].CodeValue) if codes else ""
        spec = by_code.get(code) or by_name.get(name.lower())
        if spec is None:
            unknown.append(f"{number} {name!r} (code {code or 'none'})")
        else:
            matched[number] = spec
    if unknown:
        accepted = ", ".join(f"{lab.name} (SCT {lab.code})" for lab in labels)
        raise CorrectionError(f"segments {'; '.join(unknown)} match no structure of the model; accepted: {accepted}")
    return matched


def _referenced_instances(seg: Dataset) -> set[str]:
    """SOPInstanceUIDs of the images the SEG's frames were drawn on (DerivationImageSequence of each frame)."""
    uids: set[str] = set()
    for frame in seg.get("PerFrameFunctionalGroupsSequence", []):
        for derivation in frame.get("DerivationImageSequence", []):
            for source in derivation.get("SourceImageSequence", []):
                uids.add(str(source.ReferencedSOPInstanceUID))
    return uids


def read_structures(
    seg_ds: Dataset, source_uids: Sequence[str], shape: tuple[int, ...], labels: Sequence[LabelSpec]
) -> np.ndarray:
    """A SEG as a label map on the case's grid, values the card's label values.

    Parameters
    ----------
    seg_ds
        the SEG dataset.
    source_uids
        the case's source SOPInstanceUIDs in slice order (one for a radiograph).
    shape
        ``(slices, rows, columns)`` of the case's image.
    labels
        the model card's labels.

    Raises
    ------
    CorrectionError
        When the frames do not fit the images or a segment is unknown.
    """
    rows, columns = int(seg_ds.get("Rows", 0)), int(seg_ds.get("Columns", 0))
    if (rows, columns) != tuple(shape[1:]):
        raise CorrectionError(
            f"the SEG's frames are {rows}x{columns} (rows x columns) but the case's images are "
            f"{shape[1]}x{shape[2]}; accepted: a SEG drawn on the case's own images"
        )
    foreign = sorted(_referenced_instances(seg_ds) - set(source_uids))
    if foreign:
        raise CorrectionError(
            f"the SEG's frames do not lie on the case's {len(source_uids)} images: {len(foreign)} referenced "
            f"image(s) are not of the case's series (e.g. {foreign[0]}); accepted: a SEG whose frames reference "
            "the case's own images"
        )
    seg = hd.seg.Segmentation.from_dataset(seg_ds, copy=False)
    matched = _match_segments(seg, labels)
    if not matched:
        raise CorrectionError("the SEG has no segments; accepted: one segment per corrected structure")
    numbers = sorted(matched)
    try:
        masks = seg.get_pixels_by_source_instance(
            list(source_uids),
            segment_numbers=numbers,
            combine_segments=False,
            assert_missing_frames_are_empty=True,
        )
    except (ValueError, KeyError, IndexError, AttributeError) as exc:
        raise CorrectionError(
            f"the SEG's frames do not lie on the case's {len(source_uids)} images ({exc}); accepted: a SEG "
            "whose frames reference the case's own images"
        ) from exc
    masks = np.asarray(masks).reshape(*shape, len(numbers))
    out = np.zeros(shape, dtype=np.uint8)
    for i, number in enumerate(numbers):
        out[masks[..., i] > 0] = matched[number].value
    return out


def _finite(value: float) -> float | None:
    return round(value, 4) if math.isfinite(value) else None


def _crop(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union with :data:`CROP_MARGIN` voxels on each side (padded
    first, so that a structure touching the image border keeps background around it)."""
    a, b = np.pad(a, CROP_MARGIN), np.pad(b, CROP_MARGIN)
    union = a | b
    box = []
    for axis in range(union.ndim):
        where = np.flatnonzero(union.any(axis=tuple(i for i in range(union.ndim) if i != axis)))
        box.append(slice(int(where[0]) - CROP_MARGIN, int(where[-1]) + 1 + CROP_MARGIN))
    return a[tuple(box)], b[tuple(box)]


def score_structures(
    predicted: np.ndarray,
    reference: np.ndarray,
    labels: Sequence[LabelSpec],
    spacing: Sequence[float],
    *,
    tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
) -> list[StructureTruth]:
    """Dice, NSD and HD95 of each card label between two label maps of one grid.

    Parameters
    ----------
    predicted
        fairnode's label map, ``(slices, rows, columns)`` or ``(rows, columns)``.
    reference
        the correction, same shape.
    labels
        the structures to score (the model card's labels).
    spacing
        mm per axis of the arrays.
    tolerance_mm
        NSD tolerance, mm (> 0).
    """
    if predicted.shape != reference.shape:
        raise CorrectionError(f"label maps of shapes {predicted.shape} and {reference.shape} cannot be compared")
    if len(spacing) != predicted.ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {len(spacing)} values for {predicted.ndim} axes")
    if not tolerance_mm > 0:
        raise ValueError(f"tolerance_mm must be above 0, got {tolerance_mm}")
    results: list[StructureTruth] = []
    for lab in labels:
        p, r = predicted == lab.value, reference == lab.value
        if not p.any() and not r.any():
            results.append(StructureTruth(lab.name, lab.value, 1.0, None, None))
            continue
        p, r = _crop(p, r)
        scores = monai_scores(p, r, spacing, tolerance_mm)
        results.append(
            StructureTruth(lab.name, lab.value, round(scores.dice, 4), _finite(scores.nsd), _finite(scores.hd95_mm))
        )
    return results


def evaluate_correction(
    corrected: Dataset,
    files: CaseFiles,
    labels: Sequence[LabelSpec],
    *,
    tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
) -> list[StructureTruth]:
    """Score fairnode's SEG of a case against a corrected SEG of the same images.

    Parameters
    ----------
    corrected
        the corrected SEG (:func:`read_seg`).
    files
        the case's files (:func:`review.case_files.locate_case_files`).
    labels
        the model card's labels.

    Returns
    -------
    list of StructureTruth
        one per structure the correction contains (a structure it leaves out is not judged).
    """
    volume = load_volume(read_series(list(files.sources)))
    series_uid = str(volume.datasets[0].SeriesInstanceUID)
    named = referenced_series(corrected)
    if series_uid not in named:
        raise CorrectionError(
            f"the SEG references series {', '.join(named) or 'none'}, not this case's series {series_uid}"
        )
    uids = [str(ds.SOPInstanceUID) for ds in volume.datasets]
    shape = volume.pixels.shape if volume.pixels.ndim == 3 else (1, *volume.pixels.shape)
    reference = read_structures(corrected, uids, shape, labels)
    ours = read_structures(read_seg(files.seg), uids, shape, labels)
    judged = sorted(
        _match_segments(hd.seg.Segmentation.from_dataset(corrected, copy=False), labels).values(),
        key=lambda lab: lab.value,
    )
    spacing = volume.spacing if volume.pixels.ndim == 3 else (1.0, *volume.spacing)
    if volume.pixels.ndim == 2:  # a radiograph: score on its one plane
        scores = score_structures(ours[0], reference[0], judged, spacing[1:], tolerance_mm=tolerance_mm)
    else:
        scores = score_structures(ours, reference, judged, spacing, tolerance_mm=tolerance_mm)
    logger.info(
        "correction %s of series %s: %s",
        corrected.get("SOPInstanceUID", "?"),
        series_uid,
        ", ".join(f"{s.structure} Dice {s.dice:.3f}" for s in scores),
    )
    return scores


def record_truths(session: Session, *, case_id: int, truths: Sequence[StructureTruth], source: str) -> None:
    """Store each structure's true scores in the registry (``crud.record_truth``).

    Raises
    ------
    ValueError
        For a ``source`` other than :data:`SOURCES`.
    fairness_registry.crud.NotFoundError
        For an unknown case or structure.
    """
    if source not in SOURCES:
        raise ValueError(f"source {source!r} is not one of {', '.join(SOURCES)}")
    for t in truths:
        crud.record_truth(
            session, case_id=case_id, structure=t.structure, dice=t.dice, nsd=t.nsd, hd95_mm=t.hd95_mm, source=source
        )
