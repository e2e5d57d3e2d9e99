import dataclasses

import numpy as np
from scipy import ndimage

from cohorts import ct_abdomen
from cohorts.shift import ImagingShift
from cohorts.subjects import draw_subject

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
