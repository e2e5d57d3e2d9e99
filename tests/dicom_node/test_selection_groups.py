"""Group-specific models: selection routes by PatientSex / EthnicGroup with a fallback, and the SR says why."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from cohorts import xr_knee
from cohorts.dicom_writer import write_study
from cohorts.subjects import draw_subject
from dicom_node.selection import DEFAULT_RULES, SeriesInfo, SeriesRule, group_specific_rules, select
from dicom_node.writers import OutputSettings, build_seg, build_sr, segment_measurements
from tests.conftest import dciodvfy_errors
from tests.dicom_node.test_writers import _card

KNEE = next(r for r in DEFAULT_RULES if r.model == "xr-knee" and r.body_parts)


def _knee(uid: str, sex: str | None = None, ethnic: str | None = None) -> SeriesInfo:
    ds = Dataset()
    ds.SeriesInstanceUID = uid
    ds.Modality = "DX"
    ds.BodyPartExamined = "KNEE"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    if sex is not None:
        ds.PatientSex = sex
    if ethnic is not None:
        ds.EthnicGroup = ethnic
    return SeriesInfo.from_datasets([ds])


def test_sex_specific_models_with_fallback(caplog: pytest.LogCaptureFixture) -> None:
    rules = group_specific_rules(KNEE, "xr-knee-gs", {"F": "xr-knee-gs-f", "M": "xr-knee-gs-m"}, ["sex"])
    series = [_knee("1.1", "F"), _knee("1.2", "M"), _knee("1.3"), _knee("1.4", "O"), _knee("1.5", "")]
    with caplog.at_level(logging.INFO, logger="dicom_node.selection"):
        chosen = select(series, rules)
    assert [c.model for c in chosen] == ["xr-knee-gs-f", "xr-knee-gs-m", "xr-knee-gs", "xr-knee-gs", "xr-knee-gs"]
    assert chosen[0].reason.endswith("group-specific model for PatientSex F")
    assert "fallback model (group rules not met: rule 1 (xr-knee-gs-f) PatientSex (none) not in [F]" in chosen[2].reason
    assert "PatientSex O not in [M]" in chosen[3].reason
    # the log names the rule, never the patient's sex
    assert "PatientSex" not in caplog.text and "fallback model" in caplog.text


def test_ethnic_group_routes_through_the_registry_mapping() -> None:
    rules = group_specific_rules(KNEE, "xr-knee-gs", {"Black": "xr-knee-gs-black"}, ["ethnic_group"])
    chosen = select([_knee("2.1", ethnic="Afro Caribbean"), _knee("2.2", ethnic="Martian"), _knee("2.3")], rules)
    assert [c.model for c in chosen] == ["xr-knee-gs-black", "xr-knee-gs", "xr-knee-gs"]
    assert "ethnic group unknown not in [Black]" in chosen[1].reason


def test_intersection_and_rules_that_cannot_route() -> None:
    rules = group_specific_rules(KNEE, "fb", {"F/Black": "gs-f-black"}, ["sex", "ethnic_group"])
    assert select([_knee("3.1", "F", "black")], rules)[0].model == "gs-f-black"
    assert select([_knee("3.2", "M", "black")], rules)[0].model == "fb"
    with pytest.raises(ValueError, match="cannot route by age_band"):
        group_specific_rules(KNEE, "fb", {"18-39": "young"}, ["age_band"])
    with pytest.raises(ValueError, match="one value for each"):
        group_specific_rules(KNEE, "fb", {"F": "f"}, ["sex", "ethnic_group"])
    # a rule from settings: demographic lists are upper-cased like the others
    assert SeriesRule(model="x", modalities=["dx"], sexes=["f"]).sexes == ["F"]


def test_sr_names_the_model_and_why(tmp_path: Path) -> None:
    subject = draw_subject("xr-knee", 0, 1)
    image = xr_knee.generate(subject)
    written = write_study(image, subject, tmp_path / "dx")
    sources = [pydicom.dcmread(p) for p in written.image_paths]
    card = _card("xr-knee", xr_knee.LABELS, "DX", 2)
    labels = image.labels.astype(np.uint8)
    settings = OutputSettings()
    created = datetime(2026, 1, 2, 3, 4, 5)
    seg = build_seg(sources, labels, card, settings, created=created)
    info = SeriesInfo.from_datasets(sources)
    rules = group_specific_rules(KNEE, card.name, {"Z": "nobody"}, ["sex"])
    reason = select([info], rules)[0].reason
    measurements = segment_measurements(labels, tuple(float(s) for s in image.spacing), card)
    sr = build_sr(sources, seg, measurements, card, settings, created=created, selection_reason=reason)
    path = tmp_path / "sr.dcm"
    sr.save_as(path)
    texts = [
        item.TextValue
        for item in pydicom.dcmread(path).ContentSequence
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == codes.DCM.Comment.value
    ]
    assert texts == [f"Model {card.name} {card.version} selected: {reason}"]
    assert "fallback model" in texts[0]
    assert dciodvfy_errors(path) == []
