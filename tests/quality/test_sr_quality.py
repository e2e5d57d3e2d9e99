"""The SR says whether an RCA value is raw or calibrated, and which structure needs review."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from pydicom.sr.codedict import codes

from dicom_node.writers.sr import RCA_CALIBRATED
from quality.types import CaseQuality
from tests.conftest import dciodvfy_errors
from tests.dicom_node.test_quality_writers import (  # noqa: F401 - ct is a fixture used by name
    Case,
    Q,
    _code,
    _find,
    _groups,
    _quality,
    _texts,
    _write_all,
    ct,
)


def _parameters(measurement: pydicom.Dataset) -> list[str]:
    return [str(i.TextValue) for i in measurement.ContentSequence if _code(i) == codes.DCM.AlgorithmParameters]


def test_sr_marks_rca_raw_or_calibrated_and_the_structure_to_review(ct: Case, tmp_path: Path) -> None:  # noqa: F811
    first = ct.card.labels[0].value
    base = _quality(ct, review=frozenset({first}))
    structures = []
    for s in base.structures:
        assert s.rca is not None
        rca = replace(s.rca, calibrated_dice=0.93) if s.label == first else s.rca
        structures.append(replace(s, rca=rca))
    quality = CaseQuality(base.route, base.reasons, tuple(structures), base.method, base.samples)
    written = _write_all(ct, quality, tmp_path)
    assert dciodvfy_errors(written.sr) == []
    groups = _groups(written.sr, ct.dims)
    for group, label in zip(groups, ct.card.labels, strict=True):
        raw = _find(group, "dice", "rca", "maximum")
        assert _parameters(raw[0])[-1] == "RCA value: raw"
        calibrated = [m for m in group.get_measurements(name=Q["dice"]) if m.method == RCA_CALIBRATED]
        evaluation = {e.name: e.value for e in group.get_qualitative_evaluations(name=Q["quality"])}
        if label.value == first:
            assert len(calibrated) == 1 and calibrated[0].value == pytest.approx(0.93)
            assert _parameters(calibrated[0][0])[-1] == "RCA value: calibrated"
            assert evaluation == {Q["quality"]: Q["needs_review"]}
            assert _texts(group[0], Q["reason"]) and _texts(group[0], Q["reason"])[0].startswith(label.name)
        else:
            assert calibrated == []
            assert evaluation == {Q["quality"]: Q["acceptable"]}
