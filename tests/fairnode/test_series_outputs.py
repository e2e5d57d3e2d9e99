"""The outputs stage writes what the builders build: each file is its object's bytes, marked for review when asked."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.writers import build_probability_seg, build_seg, build_sr, build_uncertainty_map, segment_measurements
from fairnode.series_outputs import REVIEW_MARK, mark_for_review, write_series_outputs
from quality.assess import Assessment
from quality.types import Route, UncertaintyMaps
from tests.dicom_node.test_quality_writers import Case, _quality, ct  # noqa: F401  (the CT case, a fixture)
from tests.dicom_node.test_writers import CREATED, SETTINGS


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("mark_review", [False, True])
def test_written_files_are_the_builders_objects(ct: Case, tmp_path: Path, mark_review: bool) -> None:  # noqa: F811
    quality = _quality(ct, review=frozenset({1}))
    assert quality.route == Route.REVIEW
    # the maps on the source grid itself: no resampling, so the floats the builders take are the maps
    maps = UncertaintyMaps(ct.probabilities, ct.entropy, ct.entropy)
    assessment = Assessment(quality=quality, maps=maps, features={}, timings={})
    got = write_series_outputs(
        ct.sources,
        ct.labels,
        ct.spacing,
        assessment,
        ct.card,
        SETTINGS,
        tmp_path,
        run=2,
        selection_reason="rule ct",
        providers=["CPUExecutionProvider"],
        mark_review=mark_review,
        created=CREATED,
    )
    seg = build_seg(ct.sources, ct.labels, ct.card, SETTINGS, run=2, created=CREATED)
    probabilities = build_probability_seg(ct.sources, ct.probabilities, ct.card, SETTINGS, run=2, created=CREATED)
    entropy = build_uncertainty_map(ct.sources, ct.entropy, ct.card, SETTINGS, run=2, created=CREATED)
    sr = build_sr(
        ct.sources,
        seg,
        segment_measurements(ct.labels, ct.spacing, ct.card),
        ct.card,
        SETTINGS,
        run=2,
        created=CREATED,
        quality=quality,
        probabilities=probabilities,
        uncertainty_map=entropy,
        selection_reason="rule ct",
        providers=["CPUExecutionProvider"],
    )
    expected = {"seg.dcm": seg, "probability-seg.dcm": probabilities, "uncertainty.dcm": entropy, "sr.dcm": sr}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(expected)
    for name, ds in expected.items():
        if mark_review:
            mark_for_review(ds)
        assert (tmp_path / name).read_bytes() == _bytes(ds), name
        assert str(pydicom.dcmread(tmp_path / name).SeriesDescription).startswith(REVIEW_MARK) == mark_review
    assert got.seg.SOPInstanceUID == seg.SOPInstanceUID and got.sr.SOPInstanceUID == sr.SOPInstanceUID
    assert [m.segment_number for m in got.measurements] == [label.value for label in ct.card.labels]
    assert np.count_nonzero(ct.labels) > 0
