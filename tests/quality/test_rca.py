"""Reverse classification accuracy: right masks score high, wrong ones low, the bank round-trips, errors say why.

Banks are small (4 CT references at matrix 128, 4 knee radiographs) and built once per module; the case is a
subject from another seed. Every CT estimate uses ``k = 3`` to keep the file fast on two cores.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from cohorts import ct_abdomen, xr_knee
from cohorts.subjects import draw_subject
from inference.model_card import bundled_models, load_card
from inference.preprocess import labels_to_model_grid, to_model_grid
from quality.rca import RcaError, RcaSettings, ReferenceBank, estimate
from quality.types import RcaResult

BANK_SEED = 3100
CASE_SEED = 4100


@dataclass(frozen=True)
class Case:
    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, ...]
    demographics: dict[str, str]


def _case(kind: str, index: int, seed: int) -> Case:
    card = load_card(bundled_models()[kind])
    subject = draw_subject(kind, index, seed)
    img = ct_abdomen.generate(subject, matrix=128) if kind == "ct-abdomen" else xr_knee.generate(subject)
    demographics = {
        "sex": subject.sex,
        "age_band": subject.age_band,
        "ethnic_group": subject.ethnic_group,
        "bmi_band": subject.bmi_band,
    }
    return Case(
        image=to_model_grid(img.pixels, img.spacing, card.input)[0],
        labels=labels_to_model_grid(img.labels, img.spacing, card.input)[0],
        spacing=tuple(card.input.spacing_mm),
        demographics=demographics,
    )


def _bank(kind: str, n: int) -> ReferenceBank:
    card = load_card(bundled_models()[kind])
    bank = ReferenceBank.build(tuple(card.input.spacing_mm), tuple(label.name for label in card.labels))
    for i in range(n):
        ref = _case(kind, i, BANK_SEED)
        bank.add(f"{kind}-{i}", ref.image, ref.labels, ref.spacing, ref.demographics)
    return bank


@pytest.fixture(scope="module")
def ct_bank() -> ReferenceBank:
    return _bank("ct-abdomen", 4)


@pytest.fixture(scope="module")
def ct_case() -> Case:
    return _case("ct-abdomen", 0, CASE_SEED)


@pytest.fixture(scope="module")
def ct_result(ct_case: Case, ct_bank: ReferenceBank) -> RcaResult:
    return estimate(ct_case.image, ct_case.labels, ct_case.spacing, ct_bank, k=3)


@pytest.fixture(scope="module")
def ct_correct(ct_result: RcaResult) -> dict[str, float]:
    return {s.name: s.max_dice for s in ct_result.structures}


LIVER, SPLEEN, RIGHT_KIDNEY, LEFT_KIDNEY = 1, 2, 3, 4


def test_correct_ct_mask_scores_high(ct_correct: dict[str, float]) -> None:
    assert ct_correct["liver"] > 0.75
    assert min(ct_correct.values()) > 0.45


def test_wrong_ct_masks_score_low(ct_case: Case, ct_bank: ReferenceBank, ct_correct: dict[str, float]) -> None:
    y = ct_case.labels
    wrong = y.copy()
    wrong[y == RIGHT_KIDNEY], wrong[y == LEFT_KIDNEY] = LEFT_KIDNEY, RIGHT_KIDNEY  # kidneys swapped
    wrong[y == SPLEEN] = 0  # spleen missed
    liver = y == LIVER
    depth = ndimage.distance_transform_edt(liver)
    wrong[liver & (depth < 0.6 * depth.max())] = 0  # liver eroded to a small blob
    result = estimate(ct_case.image, wrong, ct_case.spacing, ct_bank, k=3).by_label()
    assert result[SPLEEN].max_dice == 0.0 and math.isnan(result[SPLEEN].hd95_mm)
    for label, name in ((LIVER, "liver"), (RIGHT_KIDNEY, "right_kidney"), (LEFT_KIDNEY, "left_kidney")):
        assert result[label].max_dice < 0.5, name
        assert result[label].max_dice < ct_correct[name] - 0.3, name


def test_shifted_ct_mask_scores_lower(ct_case: Case, ct_bank: ReferenceBank, ct_correct: dict[str, float]) -> None:
    shift = round(20 / ct_case.spacing[2])  # 20 mm towards the patient's left
    result = estimate(ct_case.image, np.roll(ct_case.labels, shift, axis=2), ct_case.spacing, ct_bank, k=3)
    for s in result.structures:
        assert s.max_dice < ct_correct[s.name] - 0.15, s.name
    assert sum(s.max_dice < 0.5 for s in result.structures) >= 3


def test_estimate_is_deterministic(tmp_path: Path, ct_case: Case, ct_bank: ReferenceBank, ct_result: RcaResult) -> None:
    # a bank read back from its file starts with cold caches; same inputs, same numbers
    fresh = ReferenceBank.load(ct_bank.save(tmp_path / "bank.npz"))
    again = estimate(ct_case.image, ct_case.labels, ct_case.spacing, fresh, k=3)
    assert again.references == ct_result.references
    for a, b in zip(again.structures, ct_result.structures, strict=True):
        assert (a.label, a.max_dice, a.mean_dice) == (b.label, b.max_dice, b.mean_dice)
        assert a.hd95_mm == b.hd95_mm or (math.isnan(a.hd95_mm) and math.isnan(b.hd95_mm))


def test_bank_coarser_than_the_model_grid(ct_case: Case, ct_bank: ReferenceBank, ct_correct: dict[str, float]) -> None:
    coarse = ReferenceBank.build(tuple(2 * s for s in ct_bank.spacing), ct_bank.label_names)
    for ref in ct_bank.references:
        coarse.add(ref.id, ref.image, ref.labels, ct_bank.spacing, ref.demographics)
    assert coarse.references[0].image.shape[1] == pytest.approx(ct_bank.references[0].image.shape[1] / 2, abs=1)
    result = estimate(ct_case.image, ct_case.labels, ct_case.spacing, coarse, k=3).by_label()
    assert result[LIVER].max_dice > 0.75
    assert abs(result[LIVER].max_dice - ct_correct["liver"]) < 0.1


def test_settings_for_a_bank_and_what_a_card_records() -> None:
    assert RcaSettings.for_bank(3) == RcaSettings()
    assert RcaSettings.for_bank(2) == RcaSettings.radiograph()
    legacy = RcaSettings.for_bank(3, {"affine_levels_mm": [48.0, 24.0], "bspline_levels_mm": [24.0]})
    assert legacy.affine_levels_mm == (48.0, 24.0)
    assert legacy.changes_from_default(3) == {"affine_levels_mm": [48.0, 24.0], "bspline_levels_mm": [24.0]}
    with pytest.raises(RcaError, match="unknown RCA settings"):
        RcaSettings.for_bank(2, {"thumbnail_factor": 4})


def test_bank_round_trip(tmp_path: Path, ct_bank: ReferenceBank) -> None:
    path = ct_bank.save(tmp_path / "bank.npz")
    loaded = ReferenceBank.load(path)
    assert loaded.spacing == ct_bank.spacing
    assert loaded.label_names == ct_bank.label_names
    assert loaded.composition() == ct_bank.composition()
    assert len(loaded.references) == len(ct_bank.references) == 4
    for a, b in zip(loaded.references, ct_bank.references, strict=True):
        assert a.id == b.id and a.demographics == b.demographics
        assert a.image.dtype == np.float32 and a.labels.dtype == np.uint8
        assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert path.stat().st_size < 2_000_000  # four references at 3 mm


def test_composition_counts_references(ct_bank: ReferenceBank) -> None:
    composition = ct_bank.composition()
    assert set(composition) == {"sex", "age_band", "ethnic_group", "bmi_band"}
    assert all(sum(counts.values()) == 4 for counts in composition.values())


def test_corrupt_bank_file_names_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip file")
    with pytest.raises(RcaError, match=r"garbage\.npz"):
        ReferenceBank.load(garbage)
    no_meta = tmp_path / "no_meta.npz"
    np.savez_compressed(no_meta, image_0=np.zeros((4, 4), np.uint8))
    with pytest.raises(RcaError, match=r"no_meta\.npz.*meta"):
        ReferenceBank.load(no_meta)
    with pytest.raises(RcaError, match=r"missing\.npz"):
        ReferenceBank.load(tmp_path / "missing.npz")


def test_inconsistent_bank_file_is_refused(tmp_path: Path) -> None:
    bank = ReferenceBank.build((1.0, 1.0), ("disc",))
    image, labels = _disc((40, 40), (20, 20), 8)
    bank.add("a", image, labels, (1.0, 1.0), _DEMOGRAPHICS)
    path = bank.save(tmp_path / "small.npz")
    with np.load(path) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays["labels_0"] = arrays["labels_0"][:-1]
    np.savez_compressed(tmp_path / "cut.npz", **arrays)
    with pytest.raises(RcaError, match=r"cut\.npz.*reference 0"):
        ReferenceBank.load(tmp_path / "cut.npz")


_DEMOGRAPHICS = {"sex": "F", "age_band": "40-59", "ethnic_group": "White", "bmi_band": "normal"}


def _disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    inside = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2
    image = ndimage.gaussian_filter(inside.astype(np.float32) * 0.8 + 0.1, 1.0)
    return image.astype(np.float32), inside.astype(np.uint8)


def test_absent_structure_scores_one_and_nan() -> None:
    bank = ReferenceBank.build((1.0, 1.0), ("disc", "never-present"))
    for i, centre in enumerate([(30, 30), (32, 29), (29, 33)]):
        image, labels = _disc((64, 64), centre, 12 + i)
        bank.add(f"disc-{i}", image, labels, (1.0, 1.0), _DEMOGRAPHICS)
    image, labels = _disc((64, 64), (31, 31), 13)
    result = estimate(image, labels, (1.0, 1.0), bank, k=3).by_label()
    assert result[1].max_dice > 0.9 and 0 <= result[1].hd95_mm < 3
    assert result[2].max_dice == result[2].mean_dice == 1.0 and math.isnan(result[2].hd95_mm)


def test_input_errors_say_what_is_wrong() -> None:
    bank = ReferenceBank.build((1.0, 1.0), ("disc",))
    image, labels = _disc((40, 40), (20, 20), 8)
    with pytest.raises(RcaError, match="empty"):
        estimate(image, labels, (1.0, 1.0), bank)
    bank.add("a", image, labels, (1.0, 1.0), _DEMOGRAPHICS)
    with pytest.raises(RcaError, match="same shape"):
        estimate(image, labels[:-1], (1.0, 1.0), bank)
    with pytest.raises(RcaError, match="3 dimensions"):
        estimate(image[None], labels[None], (1.0, 1.0, 1.0), bank)
    with pytest.raises(RcaError, match="spacing"):
        estimate(image, labels, (1.0,), bank)
    with pytest.raises(RcaError, match=r"\[0, 1\]"):
        estimate(image * 300, labels, (1.0, 1.0), bank)
    with pytest.raises(RcaError, match=r"labels span 0\.\.2"):
        estimate(image, labels * 2, (1.0, 1.0), bank)
    with pytest.raises(RcaError, match="already"):
        bank.add("a", image, labels, (1.0, 1.0), _DEMOGRAPHICS)
    with pytest.raises(RcaError, match="bmi_band"):
        bank.add("b", image, labels, (1.0, 1.0), {"sex": "F", "age_band": "75+", "ethnic_group": "Other"})
    with pytest.raises(RcaError, match="constant"):
        estimate(np.full_like(image, 0.5), labels, (1.0, 1.0), bank)
    with pytest.raises(RcaError, match="k must be"):
        RcaSettings(k=0)
    with pytest.raises(RcaError, match="affine_levels_mm"):
        RcaSettings(affine_levels_mm=())


def test_k_beyond_the_bank_is_clamped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    bank = ReferenceBank.build((1.0, 1.0), ("disc",))
    for i in range(2):
        image, labels = _disc((48, 48), (24, 23 + i), 10)
        bank.add(f"disc-{i}", image, labels, (1.0, 1.0), _DEMOGRAPHICS)
    with caplog.at_level(logging.WARNING, logger="quality.rca"):
        result = estimate(image, labels, (1.0, 1.0), bank, k=5)
    assert len(result.references) == 2
    assert "k=5" in caplog.text and "2 references" in caplog.text


def test_case_is_resampled_onto_the_bank_grid() -> None:
    bank = ReferenceBank.build((1.0, 1.0), ("disc",))
    image, labels = _disc((64, 64), (32, 32), 14)
    bank.add("fine", image, labels, (1.0, 1.0), _DEMOGRAPHICS)
    coarse_image, coarse_labels = _disc((32, 32), (16, 16), 7)  # the same disc at 2 mm
    result = estimate(coarse_image, coarse_labels, (2.0, 2.0), bank, k=1)
    assert result.structures[0].max_dice > 0.85


def test_knee_radiographs_work_in_2d() -> None:
    bank = _bank("xr-knee", 4)
    case = _case("xr-knee", 0, CASE_SEED)
    settings = RcaSettings.radiograph()
    correct = estimate(case.image, case.labels, case.spacing, bank, k=3, settings=settings).by_label()
    assert min(s.max_dice for s in correct.values()) > 0.6
    assert correct[1].max_dice > 0.8 and correct[2].max_dice > 0.8  # femur, tibia
    swapped = case.labels.copy()
    swapped[case.labels == 1], swapped[case.labels == 2] = 2, 1
    wrong = estimate(case.image, swapped, case.spacing, bank, k=3, settings=settings).by_label()
    assert wrong[1].max_dice < 0.3 and wrong[2].max_dice < 0.3
    assert wrong[3].max_dice == pytest.approx(correct[3].max_dice)  # untouched structures score the same


def test_a_short_scan_range_still_gets_its_estimate(ct_bank: ReferenceBank) -> None:
    # a protocol that starts below the liver dome leaves few slices at RCA's coarsest level; the recursive
    # Gaussian of ITK refuses fewer than 4 voxels along an axis, so every registration failed before
    from cohorts.shift import Group, GroupMatch, ImagingShift, ShiftSpec

    spec = ShiftSpec(
        name="short",
        description="short",
        groups=[Group(match=GroupMatch(), share=1.0, shift=ImagingShift(z_coverage=0.3))],
    )
    card = load_card(bundled_models()["ct-abdomen"])
    img = ct_abdomen.generate(draw_subject("ct-abdomen", 0, CASE_SEED, spec), matrix=128)
    image = to_model_grid(img.pixels, img.spacing, card.input)[0]
    labels = labels_to_model_grid(img.labels, img.spacing, card.input)[0]
    result = estimate(image, labels, tuple(card.input.spacing_mm), ct_bank, k=3).by_label()
    assert (labels == RIGHT_KIDNEY).any() and (labels == LEFT_KIDNEY).any()
    assert result[RIGHT_KIDNEY].max_dice > 0.5 and result[LEFT_KIDNEY].max_dice > 0.5
