"""A Legacy Converted Enhanced (multi-frame) CT gets the same SEG as the single-frame series it came from,
each SEG frame referencing the source frame whose labels it holds (frames converted in shuffled order)."""

from __future__ import annotations

import random
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from cohorts import ct_abdomen
from cohorts.dicom_writer import write_study
from cohorts.subjects import draw_subject
from dicom_node.volume import read_series
from fairnode.node import offline_context
from fairnode.pipeline import QualitySettings, StudyOutcome, process_study
from fairnode.settings import load_settings
from tests.conftest import dciodvfy_errors


def _run(files: list[Path], study_uid: str, out: Path, data: Path) -> StudyOutcome:
    ctx = offline_context(load_settings(None, data_dir=data))
    ctx.quality = QualitySettings(enabled=False)
    return process_study(files, study_uid=study_uid, run=1, out_dir=out, ctx=ctx)


def _masks_by_source(seg_path: Path, frame_to_key: dict[int, str]) -> dict[tuple[str, int], np.ndarray]:
    """Each SEG frame's mask keyed by (the single-frame source it stands for, segment number)."""
    seg = pydicom.dcmread(seg_path)
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    out: dict[tuple[str, int], np.ndarray] = {}
    for frame, item in zip(pixels, seg.PerFrameFunctionalGroupsSequence, strict=True):
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        number = int(source.get("ReferencedFrameNumber", 0) or 0)
        key = frame_to_key[number] if number else str(source.ReferencedSOPInstanceUID)
        out[(key, int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber))] = frame
    return out


@pytest.mark.timeout(300)
def test_legacy_converted_ct_is_segmented_like_its_single_frame_series(tmp_path: Path) -> None:
    subject = draw_subject("ct-abdomen", 0, 1)
    image = ct_abdomen.generate(subject, matrix=96, slice_thickness=5.0)
    written = write_study(image, subject, tmp_path / "single")
    sources = read_series(written.image_paths)
    shuffled = list(sources)
    random.Random(3).shuffle(shuffled)
    converted = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=shuffled,
        series_instance_uid=generate_uid(),
        series_number=20,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    multiframe_path = tmp_path / "multiframe" / "ct.dcm"
    multiframe_path.parent.mkdir()
    converted.save_as(multiframe_path, enforce_file_format=True)
    study_uid = str(sources[0].StudyInstanceUID)

    single = _run(list(written.image_paths), study_uid, tmp_path / "out-single", tmp_path / "d1")
    multi = _run([multiframe_path], study_uid, tmp_path / "out-multi", tmp_path / "d2")

    (single_series,) = single.series
    (multi_series,) = multi.series
    assert (single_series.status, multi_series.status) == ("done", "done"), multi_series.reason
    assert multi_series.seg_path is not None and single_series.seg_path is not None
    assert dciodvfy_errors(Path(multi_series.seg_path)) == []
    # frame n of the multi-frame image was converted from this single-frame instance
    frame_to_key = {
        n: str(item.ConversionSourceAttributesSequence[0].ReferencedSOPInstanceUID)
        for n, item in enumerate(converted.PerFrameFunctionalGroupsSequence, start=1)
    }
    expected = _masks_by_source(Path(single_series.seg_path), {})
    got = _masks_by_source(Path(multi_series.seg_path), frame_to_key)
    assert got.keys() == expected.keys()
    for key, mask in expected.items():
        np.testing.assert_array_equal(got[key], mask, err_msg=f"source {key[0]} segment {key[1]}")
    assert multi_series.measurements == pytest.approx(single_series.measurements, rel=1e-6)
