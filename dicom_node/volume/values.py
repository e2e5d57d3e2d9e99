"""Reading and formatting attribute values, with errors that name the attribute and the image."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.volume.model import UNIT_TOLERANCE, FloatArray, VolumeError

# --- value helpers ------------------------------------------------------------------------------------


def required_value(ds: Dataset, keyword: str, label: str) -> Any:
    value = ds.get(keyword)
    if value is None or value == "":
        raise VolumeError(f"{label}: {keyword} is missing or empty; it is needed to build a volume")
    return value


def floats(value: Any, n: int, name: str, label: str) -> FloatArray:
    try:
        numbers = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise VolumeError(f"{label}: {name} {value!r} is not {n} numbers") from exc
    if numbers.shape != (n,) or not np.all(np.isfinite(numbers)):
        raise VolumeError(f"{label}: {name} {value!r} must be {n} finite numbers")
    return numbers


def read_pixel_spacing(value: Any, name: str, label: str) -> tuple[float, float]:
    row, col = (float(v) for v in floats(value, 2, name, label))
    if row <= 0 or col <= 0:
        raise VolumeError(f"{label}: {name} {[row, col]} must be two positive numbers (mm)")
    return row, col


def unit_normal(orientation: FloatArray, label: str) -> FloatArray:
    row, col = orientation[:3], orientation[3:]
    if (
        abs(float(np.linalg.norm(row)) - 1) > UNIT_TOLERANCE
        or abs(float(np.linalg.norm(col)) - 1) > UNIT_TOLERANCE
        or abs(float(row @ col)) > UNIT_TOLERANCE
    ):
        raise VolumeError(
            f"{label}: ImageOrientationPatient {fmt_list(orientation)} is not two "
            f"orthogonal unit vectors (tolerance {UNIT_TOLERANCE:g})"
        )
    normal = np.cross(row, col)
    result: FloatArray = normal / np.linalg.norm(normal)
    return result


def float_or(value: Any, default: float) -> float:
    if value is None or value == "":
        return default
    return float(value)


def optional_float(value: Any) -> float | None:
    return None if value is None or value == "" else float(value)


def int_or(value: Any, default: int) -> int:
    if value is None or value == "":
        return default
    return int(value)


def vec3(values: FloatArray) -> tuple[float, float, float]:
    x, y, z = (float(v) + 0.0 for v in values)  # + 0.0 turns -0.0 into 0.0
    return x, y, z


def fmt(value: float) -> str:
    """A number for messages: at most 6 significant digits, no trailing zeros."""
    return f"{value:.6g}"


def fmt_list(values: FloatArray) -> str:
    """Numbers for messages: ``[1, 0, 0, 0, 1, 0]``."""
    return "[" + ", ".join(fmt(float(v)) for v in values) + "]"


def uid_of(ds: Dataset) -> str:
    return str(ds.get("SOPInstanceUID", "<no SOPInstanceUID>"))
