"""Tests of cohorts.dicom_writer: dciodvfy validity, SEG round trip, determinism and headers."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from cohorts.dicom_writer import SEG_SERIES_NUMBER, WrittenStudy, write_study
from cohorts.image import Label, SyntheticImage
from cohorts.subjects import Subject, draw_subject

DCIODVFY = "/usr/bin/dciodvfy"

LIVER = Label(1, "liver", "10200004", "Liver", (221, 130, 101))
SPLEEN = Label(2, "spleen", "78961009", "Spleen", (157, 108, 162))
BRAIN = Label(1, "brain", "12738006", "Brain", (250, 250, 225))
LESION = Label(2, "lesion", "52988006", "Lesion", (255, 0, 0), "49755003", "Morphologically Abnormal Structure")
FEMUR = Label(1, "femur", "71341001", "Bone structure of femur", (241, 214, 145), "85756007", "Tissue")
TIBIA = Label(2, "tibia", "12611008", "Bone structure of tibia", (200, 160, 120), "85756007", "Tissue")


def _ct_image() -> SyntheticImage:
    rng = np.random.default_rng(11)
    labels = np.zeros((6, 64, 64), np.uint8)
    labels[1:4, 10:30, 8:30] = 1  # liver: slices 1-3
    labels[2:5, 35:50, 40:60] = 2  # spleen: slices 2-4; slices 0 and 5 are empty
    pixels = (rng.normal(40.0, 15.0, labels.shape) + np.where(labels > 0, 60.0, -120.0)).astype(np.float32)
    pixels[0, 0, :4] = [-3000.0, 5000.0, -1024.4, 3071.6]  # out of range: must be clipped
    return SyntheticImage(
        "CT",
        pixels,
        labels,
        (5.0, 0.8, 0.75),
        (LIVER, SPLEEN),
        origin=(-25.0, -24.0, 120.5),
        acquisition={
            "kvp": 100.0,
            "tube_current": 250,
            "convolution_kernel": "B30f",
            "slice_thickness": 5.0,
            "contrast_bolus_agent": "IV contrast",
            "noise_sigma_hu": 12.0,  # not a header value: ignored
        },
    )


def _mr_image() -> SyntheticImage:
    """Sagittal MR; the lesion Label is declared but absent from the image."""
    rng = np.random.default_rng(12)
    labels = np.zeros((5, 48, 48), np.uint8)
    labels[1:4, 10:40, 8:38] = 1
    pixels = np.abs(rng.normal(100.0, 10.0, labels.shape) + 300.0 * (labels > 0)).astype(np.float32)
    return SyntheticImage(
        "MR",
        pixels,
        labels,
        (1.2, 1.0, 0.9),
        (BRAIN, LESION),
        origin=(-3.0, -20.0, 30.0),
        orientation=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
        slice_direction=(1.0, 0.0, 0.0),
        acquisition={"repetition_time": 2000.0, "echo_time": 3.1, "magnetic_field_strength": 1.5},
    )


def _dx_image() -> SyntheticImage:
    rng = np.random.default_rng(13)
    labels = np.zeros((80, 64), np.uint8)
    labels[5:38, 20:44] = 1
    labels[42:75, 22:42] = 2
    pixels = (rng.normal(10.0, 1.0, labels.shape) + 30.0 * (labels > 0)).astype(np.float32)
    return SyntheticImage("DX", pixels, labels, (0.15, 0.14), (FEMUR, TIBIA), acquisition={"laterality": "L"})


IMAGES = {"CT": _ct_image, "MR": _mr_image, "DX": _dx_image}


@pytest.fixture(scope="module")
def subject() -> Subject:
    return draw_subject("ct-abdomen", 0, seed=1)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, subject: Subject) -> dict[str, WrittenStudy]:
    root = tmp_path_factory.mktemp("studies")
    return {mod: write_study(make(), subject, root / mod) for mod, make in IMAGES.items()}


def _dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, check=False, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


@pytest.mark.parametrize("modality", list(IMAGES))
def test_every_file_passes_dciodvfy(written: dict[str, WrittenStudy], modality: str) -> None:
    if shutil.which(DCIODVFY) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{DCIODVFY} (dicom3tools) is required in CI")
        pytest.skip(f"{DCIODVFY} (dicom3tools) is not installed")
    study = written[modality]
    for path in [*study.image_paths, study.seg_path]:
        assert _dciodvfy_errors(path) == [], path


def test_layout(written: dict[str, WrittenStudy], subject: Subject) -> None:
    ct = written["CT"]
    assert [p.name for p in ct.image_paths] == [f"{k:04d}.dcm" for k in range(1, 7)]
    assert ct.seg_path.name == "seg.dcm"
    assert ct.seg_path.parent.name == subject.patient_id
    assert all(p.parent == ct.seg_path.parent / "image" for p in ct.image_paths)
    assert len(written["DX"].image_paths) == 1


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_volume_geometry_and_pixels(written: dict[str, WrittenStudy], modality: str) -> None:
    image = IMAGES[modality]()
    datasets = [pydicom.dcmread(p) for p in written[modality].image_paths]
    origin = np.array(image.origin)
    step = image.spacing[0] * np.array(image.slice_direction)
    for k, ds in enumerate(datasets):
        assert ds.InstanceNumber == k + 1
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], origin + k * step, atol=1e-4)
        assert [float(v) for v in ds.ImageOrientationPatient] == list(image.orientation)
        assert [float(v) for v in ds.PixelSpacing] == [image.spacing[1], image.spacing[2]]
        assert ds.FrameOfReferenceUID == datasets[0].FrameOfReferenceUID
    stored = np.stack([ds.pixel_array for ds in datasets])
    assert stored.shape == image.pixels.shape
    if modality == "CT":
        hu = np.stack([pydicom.pixels.apply_rescale(ds.pixel_array, ds) for ds in datasets])
        expected = np.clip(np.rint(image.pixels), -1024, 3071)
        np.testing.assert_array_equal(hu, expected)
        assert datasets[0].BitsStored == 12
        assert (datasets[0].KVP, datasets[0].XRayTubeCurrent) == (100.0, 250)
        assert datasets[0].ConvolutionKernel == "B30f"
        assert datasets[0].ContrastBolusAgent == "IV contrast"
    else:
        assert stored.max() == 4095
        assert datasets[0].MagneticFieldStrength == 1.5
        assert datasets[0].RepetitionTime == 2000.0
        assert list(datasets[0].ScanningSequence) == ["GR", "IR"]


def _read_seg(study: WrittenStudy) -> hd.seg.Segmentation:
    return hd.seg.segread(study.seg_path)


@pytest.mark.parametrize("modality", list(IMAGES))
def test_seg_round_trip(written: dict[str, WrittenStudy], modality: str) -> None:
    image = IMAGES[modality]()
    study = written[modality]
    seg = _read_seg(study)
    sop_uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in study.image_paths]

    assert seg.SeriesInstanceUID == study.seg_series_uid
    assert seg.SOPInstanceUID == study.seg_sop_uid
    assert seg.StudyInstanceUID == study.study_uid
    assert seg.SeriesNumber == SEG_SERIES_NUMBER
    assert seg.SeriesDescription == "Ground truth"
    assert seg.SegmentationType == "BINARY"
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == study.series_uid
    assert sorted(item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence) == sorted(sop_uids)

    # every Label is a segment, in label_info order, with its codes, also one absent from the image
    assert seg.get_segment_numbers() == list(range(1, len(image.label_info) + 1))
    for number, label in enumerate(image.label_info, start=1):
        description = seg.get_segment_description(number)
        assert description.segment_label == label.name
        assert description.segmented_property_type.value == label.code
        assert description.segmented_property_category.value == label.category_code
        assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.MANUAL
        rgb = hd.color.CIELabColor.from_dicom_value(description.RecommendedDisplayCIELabValue).to_rgb()
        assert np.abs(np.array(rgb) - np.array(label.color)).max() <= 1

    masks = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=sop_uids,
        segment_numbers=list(range(1, len(image.label_info) + 1)),
        assert_missing_frames_are_empty=True,
        ignore_spatial_locations=modality == "DX",
    )
    labels = image.labels[np.newaxis] if modality == "DX" else image.labels
    for i, label in enumerate(image.label_info):
        np.testing.assert_array_equal(masks[..., i], labels == label.value)


def test_seg_volume_matches_labels(written: dict[str, WrittenStudy]) -> None:
    """The CT SEG read as a volume lies where the labelled slices of the image are."""
    image = _ct_image()
    volume = _read_seg(written["CT"]).get_volume(combine_segments=True)
    # only slices 1..4 carry a label, and empty frames are omitted: the SEG volume spans those slices
    np.testing.assert_array_equal(volume.array, image.labels[1:5])
    first = np.array(image.origin) + image.spacing[0] * np.array(image.slice_direction)
    np.testing.assert_allclose(volume.position, first, atol=1e-4)
    np.testing.assert_allclose(volume.spacing, image.spacing, atol=1e-6)
    np.testing.assert_allclose(volume.direction[:, 0], image.slice_direction, atol=1e-6)


def test_empty_frames_are_omitted(written: dict[str, WrittenStudy]) -> None:
    seg = _read_seg(written["CT"])
    image = _ct_image()
    non_empty = sum(int(np.any(image.labels == lab.value, axis=(1, 2)).sum()) for lab in image.label_info)
    assert seg.NumberOfFrames == non_empty
    assert _read_seg(written["MR"]).NumberOfFrames == 3  # lesion segment: declared, no frame


def test_same_subject_gives_identical_files(tmp_path: Path, subject: Subject) -> None:
    first = write_study(_ct_image(), subject, tmp_path / "a")
    second = write_study(_ct_image(), subject, tmp_path / "b")
    assert (first.study_uid, first.series_uid, first.seg_series_uid, first.seg_sop_uid) == (
        second.study_uid,
        second.series_uid,
        second.seg_series_uid,
        second.seg_sop_uid,
    )
    for a, b in zip(first.image_paths, second.image_paths, strict=True):
        assert a.read_bytes() == b.read_bytes()
    # highdicom's wall-clock timestamps and random dimension UID are replaced, so the SEG is identical too
    assert first.seg_path.read_bytes() == second.seg_path.read_bytes()


def test_other_subject_gets_other_uids(tmp_path: Path, subject: Subject) -> None:
    other = draw_subject("ct-abdomen", 1, seed=1)
    mine = write_study(_dx_image(), subject, tmp_path)
    theirs = write_study(_dx_image(), other, tmp_path)
    mine_uids = {mine.study_uid, mine.series_uid, mine.seg_series_uid, mine.seg_sop_uid}
    their_uids = {theirs.study_uid, theirs.series_uid, theirs.seg_series_uid, theirs.seg_sop_uid}
    assert len(mine_uids) == 4
    assert not mine_uids & their_uids
    assert mine.seg_path.parent != theirs.seg_path.parent


@pytest.mark.parametrize("modality", list(IMAGES))
def test_headers_match_subject(written: dict[str, WrittenStudy], subject: Subject, modality: str) -> None:
    study = written[modality]
    for path in [study.image_paths[0], study.seg_path]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.PatientID == subject.patient_id
        assert str(ds.PatientName) == subject.patient_name
        assert ds.PatientBirthDate == subject.birth_date.strftime("%Y%m%d")
        assert ds.PatientSex == subject.sex
        assert ds.StudyDate == subject.study_date.strftime("%Y%m%d")
        assert ds.StudyInstanceUID == study.study_uid
        assert ds.AccessionNumber.startswith("A")
        assert ds.AccessionNumber[1:].isdigit()
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    image = pydicom.dcmread(study.image_paths[0], stop_before_pixels=True)
    assert image.PatientAge == f"{subject.age_years:03d}Y"
    assert float(image.PatientSize) == subject.height_m
    assert float(image.PatientWeight) == subject.weight_kg
    assert image.EthnicGroup == subject.ethnic_group
    assert image.Manufacturer == subject.manufacturer
    assert image.ManufacturerModelName == subject.model_name
    assert image.InstitutionName == subject.institution
    assert image.SeriesInstanceUID == study.series_uid
    assert image.SpecificCharacterSet == "ISO_IR 100"
    assert image.StudyDescription == {"CT": "CT ABDOMEN", "MR": "MR BRAIN", "DX": "XR KNEE"}[modality]
    assert image.BodyPartExamined == {"CT": "ABDOMEN", "MR": "BRAIN", "DX": "KNEE"}[modality]
    seg = pydicom.dcmread(study.seg_path, stop_before_pixels=True)
    assert seg.Manufacturer == "fairnode cohorts"
    assert seg.ManufacturerModelName == f"{subject.kind} phantom"


def test_dx_headers(written: dict[str, WrittenStudy]) -> None:
    ds = pydicom.dcmread(written["DX"].image_paths[0])
    assert ds.SOPClassUID == pydicom.uid.DigitalXRayImageStorageForPresentation
    assert ds.ImageLaterality == "L"
    assert ds.ViewPosition == "AP"
    assert ds.PresentationIntentType == "FOR PRESENTATION"
    assert ds.AnatomicRegionSequence[0].CodeValue == "72696002"
    assert [float(v) for v in ds.ImagerPixelSpacing] == [0.15, 0.14]
    assert ds.pixel_array.shape == (80, 64)
    assert "FrameOfReferenceUID" not in ds


def test_rejects_bad_input(tmp_path: Path, subject: Subject) -> None:
    image = _dx_image()
    bad_laterality = SyntheticImage(
        "DX", image.pixels, image.labels, image.spacing, image.label_info, acquisition={"laterality": "X"}
    )
    with pytest.raises(ValueError, match="laterality"):
        write_study(bad_laterality, subject, tmp_path)
    no_labels = SyntheticImage("DX", image.pixels, np.zeros_like(image.labels), image.spacing, ())
    with pytest.raises(ValueError, match="label_info"):
        write_study(no_labels, subject, tmp_path)
    nan_pixels = image.pixels.copy()
    nan_pixels[0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        write_study(SyntheticImage("DX", nan_pixels, image.labels, image.spacing, image.label_info), subject, tmp_path)
