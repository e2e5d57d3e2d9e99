"""Sorting planes along the slice normal and checking them: shared geometry, no tilt, no gaps, duplicates."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.volume.model import (
    DUPLICATE_TOLERANCE_MM,
    GAP_ABSOLUTE_TOLERANCE_MM,
    GAP_RELATIVE_TOLERANCE,
    IN_PLANE_TOLERANCE_MM,
    ORIENTATION_TOLERANCE,
    PIXEL_SPACING_TOLERANCE_MM,
    TILT_TOLERANCE_DEGREES,
    FloatArray,
    Plane,
    Stack,
    Volume,
    VolumeError,
)
from dicom_node.volume.values import fmt, fmt_list, unit_normal, vec3

logger = logging.getLogger(__name__)


# --- stacking -----------------------------------------------------------------------------------------


def stack_planes(planes: list[Plane]) -> Stack:
    """Check shared geometry, sort along the normal (decreasing), drop duplicates, check tilt and gaps."""
    _check_shared(planes, "ImageOrientationPatient", lambda p: p.orientation, ORIENTATION_TOLERANCE)
    _check_shared(planes, "Rows x Columns", lambda p: np.array([p.rows, p.columns], float), 0.0)
    _check_shared(planes, "PixelSpacing", lambda p: np.array(p.pixel_spacing), PIXEL_SPACING_TOLERANCE_MM)
    normal = unit_normal(planes[0].orientation, planes[0].label)
    distance = np.array([float(p.position @ normal) for p in planes])
    order = np.argsort(-distance, kind="stable")

    kept: list[Plane] = []
    dropped: list[str] = []
    group: list[Plane] = []
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
    return Stack(planes=kept, dropped=dropped, slice_spacing=slice_spacing, normal=normal)


def _resolve_duplicates(group: list[Plane], distance: float, dropped: list[str]) -> Plane:
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


def _check_shared(planes: list[Plane], name: str, value: Callable[[Plane], FloatArray], tolerance: float) -> None:
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
    parts = [f"{fmt_list(v)} in {len(labels)} image(s) (first {labels[0]})" for v, labels in distinct]
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
                f"gantry tilt of {fmt(angle)} degrees is not supported: ImagePositionPatient moves "
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


def make_volume(
    stack: Stack,
    pixels: np.ndarray,
    datasets: tuple[Dataset, ...],
    frame_numbers: tuple[int, ...] | None,
    modality: str,
) -> Volume:
    first = stack.planes[0]
    volume = Volume(
        pixels=pixels,
        spacing=(stack.slice_spacing, *first.pixel_spacing),
        origin=vec3(first.position),
        orientation=tuple(float(v) for v in first.orientation),
        slice_direction=vec3(-stack.normal),
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
