"""Liver-lesion ground truth beside the organ labels, and the lesion scenario."""

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cohorts import ct_abdomen
from cohorts.ct_lesion_truth import write_lesion_truth
from cohorts.dicom_writer import write_study
from cohorts.shift import ImagingShift, load_shift, shipped_scenarios
from cohorts.subjects import draw_subject
from tests.conftest import dciodvfy_errors

# sha256 prefixes of pixels and labels recorded before the lesion mask existed (matrix 64, 5 mm slices)
BEFORE: list[tuple[int, int, dict[str, float], str, str]] = [
    (0, 11, {}, "881b955e8056ccc1", "1b58a30959c532fa"),
    (3, 11, {"lesion_mm": 12.0, "lesion_count": 2}, "7d2d5ffc58cde536", "fbb2ea5240e1cd7b"),
    (1, 12, {"lesion_mm": 30.0, "lesion_count": 1, "fov_fraction": 0.7}, "cccbd2934f9b2b29", "d92fe6ca052d76ee"),
]


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(a.tobytes()).hexdigest()[:16]


@pytest.mark.parametrize(("index", "seed", "shift", "pixels", "labels"), BEFORE)
def test_images_and_labels_unchanged_by_the_lesion_mask(
    index: int, seed: int, shift: dict[str, float], pixels: str, labels: str
) -> None:
    subject = draw_subject("ct-abdomen", index, seed)
    if shift:
        subject = dataclasses.replace(subject, shift=ImagingShift(**shift))  # type: ignore[arg-type]
    image, lesions = ct_abdomen.generate_with_lesions(subject, matrix=64, slice_thickness=5.0)
    assert (_sha(image.pixels), _sha(image.labels)) == (pixels, labels)
    plain = ct_abdomen.generate(subject, matrix=64, slice_thickness=5.0)
    assert np.array_equal(plain.pixels, image.pixels) and np.array_equal(plain.labels, image.labels)
    assert lesions.shape == image.labels.shape and lesions.dtype == bool
    assert not np.any(lesions & (image.labels != 1)), "a lesion voxel outside the liver label"
    assert lesions.any() == bool(shift.get("lesion_mm", 0))


def test_lesion_mask_marks_the_changed_liver_pixels() -> None:
    subject = dataclasses.replace(draw_subject("ct-abdomen", 2, 5), shift=ImagingShift(lesion_mm=20.0))
    image, lesions = ct_abdomen.generate_with_lesions(subject, matrix=96, slice_thickness=5.0)
    liver = (image.labels == 1) & ~lesions
    core = lesions & ~np.roll(~lesions, 1, axis=2) & ~np.roll(~lesions, -1, axis=2)  # away from the edge
    contrast = abs(float(np.median(image.pixels[core])) - float(np.median(image.pixels[liver])))
    assert contrast > 40.0, contrast  # 60-100 HU lesions, blurred
    assert str(image.acquisition["lesions"]).endswith(" mm")  # one lesion: "hypodense 21.3 mm"


def test_lesion_scenario_has_lesions_in_about_half_small_to_large() -> None:
    spec = load_shift(shipped_scenarios()["liver-lesions"])
    sizes = [draw_subject("ct-abdomen", i, 7, spec).shift.lesion_mm for i in range(80)]
    share = float(np.mean([s > 0 for s in sizes]))
    assert 0.35 < share < 0.65, share
    assert min(s for s in sizes if s > 0) <= 6 and max(sizes) >= 30


def test_ground_truth_seg_with_a_lesion_segment(tmp_path: Path) -> None:
    subject = dataclasses.replace(draw_subject("ct-abdomen", 2, 5), shift=ImagingShift(lesion_mm=15.0))
    image, lesions = ct_abdomen.generate_with_lesions(subject, matrix=64, slice_thickness=5.0)
    written = write_study(image, subject, tmp_path)
    before = Path(written.seg_path).read_bytes()
    path = write_lesion_truth(image, lesions, subject, written)
    assert Path(written.seg_path).read_bytes() == before  # the organ SEG is untouched
    assert dciodvfy_errors(path) == []
    seg = pydicom.dcmread(path)
    names = [s.SegmentLabel for s in seg.SegmentSequence]
    assert names == [*(lab.name for lab in ct_abdomen.LABELS), "liver_lesion"]
    lesion = seg.SegmentSequence[-1]
    assert lesion.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"
    assert lesion.AnatomicRegionSequence[0].CodeValue == "10200004"
