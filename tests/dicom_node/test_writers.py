"""Tests of dicom_node.writers: SEG and SR on real CT and DX studies, checked by dciodvfy and read back."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID

from cohorts import ct_abdomen, xr_knee
from cohorts.dicom_writer import write_study
from cohorts.image import Label
from cohorts.subjects import draw_subject
from dicom_node.writers import (
    MILLILITER,
    OutputSettings,
    SegmentMeasurement,
    build_seg,
    build_sr,
    output_uid,
    segment_measurements,
)
from inference.model_card import (
    CohortSpec,
    InputSpec,
    IntensitySpec,
    ModelCard,
    ModelFiles,
    NetworkSpec,
    TrainingSpec,
    load_card,
)
from inference.training import label_specs
from tests.conftest import dciodvfy_errors

MODELS = Path(__file__).resolve().parents[2] / "inference" / "models"
CREATED = datetime(2024, 5, 17, 14, 30, 5)
SETTINGS = OutputSettings()


@dataclass(frozen=True)
class Study:
    """Source images of one written study, its truth labels (as a prediction), spacing and model card."""

    sources: list[Dataset]
    labels: np.ndarray
    spacing: tuple[float, ...]
    card: ModelCard


def _test_card(name: str, modality: str, dims: int) -> ModelCard:
    """A minimal valid card with the cohort's labels (the bundled model may not be trained yet)."""
    return ModelCard(
        name=name,
        version="0.0.1",
        description=f"test card for {name}",
        labels=label_specs(name),
        input=InputSpec(
            modality=modality,
            spatial_dims=dims,
            spacing_mm=(1.0,) * dims,
            patch_size=(64,) * dims,
            intensity=IntensitySpec(mode="window", low=-100.0, high=200.0),
        ),
        network=NetworkSpec(channels=(8, 16), strides=(2,), num_res_units=1, dropout=0.1),
        files=ModelFiles(deterministic_sha256="0" * 64, mc_dropout_sha256="0" * 64, weights_sha256="0" * 64),
        training=TrainingSpec(
            cohort=CohortSpec(kind=name, n=1, seed=0),
            composition={},
            iterations=1,
            batch_size=1,
            learning_rate=1e-3,
            seed=0,
            seconds=1.0,
            device="cpu",
        ),
        reproduce=("none",),
    )


def _card(name: str, labels: tuple[Label, ...], modality: str, dims: int) -> ModelCard:
    """The bundled model's card when it exists and has the cohort's labels, else a test card."""
    folder = MODELS / name
    if (folder / "card.yaml").is_file():
        card = load_card(folder)
        if [(lab.value, lab.code) for lab in card.labels] == [(lab.value, lab.code) for lab in labels]:
            return card
    return _test_card(name, modality, dims)


def _read_sources(paths: tuple[Path, ...]) -> list[Dataset]:
    return [pydicom.dcmread(p) for p in paths]


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> Study:
    subject = draw_subject("ct-abdomen", 0, 1)
    image = ct_abdomen.generate(subject, matrix=128, slice_thickness=5.0)
    written = write_study(image, subject, tmp_path_factory.mktemp("ct"))
    return Study(
        sources=_read_sources(written.image_paths),
        labels=image.labels.astype(np.uint8),
        spacing=tuple(float(s) for s in image.spacing),
        card=_card("ct-abdomen", ct_abdomen.LABELS, "CT", 3),
    )


@pytest.fixture(scope="module")
def dx(tmp_path_factory: pytest.TempPathFactory) -> Study:
    subject = draw_subject("xr-knee", 0, 1)
    image = xr_knee.generate(subject)
    written = write_study(image, subject, tmp_path_factory.mktemp("dx"))
    return Study(
        sources=_read_sources(written.image_paths),
        labels=image.labels.astype(np.uint8),
        spacing=tuple(float(s) for s in image.spacing),
        card=_card("xr-knee", xr_knee.LABELS, "DX", 2),
    )


def _write(study: Study, labels: np.ndarray, folder: Path, run: int = 1) -> tuple[Path, Path]:
    """Build SEG and SR of ``labels`` and save them; return their paths."""
    seg = build_seg(study.sources, labels, study.card, SETTINGS, run, created=CREATED)
    measurements = segment_measurements(labels, study.spacing, study.card)
    sr = build_sr(study.sources, seg, measurements, study.card, SETTINGS, run, created=CREATED)
    seg_path, sr_path = folder / "seg.dcm", folder / "sr.dcm"
    seg.save_as(seg_path, enforce_file_format=True)
    sr.save_as(sr_path, enforce_file_format=True)
    return seg_path, sr_path


def _read_labels(seg_path: Path, sources: list[Dataset]) -> np.ndarray:
    seg = hd.seg.segread(seg_path)
    uids = [str(s.SOPInstanceUID) for s in sources]
    return seg.get_pixels_by_source_instance(uids, combine_segments=True, skip_overlap_checks=True)


def _algorithm_items(ds: Dataset) -> list[Dataset]:
    return [
        item
        for item in ds.ContributingEquipmentSequence
        if any(
            (c.CodeValue, c.CodingSchemeDesignator) == ("Newcode1", "99IHE")
            for c in item.PurposeOfReferenceCodeSequence
        )
    ]


Group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations


def _groups(sr_path: Path, dims: int) -> list[Group]:
    report = hd.sr.srread(sr_path).content
    assert isinstance(report, hd.sr.MeasurementReport)
    if dims == 3:
        return list(report.get_volumetric_roi_measurement_groups())
    return list(report.get_planar_roi_measurement_groups())


def _seg_reference(group: Group) -> Dataset:
    """The Referenced SOP item that points at the SEG (first item of the ROI reference)."""
    reference: Sequence[Dataset] | None
    if isinstance(group, hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations):
        reference = group.referenced_segment
    else:
        reference = group.referenced_segmentation_frame
    assert reference is not None
    return reference[0].ReferencedSOPSequence[0]


# --- validity and round trip -------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["ct", "dx"])
def test_seg_and_sr_pass_dciodvfy(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    study: Study = request.getfixturevalue(which)
    seg_path, sr_path = _write(study, study.labels, tmp_path)
    assert dciodvfy_errors(seg_path) == []
    assert dciodvfy_errors(sr_path) == []


@pytest.mark.parametrize("which", ["ct", "dx"])
def test_seg_round_trip(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    study: Study = request.getfixturevalue(which)
    seg_path, _ = _write(study, study.labels, tmp_path)
    read = _read_labels(seg_path, study.sources)
    expected = study.labels if study.labels.ndim == 3 else study.labels[np.newaxis]
    np.testing.assert_array_equal(read, expected)

    seg = pydicom.dcmread(seg_path)
    card = study.card
    assert seg.StudyInstanceUID == study.sources[0].StudyInstanceUID
    assert seg.SegmentationType == "BINARY"
    assert seg.SeriesNumber == SETTINGS.seg_series_number
    assert seg.SeriesDescription == f"AI segmentation ({card.name})"
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [lab.value for lab in card.labels]
    for segment, label in zip(seg.SegmentSequence, card.labels, strict=True):
        assert segment.SegmentLabel == label.name
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == label.code
        assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == label.category_code
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        assert segment.SegmentAlgorithmName == card.name
        ident = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert (ident.AlgorithmName, ident.AlgorithmVersion) == (card.name, card.version)
        assert ident.AlgorithmFamilyCodeSequence[0].CodeValue == codes.cid7162.ArtificialIntelligence.value
        assert len(segment.RecommendedDisplayCIELabValue) == 3


@pytest.mark.parametrize("which", ["ct", "dx"])
def test_contributing_equipment_names_the_algorithm(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    study: Study = request.getfixturevalue(which)
    for path in _write(study, study.labels, tmp_path):
        ds = pydicom.dcmread(path)
        items = _algorithm_items(ds)
        assert len(items) == 1, path.name
        item = items[0]
        assert item.PurposeOfReferenceCodeSequence[0].CodeMeaning == "Processing Algorithm"
        assert item.Manufacturer == SETTINGS.manufacturer
        assert item.ManufacturerModelName == study.card.name
        assert item.SoftwareVersions == study.card.version
        assert item.ContributionDateTime == "20240517143005"
        # the SOP's own equipment is fairnode's; the acquisition equipment is the scanner's
        assert (ds.Manufacturer, ds.ManufacturerModelName) == (SETTINGS.manufacturer, "fairnode")
        acquisition = [
            i
            for i in ds.ContributingEquipmentSequence
            if i.PurposeOfReferenceCodeSequence[0].CodeValue == codes.DCM.AcquisitionEquipment.value
        ]
        assert [i.Manufacturer for i in acquisition] == [study.sources[0].Manufacturer]


def test_ct_sr_reports_one_volume_per_segment(ct: Study, tmp_path: Path) -> None:
    seg_path, sr_path = _write(ct, ct.labels, tmp_path)
    seg = pydicom.dcmread(seg_path)
    measured = {m.segment_number: m for m in segment_measurements(ct.labels, ct.spacing, ct.card)}
    voxel_ml = float(np.prod(ct.spacing)) / 1000.0
    groups = _groups(sr_path, 3)
    assert len(groups) == len(ct.card.labels) == len(measured)

    sr = pydicom.dcmread(sr_path)
    assert sr.StudyInstanceUID == ct.sources[0].StudyInstanceUID
    assert sr.SeriesNumber == SETTINGS.sr_series_number
    assert sr.SeriesDescription == f"AI measurements ({ct.card.name})"
    evidence = {
        i.ReferencedSOPInstanceUID
        for s in sr.CurrentRequestedProcedureEvidenceSequence
        for r in s.ReferencedSeriesSequence
        for i in r.ReferencedSOPSequence
    }
    assert seg.SOPInstanceUID in evidence and ct.sources[0].SOPInstanceUID in evidence

    for group, segment in zip(groups, seg.SegmentSequence, strict=True):
        reference = _seg_reference(group)
        assert reference.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        number = int(reference.ReferencedSegmentNumber)
        assert number == int(segment.SegmentNumber)
        assert group.tracking_uid == segment.TrackingUID
        assert group.finding_type is not None
        assert group.finding_type.value == segment.SegmentedPropertyTypeCodeSequence[0].CodeValue
        (measurement,) = group.get_measurements()
        assert measurement.name == codes.SCT.Volume
        assert measurement.unit == MILLILITER
        expected = measured[number].volume_ml
        assert expected is not None
        assert measurement.value == pytest.approx(expected, abs=1e-3)
        assert measurement.value == pytest.approx(np.count_nonzero(ct.labels == number) * voxel_ml, abs=1e-3)
        assert measurement.value > 0
        modifiers = {i.ConceptNameCodeSequence[0].CodeValue: i.TextValue for i in measurement[0].ContentSequence}
        algorithm_name, algorithm_version = codes.DCM.AlgorithmName.value, codes.DCM.AlgorithmVersion.value
        assert (modifiers[algorithm_name], modifiers[algorithm_version]) == (ct.card.name, ct.card.version)


def test_ct_sr_lists_the_source_images_of_each_segment_after_its_reference(ct: Study, tmp_path: Path) -> None:
    """Each volumetric group references its segment, then the source images of the segment's frames (highdicom's
    ReferencedSegment.from_segmentation), in the written file and in the built object's content (``sr.content``)."""
    seg = build_seg(ct.sources, ct.labels, ct.card, SETTINGS, created=CREATED)
    sr = build_sr(ct.sources, seg, segment_measurements(ct.labels, ct.spacing, ct.card), ct.card, SETTINGS)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)

    def image_items(group: Dataset) -> list[tuple[str, str]]:
        return [
            (item.ConceptNameCodeSequence[0].CodeValue, item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            for item in group.ContentSequence
            if item.ValueType == "IMAGE"
        ]

    written = [g[0] for g in _groups(path, 3)]
    built = next(g for g in sr.content[0].ContentSequence if g.ValueType == "CONTAINER").ContentSequence
    assert len(written) == len(built) == len(ct.card.labels)
    for number, (read, view) in enumerate(zip(written, built, strict=True), start=1):
        expected = [
            (item.ConceptNameCodeSequence[0].CodeValue, item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            for item in hd.sr.ReferencedSegment.from_segmentation(seg, number)
        ]
        slices = {str(ct.sources[k].SOPInstanceUID) for k in np.flatnonzero((ct.labels == number).any(axis=(1, 2)))}
        assert {uid for _, uid in expected[1:]} == slices
        assert image_items(read) == image_items(view) == expected
        names = [item.ConceptNameCodeSequence[0].CodeValue for item in read.ContentSequence]
        first = names.index(codes.DCM.ReferencedSegment.value)
        assert names[first + 1 : first + len(expected)] == [codes.DCM.SourceImageForSegmentation.value] * len(slices)


def test_dx_sr_reports_one_area_per_segment(dx: Study, tmp_path: Path) -> None:
    seg_path, sr_path = _write(dx, dx.labels, tmp_path)
    seg = pydicom.dcmread(seg_path)
    groups = _groups(sr_path, 2)
    assert len(groups) == len(dx.card.labels)
    pixel_mm2 = float(np.prod(dx.spacing))
    for group, segment in zip(groups, seg.SegmentSequence, strict=True):
        number = int(segment.SegmentNumber)
        reference = _seg_reference(group)
        assert reference.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        frame = int(reference.ReferencedFrameNumber)
        frame_segment = seg.PerFrameFunctionalGroupsSequence[frame - 1].SegmentIdentificationSequence[0]
        assert int(frame_segment.ReferencedSegmentNumber) == number
        (measurement,) = group.get_measurements()
        assert measurement.name == codes.SCT.Area
        assert measurement.unit == codes.UCUM.SquareMillimeter
        expected = np.count_nonzero(dx.labels == number) * pixel_mm2
        assert measurement.value == pytest.approx(expected, abs=1e-3)


def test_sr_observer_and_procedure(ct: Study, tmp_path: Path) -> None:
    _, sr_path = _write(ct, ct.labels, tmp_path)
    sr = hd.sr.srread(sr_path)
    names = {
        item.ConceptNameCodeSequence[0].CodeMeaning: item
        for item in sr.ContentSequence
        if "ConceptNameCodeSequence" in item
    }
    assert names["Observer Type"].ConceptCodeSequence[0].CodeValue == codes.DCM.Device.value
    assert names["Device Observer Name"].TextValue == ct.card.name
    assert names["Device Observer Manufacturer"].TextValue == SETTINGS.manufacturer
    assert names["Device Observer Serial Number"].TextValue == SETTINGS.device_serial_number
    procedure = names["Procedure reported"].ConceptCodeSequence[0]
    assert procedure.CodeValue == codes.SCT.ImagingProcedure.value

    # a procedure code in the study is reported instead (on copies: Dataset(s) would share s's elements)
    sources = [copy.deepcopy(s) for s in ct.sources]
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "RPID17", "RADLEX", "CT ABDOMEN"
    for s in sources:
        s.ProcedureCodeSequence = [item]
    seg = build_seg(sources, ct.labels, ct.card, SETTINGS, created=CREATED)
    measurements = segment_measurements(ct.labels, ct.spacing, ct.card)
    report = build_sr(sources, seg, measurements, ct.card, SETTINGS, created=CREATED)
    reported = [i for i in report.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == "Procedure reported"]
    assert reported[0].ConceptCodeSequence[0].CodeValue == "RPID17"


# --- empty segments ----------------------------------------------------------------------------------


def test_absent_label_is_declared_and_reported_as_zero(ct: Study, tmp_path: Path) -> None:
    labels = ct.labels.copy()
    labels[labels == 2] = 0  # the spleen is missed
    seg_path, sr_path = _write(ct, labels, tmp_path)
    assert dciodvfy_errors(seg_path) == []
    assert dciodvfy_errors(sr_path) == []
    np.testing.assert_array_equal(_read_labels(seg_path, ct.sources), labels)
    seg = pydicom.dcmread(seg_path)
    assert 2 in {int(s.SegmentNumber) for s in seg.SegmentSequence}
    frames_of_2 = [
        f
        for f in seg.PerFrameFunctionalGroupsSequence
        if f.SegmentIdentificationSequence[0].ReferencedSegmentNumber == 2
    ]
    assert frames_of_2 == []
    groups = _groups(sr_path, 3)
    values = {int(_seg_reference(g).ReferencedSegmentNumber): g.get_measurements()[0].value for g in groups}
    assert values[2] == 0.0
    assert values[1] > 0


@pytest.mark.parametrize("which", ["ct", "dx"])
def test_all_zero_labels_give_valid_seg_and_sr(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    study: Study = request.getfixturevalue(which)
    labels = np.zeros_like(study.labels)
    seg_path, sr_path = _write(study, labels, tmp_path)
    assert dciodvfy_errors(seg_path) == []
    assert dciodvfy_errors(sr_path) == []
    seg = pydicom.dcmread(seg_path)
    assert len(seg.SegmentSequence) == len(study.card.labels)
    assert not _read_labels(seg_path, study.sources).any()
    groups = _groups(sr_path, study.labels.ndim)
    assert len(groups) == len(study.card.labels)
    assert all(g.get_measurements()[0].value == 0.0 for g in groups)


# --- identifiers ---------------------------------------------------------------------------------------


def test_outputs_are_deterministic(ct: Study, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _write(ct, ct.labels, tmp_path / "a")
    second = _write(ct, ct.labels, tmp_path / "b")
    for one, two in zip(first, second, strict=True):
        assert one.read_bytes() == two.read_bytes()

    # without a fixed time the UIDs still agree; another run gets new ones
    seg_a = build_seg(ct.sources, ct.labels, ct.card, SETTINGS)
    seg_b = build_seg(ct.sources, ct.labels, ct.card, SETTINGS)
    seg_c = build_seg(ct.sources, ct.labels, ct.card, SETTINGS, run=2)
    assert (seg_a.SeriesInstanceUID, seg_a.SOPInstanceUID) == (seg_b.SeriesInstanceUID, seg_b.SOPInstanceUID)
    assert seg_c.SOPInstanceUID != seg_a.SOPInstanceUID
    assert seg_c.SeriesInstanceUID != seg_a.SeriesInstanceUID
    measurements = segment_measurements(ct.labels, ct.spacing, ct.card)
    sr_a = build_sr(ct.sources, seg_a, measurements, ct.card, SETTINGS)
    sr_b = build_sr(ct.sources, seg_b, measurements, ct.card, SETTINGS)
    assert (sr_a.SeriesInstanceUID, sr_a.SOPInstanceUID) == (sr_b.SeriesInstanceUID, sr_b.SOPInstanceUID)
    assert sr_a.SOPInstanceUID not in {seg_a.SOPInstanceUID, seg_a.SeriesInstanceUID}
    for uid in (seg_a.SOPInstanceUID, seg_a.SeriesInstanceUID, sr_a.SOPInstanceUID):
        assert uid.startswith(SETTINGS.uid_root) and len(uid) <= 64


def test_output_uid() -> None:
    uid = output_uid(SETTINGS, "1.2.3", "ct-abdomen", "1.0.0", "1", "seg")
    assert uid == output_uid(SETTINGS, "1.2.3", "ct-abdomen", "1.0.0", "1", "seg")
    assert uid != output_uid(SETTINGS, "1.2.3", "ct-abdomen", "1.0.0", "2", "seg")
    assert uid.startswith(SETTINGS.uid_root) and len(uid) <= 64
    site = OutputSettings(uid_root="1.2.3.4.")
    assert output_uid(site, "x").startswith("1.2.3.4.")
    with pytest.raises(TypeError, match="at least one part"):
        output_uid(SETTINGS)


def test_default_uid_root_gives_uuid_derived_uids() -> None:
    """The default root needs no registration: 2.25. and a 128-bit UUID value without leading zeros (PS3.5 B.2)."""
    default = OutputSettings()
    assert default.uid_root == "2.25."
    uid = output_uid(default, "1.2.3", "ct-abdomen", "1.0.0", "1", "seg")
    value = uid.removeprefix("2.25.")
    assert uid.startswith("2.25.") and value.isdigit() and not value.startswith("0")
    assert int(value) < 2**128 and len(uid) <= 64
    assert uuid.UUID(int=int(value)).version == 5
    # parts are kept apart: ("ab", "c") and ("a", "bc") give different UIDs
    assert output_uid(default, "ab", "c") != output_uid(default, "a", "bc")
    assert UID(uid).is_valid


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"uid_root": "1.2.3"}, "ending with '.'"),
        ({"uid_root": "1.02.3."}, "leading zeros"),
        ({"uid_root": "1." + "2." * 30}, "at most 44"),
        ({"seg_series_description": "AI {modell}"}, "seg_series_description"),
        ({"sr_series_number": 0}, "sr_series_number"),
        ({"probability_series_number": 2**31}, "probability_series_number"),
        ({"uncertainty_series_description": "{x}"}, "uncertainty_series_description"),
    ],
)
def test_output_settings_reject_bad_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OutputSettings(**kwargs)  # type: ignore[arg-type]


# --- errors --------------------------------------------------------------------------------------------


def test_labels_not_matching_the_images_are_refused(ct: Study, dx: Study) -> None:
    with pytest.raises(ValueError, match=r"\(41, 128, 128\).*expected labels of shape \(42, 128, 128\)"):
        build_seg(ct.sources, ct.labels[1:], ct.card, SETTINGS)
    with pytest.raises(ValueError, match=r"\(42, 128, 64\)"):
        build_seg(ct.sources, ct.labels[..., :64], ct.card, SETTINGS)
    with pytest.raises(ValueError, match="expected labels of shape"):
        build_seg(dx.sources, dx.labels.T, dx.card, SETTINGS)
    bad = ct.labels.copy()
    bad[0, 0, 0] = len(ct.card.labels) + 1
    with pytest.raises(ValueError, match=r"must lie in 0\.\.5"):
        build_seg(ct.sources, bad, ct.card, SETTINGS)
    with pytest.raises(ValueError, match="integer"):
        build_seg(ct.sources, ct.labels.astype(np.float32), ct.card, SETTINGS)
    with pytest.raises(ValueError, match="run must be 1 or more, got 0"):
        build_seg(ct.sources, ct.labels, ct.card, SETTINGS, run=0)


def test_sr_refuses_measurements_that_do_not_fit(ct: Study) -> None:
    seg = build_seg(ct.sources, ct.labels, ct.card, SETTINGS, created=CREATED)
    with pytest.raises(ValueError, match="names segment 9"):
        build_sr(ct.sources, seg, [SegmentMeasurement(9, "nine", 1.0)], ct.card, SETTINGS)
    with pytest.raises(ValueError, match="exactly one of volume_ml and area_mm2"):
        build_sr(ct.sources, seg, [SegmentMeasurement(1, "liver", None)], ct.card, SETTINGS)
    with pytest.raises(ValueError, match="measurements is empty"):
        build_sr(ct.sources, seg, [], ct.card, SETTINGS)


def test_segment_measurements(ct: Study) -> None:
    labels = np.zeros((2, 3, 4), np.uint8)
    labels[0, :2, :2] = 1  # 4 voxels
    volumes = segment_measurements(labels, (2.0, 0.5, 0.5), ct.card)
    assert [m.segment_number for m in volumes] == [lab.value for lab in ct.card.labels]
    assert volumes[0].volume_ml == pytest.approx(4 * 0.5 / 1000.0)
    assert volumes[0].area_mm2 is None
    assert all(m.volume_ml == 0.0 for m in volumes[1:])

    areas = segment_measurements(labels[:1], (0.5, 0.25), ct.card)
    assert areas[0].volume_ml is None
    assert areas[0].area_mm2 == pytest.approx(4 * 0.125)
    assert segment_measurements(labels[0], (0.5, 0.25), ct.card)[0].area_mm2 == areas[0].area_mm2

    with pytest.raises(ValueError, match="do not fit a spacing"):
        segment_measurements(labels, (0.5, 0.5), ct.card)
    with pytest.raises(ValueError, match="positive and finite"):
        segment_measurements(labels, (2.0, 0.0, 0.5), ct.card)
    with pytest.raises(ValueError, match="3 values"):
        segment_measurements(labels, (1.0,), ct.card)


def test_sr_observer_test_leaves_the_fixture_alone(ct: Study) -> None:
    assert all("ProcedureCodeSequence" not in s for s in ct.sources)


def test_sr_names_the_inference_backend_as_an_algorithm_parameter(ct: Study, tmp_path: Path) -> None:
    seg = build_seg(ct.sources, ct.labels, ct.card, SETTINGS, 1, created=CREATED)
    measurements = segment_measurements(ct.labels, ct.spacing, ct.card)
    sr = build_sr(
        ct.sources, seg, measurements, ct.card, SETTINGS, 1, created=CREATED, providers=["CPUExecutionProvider"]
    )
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    groups = _groups(path, 3)
    for group in groups:
        (measurement,) = group.get_measurements()
        parameters = [
            i.TextValue
            for i in measurement[0].ContentSequence
            if i.ConceptNameCodeSequence[0].CodeValue == codes.DCM.AlgorithmParameters.value
        ]
        assert parameters == ["inference backend: CPUExecutionProvider"]
