"""Size of each segment of a label map: volume (3D) or area (2D), as reported in the SR."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dicom_node.writers.common import check_label_values
from inference.model_card import ModelCard


@dataclass(frozen=True)
class SegmentMeasurement:
    """Size of one segment: volume for a 3D label map, area for a 2D image.

    Attributes
    ----------
    segment_number
        segment number in the SEG (= the label value in the card).
    label_name
        the card's label name.
    volume_ml
        volume in millilitres; ``None`` for 2D images (then ``area_mm2`` is set).
    area_mm2
        area in square millimetres (2D images only).
    """

    segment_number: int
    label_name: str
    volume_ml: float | None
    area_mm2: float | None = None


def segment_measurements(labels: np.ndarray, spacing: tuple[float, ...], card: ModelCard) -> list[SegmentMeasurement]:
    """Volume (3D) or area (2D) of every label of the card, absent labels included (0).

    Parameters
    ----------
    labels
        integer label map, values ``0`` (background) to ``len(card.labels)``: ``(slices, rows,
        columns)`` for a volume, ``(rows, columns)`` or ``(1, rows, columns)`` for a 2D image.
    spacing
        voxel size in mm in the same axis order: ``(slice, row, column)`` for a volume (the slice
        spacing is the distance between slice centres, not the slice thickness), ``(row, column)``
        for a 2D image (for a radiograph without PixelSpacing: ImagerPixelSpacing, i.e. at the detector).

    Returns
    -------
    list[SegmentMeasurement]
        one per card label, in label order; ``volume_ml`` set for 3D, ``area_mm2`` for 2D.

    Raises
    ------
    ValueError
        If the spacing has neither 2 nor 3 values, a value is not positive and finite, the label map's
        dimensions do not fit the spacing, or it holds values outside ``0..len(card.labels)``.
    """
    sizes = tuple(float(s) for s in spacing)
    if len(sizes) not in (2, 3):
        raise ValueError(f"spacing must have 3 values (slice, row, column) or 2 (row, column), got {spacing}")
    if not all(np.isfinite(s) and s > 0 for s in sizes):
        raise ValueError(f"spacing values must be positive and finite (mm), got {spacing}")
    if len(sizes) == 2 and labels.ndim == 3 and labels.shape[0] == 1:
        labels = labels[0]
    if labels.ndim != len(sizes):
        raise ValueError(
            f"labels of shape {labels.shape} do not fit a spacing of {len(sizes)} values {spacing}: "
            "expected (slices, rows, columns) with 3 values or (rows, columns) with 2"
        )
    check_label_values(labels, card)
    cell = float(np.prod(sizes))
    result = []
    for label in card.labels:
        # one comparison per label: a tenth of the time of np.bincount, which first copies the map as intp
        n = int(np.count_nonzero(labels == label.value))
        if len(sizes) == 3:
            result.append(SegmentMeasurement(label.value, label.name, volume_ml=n * cell / 1000.0))
        else:
            result.append(SegmentMeasurement(label.value, label.name, volume_ml=None, area_mm2=n * cell))
    return result
