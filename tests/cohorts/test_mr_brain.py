"""The synthetic T1 brain MR: determinism, geometry and orientation, tissue volumes, demographic effects,
shift fields."""

from __future__ import annotations

import dataclasses
import functools
import logging

import numpy as np
import pytest
from scipy import ndimage

from cohorts import mr_brain
from cohorts.image import SyntheticImage
from cohorts.shift import ImagingShift
from cohorts.subjects import Subject, draw_subject

SEED = 7
GM, WM, CSF = 1, 2, 3


def _subject(index: int) -> Subject:
    return draw_subject(mr_brain.KIND, index, SEED)


@functools.cache
def _image(index: int) -> SyntheticImage:
    return mr_brain.generate(_subject(index))


def _with(subject: Subject, shift: ImagingShift) -> SyntheticImage:
    return mr_brain.generate(dataclasses.replace(subject, shift=shift))


def _ml(img: SyntheticImage, value: int) -> float:
    return float((img.labels == value).sum()) * float(np.prod(img.spacing)) / 1000.0


def _lps(img: SyntheticImage, index: np.ndarray) -> np.ndarray:
    """LPS positions (mm) of voxel indices (n, 3) = (slice, row, col) from the image geometry."""
    row_dir, col_dir = np.array(img.orientation[:3]), np.array(img.orientation[3:])
    slice_dir = np.array(img.slice_direction)
    ds, dr, dc = img.spacing
    steps = index[:, :1] * ds * slice_dir + index[:, 1:2] * dr * col_dir + index[:, 2:3] * dc * row_dir
    return np.asarray(img.origin) + steps


def test_deterministic_and_subjects_differ() -> None:
    a = _image(0)
    b = mr_brain.generate(_subject(0))
    assert np.array_equal(a.pixels, b.pixels) and np.array_equal(a.labels, b.labels)
    assert a.origin == b.origin and a.acquisition == b.acquisition
    c = _image(1)
    assert a.pixels.shape != c.pixels.shape or not np.array_equal(a.labels, c.labels)


@pytest.mark.parametrize("index", [0, 1])
def test_volume_geometry_and_header(index: int) -> None:
    img = _image(index)
    ns, nr, nc = img.pixels.shape
    assert img.modality == "MR" and img.pixels.dtype == np.float32 and img.labels.dtype == np.uint8
    assert 120 <= ns <= 200 and 170 <= nr <= 250 and 140 <= nc <= 220
    assert all(1.0 <= s <= 1.2 for s in img.spacing)
    assert img.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0) and img.slice_direction == (0.0, 0.0, -1.0)
    assert float(img.pixels.min()) >= 0.0
    acq = img.acquisition
    assert acq["body_part"] == "BRAIN" and acq["mr_acquisition_type"] == "3D"
    assert acq["scanning_sequence"] == ["GR", "IR"] and acq["sequence_variant"] == ["SP", "MP"]
    assert acq["study_description"] == "MR BRAIN" and acq["series_description"] == "T1 MPRAGE"
    tr, te, ti, fa, b0 = (
        acq[k] for k in ("repetition_time", "echo_time", "inversion_time", "flip_angle", "magnetic_field_strength")
    )
    assert isinstance(tr, float) and 2000 <= tr <= 2300 and isinstance(te, float) and 2 <= te <= 3
    assert isinstance(ti, float) and 850 <= ti <= 1000 and fa in (8.0, 9.0) and b0 in (1.5, 3.0)
    assert acq["slice_thickness"] == img.spacing[0] and acq["artefact"] == "none"


def test_labels_codes_and_categories() -> None:
    info = {lab.name: (lab.value, lab.code, lab.category_code) for lab in mr_brain.LABELS}
    assert info == {
        "grey_matter": (1, "389081007", "85756007"),
        "white_matter": (2, "389080008", "85756007"),
        "csf": (3, "65216001", "85756007"),
    }
    assert len({lab.color for lab in mr_brain.LABELS}) == 3


@pytest.mark.parametrize("index", [0, 1])
def test_tissues_present_with_plausible_volumes(index: int) -> None:
    img = _image(index)
    assert 400 < _ml(img, GM) < 900
    assert 300 < _ml(img, WM) < 700
    assert 80 < _ml(img, CSF) < 450
    # T1 contrast: white matter brighter than grey matter, brighter than CSF
    wm = np.median(img.pixels[ndimage.binary_erosion(img.labels == WM, iterations=2)])
    gm = np.median(img.pixels[img.labels == GM])
    csf = np.median(img.pixels[ndimage.binary_erosion(img.labels == CSF)])
    assert wm > 1.15 * gm and gm > 1.3 * csf


def test_labels_stay_inside_the_head() -> None:
    img = _image(0)
    brain = img.labels > 0
    # no label on the top slice nor on the four side faces; the bottom slice cuts the brain stem
    assert not brain[0].any()
    assert not brain[:, 0].any() and not brain[:, -1].any()
    assert not brain[:, :, 0].any() and not brain[:, :, -1].any()
    assert brain[-1].any()
    air = float(np.median(img.pixels[:3, :3, :3]))
    assert float(np.median(img.pixels[brain])) > 5 * air


def test_orientation_follows_lps() -> None:
    """Columns run to the patient's left, rows to posterior, slices to inferior (checked on the
    template's affine, as the symmetric template cannot show left from right)."""
    # the MNI152 2009 1 mm template: voxel (i, j, k) at RAS (i - 98, j - 134, k - 72) mm
    affine = np.array([[1.0, 0, 0, -98.0], [0, 1.0, 0, -134.0], [0, 0, 1.0, -72.0], [0, 0, 0, 1.0]])
    template = mr_brain._template()
    assert np.allclose(np.linalg.inv(affine)[:3] @ np.diag([-1.0, -1.0, 1.0, 1.0]), template.vox_from_lps)
    grid = mr_brain._Grid(shape=(3, 4, 5), spacing=(1.0, 1.1, 1.2), origin=(-2.0, -1.5, 1.0))
    ci, cj, ck = mr_brain._template_coordinates(template, grid, np.eye(3), None)
    ras = np.einsum("ab,b...->a...", affine[:3, :3], np.stack([ci, cj, ck])) + affine[:3, 3, None, None, None]
    z, y, x = grid.axes()
    # with no scaling, rotation or warp, output voxel (s, r, c) samples the template at LPS (x, y, z)
    assert np.allclose(ras[0], -x[None, None, :], atol=1e-4)  # RAS x = -LPS x
    assert np.allclose(ras[1], -y[None, :, None], atol=1e-4)
    assert np.allclose(ras[2], z[:, None, None], atol=1e-4)
    assert np.all(np.diff(ras[0], axis=2) < 0)  # higher column: patient left (RAS x falls)
    assert np.all(np.diff(ras[1], axis=1) < 0) and np.all(np.diff(ras[2], axis=0) < 0)
    # the sparse form (used for the tissue) agrees with the dense one
    at = np.array([0, 7, 59])
    sparse = mr_brain._template_coordinates(template, grid, np.eye(3), None, at=at)
    assert all(np.allclose(s, d.ravel()[at]) for s, d in zip(sparse, (ci, cj, ck), strict=True))
    # end to end: the brain's centroid is posterior and superior to the anterior commissure (LPS 0)
    img = _image(0)
    centroid = _lps(img, np.argwhere(img.labels > 0).astype(float)).mean(axis=0)
    assert abs(centroid[0]) < 6 and 5 < centroid[1] < 35 and 0 < centroid[2] < 30, centroid


def test_older_brains_have_more_csf_and_less_grey_matter() -> None:
    subject, base = _subject(0), _image(0)
    assert subject.age_years < 60
    old = mr_brain.generate(dataclasses.replace(subject, age_years=88))
    assert _ml(old, CSF) > 1.3 * _ml(base, CSF)
    assert _ml(old, GM) < 0.92 * _ml(base, GM)


def test_men_have_larger_heads() -> None:
    subject, man = _subject(0), _image(0)
    assert subject.sex == "M" and subject.height_m >= 1.7
    woman = mr_brain.generate(dataclasses.replace(subject, sex="F", height_m=1.64))
    icv = [sum(_ml(img, v) for v in (GM, WM, CSF)) for img in (man, woman)]
    assert icv[0] > 1.08 * icv[1]


def test_each_shift_field_changes_the_image(caplog: pytest.LogCaptureFixture) -> None:
    subject = _subject(0)
    base = _image(0)
    air = np.zeros(base.labels.shape, bool)
    air[:4, :8, :8] = True  # corner above the head
    white = ndimage.binary_erosion(base.labels == WM, iterations=2)

    noisy_bright = _with(subject, ImagingShift(noise=3.0, intensity_offset=150.0))
    assert np.std(noisy_bright.pixels[air]) > 2.2 * np.std(base.pixels[air])  # air: no tissue offset
    lift = float(np.median(noisy_bright.pixels[white]) - np.median(base.pixels[white]))
    assert 120 < lift < 180

    flat = _with(subject, ImagingShift(contrast=0.5))

    def gm_wm_gap(img: SyntheticImage) -> float:
        return float(np.median(img.pixels[white]) - np.median(img.pixels[img.labels == GM]))

    assert gm_wm_gap(flat) < 0.65 * gm_wm_gap(base)

    blurred = _with(subject, ImagingShift(blur_mm=2.0))

    def edges(img: SyntheticImage) -> float:
        return float(np.mean(np.abs(np.diff(img.pixels, axis=2))[base.labels[:, :, 1:] > 0]))

    assert edges(blurred) < 0.85 * edges(base)

    ghost = _with(subject, ImagingShift(artefact_probability=1.0))
    assert ghost.acquisition["artefact"] in ("ghosting", "motion")
    outside = (base.labels == 0) & (ndimage.distance_transform_edt(base.pixels < 0.1 * base.pixels.max()) > 3)
    assert np.mean(ghost.pixels[outside]) > 1.2 * np.mean(base.pixels[outside])
    assert np.array_equal(ghost.labels, base.labels)

    with caplog.at_level(logging.WARNING, logger="cohorts.mr_brain"):
        thin = _with(subject, ImagingShift(organ_scale={"grey_matter": 0.8, "liver": 1.3}))
    assert 0.65 * _ml(base, GM) < _ml(thin, GM) < 0.9 * _ml(base, GM)
    assert _ml(thin, CSF) > _ml(base, CSF)
    assert "liver" in caplog.text
