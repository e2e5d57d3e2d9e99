"""Series -> volume: sort, check and decode the images of one series into a float32 array with geometry.

Array convention (as everywhere in fairnode, see :mod:`cohorts.image`): a cross-sectional volume is
``(slices, rows, columns)``, a projection radiograph ``(rows, columns)``. Patient coordinates are DICOM
LPS in millimetres.

Slice order
-----------
Slices are sorted along the slice normal ``n = row cosines x column cosines`` of ImageOrientationPatient,
by *decreasing* ``dot(ImagePositionPatient, n)``: the slice index runs against the normal, so
:attr:`Volume.slice_direction` is ``-n``. For the usual axial orientation (rows towards the patient's
left, columns towards posterior, ``n`` = superior) slices run from head to feet, the order of the
cohorts' arrays on which the bundled models are trained. The order never depends on InstanceNumber or
on the order of the input.

Checks (each failure is a :class:`VolumeError` naming the values found and what is accepted)
---------------------------------------------------------------------------------------------
* every slice shares ImageOrientationPatient (within :data:`ORIENTATION_TOLERANCE`), Rows, Columns and
  PixelSpacing (within :data:`PIXEL_SPACING_TOLERANCE_MM`), SeriesInstanceUID and FrameOfReferenceUID;
* no gantry tilt: GantryDetectorTilt is 0 and successive positions move along the normal only (an
  in-plane offset above :data:`IN_PLANE_TOLERANCE_MM` plus ``tan(TILT_TOLERANCE_DEGREES)`` times the
  distance along the normal is a tilt);
* duplicate positions (closer than :data:`DUPLICATE_TOLERANCE_MM` along the normal): the slice with the
  highest AcquisitionNumber, then InstanceNumber, is kept, the others are listed in
  :attr:`Volume.dropped`;
* even spacing: every gap between neighbouring slices is within 1 % (:data:`GAP_RELATIVE_TOLERANCE`) or
  0.01 mm (:data:`GAP_ABSOLUTE_TOLERANCE_MM`), whichever is larger, of the median gap; a larger gap
  usually means missing slices.

Pixels are decoded by pydicom's pixel decoders (native, RLE, JPEG baseline/extended/lossless, JPEG-LS and
JPEG 2000 through pylibjpeg and pyjpegls) and the Modality LUT (RescaleSlope/RescaleIntercept, per slice
or per frame) is applied: CT values are Hounsfield units. No VOI LUT or presentation transform is
applied: a MONOCHROME1 radiograph keeps its inverted grey scale.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import (
    UID,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    LegacyConvertedEnhancedMRImageStorage,
)

logger = logging.getLogger(__name__)

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

_UNIT_TOLERANCE = 1e-3
_IDENTITY_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
_PATIENT_DIRECTIONS: dict[str, tuple[float, float, float]] = {
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
class _Plane:
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
class _Stack:
    """Planes sorted along the slice normal, duplicates removed."""

    planes: list[_Plane]
    dropped: list[str]
    slice_spacing: float
    normal: FloatArray


# --- public API ---------------------------------------------------------------------------------------


def read_series(paths: Sequence[Path]) -> list[Dataset]:
    """Read DICOM files with :func:`pydicom.dcmread`, in the order given.

    Raises
    ------
    VolumeError
        If a file cannot be read as DICOM; the message names the file.
    """
    datasets: list[Dataset] = []
    for path in paths:
        try:
            datasets.append(pydicom.dcmread(path))
        except Exception as exc:  # any reader failure (missing file, not DICOM, truncated) is fatal here
            raise VolumeError(f"cannot read {path} as a DICOM file: {exc}") from exc
    return datasets


def load_volume(datasets: Sequence[Dataset]) -> Volume:
    """Make one series into a :class:`Volume` (see the module docstring for the order and the checks).

    Parameters
    ----------
    datasets
        every instance of one series, in any order, with pixel data: single-frame CT/MR slices, one
        Enhanced (or Legacy Converted Enhanced) CT/MR multi-frame instance, or one DX/CR image.

    Returns
    -------
    Volume
        float32 pixels after the Modality LUT, ``(slices, rows, columns)`` (``(rows, columns)`` for DX/CR),
        with spacing (mm), origin (LPS mm) and the source datasets in slice order.

    Raises
    ------
    VolumeError
        If the series is empty, mixes series, orientations, matrix sizes or pixel spacings, is tilted,
        is unevenly spaced (missing slices), lacks a geometry attribute, or a pixel data element cannot
        be decoded (the message names the SOPInstanceUID and the transfer syntax).
    """
    if not datasets:
        raise VolumeError("no datasets given: a volume needs at least 1 image")
    _check_one_series(datasets)
    modality = str(datasets[0].get("Modality", ""))
    if any(_is_multiframe(ds) for ds in datasets):
        return _load_multiframe(datasets, modality)
    if modality in PROJECTION_MODALITIES:
        return _load_projection(datasets, modality)
    return _load_slices(datasets, modality)


# --- series-level checks ------------------------------------------------------------------------------


def _uid_of(ds: Dataset) -> str:
    return str(ds.get("SOPInstanceUID", "<no SOPInstanceUID>"))


def _check_one_series(datasets: Sequence[Dataset]) -> None:
    for keyword in ("SeriesInstanceUID", "Modality", "FrameOfReferenceUID"):
        values = sorted({str(ds.get(keyword, "")) for ds in datasets})
        if len(values) > 1:
            raise VolumeError(
                f"the datasets mix {len(values)} values of {keyword}: {values}; "
                f"a volume is made from one series with one {keyword}"
            )


def _is_multiframe(ds: Dataset) -> bool:
    return str(ds.get("SOPClassUID", "")) in ENHANCED_SOP_CLASSES or int(ds.get("NumberOfFrames", 1) or 1) > 1


def _check_gantry_tilt_tag(ds: Dataset, label: str) -> None:
    """Raise when GantryDetectorTilt (top level, CT Acquisition Details, or converted attributes) is not 0."""
    candidates: list[Dataset] = [ds]
    for group_kw in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for group in ds.get(group_kw, []):
            for seq_kw in ("CTAcquisitionDetailsSequence", "UnassignedSharedConvertedAttributesSequence"):
                candidates.extend(group.get(seq_kw, []))
    for item in candidates:
        tilt = item.get("GantryDetectorTilt")
        if tilt is not None and tilt != "" and abs(float(tilt)) > GANTRY_TILT_TAG_TOLERANCE_DEGREES:
            raise VolumeError(
                f"gantry tilt of {_fmt(float(tilt))} degrees is not supported (GantryDetectorTilt of "
                f"{label}); only untilted series (GantryDetectorTilt 0) can be stacked: resample it first"
            )


# --- single-frame slices ------------------------------------------------------------------------------


def _load_slices(datasets: Sequence[Dataset], modality: str) -> Volume:
    planes = []
    for index, ds in enumerate(datasets):
        _check_gantry_tilt_tag(ds, _uid_of(ds))
        planes.append(_plane_of_slice(ds, index))
    stack = _stack(planes)
    kept = [datasets[p.index] for p in stack.planes]
    first = stack.planes[0]
    pixels = np.empty((len(kept), first.rows, first.columns), dtype=np.float32)
    for k, (plane, ds) in enumerate(zip(stack.planes, kept, strict=True)):
        stored = _decode(ds, 1, first.rows, first.columns)
        pixels[k] = _modality_lut(stored[0], ds, plane)
    return _volume(stack, pixels, tuple(kept), None, modality)


def _plane_of_slice(ds: Dataset, index: int) -> _Plane:
    uid = _uid_of(ds)
    _check_samples(ds, uid)
    return _Plane(
        index=index,
        label=uid,
        position=_floats(_required(ds, "ImagePositionPatient", uid), 3, "ImagePositionPatient", uid),
        orientation=_floats(_required(ds, "ImageOrientationPatient", uid), 6, "ImageOrientationPatient", uid),
        pixel_spacing=_pixel_spacing(_required(ds, "PixelSpacing", uid), "PixelSpacing", uid),
        rows=int(_required(ds, "Rows", uid)),
        columns=int(_required(ds, "Columns", uid)),
        slope=_float_or(ds.get("RescaleSlope"), 1.0),
        intercept=_float_or(ds.get("RescaleIntercept"), 0.0),
        thickness=_optional_float(ds.get("SliceThickness")),
        rank=(_int_or(ds.get("AcquisitionNumber"), -1), _int_or(ds.get("InstanceNumber"), -1)),
    )


# --- multi-frame (Enhanced / Legacy Converted Enhanced CT and MR) -------------------------------------


def _load_multiframe(datasets: Sequence[Dataset], modality: str) -> Volume:
    if len(datasets) != 1:
        raise VolumeError(
            f"a series holding a multi-frame instance must hold only that instance, got {len(datasets)} "
            f"instances ({[_uid_of(ds) for ds in datasets]}); load each multi-frame instance on its own"
        )
    ds = datasets[0]
    uid = _uid_of(ds)
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in ENHANCED_SOP_CLASSES:
        raise VolumeError(
            f"{uid}: multi-frame SOP class {sop_class} ({UID(sop_class).name}) is not supported; accepted "
            f"multi-frame classes: {sorted(f'{UID(u).name} {u}' for u in ENHANCED_SOP_CLASSES)}"
        )
    _check_samples(ds, uid)
    _check_gantry_tilt_tag(ds, uid)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence", []))
    if len(per_frame) != n_frames:
        raise VolumeError(
            f"{uid}: PerFrameFunctionalGroupsSequence has {len(per_frame)} items for NumberOfFrames "
            f"{n_frames}; an enhanced image needs one item per frame"
        )
    planes = [_plane_of_frame(ds, i) for i in range(n_frames)]
    stack = _stack(planes)
    first = stack.planes[0]
    stored = _decode(ds, n_frames, first.rows, first.columns)
    pixels = np.empty((len(stack.planes), first.rows, first.columns), dtype=np.float32)
    for k, plane in enumerate(stack.planes):
        pixels[k] = _modality_lut(stored[plane.index], None, plane)
    frame_numbers = tuple(p.index + 1 for p in stack.planes)
    return _volume(stack, pixels, (ds,), frame_numbers, modality)


def _frame_value(ds: Dataset, frame: int, sequence: str, keyword: str) -> Any:
    """``keyword`` from ``sequence`` in the frame's Per-Frame group, else in the Shared group, else None."""
    groups = [ds.PerFrameFunctionalGroupsSequence[frame], *ds.get("SharedFunctionalGroupsSequence", [])[:1]]
    for group in groups:
        items = group.get(sequence)
        if items and keyword in items[0]:
            return items[0].get(keyword)
    return None


def _plane_of_frame(ds: Dataset, frame: int) -> _Plane:
    uid = _uid_of(ds)
    label = f"{uid} frame {frame + 1}"

    def required(sequence: str, keyword: str) -> Any:
        value = _frame_value(ds, frame, sequence, keyword)
        if value is None or value == "":
            raise VolumeError(
                f"{label}: {sequence} > {keyword} is missing from the per-frame and shared functional "
                "groups; it is needed to place the frame"
            )
        return value

    acquisition = _frame_value(ds, frame, "FrameContentSequence", "FrameAcquisitionNumber")
    return _Plane(
        index=frame,
        label=label,
        position=_floats(required("PlanePositionSequence", "ImagePositionPatient"), 3, "ImagePositionPatient", label),
        orientation=_floats(
            required("PlaneOrientationSequence", "ImageOrientationPatient"),
            6,
            "ImageOrientationPatient",
            label,
        ),
        pixel_spacing=_pixel_spacing(required("PixelMeasuresSequence", "PixelSpacing"), "PixelSpacing", label),
        rows=int(_required(ds, "Rows", uid)),
        columns=int(_required(ds, "Columns", uid)),
        slope=_float_or(
            _frame_value(ds, frame, "PixelValueTransformationSequence", "RescaleSlope"),
            _float_or(ds.get("RescaleSlope"), 1.0),
        ),
        intercept=_float_or(
            _frame_value(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept"),
            _float_or(ds.get("RescaleIntercept"), 0.0),
        ),
        thickness=_optional_float(_frame_value(ds, frame, "PixelMeasuresSequence", "SliceThickness")),
        rank=(_int_or(acquisition, -1), frame + 1),
    )


# --- projection radiographs ---------------------------------------------------------------------------


def _load_projection(datasets: Sequence[Dataset], modality: str) -> Volume:
    if len(datasets) != 1:
        raise VolumeError(
            f"a {modality} series makes a volume from exactly 1 image, got {len(datasets)} "
            f"({[_uid_of(ds) for ds in datasets]}); load each radiograph on its own"
        )
    ds = datasets[0]
    uid = _uid_of(ds)
    _check_samples(ds, uid)
    if "PixelSpacing" in ds and ds.PixelSpacing:
        spacing = _pixel_spacing(ds.PixelSpacing, "PixelSpacing", uid)
    elif "ImagerPixelSpacing" in ds and ds.ImagerPixelSpacing:
        spacing = _pixel_spacing(ds.ImagerPixelSpacing, "ImagerPixelSpacing", uid)
    else:
        raise VolumeError(
            f"{uid}: {modality} image has neither PixelSpacing nor ImagerPixelSpacing; one of them is "
            "needed for the pixel size in mm"
        )
    rows, columns = int(_required(ds, "Rows", uid)), int(_required(ds, "Columns", uid))
    stored = _decode(ds, 1, rows, columns)
    plane = _Plane(
        index=0,
        label=uid,
        position=np.zeros(3),
        orientation=np.asarray(_projection_orientation(ds, uid)),
        pixel_spacing=spacing,
        rows=rows,
        columns=columns,
        slope=_float_or(ds.get("RescaleSlope"), 1.0),
        intercept=_float_or(ds.get("RescaleIntercept"), 0.0),
        thickness=None,
        rank=(0, 0),
    )
    pixels = _modality_lut(stored[0], ds, plane)
    normal = _normal(plane.orientation, uid)
    return Volume(
        pixels=pixels,
        spacing=spacing,
        origin=(0.0, 0.0, 0.0),
        orientation=tuple(float(v) for v in plane.orientation),
        slice_direction=_vec3(-normal),
        datasets=(ds,),
        frame_numbers=None,
        modality=modality,
        dropped=(),
    )


def _projection_orientation(ds: Dataset, uid: str) -> tuple[float, ...]:
    """ImageOrientationPatient, else from a one-letter-per-axis PatientOrientation, else identity."""
    if ds.get("ImageOrientationPatient"):
        return tuple(_floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", uid))
    letters = [str(v) for v in ds.get("PatientOrientation", [])]
    if len(letters) == 2 and all(v in _PATIENT_DIRECTIONS for v in letters):
        row, col = _PATIENT_DIRECTIONS[letters[0]], _PATIENT_DIRECTIONS[letters[1]]
        if abs(float(np.dot(row, col))) < _UNIT_TOLERANCE:
            return (*row, *col)
    logger.debug("%s: no usable orientation (PatientOrientation %s); using rows=L, columns=P", uid, letters)
    return _IDENTITY_ORIENTATION


# --- stacking -----------------------------------------------------------------------------------------


def _stack(planes: list[_Plane]) -> _Stack:
    """Check shared geometry, sort along the normal (decreasing), drop duplicates, check tilt and gaps."""
    _check_shared(planes, "ImageOrientationPatient", lambda p: p.orientation, ORIENTATION_TOLERANCE)
    _check_shared(planes, "Rows x Columns", lambda p: np.array([p.rows, p.columns], float), 0.0)
    _check_shared(planes, "PixelSpacing", lambda p: np.array(p.pixel_spacing), PIXEL_SPACING_TOLERANCE_MM)
    normal = _normal(planes[0].orientation, planes[0].label)
    distance = np.array([float(p.position @ normal) for p in planes])
    order = np.argsort(-distance, kind="stable")

    kept: list[_Plane] = []
    dropped: list[str] = []
    group: list[_Plane] = []
    group_distance = math.inf
    for i in order:
        plane = planes[int(i)]
        if group and abs(group_distance - distance[i]) <= DUPLICATE_TOLERANCE_MM:
            group.append(plane)
            continue
        if group:
            kept.append(_resolve_duplicates(group, group_distance, dropped))
        group, group_distance = [plane], float(distance[i])
    kept.append(_resolve_duplicates(group, group_distance, dropped))

    positions = np.array([p.position for p in kept])
    _check_tilt(positions, normal)
    along = positions @ normal
    if len(kept) > 1:
        _check_gaps(along)
        slice_spacing = float(along[0] - along[-1]) / (len(kept) - 1)
    else:
        thickness = kept[0].thickness
        if thickness is None or not math.isfinite(thickness) or thickness <= 0:
            raise VolumeError(
                f"{kept[0].label}: a one-slice volume takes its slice spacing from SliceThickness, which "
                f"is {thickness!r}; a positive thickness in mm is needed"
            )
        slice_spacing = thickness
    return _Stack(planes=kept, dropped=dropped, slice_spacing=slice_spacing, normal=normal)


def _resolve_duplicates(group: list[_Plane], distance: float, dropped: list[str]) -> _Plane:
    """Keep the plane with the highest (AcquisitionNumber, InstanceNumber); record the others."""
    if len(group) == 1:
        return group[0]
    winner = max(group, key=lambda p: p.rank)
    losers = [p.label for p in group if p is not winner]
    logger.info(
        "%d image(s) at the same position %.3f mm along the normal as %s (acquisition %d, instance %d) dropped: %s",
        len(losers),
        distance,
        winner.label,
        *winner.rank,
        losers,
    )
    dropped.extend(losers)
    return winner


def _check_shared(planes: list[_Plane], name: str, value: Callable[[_Plane], FloatArray], tolerance: float) -> None:
    """Raise when the planes' values of ``name`` differ by more than ``tolerance``, naming each value."""
    reference = value(planes[0])
    if all(np.max(np.abs(value(p) - reference)) <= tolerance for p in planes[1:]):
        return
    distinct: list[tuple[FloatArray, list[str]]] = []
    for plane in planes:
        v = value(plane)
        for known, labels in distinct:
            if np.max(np.abs(v - known)) <= tolerance:
                labels.append(plane.label)
                break
        else:
            distinct.append((v, [plane.label]))
    parts = [f"{_fmt_list(v)} in {len(labels)} image(s) (first {labels[0]})" for v, labels in distinct]
    raise VolumeError(
        f"the images do not share one {name}: found {'; '.join(parts)}; every slice of a volume must have "
        f"the same {name}" + (f" (tolerance {tolerance:g})" if tolerance else "")
    )


def _check_tilt(positions: FloatArray, normal: FloatArray) -> None:
    """Raise when positions move within the slice plane (gantry tilt or sheared stack)."""
    if len(positions) < 2:
        return
    steps = [(positions[k + 1] - positions[k], f"between slices {k} and {k + 1}") for k in range(len(positions) - 1)]
    steps.append((positions[-1] - positions[0], "from the first to the last slice"))
    slack = math.tan(math.radians(TILT_TOLERANCE_DEGREES))
    for step, where in steps:
        along = abs(float(step @ normal))
        in_plane = float(np.linalg.norm(step - (step @ normal) * normal))
        tolerance = IN_PLANE_TOLERANCE_MM + slack * along
        if in_plane > tolerance:
            angle = math.degrees(math.atan2(in_plane, along))
            raise VolumeError(
                f"gantry tilt of {_fmt(angle)} degrees is not supported: ImagePositionPatient moves "
                f"{in_plane:.3f} mm within the slice plane over {along:.3f} mm along the slice normal "
                f"{where} (accepted: at most {tolerance:.3f} mm); resample the series to an untilted grid"
            )


def _check_gaps(along: FloatArray) -> None:
    """Raise when the gaps between neighbouring slices (mm, decreasing ``along``) are not uniform."""
    gaps = -np.diff(along)
    median = float(np.median(gaps))
    tolerance = max(GAP_RELATIVE_TOLERANCE * median, GAP_ABSOLUTE_TOLERANCE_MM)
    bad = np.flatnonzero(np.abs(gaps - median) > tolerance)
    if bad.size == 0:
        return
    missing = int(sum(max(round(float(g) / median) - 1, 0) for g in gaps[bad])) if median > 0 else 0
    worst = int(bad[np.argmax(np.abs(gaps[bad] - median))])
    raise VolumeError(
        f"slice positions are not evenly spaced: gaps between neighbouring slices range from "
        f"{float(gaps.min()):.3f} to {float(gaps.max()):.3f} mm (median {median:.3f} mm; accepted: within "
        f"{tolerance:.3f} mm of it); {bad.size} irregular gap(s), the worst {float(gaps[worst]):.3f} mm "
        f"between slices {worst} and {worst + 1} at {float(along[worst]):.3f} and "
        f"{float(along[worst + 1]):.3f} mm along the normal; about {missing} slice(s) missing"
    )


def _volume(
    stack: _Stack,
    pixels: np.ndarray,
    datasets: tuple[Dataset, ...],
    frame_numbers: tuple[int, ...] | None,
    modality: str,
) -> Volume:
    first = stack.planes[0]
    volume = Volume(
        pixels=pixels,
        spacing=(stack.slice_spacing, *first.pixel_spacing),
        origin=_vec3(first.position),
        orientation=tuple(float(v) for v in first.orientation),
        slice_direction=_vec3(-stack.normal),
        datasets=datasets,
        frame_numbers=frame_numbers,
        modality=modality,
        dropped=tuple(stack.dropped),
    )
    logger.debug(
        "volume %s of series %s: %s voxels, spacing %s mm, %d dropped",
        modality,
        datasets[0].get("SeriesInstanceUID", ""),
        pixels.shape,
        volume.spacing,
        len(stack.dropped),
    )
    return volume


# --- pixels -------------------------------------------------------------------------------------------


def _check_samples(ds: Dataset, uid: str) -> None:
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise VolumeError(
            f"{uid}: SamplesPerPixel is {samples} (PhotometricInterpretation "
            f"{ds.get('PhotometricInterpretation', '')}); only single-sample greyscale images make a volume"
        )


def _decode(ds: Dataset, frames: int, rows: int, columns: int) -> np.ndarray:
    """Stored values of every frame, ``(frames, rows, columns)``; any failure names the instance."""
    uid = _uid_of(ds)
    meta = getattr(ds, "file_meta", None)
    value = meta.get("TransferSyntaxUID") if meta is not None else None
    if not value:
        raise VolumeError(f"{uid}: no TransferSyntaxUID in the file meta; it is needed to decode the pixels")
    syntax = UID(str(value))
    if "PixelData" not in ds:
        raise VolumeError(f"{uid}: no PixelData (transfer syntax {syntax.name} {syntax})")
    try:
        decoder = get_decoder(syntax)
        array, _ = decoder.as_array(ds)
    except Exception as exc:  # every decoder failure becomes a VolumeError naming the instance
        raise VolumeError(
            f"{uid}: cannot decode the pixel data (transfer syntax {syntax.name} {syntax}): {exc}"
        ) from exc
    if array.size != frames * rows * columns:
        raise VolumeError(
            f"{uid}: decoded pixel data of shape {array.shape} (transfer syntax {syntax.name} {syntax}); "
            f"expected {frames} frame(s) of {rows} x {columns}"
        )
    return array.reshape(frames, rows, columns)


def _modality_lut(stored: np.ndarray, ds: Dataset | None, plane: _Plane) -> np.ndarray:
    """Stored values -> float32 modality values (RescaleSlope/Intercept, or a Modality LUT Sequence)."""
    if ds is not None and "ModalityLUTSequence" in ds and "RescaleSlope" not in ds:
        return np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    values = stored.astype(np.float64) * plane.slope + plane.intercept
    return values.astype(np.float32)


# --- value helpers ------------------------------------------------------------------------------------


def _required(ds: Dataset, keyword: str, label: str) -> Any:
    value = ds.get(keyword)
    if value is None or value == "":
        raise VolumeError(f"{label}: {keyword} is missing or empty; it is needed to build a volume")
    return value


def _floats(value: Any, n: int, name: str, label: str) -> FloatArray:
    try:
        numbers = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise VolumeError(f"{label}: {name} {value!r} is not {n} numbers") from exc
    if numbers.shape != (n,) or not np.all(np.isfinite(numbers)):
        raise VolumeError(f"{label}: {name} {value!r} must be {n} finite numbers")
    return numbers


def _pixel_spacing(value: Any, name: str, label: str) -> tuple[float, float]:
    row, col = (float(v) for v in _floats(value, 2, name, label))
    if row <= 0 or col <= 0:
        raise VolumeError(f"{label}: {name} {[row, col]} must be two positive numbers (mm)")
    return row, col


def _normal(orientation: FloatArray, label: str) -> FloatArray:
    row, col = orientation[:3], orientation[3:]
    if (
        abs(float(np.linalg.norm(row)) - 1) > _UNIT_TOLERANCE
        or abs(float(np.linalg.norm(col)) - 1) > _UNIT_TOLERANCE
        or abs(float(row @ col)) > _UNIT_TOLERANCE
    ):
        raise VolumeError(
            f"{label}: ImageOrientationPatient {_fmt_list(orientation)} is not two "
            f"orthogonal unit vectors (tolerance {_UNIT_TOLERANCE:g})"
        )
    normal = np.cross(row, col)
    result: FloatArray = normal / np.linalg.norm(normal)
    return result


def _float_or(value: Any, default: float) -> float:
    if value is None or value == "":
        return default
    return float(value)


def _optional_float(value: Any) -> float | None:
    return None if value is None or value == "" else float(value)


def _int_or(value: Any, default: int) -> int:
    if value is None or value == "":
        return default
    return int(value)


def _vec3(values: FloatArray) -> tuple[float, float, float]:
    x, y, z = (float(v) + 0.0 for v in values)  # + 0.0 turns -0.0 into 0.0
    return x, y, z


def _fmt(value: float) -> str:
    """A number for messages: at most 6 significant digits, no trailing zeros."""
    return f"{value:.6g}"


def _fmt_list(values: FloatArray) -> str:
    """Numbers for messages: ``[1, 0, 0, 0, 1, 0]``."""
    return "[" + ", ".join(_fmt(float(v)) for v in values) + "]"
