"""Liver slices of synthetic CT subjects (``cohorts.ct_abdomen``) for training and evaluation.

The image-level label of a slice is "a lesion of at least :data:`LABEL_MM2` mm² in this slice" (as a report
would say), derived here once from the generator's lesion masks on the source grid; a slice whose lesion
cross-section is smaller is :data:`~inference.weak.slices.UNLABELLED`: left out of training (a lesion grazed
by the slice is label noise, a few pixels the classifier cannot see) and kept for evaluation. Training then
receives the labels only (:class:`~inference.weak.slices.SliceSet`), the masks go to
:class:`~inference.weak.slices.LesionTruth` for evaluation.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cohorts import ct_abdomen
from cohorts.subjects import Subject
from inference.weak.slices import (
    LESION,
    NORMAL,
    UNLABELLED,
    CropBox,
    LesionTruth,
    SliceSet,
    crop_box,
    cut,
    liver_region,
    network_input,
)

logger = logging.getLogger(__name__)

MATRIX = 256
SLICE_MM = 5.0
#: smallest lesion cross-section (mm²) in a slice that makes it a lesion slice for training
LABEL_MM2 = 300.0


def slice_labels(area_mm2: np.ndarray, label_mm2: float = LABEL_MM2) -> np.ndarray:
    """Training labels from each slice's lesion cross-section (mm²): :data:`LESION` from ``label_mm2``,
    :data:`NORMAL` for none, :data:`UNLABELLED` in between."""
    area = np.asarray(area_mm2, np.float64)
    return np.where(area >= label_mm2, LESION, np.where(area > 0, UNLABELLED, NORMAL)).astype(np.int64)


@dataclass(frozen=True)
class SubjectInfo:
    """Who a subject is (no identifiers) and what lesions it has."""

    index: int
    sex: str
    age_band: str
    bmi_band: str
    group: str
    lesion_mm: float
    lesions: str
    voxel_ml: float
    box: dict[str, object]


def subject_slices(
    subject: Subject, liver_from: str = "truth", segment: object | None = None
) -> tuple[SliceSet, LesionTruth, SubjectInfo] | None:
    """Crops of one subject's liver slices, their labels and the (guarded) lesion masks.

    ``liver_from`` ``"truth"`` takes the liver label (organ ground truth, lesions included), ``"model"``
    the liver that ``segment`` (a :class:`inference.segmenter.Segmenter`) finds. ``None`` when there is no liver.
    """
    image, lesions = ct_abdomen.generate_with_lesions(subject, matrix=MATRIX, slice_thickness=SLICE_MM)
    if liver_from == "model":
        if segment is None:
            raise ValueError("liver_from='model' needs a segmenter")
        liver = segment.segment(image.pixels, image.spacing) == 1  # type: ignore[attr-defined]
    elif liver_from == "truth":
        liver = image.labels == 1
    else:
        raise ValueError(f"liver_from must be 'truth' or 'model', got {liver_from!r}")
    region = liver_region(liver, float(image.spacing[1]))
    box = crop_box(region, image.spacing)
    if box is None:
        return None
    regions = cut(region.astype(np.float32), box, order=0) > 0.5
    truth = cut(lesions.astype(np.float32), box, order=1) >= 0.5
    area_mm2 = lesions[list(box.slices)].sum(axis=(1, 2)) * float(image.spacing[1] * image.spacing[2])
    n = len(box.slices)
    data = SliceSet(
        images=network_input(cut(image.pixels, box, fill=-1000.0), regions),
        labels=slice_labels(area_mm2),
        regions=regions,
        subject=np.full(n, subject.index, np.int64),
        slice_index=np.asarray(box.slices, np.int64),
    )
    info = SubjectInfo(
        index=subject.index,
        sex=subject.sex,
        age_band=subject.age_band,
        bmi_band=subject.bmi_band,
        group=subject.group,
        lesion_mm=float(subject.shift.lesion_mm),
        lesions=str(image.acquisition.get("lesions", "")),
        voxel_ml=box.voxel_ml,
        box=asdict(box),
    )
    return data, LesionTruth(truth), info


def save(folder: Path, name: str, data: SliceSet, truth: LesionTruth, info: SubjectInfo) -> None:
    """Cache one subject: slices and labels, truth (its own file) and info."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        folder / f"{name}.npz",
        images=data.images.astype(np.float16),
        labels=data.labels,
        regions=data.regions,
        subject=data.subject,
        slice_index=data.slice_index,
    )
    np.savez_compressed(folder / f"{name}.truth.npz", masks=truth.masks())
    (folder / f"{name}.json").write_text(json.dumps(asdict(info)), encoding="utf-8")


def load(folder: Path, name: str) -> tuple[SliceSet, LesionTruth, SubjectInfo] | None:
    """A cached subject, or ``None`` when it is not cached."""
    if not (folder / f"{name}.json").exists():
        return None
    with np.load(folder / f"{name}.npz") as z:
        data = SliceSet(z["images"].astype(np.float32), z["labels"], z["regions"], z["subject"], z["slice_index"])
    with np.load(folder / f"{name}.truth.npz") as z:
        truth = LesionTruth(z["masks"])
    raw = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
    return data, truth, SubjectInfo(**raw)


def box_of(info: SubjectInfo) -> CropBox:
    raw = dict(info.box)
    raw["slices"] = tuple(raw["slices"])  # type: ignore[arg-type]
    return CropBox(**raw)  # type: ignore[arg-type]
