"""The shipped mr-brain model: the default rules route a brain MR study to it, the node's pipeline segments a
cohort study about as well as the card's held-out validation says, and the card carries that validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from cohorts import mr_brain
from cohorts.dicom_writer import WrittenStudy, write_study
from cohorts.subjects import draw_subject
from dicom_node.selection import SeriesInfo, select
from fairnode.node import offline_context
from fairnode.pipeline import QualitySettings, process_study
from fairnode.settings import load_settings
from inference.metrics import dice_per_label
from inference.model_card import load_card

MODEL = Path(__file__).resolve().parents[2] / "inference" / "models" / "mr-brain"
#: a seed no training, validation or calibration cohort of the model uses
SEED = 6100
#: held-out Dice the shipped model must keep per tissue (its card: 0.909, 0.906, 0.830 on 40 subjects)
FLOOR = {"grey_matter": 0.89, "white_matter": 0.88, "csf": 0.81}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[WrittenStudy, np.ndarray]:
    subject = draw_subject(mr_brain.KIND, 0, SEED)
    image = mr_brain.generate(subject)
    return write_study(image, subject, tmp_path_factory.mktemp("mr")), image.labels


def test_card_states_the_held_out_validation_per_tissue_and_group() -> None:
    card = load_card(MODEL)
    assert card.input.modality == "MR" and card.input.spatial_dims == 3
    assert card.validation is not None and card.validation.cohort.n >= 40
    dice = card.validation.dice
    assert set(dice) == set(FLOOR) and all(dice[name] >= floor for name, floor in FLOOR.items()), dice
    assert set(card.validation.dice_by_group) == {"sex", "age_band", "ethnic_group", "bmi_band"}


def test_card_has_its_rca_bank_calibration_table_and_gate() -> None:
    card = load_card(MODEL)
    quality = card.quality
    assert quality is not None and quality.sampling == "mc-dropout" and quality.samples >= 2
    assert quality.rca is not None and quality.predictor is not None and quality.gate is not None
    assert quality.rca.cohort.kind == quality.predictor.cohort.kind == "mr-brain"
    assert (MODEL / quality.rca.file).is_file() and (MODEL / quality.predictor.table).is_file()
    assert set(quality.gate.structures) == set(FLOOR)


def test_default_rules_route_brain_and_head_mr_to_the_shipped_model(
    study: tuple[WrittenStudy, np.ndarray], tmp_path: Path
) -> None:
    written, _ = study
    ctx = offline_context(load_settings(None, data_dir=tmp_path / "data"))
    assert "mr-brain" in ctx.models.folders and "mr-brain" in {r.model for r in ctx.rules}
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in written.image_paths[:3]]
    brain = SeriesInfo.from_datasets(headers)
    assert brain.modality == "MR" and brain.body_part == "BRAIN"
    for ds in headers:
        ds.BodyPartExamined = "HEAD"
    head = SeriesInfo.from_datasets(headers)
    assert [s.model for s in select([brain, head], ctx.rules)] == ["mr-brain", "mr-brain"]


@pytest.mark.timeout(300)
def test_pipeline_segments_a_cohort_brain_mr_as_its_card_says(
    study: tuple[WrittenStudy, np.ndarray], tmp_path: Path
) -> None:
    written, truth = study
    ctx = offline_context(load_settings(None, data_dir=tmp_path / "data"))
    ctx.quality = QualitySettings(enabled=False)
    outcome = process_study(list(written.image_paths), study_uid=written.study_uid, run=1, out_dir=tmp_path, ctx=ctx)
    (series,) = outcome.series
    assert (series.status, series.model) == ("done", "mr-brain"), series.reason
    assert series.seg_path is not None
    seg = pydicom.dcmread(series.seg_path)
    slice_of = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): k for k, p in enumerate(written.image_paths)
    }
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    labels = np.zeros_like(truth)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        labels[slice_of[str(source)]][frame > 0] = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
    dice = dict(zip(FLOOR, dice_per_label(labels, truth, 3).round(3), strict=True))
    assert all(dice[name] >= floor - 0.02 for name, floor in FLOOR.items()), dice
