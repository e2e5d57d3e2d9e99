"""The volume a series becomes, its error, the tolerances of the checks and the per-slice geometry."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.uid import (
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    LegacyConvertedEnhancedMRImageStorage,
)

#: Multi-frame SOP classes whose frames are read through the functional groups.
ENHANCED_SOP_CLASSES: frozenset[str] = frozenset(
    {
        EnhancedCTImageStorage,
        LegacyConvertedEnhancedCTImageStorage,
        EnhancedMRImageStorage,
        LegacyConvertedEnhancedMRImageStorage,
    }
)
#: Modalities loaded as one 2D projection image.
PROJECTION_MODALITIES: frozenset[str] = frozenset({"DX", "CR"})

#: Largest difference of any ImageOrientationPatient component between slices.
ORIENTATION_TOLERANCE = 1e-4
#: Largest difference of a PixelSpacing value (mm) between slices.
PIXEL_SPACING_TOLERANCE_MM = 1e-3
#: Slices closer than this along the normal (mm) occupy the same position.
DUPLICATE_TOLERANCE_MM = 0.01
#: Gaps may differ from the median gap by this fraction of it ...
GAP_RELATIVE_TOLERANCE = 0.01
#: ... or by this many millimetres, whichever is larger.
GAP_ABSOLUTE_TOLERANCE_MM = 0.01
#: In-plane offset between positions (mm) always accepted (rounding of ImagePositionPatient).
IN_PLANE_TOLERANCE_MM = 0.01
#: Tilt angle accepted on top of :data:`IN_PLANE_TOLERANCE_MM` (degrees).
TILT_TOLERANCE_DEGREES = 0.1
#: A GantryDetectorTilt whose magnitude is at most this (degrees) counts as 0.
GANTRY_TILT_TAG_TOLERANCE_DEGREES = 1e-3

UNIT_TOLERANCE = 1e-3
IDENTITY_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
PATIENT_DIRECTIONS: dict[str, tuple[float, float, float]] = {
    "L": (1.0, 0.0, 0.0),
    "R": (-1.0, 0.0, 0.0),
    "P": (0.0, 1.0, 0.0),
    "A": (0.0, -1.0, 0.0),
    "H": (0.0, 0.0, 1.0),
    "F": (0.0, 0.0, -1.0),
}

FloatArray = npt.NDArray[np.float64]


class VolumeError(ValueError):
    """The series cannot be made into a volume; the message names the reason and the values found."""


@dataclass(frozen=True, eq=False)
class Volume:
    """A decoded, sorted and checked image series.

    Attributes
    ----------
    pixels
        float32 after the Modality LUT (Hounsfield units for CT): ``(slices, rows, columns)`` for a
        cross-sectional series, ``(rows, columns)`` for a DX/CR radiograph.
    spacing
        millimetres: ``(slice spacing, row spacing, column spacing)`` for a volume, ``(row spacing,
        column spacing)`` for a radiograph. Row spacing (PixelSpacing[0]) is the distance between rows.
        The slice spacing of a one-slice volume is its SliceThickness.
    origin
        LPS position (mm) of the centre of the first voxel of slice 0 (its ImagePositionPatient);
        ``(0, 0, 0)`` for a radiograph.
    orientation
        ImageOrientationPatient: direction cosines of the rows (increasing column index) and of the
        columns (increasing row index). A radiograph without one gets it from PatientOrientation when
        that names one axis per direction (``L\\F`` -> ``(1, 0, 0, 0, 0, -1)``), else ``(1, 0, 0, 0, 1, 0)``.
    slice_direction
        LPS unit vector of increasing slice index: minus the normal ``row x column cosines``.
    datasets
        source datasets in slice order (``datasets[k]`` holds slice ``k``); for a multi-frame instance
        the one dataset.
    frame_numbers
        for a multi-frame instance, the 1-based frame number of each slice in slice order; else ``None``.
    modality
        Modality of the series (``CT``, ``MR``, ``DX``, ...).
    dropped
        SOPInstanceUIDs left out as duplicates of a position (``"<uid> frame <n>"`` for frames).
    """

    pixels: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, float, float]
    orientation: tuple[float, ...]
    slice_direction: tuple[float, float, float]
    datasets: tuple[Dataset, ...]
    frame_numbers: tuple[int, ...] | None
    modality: str
    dropped: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Plane:
    """Geometry and Modality LUT of one slice: a single-frame dataset or one frame of a multi-frame one."""

    index: int  # index into the input datasets (single-frame) or 0-based frame index (multi-frame)
    label: str  # SOPInstanceUID, or "<uid> frame <n>"
    position: FloatArray  # ImagePositionPatient (3,), mm
    orientation: FloatArray  # ImageOrientationPatient (6,)
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing), mm
    rows: int
    columns: int
    slope: float
    intercept: float
    thickness: float | None  # SliceThickness, mm
    rank: tuple[int, int]  # (acquisition number, instance or frame number): the highest wins a position


@dataclass(frozen=True)
class Stack:
    """Planes sorted along the slice normal, duplicates removed."""

    planes: list[Plane]
    dropped: list[str]
    slice_spacing: float
    normal: FloatArray
