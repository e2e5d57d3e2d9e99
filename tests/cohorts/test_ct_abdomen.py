import dataclasses
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from cohorts import ct_abdomen
from cohorts.image import SyntheticImage
from cohorts.shift import ImagingShift
from cohorts.subjects import Subject, draw_subject

MATRIX = 128


def _volumes_ml(img) -> dict[str, float]:  # type: ignore[no-untyped-def]
    vox = float(np.prod(img.spacing)) / 1000
    return {lab.name: float((img.labels == lab.value).sum()) * vox for lab in img.label_info}


def test_deterministic_and_subjects_differ() -> None:
    s = draw_subject("ct-abdomen", 0, 1)
    a = ct_abdomen.generate(s, matrix=MATRIX)
    b = ct_abdomen.generate(s, matrix=MATRIX)
    assert np.array_equal(a.pixels, b.pixels) and np.array_equal(a.labels, b.labels)
    c = ct_abdomen.generate(draw_subject("ct-abdomen", 1, 1), matrix=MATRIX)
    assert a.pixels.shape != c.pixels.shape or not np.array_equal(a.labels, c.labels)


def test_organs_present_with_plausible_volumes() -> None:
    for i in range(4):
        img = ct_abdomen.generate(draw_subject("ct-abdomen", i, 2), matrix=MATRIX)
        vol = _volumes_ml(img)
        assert 700 < vol["liver"] < 3200, vol
        assert 60 < vol["spleen"] < 600, vol
        assert 50 < vol["right_kidney"] < 300 and 50 < vol["left_kidney"] < 300, vol
        assert 15 < vol["aorta"] < 250, vol
        assert img.pixels.dtype == np.float32 and img.labels.dtype == np.uint8
        assert img.pixels.min() >= -1024 and img.pixels.max() <= 3071


def test_geometry_right_organs_on_low_columns() -> None:
    img = ct_abdomen.generate(draw_subject("ct-abdomen", 0, 3), matrix=MATRIX)
    cols = {lab.name: np.argwhere(img.labels == lab.value)[:, 2].mean() for lab in img.label_info}
    # DICOM LPS: columns run to the patient's left, so the liver and right kidney sit at low columns
    assert cols["liver"] < cols["spleen"]
    assert cols["right_kidney"] < cols["left_kidney"]


def test_tissue_values_are_realistic() -> None:
    img = ct_abdomen.generate(draw_subject("ct-abdomen", 2, 4), matrix=MATRIX)
    liver = float(np.median(img.pixels[img.labels == 1]))
    aorta = float(np.median(img.pixels[img.labels == 5]))
    assert 60 < liver < 140 and 120 < aorta < 230
    assert float(np.median(img.pixels[0, :5, :5])) < -900  # air in the corner


def test_shift_fields_change_the_image() -> None:
    s = draw_subject("ct-abdomen", 5, 6)
    base = ct_abdomen.generate(s, matrix=MATRIX)
    liver = ndimage.binary_erosion(base.labels == 1, iterations=2)  # away from partial-volume edges
    noisy = ct_abdomen.generate(dataclasses.replace(s, shift=ImagingShift(noise=3.0)), matrix=MATRIX)
    assert np.std(noisy.pixels[liver]) > 1.8 * np.std(base.pixels[liver])
    flat = ct_abdomen.generate(dataclasses.replace(s, shift=ImagingShift(contrast=0.5)), matrix=MATRIX)
    assert np.median(flat.pixels[liver]) < np.median(base.pixels[liver]) - 30
    big = ct_abdomen.generate(dataclasses.replace(s, shift=ImagingShift(organ_scale={"liver": 1.3})), matrix=MATRIX)
    assert (big.labels == 1).sum() > 1.6 * (base.labels == 1).sum()
    gone = ct_abdomen.generate(
        dataclasses.replace(s, shift=ImagingShift(organ_scale={"left_kidney": 0.0})), matrix=MATRIX
    )
    assert (gone.labels == 4).sum() == 0 and (gone.labels == 3).sum() > 0
    streaks = ct_abdomen.generate(dataclasses.replace(s, shift=ImagingShift(artefact_probability=1.0)), matrix=MATRIX)
    assert streaks.pixels.max() > 2000 > base.pixels.max()


def test_demographics_shape_anatomy() -> None:
    from cohorts.shift import Group, GroupMatch, ShiftSpec

    def mean_liver(match: GroupMatch) -> float:
        spec = ShiftSpec(name="t", groups=[Group(match=match, share=1.0)])
        vols = [
            _volumes_ml(ct_abdomen.generate(draw_subject("ct-abdomen", i, 9, spec), matrix=96))["liver"]
            for i in range(6)
        ]
        return float(np.mean(vols))

    assert mean_liver(GroupMatch(sex="M")) > mean_liver(GroupMatch(sex="F"))


def _shifted(s: Subject, **fields: Any) -> SyntheticImage:
    return ct_abdomen.generate(dataclasses.replace(s, shift=ImagingShift(**fields)), matrix=MATRIX)


def test_liver_lesion_changes_liver_pixels_and_stays_liver() -> None:
    s = draw_subject("ct-abdomen", 1, 6)
    base = ct_abdomen.generate(s, matrix=MATRIX)
    sick = _shifted(s, lesion_mm=35)
    lesion = sick.acquisition["lesions"]
    assert isinstance(lesion, str) and lesion.split()[0] in ("hypodense", "hyperdense")
    base_liver, sick_liver = base.labels == 1, sick.labels == 1
    # every liver voxel stays liver; the only new label is liver, where the lesion bulges out of the outline
    assert np.all(sick_liver[base_liver])
    assert np.array_equal(sick.labels[~sick_liver], base.labels[~sick_liver])
    assert sick_liver.sum() < 1.3 * base_liver.sum()
    changed = np.abs(sick.pixels - base.pixels) > 40
    assert changed[base_liver].sum() > 0.03 * base_liver.sum()
    assert np.median(np.abs(sick.pixels - base.pixels)[changed & sick_liver]) > 50
    # the lesion has a generator of its own: far from it, not a single voxel moves
    assert np.mean(sick.pixels == base.pixels) > 0.8
    assert "lesions" not in base.acquisition


def test_several_lesions_and_no_liver() -> None:
    s = draw_subject("ct-abdomen", 1, 6)
    three = _shifted(s, lesion_mm=25, lesion_count=3)
    assert len(str(three.acquisition["lesions"]).split("; ")) == 3
    no_liver = _shifted(s, lesion_mm=25, organ_scale={"liver": 0.0, "spleen": 0.0, "aorta": 0.0})
    assert not np.isin(no_liver.labels, [1, 2, 5]).any() and (no_liver.labels == 3).any()
    assert np.isfinite(no_liver.pixels).all() and no_liver.acquisition["lesions"] == ""


def test_truncated_field_of_view_pads_and_drops_truth_outside() -> None:
    s = draw_subject("ct-abdomen", 3, 6)
    base = ct_abdomen.generate(s, matrix=MATRIX)
    cut = _shifted(s, fov_fraction=0.6)
    assert cut.pixels.shape == base.pixels.shape and cut.origin == base.origin and cut.spacing == base.spacing
    outside = np.all(cut.pixels == ct_abdomen.PADDING_HU, axis=0)  # (rows, columns) beyond the circle
    assert 0.2 < outside.mean() < 0.95
    assert not cut.labels[:, outside].any()
    assert (base.pixels[:, outside] > -500).any()  # body was there and is now cut away
    assert (base.labels[:, outside] > 0).any()  # and so was labelled anatomy
    diameter = cut.acquisition["scan_field_diameter_mm"]
    assert isinstance(diameter, float) and 100 < diameter < 400
    # truncation brightens the edge of the field where the body overhangs it
    rim = ndimage.binary_dilation(outside, iterations=3) & ~outside
    body_rim = rim[None] & (base.pixels > -200)
    assert float(np.mean(cut.pixels[body_rim] - base.pixels[body_rim])) > 50


def test_short_scan_range_drops_the_top_slices_only() -> None:
    s = draw_subject("ct-abdomen", 0, 6)
    full = ct_abdomen.generate(s, matrix=MATRIX)
    short = _shifted(s, z_coverage=0.5)
    n_full, n_short = full.pixels.shape[0], short.pixels.shape[0]
    assert abs(n_short - 0.5 * (n_full - 1) - 1) <= 1
    skip = n_full - n_short
    dz = full.spacing[0]
    assert short.origin[2] == pytest.approx(full.origin[2] - skip * dz)
    assert np.mean(short.labels == full.labels[skip:]) > 0.999  # same anatomy, same slice positions
    assert (full.labels[:skip] == 2).sum() > (short.labels == 2).sum()  # the spleen lies mostly above


def test_spinal_hardware_adds_metal_not_labels() -> None:
    s = draw_subject("ct-abdomen", 2, 6)
    base = ct_abdomen.generate(s, matrix=MATRIX)
    fused = _shifted(s, metal_mm=120)
    assert np.array_equal(fused.labels, base.labels)
    assert fused.pixels.max() > 2500 > base.pixels.max()
    metal_slices = np.flatnonzero((fused.pixels > 2500).any(axis=(1, 2)))
    assert 0.5 * 120 < len(metal_slices) * fused.spacing[0] < 120 + 2 * fused.spacing[0]
    k = int(metal_slices[len(metal_slices) // 2])
    assert float(np.std(fused.pixels[k] - base.pixels[k])) > 30  # streaks across the slice
    assert fused.acquisition["spinal_hardware_mm"] == 120.0
