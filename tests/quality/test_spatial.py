"""Region shares of a structure's uncertainty: planted uncertainty is found where it was put."""

from __future__ import annotations

import numpy as np
import pytest

from quality.spatial import REGION_KEYS, region_shares, structure_regions


def _block(shape: tuple[int, ...], lo: tuple[int, ...], hi: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return mask


def test_uncertainty_on_the_superior_boundary_is_found_there() -> None:
    shape = (40, 40, 40)
    mask = _block(shape, (10, 10, 10), (30, 30, 30))
    entropy = np.zeros(shape, dtype=np.float32)
    entropy[9:12, 12:28, 12:28] = 1.0  # the top face of the structure (index 0 = superior)
    shares = structure_regions(entropy, mask, (1.0, 1.0, 1.0), field_edge_mm=5.0)
    assert set(shares) == set(REGION_KEYS)
    assert shares["superior"] == pytest.approx(1.0)
    assert shares["middle"] == shares["inferior"] == 0.0
    assert shares["boundary"] == pytest.approx(1.0)
    assert shares["field_edge"] == 0.0
    assert shares["left"] + shares["centre"] + shares["right"] == pytest.approx(1.0)
    assert shares["centre"] > shares["left"]


def test_interior_uncertainty_on_the_patients_left_is_not_boundary() -> None:
    shape = (40, 60)  # a radiograph: rows head to feet, columns towards the patient's left
    mask = _block(shape, (5, 5), (35, 55))
    entropy = np.zeros(shape, dtype=np.float32)
    entropy[15:25, 45:50] = 0.5  # inside, far from the surface, in the last third of the columns
    shares = structure_regions(entropy, mask, (0.5, 0.5), boundary_mm=1.0)
    assert shares["left"] == pytest.approx(1.0)
    assert shares["right"] == 0.0
    assert shares["boundary"] == 0.0
    assert shares["middle"] == pytest.approx(1.0)


def test_field_edge_counts_uncertainty_at_the_image_border() -> None:
    shape = (30, 30, 30)
    mask = _block(shape, (0, 10, 10), (15, 20, 20))  # a structure cut by the scan range
    entropy = np.zeros(shape, dtype=np.float32)
    entropy[0:2, 10:20, 10:20] = 1.0
    entropy[12:14, 10:20, 10:20] = 1.0
    shares = structure_regions(entropy, mask, (2.0, 1.0, 1.0), field_edge_mm=4.0)
    assert shares["field_edge"] == pytest.approx(0.5)


def test_empty_structure_or_no_uncertainty_gives_no_shares() -> None:
    shape = (20, 20)
    assert structure_regions(np.ones(shape), np.zeros(shape, dtype=bool), (1.0, 1.0)) == {}
    assert structure_regions(np.zeros(shape), _block(shape, (5, 5), (10, 10)), (1.0, 1.0)) == {}


def test_uncertainty_far_from_the_structure_is_not_counted() -> None:
    shape = (60, 60)
    mask = _block(shape, (5, 5), (15, 15))
    entropy = np.zeros(shape, dtype=np.float32)
    entropy[40:50, 40:50] = 1.0  # 35 mm away, outside the 10 mm neighbourhood
    assert structure_regions(entropy, mask, (1.0, 1.0)) == {}
    entropy[15, 10] = 1.0
    assert structure_regions(entropy, mask, (1.0, 1.0))["boundary"] == pytest.approx(1.0)


def test_every_label_gets_its_own_shares() -> None:
    labels = np.zeros((30, 30), dtype=np.uint8)
    labels[2:10, 2:10] = 1
    labels[20:28, 20:28] = 2
    entropy = np.zeros((30, 30), dtype=np.float32)
    entropy[3:5, 3:9] = 1.0
    out = region_shares(entropy, labels, (1.0, 1.0), 3)
    assert out[1]["superior"] == pytest.approx(1.0)
    assert out[2] == {}  # no uncertainty near it
    assert out[3] == {}  # absent label


def test_mismatched_inputs_are_refused_with_their_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(5, 5\)"):
        structure_regions(np.zeros((4, 4)), np.zeros((5, 5), dtype=bool), (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing has 3 values for a 2D grid"):
        structure_regions(np.zeros((4, 4)), np.ones((4, 4), dtype=bool), (1.0, 1.0, 1.0))
