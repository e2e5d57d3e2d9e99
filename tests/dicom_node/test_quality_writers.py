"""Tests of the quality outputs of dicom_node.writers: PROBABILITY SEG, entropy map and the enriched SR.

Sources are small (8 CT slices of 128 x 128, one knee radiograph); every object is checked by dciodvfy
(0 errors) and read back with highdicom. The quality results are built by hand: no model runs here.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import JPEGLSLossless, RLELossless

from cohorts import ct_abdomen, xr_knee
from cohorts.dicom_writer import write_study
from cohorts.subjects import draw_subject
from dicom_node.writers import (
    ENTROPY_FLOOR_BITS,
    FAIRNODE_SCHEME,
    MAX_ENTROPY_VALUE,
    MAX_FRACTIONAL_VALUE,
    QUALITY_ALGORITHM_NAME,
    QUALITY_CODES,
    OutputSettings,
    build_probability_seg,
    build_seg,
    build_sr,
    build_uncertainty_map,
    segment_measurements,
)
from inference.model_card import ModelCard
from quality.types import (
    CaseQuality,
    DicePrediction,
    Route,
    SamplingMethod,
    StructureQuality,
    StructureRca,
    StructureUncertainty,
)
from tests.conftest import dciodvfy_errors
from tests.dicom_node.test_writers import CREATED, SETTINGS, _card

Q = QUALITY_CODES


@dataclass(frozen=True)
class Case:
    """Sources, labels, spacing and card of one small study, with model outputs made from its labels."""

    sources: list[Dataset]
    labels: np.ndarray
    spacing: tuple[float, ...]
    card: ModelCard
    probabilities: np.ndarray  # (classes, *labels.shape) float32
    entropy: np.ndarray  # labels.shape float32, bits

    @property
    def dims(self) -> int:
        return self.labels.ndim


def _model_outputs(labels: np.ndarray, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A confident but noisy mean softmax of ``labels`` and its entropy in bits (float32)."""
    rng = np.random.default_rng(seed)
    logits = 8.0 * (labels[np.newaxis] == np.arange(classes).reshape((-1,) + (1,) * labels.ndim))
    logits = logits + rng.normal(0.0, 1.0, logits.shape)
    logits -= logits.max(axis=0, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=0, keepdims=True)
    entropy = -(p * np.log2(np.maximum(p, 1e-30))).sum(axis=0)
    return p.astype(np.float32), entropy.astype(np.float32)


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """8 slices (through liver, spleen and kidneys) of a 128 x 128 abdominal CT."""
    subject = draw_subject("ct-abdomen", 0, 1)
    image = ct_abdomen.generate(subject, matrix=128, slice_thickness=5.0)
    written = write_study(image, subject, tmp_path_factory.mktemp("ct"))
    organs = np.flatnonzero((image.labels == 3).any(axis=(1, 2)))
    first = int(organs[len(organs) // 2]) - 4
    chosen = slice(first, first + 8)
    labels = image.labels[chosen].astype(np.uint8)
    card = _card("ct-abdomen", ct_abdomen.LABELS, "CT", 3)
    p, h = _model_outputs(labels, len(card.labels) + 1, seed=1)
    return Case(
        sources=[pydicom.dcmread(path) for path in written.image_paths[chosen]],
        labels=labels,
        spacing=tuple(float(s) for s in image.spacing),
        card=card,
        probabilities=p,
        entropy=h,
    )


@pytest.fixture(scope="module")
def dx(tmp_path_factory: pytest.TempPathFactory) -> Case:
    subject = draw_subject("xr-knee", 0, 1)
    image = xr_knee.generate(subject)
    written = write_study(image, subject, tmp_path_factory.mktemp("dx"))
    labels = image.labels.astype(np.uint8)
    card = _card("xr-knee", xr_knee.LABELS, "DX", 2)
    p, h = _model_outputs(labels, len(card.labels) + 1, seed=2)
    return Case(
        sources=[pydicom.dcmread(path) for path in written.image_paths],
        labels=labels,
        spacing=tuple(float(s) for s in image.spacing),
        card=card,
        probabilities=p,
        entropy=h,
    )


def _quality(case: Case, review: frozenset[int] = frozenset()) -> CaseQuality:
    """Hand-made quality of ``case``: the labels in ``review`` go to REVIEW with one reason each."""
    structures = []
    for i, label in enumerate(case.card.labels):
        reasons = (f"{label.name}: predicted Dice 0.{70 + i} under 0.80",) if label.value in review else ()
        structures.append(
            StructureQuality(
                label=label.value,
                name=label.name,
                uncertainty=StructureUncertainty(
                    label=label.value,
                    name=label.name,
                    volume=10.0 + i,
                    mean_entropy=0.05 + 0.01 * i,
                    mean_mutual_information=0.01,
                    sample_dice=0.95 - 0.01 * i,
                    volume_cv=0.02 + 0.01 * i,
                ),
                rca=StructureRca(label.value, label.name, max_dice=0.9 - 0.01 * i, mean_dice=0.8, hd95_mm=2.5 + i),
                prediction=DicePrediction(
                    label.value, label.name, dice=0.85 - 0.01 * i, low=0.75 - 0.01 * i, high=0.95, coverage=0.9
                ),
                route=Route.REVIEW if reasons else Route.PASS,
                reasons=reasons,
            )
        )
    case_reasons = tuple(r for s in structures for r in s.reasons)
    return CaseQuality(
        route=Route.REVIEW if case_reasons else Route.PASS,
        reasons=case_reasons,
        structures=tuple(structures),
        method=SamplingMethod.MC_DROPOUT,
        samples=20,
    )


@dataclass(frozen=True)
class Written:
    seg: Path
    probabilities: Path
    uncertainty: Path
    sr: Path


def _write_all(case: Case, quality: CaseQuality | None, folder: Path, settings: OutputSettings = SETTINGS) -> Written:
    seg = build_seg(case.sources, case.labels, case.card, settings, created=CREATED)
    probabilities = build_probability_seg(case.sources, case.probabilities, case.card, settings, created=CREATED)
    uncertainty = build_uncertainty_map(case.sources, case.entropy, case.card, settings, created=CREATED)
    sr = build_sr(
        case.sources,
        seg,
        segment_measurements(case.labels, case.spacing, case.card),
        case.card,
        settings,
        created=CREATED,
        quality=quality,
        probabilities=probabilities,
        uncertainty_map=uncertainty,
    )
    written = Written(folder / "seg.dcm", folder / "prob.dcm", folder / "entropy.dcm", folder / "sr.dcm")
    for dataset, path in zip((seg, probabilities, uncertainty, sr), vars(written).values(), strict=True):
        dataset.save_as(path, enforce_file_format=True)
    return written


def _uids(case: Case) -> list[str]:
    return [str(s.SOPInstanceUID) for s in case.sources]


def _code(item: Dataset, sequence: str = "ConceptNameCodeSequence") -> Code:
    c = getattr(item, sequence)[0]
    return Code(c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning)


# --- PROBABILITY SEG ---------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["ct", "dx"])
def test_probability_seg_is_valid_and_round_trips(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    case: Case = request.getfixturevalue(which)
    written = _write_all(case, None, tmp_path)
    assert dciodvfy_errors(written.probabilities) == []

    seg = hd.seg.segread(written.probabilities)
    assert seg.SegmentationType == "FRACTIONAL"
    assert seg.SegmentationFractionalType == "PROBABILITY"
    assert seg.MaximumFractionalValue == MAX_FRACTIONAL_VALUE
    assert seg.file_meta.TransferSyntaxUID == RLELossless
    assert seg.SeriesNumber == SETTINGS.probability_series_number
    assert seg.SeriesDescription == f"AI probabilities ({case.card.name})"
    values = seg.get_pixels_by_source_instance(_uids(case), combine_segments=False, rescale_fractional=True)
    expected = np.moveaxis(case.probabilities[1:], 0, -1)
    if case.dims == 2:
        expected = expected[np.newaxis]
    assert values.shape == expected.shape
    assert np.abs(values - expected).max() <= 0.5 / MAX_FRACTIONAL_VALUE + 1e-6

    # the same findings as the BINARY SEG: segments, tracking UIDs, algorithm; a series of its own
    binary = pydicom.dcmread(written.seg)
    for mine, theirs in zip(seg.SegmentSequence, binary.SegmentSequence, strict=True):
        assert mine.SegmentNumber == theirs.SegmentNumber
        assert mine.TrackingUID == theirs.TrackingUID
        assert (
            mine.SegmentedPropertyTypeCodeSequence[0].CodeValue == theirs.SegmentedPropertyTypeCodeSequence[0].CodeValue
        )
        ident = mine.SegmentationAlgorithmIdentificationSequence[0]
        assert (ident.AlgorithmName, ident.AlgorithmVersion) == (case.card.name, case.card.version)
    assert seg.SeriesInstanceUID != binary.SeriesInstanceUID
    assert seg.SOPInstanceUID != binary.SOPInstanceUID
    purposes = [i.PurposeOfReferenceCodeSequence[0].CodeValue for i in seg.ContributingEquipmentSequence]
    assert "Newcode1" in purposes


def test_probability_seg_leaves_out_empty_frames(ct: Case) -> None:
    p = ct.probabilities.copy()
    p[0, :4] += p[2, :4]  # no spleen on the first 4 slices: probabilities that round to 0 there
    p[2, :4] = 0.4 / MAX_FRACTIONAL_VALUE
    seg = build_probability_seg(ct.sources, p, ct.card, SETTINGS, created=CREATED)
    stored = np.rint(p[1:] * MAX_FRACTIONAL_VALUE)
    non_empty = int((stored.reshape(stored.shape[0], stored.shape[1], -1).max(axis=2) > 0).sum())
    assert int(seg.NumberOfFrames) == non_empty <= len(ct.card.labels) * len(ct.sources) - 4
    spleen = [
        f
        for f in seg.PerFrameFunctionalGroupsSequence
        if f.SegmentIdentificationSequence[0].ReferencedSegmentNumber == 2
    ]
    assert len(spleen) == 4


def test_probability_seg_in_jpeg_ls(ct: Case, tmp_path: Path) -> None:
    settings = OutputSettings(map_transfer_syntax=JPEGLSLossless)
    seg = build_probability_seg(ct.sources, ct.probabilities, ct.card, settings, created=CREATED)
    path = tmp_path / "prob.dcm"
    seg.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    read = hd.seg.segread(path)
    assert read.file_meta.TransferSyntaxUID == JPEGLSLossless
    values = read.get_pixels_by_source_instance(_uids(ct), combine_segments=False, rescale_fractional=True)
    assert np.abs(values - np.moveaxis(ct.probabilities[1:], 0, -1)).max() <= 0.5 / MAX_FRACTIONAL_VALUE + 1e-6


# --- entropy map ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["ct", "dx"])
def test_uncertainty_map_is_valid_and_round_trips(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    case: Case = request.getfixturevalue(which)
    written = _write_all(case, None, tmp_path)
    assert dciodvfy_errors(written.uncertainty) == []

    image = hd.imread(written.uncertainty)
    assert image.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map
    assert image.file_meta.TransferSyntaxUID == RLELossless
    assert image.SeriesNumber == SETTINGS.uncertainty_series_number
    mapping = image.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert _code(mapping, "MeasurementUnitsCodeSequence") == Q["unit_bit"]
    quantity = mapping.QuantityDefinitionSequence[0]
    assert (_code(quantity), _code(quantity, "ConceptCodeSequence")) == (Q["quantity"], Q["entropy"])
    step = math.log2(len(case.card.labels) + 1) / MAX_ENTROPY_VALUE
    assert mapping.RealWorldValueSlope == pytest.approx(step)
    assert image.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == FAIRNODE_SCHEME

    values = image.get_pixels_by_source_instance(_uids(case), apply_real_world_transform=True)
    expected = case.entropy if case.dims == 3 else case.entropy[np.newaxis]
    expected = np.where(expected < ENTROPY_FLOOR_BITS, 0.0, expected)  # certain voxels are written as 0
    assert values.shape == expected.shape
    assert np.abs(values - expected).max() <= step / 2 + 1e-6


def test_uncertainty_map_of_a_radiograph_has_its_own_frame_of_reference(dx: Case) -> None:
    pm = build_uncertainty_map(dx.sources, dx.entropy, dx.card, SETTINGS, created=CREATED)
    source = dx.sources[0]
    assert "FrameOfReferenceUID" not in source  # untouched
    assert pm.FrameOfReferenceUID.startswith(SETTINGS.uid_root)
    assert pm.Laterality == source.ImageLaterality
    shared = pm.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [
        float(v) for v in source.ImagerPixelSpacing
    ]
    assert "SliceThickness" not in shared.PixelMeasuresSequence[0]
    # PatientOrientation L\F: rows run to the patient's left, columns to the feet
    orientation = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    assert list(source.PatientOrientation) == ["L", "F"]
    assert orientation == [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    derivation = pm.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert derivation.ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_uncertainty_map_of_a_ct_names_its_unpaired_region(ct: Case) -> None:
    pm = build_uncertainty_map(ct.sources, ct.entropy, ct.card, SETTINGS, created=CREATED)
    assert pm.FrameOfReferenceUID == ct.sources[0].FrameOfReferenceUID
    anatomy = pm.SharedFunctionalGroupsSequence[0].FrameAnatomySequence[0]
    assert anatomy.FrameLaterality == "U"
    assert anatomy.AnatomicRegionSequence[0].CodeMeaning == "Abdomen"
    assert "Laterality" not in pm


def test_uncertainty_map_of_an_unknown_region_has_an_empty_laterality(ct: Case, tmp_path: Path) -> None:
    sources = [copy.deepcopy(s) for s in ct.sources]
    for source in sources:
        del source.BodyPartExamined
    pm = build_uncertainty_map(sources, ct.entropy, ct.card, SETTINGS, created=CREATED)
    assert pm.Laterality == ""
    assert "FrameAnatomySequence" not in pm.SharedFunctionalGroupsSequence[0]
    path = tmp_path / "entropy.dcm"
    pm.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []


# --- SR with quality ----------------------------------------------------------------------------------

Group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations


def _groups(path: Path, dims: int) -> list[Group]:
    report = hd.sr.srread(path).content
    assert isinstance(report, hd.sr.MeasurementReport)
    if dims == 3:
        return list(report.get_volumetric_roi_measurement_groups())
    return list(report.get_planar_roi_measurement_groups())


def _find(group: Group, name: str, method: str, derivation: str | None = None) -> hd.sr.Measurement:
    found = [
        m
        for m in group.get_measurements(name=Q[name])
        if m.method == Q[method] and (m.derivation == (Q[derivation] if derivation else None))
    ]
    assert len(found) == 1, (name, method, derivation)
    return found[0]


def _children(item: Dataset) -> dict[str, Dataset]:
    return {i.ConceptNameCodeSequence[0].CodeValue: i for i in item.get("ContentSequence", [])}


def _texts(item: Dataset, code: Code) -> list[str]:
    return [str(i.TextValue) for i in item.ContentSequence if i.ValueType == "TEXT" and _code(i) == code]


@pytest.mark.parametrize("which", ["ct", "dx"])
def test_sr_reports_each_structures_quality(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    case: Case = request.getfixturevalue(which)
    flagged = case.card.labels[0].value
    quality = _quality(case, review=frozenset({flagged}))
    written = _write_all(case, quality, tmp_path)
    assert dciodvfy_errors(written.sr) == []

    by_label = quality.by_label()
    uncertainty_uid = pydicom.dcmread(written.uncertainty, stop_before_pixels=True).SOPInstanceUID
    groups = _groups(written.sr, case.dims)
    assert len(groups) == len(case.card.labels)
    for group, label in zip(groups, case.card.labels, strict=True):
        expected = by_label[label.value]
        assert expected.prediction is not None and expected.rca is not None

        predicted = _find(group, "dice", "dice_predictor")
        assert predicted.value == pytest.approx(expected.prediction.dice)
        assert predicted.unit == Q["unit_one"]
        properties = _children(predicted[0])
        upper = properties[Q["upper_uncertainty"].value].MeasuredValueSequence[0]
        lower = properties[Q["lower_uncertainty"].value].MeasuredValueSequence[0]
        coverage = properties[Q["interval_coverage"].value].MeasuredValueSequence[0]
        assert float(upper.NumericValue) == pytest.approx(expected.prediction.high - expected.prediction.dice)
        assert float(lower.NumericValue) == pytest.approx(expected.prediction.dice - expected.prediction.low)
        assert float(coverage.NumericValue) == pytest.approx(90.0)
        assert _code(coverage, "MeasurementUnitsCodeSequence") == Q["unit_percent"]

        assert _find(group, "dice", "rca", "maximum").value == pytest.approx(expected.rca.max_dice)
        assert _find(group, "dice", "rca", "mean").value == pytest.approx(expected.rca.mean_dice)
        hd95 = _find(group, "hd95", "rca")
        assert (hd95.value, hd95.unit) == (pytest.approx(expected.rca.hd95_mm), Q["unit_mm"])

        entropy = _find(group, "entropy", "mc_dropout", "mean")
        assert (entropy.value, entropy.unit) == (pytest.approx(expected.uncertainty.mean_entropy), Q["unit_bit"])
        sources = [i for i in entropy[0].ContentSequence if i.ValueType == "IMAGE"]
        assert sources[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == uncertainty_uid
        mutual = _find(group, "mutual_information", "mc_dropout", "mean")
        assert (mutual.value, mutual.unit) == (
            pytest.approx(expected.uncertainty.mean_mutual_information),
            Q["unit_bit"],
        )
        assert _find(group, "sample_agreement", "mc_dropout").value == pytest.approx(expected.uncertainty.sample_dice)
        assert _find(group, "size_cv", "mc_dropout").value == pytest.approx(expected.uncertainty.volume_cv)
        algorithm = _children(entropy[0])
        assert algorithm[codes.DCM.AlgorithmName.value].TextValue == QUALITY_ALGORITHM_NAME
        parameters = [i.TextValue for i in entropy[0].ContentSequence if _code(i) == codes.DCM.AlgorithmParameters]
        assert parameters == ["sampling: mc-dropout", "samples: 20"]

        evaluations = {e.name: e.value for e in group.get_qualitative_evaluations(name=Q["quality"])}
        reasons = _texts(group[0], Q["reason"])
        if label.value == flagged:
            assert evaluations == {Q["quality"]: Q["needs_review"]}
            assert reasons == list(expected.reasons) and reasons
        else:
            assert evaluations == {Q["quality"]: Q["acceptable"]}
            assert reasons == []

    sr = pydicom.dcmread(written.sr)
    container = [i for i in sr.ContentSequence if _code(i) == Q["qualitative_evaluations"]]
    assert len(container) == 1
    verdicts = [_code(i, "ConceptCodeSequence") for i in container[0].ContentSequence if i.ValueType == "CODE"]
    assert verdicts == [Q["needs_review"]]
    assert _texts(container[0], Q["reason"]) == list(quality.reasons)
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == FAIRNODE_SCHEME
    evidence = {
        i.ReferencedSOPInstanceUID
        for s in sr.CurrentRequestedProcedureEvidenceSequence
        for r in s.ReferencedSeriesSequence
        for i in r.ReferencedSOPSequence
    }
    for path in (written.seg, written.probabilities, written.uncertainty):
        assert pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID in evidence


def test_sr_of_a_passing_case_says_acceptable(ct: Case, tmp_path: Path) -> None:
    quality = _quality(ct)
    assert quality.route == Route.PASS
    written = _write_all(ct, quality, tmp_path)
    assert dciodvfy_errors(written.sr) == []
    for group in _groups(written.sr, 3):
        evaluations = group.get_qualitative_evaluations(name=Q["quality"])
        assert [e.value for e in evaluations] == [Q["acceptable"]]
        assert _texts(group[0], Q["reason"]) == []
    sr = pydicom.dcmread(written.sr)
    (container,) = [i for i in sr.ContentSequence if _code(i) == Q["qualitative_evaluations"]]
    assert [_code(i, "ConceptCodeSequence") for i in container.ContentSequence] == [Q["acceptable"]]


def test_sr_leaves_out_what_is_unknown(ct: Case, tmp_path: Path) -> None:
    quality = _quality(ct)
    first, second, *rest = quality.structures
    assert first.rca is not None
    structures = (
        replace(first, rca=replace(first.rca, hd95_mm=float("nan")), prediction=None),
        replace(second, rca=None),
        *rest,
    )
    quality = replace(quality, structures=structures, method=SamplingMethod.TTA_FLIP)
    written = _write_all(ct, quality, tmp_path)
    assert dciodvfy_errors(written.sr) == []
    groups = _groups(written.sr, 3)
    assert [m for m in groups[0].get_measurements(name=Q["hd95"])] == []
    assert [m for m in groups[0].get_measurements(name=Q["dice"]) if m.method == Q["dice_predictor"]] == []
    assert [m for m in groups[1].get_measurements(name=Q["dice"]) if m.method == Q["rca"]] == []
    assert _find(groups[1], "entropy", "tta_flip", "mean").value == pytest.approx(0.06)


def test_sr_without_quality_has_no_quality_items(ct: Case, tmp_path: Path) -> None:
    written = _write_all(ct, None, tmp_path)
    sr = pydicom.dcmread(written.sr)
    assert "CodingSchemeIdentificationSequence" not in sr
    assert all(_code(i) != Q["qualitative_evaluations"] for i in sr.ContentSequence)
    assert all(len(g.get_measurements()) == 1 for g in _groups(written.sr, 3))


# --- identifiers and errors -------------------------------------------------------------------------


def test_maps_are_deterministic(ct: Case) -> None:
    one = build_probability_seg(ct.sources, ct.probabilities, ct.card, SETTINGS, created=CREATED)
    two = build_probability_seg(ct.sources, ct.probabilities, ct.card, SETTINGS, created=CREATED)
    other_run = build_probability_seg(ct.sources, ct.probabilities, ct.card, SETTINGS, run=2, created=CREATED)
    assert (one.SOPInstanceUID, one.SeriesInstanceUID) == (two.SOPInstanceUID, two.SeriesInstanceUID)
    assert other_run.SOPInstanceUID != one.SOPInstanceUID
    pm_one = build_uncertainty_map(ct.sources, ct.entropy, ct.card, SETTINGS, created=CREATED)
    pm_two = build_uncertainty_map(ct.sources, ct.entropy, ct.card, SETTINGS, created=CREATED)
    for a, b in ((one, two), (pm_one, pm_two)):
        organization = a.DimensionOrganizationSequence[0].DimensionOrganizationUID
        assert organization == b.DimensionOrganizationSequence[0].DimensionOrganizationUID
        assert a.PixelData == b.PixelData
    binary = build_seg(ct.sources, ct.labels, ct.card, SETTINGS, created=CREATED)
    uids = {binary.SOPInstanceUID, one.SOPInstanceUID, pm_one.SOPInstanceUID}
    series = {binary.SeriesInstanceUID, one.SeriesInstanceUID, pm_one.SeriesInstanceUID}
    assert len(uids) == len(series) == 3


def test_maps_are_byte_identical_for_the_same_input(ct: Case, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    quality = _quality(ct, review=frozenset({1}))
    first = _write_all(ct, quality, tmp_path / "a")
    second = _write_all(ct, quality, tmp_path / "b")
    for one, two in zip(vars(first).values(), vars(second).values(), strict=True):
        assert one.read_bytes() == two.read_bytes(), one.name


def test_probability_seg_refuses_what_does_not_fit(ct: Case) -> None:
    p = ct.probabilities
    with pytest.raises(ValueError, match=r"6 classes"):
        build_probability_seg(ct.sources, p[:5], ct.card, SETTINGS)
    with pytest.raises(ValueError, match=r"expected mean_probabilities\[0\] of shape \(8, 128, 128\)"):
        build_probability_seg(ct.sources, p[:, 1:], ct.card, SETTINGS)
    with pytest.raises(ValueError, match="float array"):
        build_probability_seg(ct.sources, (p * 255).astype(np.uint8), ct.card, SETTINGS)
    bad = p.copy()
    bad[1, 0, 0, 0] = 1.5
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got values from .* to 1\.5"):
        build_probability_seg(ct.sources, bad, ct.card, SETTINGS)
    bad[1, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        build_probability_seg(ct.sources, bad, ct.card, SETTINGS)


def test_uncertainty_map_refuses_what_does_not_fit(ct: Case, dx: Case) -> None:
    with pytest.raises(ValueError, match=r"expected entropy of shape \(8, 128, 128\)"):
        build_uncertainty_map(ct.sources, ct.entropy[1:], ct.card, SETTINGS)
    with pytest.raises(ValueError, match="float array"):
        build_uncertainty_map(ct.sources, ct.labels, ct.card, SETTINGS)
    with pytest.raises(ValueError, match=r"\[0, 2\.5850\] bits .* to 3\.0"):
        build_uncertainty_map(ct.sources, np.full_like(ct.entropy, 3.0), ct.card, SETTINGS)
    source = Dataset()
    for element in dx.sources[0]:
        source.add(element)
    del source.PatientOrientation
    with pytest.raises(ValueError, match="no PatientOrientation"):
        build_uncertainty_map([source], dx.entropy, dx.card, SETTINGS)


def test_sr_refuses_quality_that_does_not_fit(ct: Case) -> None:
    seg = build_seg(ct.sources, ct.labels, ct.card, SETTINGS, created=CREATED)
    measurements = segment_measurements(ct.labels, ct.spacing, ct.card)
    quality = _quality(ct)
    stranger = replace(quality.structures[0], label=9, name="nine")
    with pytest.raises(ValueError, match=r"structure 9 \('nine'\), the measurements are of segments \[1, 2, 3, 4, 5\]"):
        build_sr(ct.sources, seg, measurements, ct.card, SETTINGS, quality=replace(quality, structures=(stranger,)))
    twice = replace(quality, structures=(quality.structures[0], quality.structures[0]))
    with pytest.raises(ValueError, match="twice"):
        build_sr(ct.sources, seg, measurements, ct.card, SETTINGS, quality=twice)
    first = quality.structures[0]
    assert first.prediction is not None
    outside = replace(first, prediction=replace(first.prediction, dice=0.99))
    with pytest.raises(ValueError, match=r"outside its interval \[0\.75, 0\.95\]"):
        build_sr(ct.sources, seg, measurements, ct.card, SETTINGS, quality=replace(quality, structures=(outside,)))


def test_output_settings_refuse_a_lossy_map_syntax() -> None:
    with pytest.raises(ValueError, match="map_transfer_syntax must be one of RLE Lossless"):
        OutputSettings(map_transfer_syntax="1.2.840.10008.1.2.4.50")  # JPEG Baseline
