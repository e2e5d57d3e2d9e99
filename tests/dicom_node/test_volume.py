"""dicom_node.volume: series written by the cohort writer, read back, shuffled, damaged and recompressed."""

from __future__ import annotations

import copy
import math
import random
import re
import subprocess
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from cohorts import ct_abdomen, xr_knee
from cohorts.dicom_writer import CT_HU_MAX, CT_HU_MIN, write_study
from cohorts.image import SyntheticImage
from cohorts.subjects import draw_subject
from dicom_node.volume import Volume, VolumeError, load_volume, read_series
from tests.conftest import require_tool

SLICE_MM = 5.0


@dataclass(frozen=True)
class Written:
    image: SyntheticImage
    paths: tuple[Path, ...]


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> Written:
    subject = draw_subject("ct-abdomen", 0, 1)
    image = ct_abdomen.generate(subject, matrix=64, slice_thickness=SLICE_MM)
    written = write_study(image, subject, tmp_path_factory.mktemp("ct"))
    return Written(image, written.image_paths)


@pytest.fixture(scope="module")
def dx(tmp_path_factory: pytest.TempPathFactory) -> Written:
    subject = draw_subject("xr-knee", 0, 1)
    image = xr_knee.generate(subject)
    written = write_study(image, subject, tmp_path_factory.mktemp("dx"))
    return Written(image, written.image_paths)


@pytest.fixture
def slices(ct: Written) -> list[Dataset]:
    """A fresh copy of the CT slices, in slice order (slice k is instance k + 1)."""
    return read_series(ct.paths)


@pytest.fixture(scope="module")
def reference(ct: Written) -> Volume:
    return load_volume(read_series(ct.paths))


def _expected_hu(image: SyntheticImage) -> np.ndarray:
    return np.clip(np.rint(image.pixels), CT_HU_MIN, CT_HU_MAX)


def _shuffled(datasets: list[Dataset], seed: int = 0) -> list[Dataset]:
    out = list(datasets)
    random.Random(seed).shuffle(out)
    return out


def _angle_in(message: str) -> float:
    found = re.search(r"gantry tilt of (-?[0-9.]+) degrees", message)
    if found is None:
        raise AssertionError(f"no tilt angle in {message!r}")
    return float(found.group(1))


# --- single-frame CT -----------------------------------------------------------------------------------


def test_round_trip_of_shuffled_slices(ct: Written, slices: list[Dataset]) -> None:
    volume = load_volume(_shuffled(slices))

    image = ct.image
    assert volume.pixels.dtype == np.float32
    assert volume.pixels.shape == image.pixels.shape
    np.testing.assert_array_equal(volume.pixels, _expected_hu(image))
    assert np.max(np.abs(volume.pixels - image.pixels)) <= 0.5 + 1e-3  # HU rounded to integers
    assert volume.spacing == pytest.approx(image.spacing, abs=1e-5)
    assert volume.origin == pytest.approx(image.origin, abs=1e-5)
    assert volume.orientation == pytest.approx(image.orientation)
    assert volume.slice_direction == pytest.approx(image.slice_direction)
    assert [int(ds.InstanceNumber) for ds in volume.datasets] == list(range(1, len(slices) + 1))
    assert volume.modality == "CT"
    assert volume.frame_numbers is None
    assert volume.dropped == ()


def test_slice_order_comes_from_positions_not_instance_numbers(slices: list[Dataset]) -> None:
    for ds in slices:
        ds.InstanceNumber = 1000 - int(ds.InstanceNumber)
    volume = load_volume(_shuffled(slices, seed=3))
    z = [float(ds.ImagePositionPatient[2]) for ds in volume.datasets]
    assert z == sorted(z, reverse=True)  # head to feet: against the normal (0, 0, 1)


def test_read_series_names_an_unreadable_file(ct: Written, tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a DICOM file at all")
    with pytest.raises(VolumeError, match=re.escape(str(junk))):
        read_series([ct.paths[0], junk])


def test_duplicate_position_keeps_the_highest_acquisition_number(slices: list[Dataset]) -> None:
    k = 10
    original = slices[k]
    repeat = copy.deepcopy(original)
    repeat.SOPInstanceUID = generate_uid()
    repeat.AcquisitionNumber = 2
    repeat.PixelData = np.full((64, 64), 1024 + 77, dtype="<u2").tobytes()  # 77 HU everywhere

    volume = load_volume(_shuffled([*slices, repeat]))

    assert volume.pixels.shape[0] == len(slices)
    assert volume.dropped == (str(original.SOPInstanceUID),)
    assert volume.datasets[k] is repeat
    assert np.all(volume.pixels[k] == 77.0)


def test_duplicate_position_with_equal_acquisition_keeps_the_highest_instance_number(
    slices: list[Dataset],
) -> None:
    repeat = copy.deepcopy(slices[0])
    repeat.SOPInstanceUID = generate_uid()
    repeat.InstanceNumber = 500
    volume = load_volume([repeat, *slices])
    assert volume.datasets[0] is repeat
    assert volume.dropped == (str(slices[0].SOPInstanceUID),)


def test_missing_slices_are_named_by_their_gap(slices: list[Dataset]) -> None:
    del slices[20:22]  # two slices: one gap of 15 mm
    with pytest.raises(VolumeError, match=r"not evenly spaced") as info:
        load_volume(slices)
    message = str(info.value)
    assert "from 5.000 to 15.000 mm" in message
    assert "about 2 slice(s) missing" in message


def test_gantry_tilt_attribute_is_refused(slices: list[Dataset]) -> None:
    for ds in slices:
        ds.GantryDetectorTilt = 15
    with pytest.raises(VolumeError, match=r"gantry tilt of 15 degrees is not supported"):
        load_volume(slices)


def test_sheared_positions_are_refused_as_tilt(slices: list[Dataset]) -> None:
    shift = SLICE_MM * math.tan(math.radians(15.0))
    for k, ds in enumerate(slices):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, round(y + k * shift, 6), z]
    with pytest.raises(VolumeError, match=r"gantry tilt of .* degrees is not supported") as info:
        load_volume(slices)
    assert _angle_in(str(info.value)) == pytest.approx(15.0, abs=0.01)


def test_rounded_positions_are_not_a_tilt(slices: list[Dataset]) -> None:
    for ds in slices:  # scanners round positions; 0.005 mm in-plane noise must not count as tilt
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [round(x, 2), round(y, 2), z]
    assert load_volume(slices).pixels.shape[0] == len(slices)


def test_mixed_orientation_names_the_values(slices: list[Dataset]) -> None:
    slices[5].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    with pytest.raises(VolumeError, match=r"do not share one ImageOrientationPatient") as info:
        load_volume(slices)
    message = str(info.value)
    assert "[1, 0, 0, 0, 1, 0]" in message
    assert "[1, 0, 0, 0, 0, -1] in 1 image(s)" in message
    assert str(slices[5].SOPInstanceUID) in message


def test_mixed_pixel_spacing_names_the_values(slices: list[Dataset]) -> None:
    slices[3].PixelSpacing = [0.7, 0.7]
    with pytest.raises(VolumeError, match=r"do not share one PixelSpacing.*\[0\.7, 0\.7\]"):
        load_volume(slices)


def test_one_slice_takes_its_spacing_from_slice_thickness(slices: list[Dataset]) -> None:
    slices[7].SliceThickness = 2.5
    volume = load_volume([slices[7]])
    assert volume.pixels.shape == (1, 64, 64)
    assert volume.spacing[0] == 2.5
    assert volume.origin == pytest.approx([float(v) for v in slices[7].ImagePositionPatient])


def test_rescale_is_applied_per_slice(ct: Written, slices: list[Dataset]) -> None:
    # Slice 4 stores (HU + 1024) / 2 with slope 2: the volume must still hold the same HU (within 1 HU).
    ds = slices[4]
    stored = ds.pixel_array.astype(np.int32)
    ds.PixelData = ((stored + 1) // 2).astype("<u2").tobytes()
    ds.RescaleSlope = 2
    volume = load_volume(slices)
    assert np.max(np.abs(volume.pixels[4] - _expected_hu(ct.image)[4])) <= 1.0


def test_series_without_slices_is_refused() -> None:
    with pytest.raises(VolumeError, match="at least 1 image"):
        load_volume([])


def test_two_series_are_refused(slices: list[Dataset]) -> None:
    slices[0].SeriesInstanceUID = generate_uid()
    with pytest.raises(VolumeError, match="SeriesInstanceUID"):
        load_volume(slices)


# --- compressed transfer syntaxes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "options", "syntax"),
    [
        ("dcmcjpls", [], JPEGLSLossless),
        ("dcmcrle", [], RLELossless),
        ("dcmcjpeg", ["+e1"], JPEGLosslessSV1),
    ],
)
def test_dcmtk_lossless_slices_decode_to_the_original(
    ct: Written, reference: Volume, tmp_path: Path, tool: str, options: list[str], syntax: str
) -> None:
    program = require_tool(tool)
    k = 17
    compressed = tmp_path / "compressed.dcm"
    subprocess.run([program, *options, str(ct.paths[k]), str(compressed)], check=True, capture_output=True)
    datasets = read_series(ct.paths)
    datasets[k] = pydicom.dcmread(compressed)
    assert datasets[k].file_meta.TransferSyntaxUID == syntax

    volume = load_volume(_shuffled(datasets))

    np.testing.assert_array_equal(volume.pixels, reference.pixels)


def test_dcmtk_lossy_jpeg_decodes_close_to_the_original(ct: Written, reference: Volume, tmp_path: Path) -> None:
    program = require_tool("dcmcjpeg")
    k = 17
    compressed = tmp_path / "lossy.dcm"
    subprocess.run([program, "+ee", str(ct.paths[k]), str(compressed)], check=True, capture_output=True)
    datasets = read_series(ct.paths)
    datasets[k] = pydicom.dcmread(compressed)
    assert datasets[k].file_meta.TransferSyntaxUID == JPEGExtended12Bit

    volume = load_volume(datasets)

    assert float(np.mean(np.abs(volume.pixels[k] - reference.pixels[k]))) < 10.0
    np.testing.assert_array_equal(np.delete(volume.pixels, k, 0), np.delete(reference.pixels, k, 0))


def test_jpeg2000_lossless_slice_decodes_to_the_original(ct: Written, reference: Volume) -> None:
    datasets = read_series(ct.paths)
    datasets[9].compress(JPEG2000Lossless)  # encoded by pylibjpeg-openjpeg
    buffer = BytesIO()
    datasets[9].save_as(buffer, enforce_file_format=True)
    datasets[9] = pydicom.dcmread(BytesIO(buffer.getvalue()))
    assert datasets[9].file_meta.TransferSyntaxUID == JPEG2000Lossless

    np.testing.assert_array_equal(load_volume(datasets).pixels, reference.pixels)


def test_undecodable_pixel_data_names_the_instance_and_transfer_syntax() -> None:
    path = get_testdata_file("MR_truncated.dcm")
    if not isinstance(path, str):
        raise AssertionError(f"pydicom's test file MR_truncated.dcm is missing: {path!r}")
    ds = pydicom.dcmread(path)
    with pytest.raises(VolumeError, match="cannot decode the pixel data") as info:
        load_volume([ds])
    message = str(info.value)
    assert str(ds.SOPInstanceUID) in message
    assert "Explicit VR Little Endian" in message


# --- Enhanced (multi-frame) CT ------------------------------------------------------------------------


def test_legacy_converted_enhanced_ct_gives_the_same_volume(ct: Written, reference: Volume) -> None:
    sources = read_series(ct.paths)
    converted = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=_shuffled(sources, seed=7),
        series_instance_uid=generate_uid(),
        series_number=20,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    buffer = BytesIO()
    converted.save_as(buffer, enforce_file_format=True)
    multiframe = pydicom.dcmread(BytesIO(buffer.getvalue()))

    volume = load_volume([multiframe])

    np.testing.assert_array_equal(volume.pixels, reference.pixels)
    assert volume.spacing == pytest.approx(reference.spacing)
    assert volume.origin == pytest.approx(reference.origin)
    assert volume.slice_direction == pytest.approx(reference.slice_direction)
    assert volume.datasets == (multiframe,)
    assert volume.frame_numbers is not None
    assert sorted(volume.frame_numbers) == list(range(1, len(sources) + 1))
    frames = multiframe.PerFrameFunctionalGroupsSequence
    sources_of_slices = [
        frames[n - 1].ConversionSourceAttributesSequence[0].ReferencedSOPInstanceUID for n in volume.frame_numbers
    ]
    assert sources_of_slices == [ds.SOPInstanceUID for ds in reference.datasets]


def test_enhanced_ct_per_frame_rescale_and_duplicate_frames(ct: Written, reference: Volume) -> None:
    converted = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=read_series(ct.paths[:6]),
        series_instance_uid=generate_uid(),
        series_number=20,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    frames = converted.PerFrameFunctionalGroupsSequence
    # Frame 3 gets its own rescale (stored values unchanged, so its HU shift by +100) ...
    transform = copy.deepcopy(converted.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence)
    transform[0].RescaleIntercept = -924
    frames[2].PixelValueTransformationSequence = transform
    # ... and the last frame moves onto frame 5's position with a lower acquisition number: it is dropped.
    frames[5].PlanePositionSequence = copy.deepcopy(frames[4].PlanePositionSequence)
    frames[5].FrameContentSequence[0].FrameAcquisitionNumber = 0
    volume = load_volume([converted])

    assert volume.frame_numbers == (1, 2, 3, 4, 5)
    assert volume.dropped == (f"{converted.SOPInstanceUID} frame 6",)
    np.testing.assert_array_equal(volume.pixels[2], reference.pixels[2] + 100)
    np.testing.assert_array_equal(volume.pixels[[0, 1, 3, 4]], reference.pixels[[0, 1, 3, 4]])


# --- radiographs ---------------------------------------------------------------------------------------


def test_dx_is_a_2d_image_with_imager_pixel_spacing(dx: Written) -> None:
    (ds,) = read_series(dx.paths)
    volume = load_volume([ds])

    assert volume.pixels.shape == dx.image.pixels.shape
    assert volume.pixels.dtype == np.float32
    np.testing.assert_array_equal(volume.pixels, ds.pixel_array.astype(np.float32))
    assert "PixelSpacing" not in ds
    assert volume.spacing == pytest.approx([float(v) for v in ds.ImagerPixelSpacing])
    assert volume.spacing == pytest.approx(dx.image.spacing)
    assert volume.origin == (0.0, 0.0, 0.0)
    assert volume.orientation == pytest.approx(dx.image.orientation)  # from PatientOrientation L\F
    assert volume.modality == "DX"
    assert volume.datasets == (ds,)


def test_dx_without_spacing_is_refused(dx: Written) -> None:
    (ds,) = read_series(dx.paths)
    del ds.ImagerPixelSpacing
    with pytest.raises(VolumeError, match="neither PixelSpacing nor ImagerPixelSpacing"):
        load_volume([ds])


def test_two_radiographs_are_refused(dx: Written) -> None:
    (ds,) = read_series(dx.paths)
    other = copy.deepcopy(ds)
    other.SOPInstanceUID = generate_uid()
    with pytest.raises(VolumeError, match="exactly 1 image, got 2"):
        load_volume([ds, other])
