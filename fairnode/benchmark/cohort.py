"""A labelled cohort folder (``fairnode cohort make``, or a hospital's own DICOM studies with SEGs and a
``manifest.csv`` of the same columns): each subject's demographics, image and ground truth, read with the
calibration's readers (:func:`fairnode.calibration.cohort_cases`, :func:`fairnode.calibration.read_case`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from fairnode.calibration import cohort_cases, read_case

__all__ = ["LabelledCase", "labelled_cases", "read_labelled_case"]


@dataclass(frozen=True)
class LabelledCase:
    """One subject: its manifest row, pixels (``(rows, columns)`` or ``(slices, rows, columns)``), spacing (mm,
    same order), the ground-truth label map on the same grid, and the header of its first image."""

    row: dict[str, str]
    pixels: np.ndarray
    spacing: tuple[float, ...]
    truth: np.ndarray
    header: pydicom.Dataset


def labelled_cases(cohort: Path) -> Iterator[tuple[dict[str, str], Path, Path]]:
    """(manifest row, image folder, ground-truth SEG) of each subject of ``cohort``.

    Raises
    ------
    FileNotFoundError
        when ``cohort`` has no ``manifest.csv``.
    """
    return cohort_cases(cohort)


def read_labelled_case(row: dict[str, str], image_dir: Path, seg_path: Path) -> LabelledCase:
    """Read one subject: the volume as the node builds it, and the SEG's labels in the same frame order."""
    pixels, spacing, truth, _modality = read_case(image_dir, seg_path)
    header = pydicom.dcmread(sorted(image_dir.glob("*.dcm"))[0], stop_before_pixels=True)
    return LabelledCase(row, pixels, spacing, truth, header)
