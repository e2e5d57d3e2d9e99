"""Reading a series and making it into a :class:`~dicom_node.volume.model.Volume`: single-frame slices,
multi-frame (Enhanced and Legacy Converted Enhanced CT/MR) instances and projection radiographs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from dicom_node.volume.model import (
    ENHANCED_SOP_CLASSES,
    GANTRY_TILT_TAG_TOLERANCE_DEGREES,
    IDENTITY_ORIENTATION,
    PATIENT_DIRECTIONS,
    PROJECTION_MODALITIES,
    UNIT_TOLERANCE,
    Plane,
    Volume,
    VolumeError,
)
from dicom_node.volume.pixels import check_samples, decode_pixels, modality_lut
from dicom_node.volume.stacking import make_volume, stack_planes
from dicom_node.volume.values import (
    float_or,
    floats,
    fmt,
    int_or,
    optional_float,
    read_pixel_spacing,
    required_value,
    uid_of,
    unit_normal,
    vec3,
)

logger = logging.getLogger(__name__)


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
                f"gantry tilt of {fmt(float(tilt))} degrees is not supported (GantryDetectorTilt of "
                f"{label}); only untilted series (GantryDetectorTilt 0) can be stacked: resample it first"
            )


# --- single-frame slices ------------------------------------------------------------------------------


def _load_slices(datasets: Sequence[Dataset], modality: str) -> Volume:
    planes = []
    for index, ds in enumerate(datasets):
        _check_gantry_tilt_tag(ds, uid_of(ds))
        planes.append(_plane_of_slice(ds, index))
    stack = stack_planes(planes)
    kept = [datasets[p.index] for p in stack.planes]
    first = stack.planes[0]
    pixels = np.empty((len(kept), first.rows, first.columns), dtype=np.float32)
    for k, (plane, ds) in enumerate(zip(stack.planes, kept, strict=True)):
        stored = decode_pixels(ds, 1, first.rows, first.columns)
        pixels[k] = modality_lut(stored[0], ds, plane)
    return make_volume(stack, pixels, tuple(kept), None, modality)


def _plane_of_slice(ds: Dataset, index: int) -> Plane:
    uid = uid_of(ds)
    check_samples(ds, uid)
    return Plane(
        index=index,
        label=uid,
        position=floats(required_value(ds, "ImagePositionPatient", uid), 3, "ImagePositionPatient", uid),
        orientation=floats(required_value(ds, "ImageOrientationPatient", uid), 6, "ImageOrientationPatient", uid),
        pixel_spacing=read_pixel_spacing(required_value(ds, "PixelSpacing", uid), "PixelSpacing", uid),
        rows=int(required_value(ds, "Rows", uid)),
        columns=int(required_value(ds, "Columns", uid)),
        slope=float_or(ds.get("RescaleSlope"), 1.0),
        intercept=float_or(ds.get("RescaleIntercept"), 0.0),
        thickness=optional_float(ds.get("SliceThickness")),
        rank=(int_or(ds.get("AcquisitionNumber"), -1), int_or(ds.get("InstanceNumber"), -1)),
    )


# --- multi-frame (Enhanced / Legacy Converted Enhanced CT and MR) -------------------------------------


def _load_multiframe(datasets: Sequence[Dataset], modality: str) -> Volume:
    if len(datasets) != 1:
        raise VolumeError(
            f"a series holding a multi-frame instance must hold only that instance, got {len(datasets)} "
            f"instances ({[uid_of(ds) for ds in datasets]}); load each multi-frame instance on its own"
        )
    ds = datasets[0]
    uid = uid_of(ds)
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in ENHANCED_SOP_CLASSES:
        raise VolumeError(
            f"{uid}: multi-frame SOP class {sop_class} ({UID(sop_class).name}) is not supported; accepted "
            f"multi-frame classes: {sorted(f'{UID(u).name} {u}' for u in ENHANCED_SOP_CLASSES)}"
        )
    check_samples(ds, uid)
    _check_gantry_tilt_tag(ds, uid)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence", []))
    if len(per_frame) != n_frames:
        raise VolumeError(
            f"{uid}: PerFrameFunctionalGroupsSequence has {len(per_frame)} items for NumberOfFrames "
            f"{n_frames}; an enhanced image needs one item per frame"
        )
    planes = [_plane_of_frame(ds, i) for i in range(n_frames)]
    stack = stack_planes(planes)
    first = stack.planes[0]
    stored = decode_pixels(ds, n_frames, first.rows, first.columns)
    pixels = np.empty((len(stack.planes), first.rows, first.columns), dtype=np.float32)
    for k, plane in enumerate(stack.planes):
        pixels[k] = modality_lut(stored[plane.index], None, plane)
    frame_numbers = tuple(p.index + 1 for p in stack.planes)
    return make_volume(stack, pixels, (ds,), frame_numbers, modality)


def _frame_value(ds: Dataset, frame: int, sequence: str, keyword: str) -> Any:
    """``keyword`` from ``sequence`` in the frame's Per-Frame group, else in the Shared group, else None."""
    groups = [ds.PerFrameFunctionalGroupsSequence[frame], *ds.get("SharedFunctionalGroupsSequence", [])[:1]]
    for group in groups:
        items = group.get(sequence)
        if items and keyword in items[0]:
            return items[0].get(keyword)
    return None


def _plane_of_frame(ds: Dataset, frame: int) -> Plane:
    uid = uid_of(ds)
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
    return Plane(
        index=frame,
        label=label,
        position=floats(required("PlanePositionSequence", "ImagePositionPatient"), 3, "ImagePositionPatient", label),
        orientation=floats(
            required("PlaneOrientationSequence", "ImageOrientationPatient"),
            6,
            "ImageOrientationPatient",
            label,
        ),
        pixel_spacing=read_pixel_spacing(required("PixelMeasuresSequence", "PixelSpacing"), "PixelSpacing", label),
        rows=int(required_value(ds, "Rows", uid)),
        columns=int(required_value(ds, "Columns", uid)),
        slope=float_or(
            _frame_value(ds, frame, "PixelValueTransformationSequence", "RescaleSlope"),
            float_or(ds.get("RescaleSlope"), 1.0),
        ),
        intercept=float_or(
            _frame_value(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept"),
            float_or(ds.get("RescaleIntercept"), 0.0),
        ),
        thickness=optional_float(_frame_value(ds, frame, "PixelMeasuresSequence", "SliceThickness")),
        rank=(int_or(acquisition, -1), frame + 1),
    )


# --- projection radiographs ---------------------------------------------------------------------------


def _load_projection(datasets: Sequence[Dataset], modality: str) -> Volume:
    if len(datasets) != 1:
        raise VolumeError(
            f"a {modality} series makes a volume from exactly 1 image, got {len(datasets)} "
            f"({[uid_of(ds) for ds in datasets]}); load each radiograph on its own"
        )
    ds = datasets[0]
    uid = uid_of(ds)
    check_samples(ds, uid)
    if "PixelSpacing" in ds and ds.PixelSpacing:
        spacing = read_pixel_spacing(ds.PixelSpacing, "PixelSpacing", uid)
    elif "ImagerPixelSpacing" in ds and ds.ImagerPixelSpacing:
        spacing = read_pixel_spacing(ds.ImagerPixelSpacing, "ImagerPixelSpacing", uid)
    else:
        raise VolumeError(
            f"{uid}: {modality} image has neither PixelSpacing nor ImagerPixelSpacing; one of them is "
            "needed for the pixel size in mm"
        )
    rows, columns = int(required_value(ds, "Rows", uid)), int(required_value(ds, "Columns", uid))
    stored = decode_pixels(ds, 1, rows, columns)
    plane = Plane(
        index=0,
        label=uid,
        position=np.zeros(3),
        orientation=np.asarray(_projection_orientation(ds, uid)),
        pixel_spacing=spacing,
        rows=rows,
        columns=columns,
        slope=float_or(ds.get("RescaleSlope"), 1.0),
        intercept=float_or(ds.get("RescaleIntercept"), 0.0),
        thickness=None,
        rank=(0, 0),
    )
    pixels = modality_lut(stored[0], ds, plane)
    normal = unit_normal(plane.orientation, uid)
    return Volume(
        pixels=pixels,
        spacing=spacing,
        origin=(0.0, 0.0, 0.0),
        orientation=tuple(float(v) for v in plane.orientation),
        slice_direction=vec3(-normal),
        datasets=(ds,),
        frame_numbers=None,
        modality=modality,
        dropped=(),
    )


def _projection_orientation(ds: Dataset, uid: str) -> tuple[float, ...]:
    """ImageOrientationPatient, else from a one-letter-per-axis PatientOrientation, else identity."""
    if ds.get("ImageOrientationPatient"):
        return tuple(floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", uid))
    letters = [str(v) for v in ds.get("PatientOrientation", [])]
    if len(letters) == 2 and all(v in PATIENT_DIRECTIONS for v in letters):
        row, col = PATIENT_DIRECTIONS[letters[0]], PATIENT_DIRECTIONS[letters[1]]
        if abs(float(np.dot(row, col))) < UNIT_TOLERANCE:
            return (*row, *col)
    logger.debug("%s: no usable orientation (PatientOrientation %s); using rows=L, columns=P", uid, letters)
    return IDENTITY_ORIENTATION
