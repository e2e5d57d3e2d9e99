"""The synthetic AP knee radiographs: determinism, geometry, labels, demographic effects, shift fields."""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Literal

import numpy as np
import pytest
from scipy import ndimage

from cohorts import xr_knee
from cohorts.image import SyntheticImage
from cohorts.shift import Group, GroupMatch, ImagingShift, ShiftSpec
from cohorts.subjects import Subject, draw_subject

SEED = 7
FEMUR, TIBIA, FIBULA, PATELLA = 1, 2, 3, 4


def _subject(index: int, seed: int = SEED) -> Subject:
    return draw_subject(xr_knee.KIND, index, seed)


@functools.cache
def _image(index: int) -> SyntheticImage:
    return xr_knee.generate(_subject(index))


def _with(subject: Subject, shift: ImagingShift) -> SyntheticImage:
    return xr_knee.generate(dataclasses.replace(subject, shift=shift))


def _area_mm2(img: SyntheticImage, value: int) -> float:
    return float((img.labels == value).sum()) * img.spacing[0] * img.spacing[1]


def _condylar_width_mm(img: SyntheticImage) -> float:
    """Widest extent of the distal femur (femur or patella over it) across a row, in mm."""
    femur = (img.labels == FEMUR) | (img.labels == PATELLA)
    widths = [np.ptp(np.flatnonzero(row)) + 1 for row in femur if row.any()]
    return float(max(widths)) * img.spacing[1]


def _joint_space_mm(img: SyntheticImage) -> float:
    """Narrowest femorotibial gap (10th percentile over the columns where femur lies above tibia)."""
    femur = (img.labels == FEMUR) | (img.labels == PATELLA)
    tibia = (img.labels == TIBIA) | (img.labels == FIBULA)
    rows = np.arange(img.labels.shape[0])[:, None]
    femur_bottom = np.where(femur, rows, -1).max(axis=0)
    tibia_top = np.where(tibia, rows, 10**6).min(axis=0)
    both = (femur_bottom >= 0) & (tibia_top < 10**6) & (tibia_top > femur_bottom)
    gaps = (tibia_top - femur_bottom - 1)[both]
    return float(np.percentile(gaps, 10)) * img.spacing[0]


def test_deterministic_and_subjects_differ() -> None:
    a = _image(0)
    b = xr_knee.generate(_subject(0))
    assert np.array_equal(a.pixels, b.pixels) and np.array_equal(a.labels, b.labels)
    assert a.acquisition == b.acquisition
    c = _image(1)
    assert a.pixels.shape != c.pixels.shape or not np.array_equal(a.pixels, c.pixels)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_image_geometry_and_header(index: int) -> None:
    img = _image(index)
    rows, cols = img.pixels.shape
    assert img.modality == "DX" and img.pixels.dtype == np.float32 and img.labels.dtype == np.uint8
    assert 960 <= rows <= 1088 and 768 <= cols <= 896
    assert img.spacing[0] == img.spacing[1] and 0.3 <= img.spacing[0] <= 0.4
    assert float(img.pixels.min()) >= 0.0 and float(img.pixels.max()) <= 4095.0
    assert img.label_info == xr_knee.LABELS
    acq = img.acquisition
    assert acq["laterality"] in ("L", "R") and acq["view_position"] == "AP" and acq["body_part"] == "KNEE"
    kvp, mas = acq["kvp"], acq["exposure_mas"]
    assert isinstance(kvp, float) and 58 <= kvp <= 72 and isinstance(mas, float) and mas > 0
    assert acq["study_description"] == "XR KNEE" and acq["series_description"] == "KNEE AP"
    assert acq["patient_orientation"] == ["L", "F"] and img.orientation == (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
    assert acq["artefact"] == "none"


def test_labels_codes_and_colours() -> None:
    codes = {lab.name: lab.code for lab in xr_knee.LABELS}
    assert codes == {"femur": "71341001", "tibia": "12611008", "fibula": "87342007", "patella": "64234005"}
    assert [lab.value for lab in xr_knee.LABELS] == [1, 2, 3, 4]
    assert len({lab.color for lab in xr_knee.LABELS}) == 4


@pytest.mark.parametrize("index", [0, 1, 2])
def test_bones_present_with_plausible_areas(index: int) -> None:
    img = _image(index)
    assert 3000 < _area_mm2(img, FEMUR) < 16000
    assert 3000 < _area_mm2(img, TIBIA) < 16000
    assert 700 < _area_mm2(img, FIBULA) < 6000
    assert 700 < _area_mm2(img, PATELLA) < 3000
    assert 60 < _condylar_width_mm(img) < 100
    assert 1.0 <= _joint_space_mm(img) < 9.0


@pytest.mark.parametrize("index", [0, 1, 2])
def test_labels_lie_inside_the_leg_and_overlap_as_documented(index: int) -> None:
    img = _image(index)
    bone = img.labels > 0
    assert not bone[:, :3].any() and not bone[:, -3:].any()  # nothing at the lateral borders
    # labelled bone is brighter than the air around the leg
    air = float(np.percentile(img.pixels, 2))
    assert float(np.median(img.pixels[bone])) > air + 800
    # the patella lies over the distal femur: femur surrounds it
    patella = img.labels == PATELLA
    ring = ndimage.binary_dilation(patella, iterations=3) & ~patella
    assert np.mean(img.labels[ring] == FEMUR) > 0.9
    # the fibular head overlaps the tibia: the two labels touch
    fibula = img.labels == FIBULA
    assert (img.labels[ndimage.binary_dilation(fibula) & ~fibula] == TIBIA).sum() > 20


def test_fibula_is_lateral_in_the_anatomical_display() -> None:
    seen = set()
    for index in range(8):
        img = _image(index) if index < 3 else xr_knee.generate(_subject(index))
        fib = np.argwhere(img.labels == FIBULA)[:, 1].mean()
        tib = np.argwhere(img.labels == TIBIA)[:, 1].mean()
        side = img.acquisition["laterality"]
        # patient's right on the image's left: a right knee's fibula (lateral) is at low columns
        assert (fib < tib) if side == "R" else (fib > tib)
        seen.add(side)
        if seen == {"L", "R"}:
            break
    assert seen == {"L", "R"}


def test_men_have_wider_knees_than_women() -> None:
    def widths(sex: Literal["F", "M"]) -> list[float]:
        spec = ShiftSpec(name=f"only-{sex}", groups=[Group(match=GroupMatch(sex=sex), share=1.0)])
        return [_condylar_width_mm(xr_knee.generate(draw_subject(xr_knee.KIND, i, 11, spec))) for i in range(8)]

    men, women = widths("M"), widths("F")
    assert np.mean(men) > 1.08 * np.mean(women), (men, women)


def test_age_narrows_the_joint_and_thins_bone_in_women() -> None:
    subject = dataclasses.replace(_subject(3), sex="F")
    young = xr_knee.generate(dataclasses.replace(subject, age_years=30))
    old = xr_knee.generate(dataclasses.replace(subject, age_years=85))
    assert _joint_space_mm(old) < _joint_space_mm(young) - 1.0
    femur = (young.labels == FEMUR) & (old.labels == FEMUR)
    assert float(np.mean(old.pixels[femur])) < float(np.mean(young.pixels[femur])) - 50


def test_bmi_widens_the_soft_tissue() -> None:
    subject = _subject(1)  # a subject without collimation blades, so the whole leg shows
    lean = xr_knee.generate(dataclasses.replace(subject, weight_kg=round(20 * subject.height_m**2, 1)))
    heavy = xr_knee.generate(dataclasses.replace(subject, weight_kg=round(40 * subject.height_m**2, 1)))

    def leg_width_mm(img: SyntheticImage) -> float:
        row = img.pixels[int(np.argwhere(img.labels == TIBIA)[:, 0].max()) - 5]  # across the calf
        assert row[:5].max() < 300 and row[-5:].max() < 300  # air at both sides
        return float((row > 300).sum()) * img.spacing[1]

    assert leg_width_mm(heavy) > leg_width_mm(lean) + 20


def test_each_shift_field_changes_the_image(caplog: pytest.LogCaptureFixture) -> None:
    subject = _subject(0)
    base = _image(0)
    tibia = ndimage.binary_erosion(base.labels == TIBIA, iterations=4)

    def residual_std(img: SyntheticImage) -> float:
        return float(np.std((img.pixels - ndimage.gaussian_filter(img.pixels, 3.0))[tibia]))

    assert residual_std(_with(subject, ImagingShift(noise=3.0))) > 1.8 * residual_std(base)
    blurred = _with(subject, ImagingShift(blur_mm=1.5))
    assert residual_std(blurred) < 0.8 * residual_std(base)
    low = _with(subject, ImagingShift(contrast=0.5))
    assert float(np.mean(low.pixels[tibia])) < float(np.mean(base.pixels[tibia])) - 300
    bright = _with(subject, ImagingShift(intensity_offset=300.0))
    assert 200 < float(np.mean(bright.pixels[tibia] - base.pixels[tibia])) <= 300.5
    artefact = _with(subject, ImagingShift(artefact_probability=1.0))
    assert artefact.acquisition["artefact"] in ("metal_screw", "motion_blur", "grid_lines")
    assert float(np.mean(np.abs(artefact.pixels - base.pixels))) > 5.0
    assert np.array_equal(artefact.labels, base.labels)  # artefacts are not anatomy
    with caplog.at_level(logging.WARNING, logger="cohorts.xr_knee"):
        big = _with(subject, ImagingShift(organ_scale={"patella": 1.3, "liver": 2.0}))
    assert _area_mm2(big, PATELLA) > 1.4 * _area_mm2(base, PATELLA)
    assert _area_mm2(big, TIBIA) == pytest.approx(_area_mm2(base, TIBIA), rel=0.02)
    assert "liver" in caplog.text


def test_lytic_lesion_darkens_bone_and_keeps_labels() -> None:
    subject = _subject(0)
    base = _image(0)
    sick = _with(subject, ImagingShift(lesion_mm=20, lesion_count=2))
    lesions = str(sick.acquisition["lesions"]).split("; ")
    assert len(lesions) == 2 and all(les.startswith("lytic ") for les in lesions)
    assert np.array_equal(sick.labels, base.labels)  # the lesion is part of the bone
    bone = base.labels > 0
    darker = (base.pixels - sick.pixels) > 150
    assert darker[bone].sum() * base.spacing[0] ** 2 > 400  # mm^2 of bone clearly more lucent
    assert darker[bone].mean() > 5 * darker[~bone].mean()
    assert "lesions" not in base.acquisition


def test_tight_collimation_hides_bone_and_its_labels() -> None:
    subject = _subject(0)
    base = _image(0)
    tight = _with(subject, ImagingShift(fov_fraction=0.7))
    width = tight.acquisition["field_width_mm"]
    assert isinstance(width, float) and 30 < width < 90
    hidden = (base.labels > 0) & (tight.labels == 0)
    assert hidden.sum() > 0.1 * (base.labels > 0).sum()  # bone cut off by the blades
    assert np.all(np.isin(tight.labels[tight.labels > 0], [FEMUR, TIBIA, FIBULA, PATELLA]))
    assert not ((tight.labels > 0) & (base.labels == 0)).any()
    # under the blades the detector is unexposed: bright and flat, far brighter than the bone it hides
    assert float(np.median(tight.pixels[hidden])) > float(np.median(base.pixels[hidden])) + 300
    exposed_cols = np.flatnonzero((tight.labels > 0).any(axis=0))
    assert np.ptp(exposed_cols) * base.spacing[1] < width + 2


def test_patellectomy_removes_the_patella_only() -> None:
    subject = _subject(0)
    base = _image(0)
    gone = _with(subject, ImagingShift(organ_scale={"patella": 0.0}))
    assert not (gone.labels == PATELLA).any()
    assert np.array_equal(gone.labels[base.labels != PATELLA], base.labels[base.labels != PATELLA])
    assert ((gone.labels == FEMUR) & (base.labels == PATELLA)).sum() > 0.8 * (base.labels == PATELLA).sum()


def test_volume_only_fields_are_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cohorts.xr_knee"):
        img = _with(_subject(0), ImagingShift(z_coverage=0.5, metal_mm=100))
    assert np.array_equal(img.pixels, _image(0).pixels)
    assert "z_coverage" in caplog.text and "metal_mm" in caplog.text
