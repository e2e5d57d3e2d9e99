"""What a cohort generator returns: an image with its ground truth and geometry, not yet DICOM.

Array convention, used throughout fairnode: volumes are ``(slices, rows, columns)``; a 2D radiograph
is ``(rows, columns)``. Patient coordinates are DICOM LPS in millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

Modality = Literal["CT", "MR", "DX"]


@dataclass(frozen=True)
class Label:
    """One ground-truth structure.

    ``code`` is a SNOMED CT (scheme ``SCT``) anatomic code; ``category_code`` its segmentation property
    category from CID 7150 (``91723000`` Anatomical Structure, or ``85756007`` Tissue).
    ``color`` is an sRGB triple 0-255 for viewers.
    """

    value: int
    name: str
    code: str
    meaning: str
    color: tuple[int, int, int]
    category_code: str = "91723000"
    category_meaning: str = "Anatomical Structure"

    @classmethod
    def from_code(
        cls, value: int, name: str, code: Code, color: tuple[int, int, int], category: Code | None = None
    ) -> Label:
        """A label from pydicom's coded concepts (``codes.SCT.Liver``); category Anatomical Structure by default."""
        cat = category or codes.cid7150.AnatomicalStructure
        return cls(value, name, str(code.value), str(code.meaning), color, str(cat.value), str(cat.meaning))


@dataclass
class SyntheticImage:
    """A generated image, its label map and its geometry.

    Attributes
    ----------
    modality
        ``CT`` (pixels in Hounsfield units), ``MR`` (arbitrary units, >= 0) or ``DX`` (arbitrary units,
        higher = more attenuation = brighter, as displayed with MONOCHROME2).
    pixels
        float32; ``(slices, rows, columns)`` for CT/MR, ``(rows, columns)`` for DX.
    labels
        uint8 of the same shape; 0 is background, ``v`` is the :class:`Label` with ``value == v``.
    spacing
        millimetres: ``(slice spacing, row spacing, column spacing)`` for volumes, ``(row, column)`` for DX.
        Row spacing is the distance between rows (the y step), column spacing between columns.
    origin
        LPS position (mm) of the centre of the first voxel of the first slice (ImagePositionPatient).
    orientation
        ImageOrientationPatient: direction cosines of the row (increasing column index) and of the column
        (increasing row index).
    slice_direction
        LPS unit vector of increasing slice index (volumes only).
    label_info
        the labels that may occur in ``labels``, in value order.
    acquisition
        modality-specific header values the DICOM writer uses (e.g. ``kvp``, ``body_part``,
        ``repetition_time``, ``echo_time``, ``laterality``, ``view_position``, ``slice_thickness``).
    """

    modality: Modality
    pixels: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, ...]
    label_info: tuple[Label, ...]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    orientation: tuple[float, float, float, float, float, float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    slice_direction: tuple[float, float, float] = (0.0, 0.0, -1.0)
    acquisition: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pixels.shape != self.labels.shape:
            raise ValueError(f"pixels {self.pixels.shape} and labels {self.labels.shape} must have the same shape")
        want_dims = 2 if self.modality == "DX" else 3
        if self.pixels.ndim != want_dims:
            raise ValueError(f"{self.modality} pixels must have {want_dims} dimensions, got {self.pixels.ndim}")
        if len(self.spacing) != want_dims:
            raise ValueError(f"spacing must have {want_dims} values for {self.modality}, got {self.spacing}")
        known = {lab.value for lab in self.label_info}
        present = {int(v) for v in np.unique(self.labels)} - {0}
        if not present <= known:
            raise ValueError(f"label values {sorted(present - known)} have no Label in label_info")
