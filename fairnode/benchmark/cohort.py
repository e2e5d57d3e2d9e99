"""A labelled cohort folder (``fairnode cohort make``, or a hospital's own DICOM studies with SEGs and a
``manifest.csv`` of the same columns): each subject's demographics, image and ground truth."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom

from cohorts.make import MANIFEST, read_manifest
from dicom_node.volume import load_volume, read_series

__all__ = ["LabelledCase", "labelled_cases", "read_labelled_case"]


@dataclass(frozen=True)
class LabelledCase:
    """One subject: its manifest row, pixels (``(rows, columns)`` or ``(slices, rows, columns)``), spacing (mm,
    same order), the ground-truth label map on the same grid, and the image's DICOM header."""

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
    manifest = cohort / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(
            f"{cohort} is not a labelled cohort folder: it has no {MANIFEST} (make one with 'fairnode cohort make')"
        )
    for row in read_manifest(manifest):
        yield row, cohort / row["image_dir"], cohort / row["seg_path"]


def read_labelled_case(row: dict[str, str], image_dir: Path, seg_path: Path) -> LabelledCase:
    """Read one subject: the volume as the node builds it, and the SEG's labels in the same frame order."""
    files = sorted(image_dir.glob("*.dcm"))
    volume = load_volume(read_series(files))
    seg = hd.seg.segread(seg_path)
    uids = [str(ds.SOPInstanceUID) for ds in volume.datasets]
    truth = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, assert_missing_frames_are_empty=True
    )
    truth = np.asarray(truth).reshape(volume.pixels.shape).astype(np.uint8)
    return LabelledCase(row, volume.pixels, tuple(volume.spacing), truth, volume.datasets[0])
