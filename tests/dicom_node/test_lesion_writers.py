"""The lesion model's SEG and SR (dicom_node.writers.lesion) on a CT study with liver lesions, without the model:
dciodvfy-clean, read back, the model named as in the organ model's objects (one device observer, one SEG path)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from cohorts import ct_abdomen
from cohorts.dicom_writer import write_study
from cohorts.shift import ImagingShift
from cohorts.subjects import draw_subject
from dicom_node.writers import OutputSettings
from dicom_node.writers.lesion import (
    COUNTERFACTUAL_SERIES_NUMBER,
    HU_OFFSET,
    SEG_SERIES_NUMBER,
    SR_SERIES_NUMBER,
    build_counterfactual_map,
    build_lesion_seg,
    build_lesion_sr,
)
from dicom_node.writers.sr import device_observer
from inference.weak.shipped import LesionCard, LesionResult
from tests.conftest import dciodvfy_errors

CREATED = datetime(2024, 5, 17, 14, 30, 5)
SETTINGS = OutputSettings()
CARD = LesionCard(version="0.2.0", description="test card of the lesion model", threshold=0.2)


@dataclasses.dataclass(frozen=True)
class LesionStudy:
    sources: list[Dataset]
    mask: np.ndarray
    result: LesionResult


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> LesionStudy:
    subject = dataclasses.replace(draw_subject("ct-abdomen", 2, 5), shift=ImagingShift(lesion_mm=15.0))
    image, lesions = ct_abdomen.generate_with_lesions(subject, matrix=64, slice_thickness=5.0)
    written = write_study(image, subject, tmp_path_factory.mktemp("lesions"))
    result = LesionResult(
        mask=lesions,
        volumes_ml=[2.5, 0.75],
        probability_before=0.93,
        probability_after=0.12,
        mc_agreement=0.875,
        route="REVIEW",
        reasons=["lesion call uncertain on 2 slices"],
    )
    return LesionStudy([pydicom.dcmread(p) for p in written.image_paths], lesions, result)


def _write(study: LesionStudy, folder: Path) -> tuple[Path, Path]:
    seg = build_lesion_seg(study.sources, study.mask, CARD, SETTINGS, created=CREATED)
    sr = build_lesion_sr(study.sources, seg, study.result, CARD, SETTINGS, created=CREATED)
    paths = folder / "seg.dcm", folder / "sr.dcm"
    seg.save_as(paths[0], enforce_file_format=True)
    sr.save_as(paths[1], enforce_file_format=True)
    return paths


def test_lesion_seg_and_sr_pass_dciodvfy_and_read_back(study: LesionStudy, tmp_path: Path) -> None:
    seg_path, sr_path = _write(study, tmp_path)
    assert dciodvfy_errors(seg_path) == [] and dciodvfy_errors(sr_path) == []
    seg = hd.seg.segread(seg_path)
    assert seg.SeriesNumber == SEG_SERIES_NUMBER and seg.SegmentationType == "BINARY"
    (segment,) = seg.SegmentSequence
    assert (segment.SegmentLabel, segment.SegmentAlgorithmType) == (CARD.segment_label, "AUTOMATIC")
    assert segment.AnatomicRegionSequence[0].CodeValue == CARD.anatomic_region[0]
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (CARD.name, CARD.version)
    assert algorithm.AlgorithmParameters == f"supervision={CARD.supervision}"
    # one frame per source slice (empty frames kept), the mask read back as written
    assert int(seg.NumberOfFrames) == len(study.sources)
    uids = [str(ds.SOPInstanceUID) for ds in study.sources]
    mask = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])[..., 0]
    np.testing.assert_array_equal(mask, study.mask)
    purposes = [item for item in seg.ContributingEquipmentSequence if item.ManufacturerModelName == CARD.name]
    assert purposes and purposes[0].ContributionDescription.endswith(f"({CARD.supervision})")
    sr = pydicom.dcmread(sr_path)
    assert sr.SeriesNumber == SR_SERIES_NUMBER


def _observer_uids(items: Sequence[Dataset]) -> list[str]:
    return [str(item.UID) for item in items if item.ConceptNameCodeSequence[0].CodeMeaning == "Device Observer UID"]


def test_lesion_sr_observer_is_the_model_device(study: LesionStudy, tmp_path: Path) -> None:
    _, sr_path = _write(study, tmp_path)
    got = _observer_uids(pydicom.dcmread(sr_path).ContentSequence)
    assert got == _observer_uids(device_observer(CARD, SETTINGS)) and len(got) == 1


def test_lesion_outputs_are_deterministic(study: LesionStudy, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = [p.read_bytes() for p in _write(study, tmp_path / "a")]
    assert first == [p.read_bytes() for p in _write(study, tmp_path / "b")]


def test_lesion_mask_not_matching_the_images_is_refused(study: LesionStudy) -> None:
    with pytest.raises(ValueError, match="lesion mask of shape"):
        build_lesion_seg(study.sources, study.mask[1:], CARD, SETTINGS, created=CREATED)


def test_counterfactual_map_passes_dciodvfy_and_reads_back_in_hu(study: LesionStudy, tmp_path: Path) -> None:
    # a counterfactual as the model would write it: the CT with its lesions filled by the liver's own value
    image = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in study.sources])
    liver = np.median(image[study.mask]) if study.mask.any() else 60.0
    image = np.where(study.mask, liver, image).astype(np.float32)
    pm = build_counterfactual_map(study.sources, image, CARD, SETTINGS, created=CREATED)
    path = tmp_path / "cf.dcm"
    pm.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    back = pydicom.dcmread(path)
    assert back.SeriesNumber == COUNTERFACTUAL_SERIES_NUMBER and int(back.NumberOfFrames) == len(study.sources)
    mapping = back.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "[hnsf'U]"
    hu = back.pixel_array * float(mapping.RealWorldValueSlope) + float(mapping.RealWorldValueIntercept)
    np.testing.assert_allclose(hu, np.clip(np.rint(image), -HU_OFFSET, None), atol=0)
    # the same frames as the source, in the source's order
    refs = [
        f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for f in back.PerFrameFunctionalGroupsSequence
    ]
    assert refs == [str(ds.SOPInstanceUID) for ds in study.sources]
    algorithm = [item for item in back.ContributingEquipmentSequence if item.ManufacturerModelName == CARD.name]
    assert algorithm and algorithm[0].ContributionDescription.endswith(f"({CARD.supervision})")


def test_counterfactual_map_refuses_integer_or_mismatched_images(study: LesionStudy) -> None:
    shape = (len(study.sources), *study.mask.shape[1:])
    with pytest.raises(ValueError, match="float HU"):
        build_counterfactual_map(study.sources, np.zeros(shape, np.int16), CARD, SETTINGS, created=CREATED)
    with pytest.raises(ValueError, match="counterfactual image of shape"):
        build_counterfactual_map(study.sources, np.zeros(shape, np.float32)[1:], CARD, SETTINGS, created=CREATED)
    bad = np.zeros(shape, np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        build_counterfactual_map(study.sources, bad, CARD, SETTINGS, created=CREATED)
