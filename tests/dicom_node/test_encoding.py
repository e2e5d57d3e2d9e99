"""dicom_node.writers.encoding.save_dataset writes the bytes pydicom's ``save_as`` writes, for every output the
node builds and for the elements it leaves to pydicom (names, non-ASCII text, dates, binary values, ambiguous
VRs, undefined lengths, raw elements of a file read back)."""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable
from dataclasses import replace
from datetime import date, time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless

from dicom_node.writers import (
    build_probability_seg,
    build_seg,
    build_sr,
    build_uncertainty_map,
    segment_measurements,
)
from dicom_node.writers.encoding import save_dataset
from tests.dicom_node.test_quality_writers import Case, _quality, ct, dx  # noqa: F401  (fixtures)
from tests.dicom_node.test_writers import CREATED, SETTINGS


def _pydicom_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _assert_same_file(build: Callable[[], Dataset], tmp_path: Path) -> None:
    """Two objects built alike (writing may resolve VRs in place): one written by each writer."""
    path = tmp_path / "written.dcm"
    save_dataset(build(), path)
    assert path.read_bytes() == _pydicom_bytes(build())


def _outputs(case: Case) -> dict[str, Callable[[], Dataset]]:
    def seg() -> Dataset:
        return build_seg(case.sources, case.labels, case.card, SETTINGS, created=CREATED)

    def probabilities() -> Dataset:
        return build_probability_seg(case.sources, case.probabilities, case.card, SETTINGS, created=CREATED)

    def entropy() -> Dataset:
        return build_uncertainty_map(case.sources, case.entropy, case.card, SETTINGS, created=CREATED)

    def entropy_jpeg_ls() -> Dataset:
        settings = replace(SETTINGS, map_transfer_syntax=JPEGLSLossless)
        return build_uncertainty_map(case.sources, case.entropy, case.card, settings, created=CREATED)

    def sr() -> Dataset:
        return build_sr(
            case.sources,
            seg(),
            segment_measurements(case.labels, case.spacing, case.card),
            case.card,
            SETTINGS,
            created=CREATED,
            quality=_quality(case, review=frozenset({1})),
            probabilities=probabilities(),
            uncertainty_map=entropy(),
        )

    return {
        "seg": seg,
        "probabilities": probabilities,
        "entropy": entropy,
        "entropy-jpeg-ls": entropy_jpeg_ls,
        "sr": sr,
    }


@pytest.mark.parametrize("case_name", ["ct", "dx"])
@pytest.mark.parametrize("output", ["seg", "probabilities", "entropy", "entropy-jpeg-ls", "sr"])
def test_every_output_is_written_as_pydicom_writes_it(
    case_name: str, output: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    case: Case = request.getfixturevalue(case_name)
    _assert_same_file(_outputs(case)[output], tmp_path)


def _awkward() -> Dataset:
    """A dataset whose nested items hold what the fast path leaves to pydicom, and what it encodes itself."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "2.25.1234567890"
    ds.PatientName = "Doe^Jane"
    ds.PixelRepresentation = 1
    ds.BitsAllocated = 16
    ds.SmallestImagePixelValue = b"\xfe\xff"  # 'US or SS', given as bytes: signed by PixelRepresentation
    ds.add_new(0x00090010, "LO", "FAIRNODE TEST")  # a private block
    ds.add_new(0x00091001, "DS", ["1.5", "-2.25"])
    ds.add_new(0x00091002, "UN", b"\x01\x02\x03")
    ds.ImageComments = "x" * 70_001  # LT over 64 kB: pydicom writes it as UN, with a warning
    inner = Dataset()
    inner.SpecificCharacterSet = "ISO_IR 192"
    inner.PatientName = "Müller^Jürgen"
    inner.StudyDescription = "Schädel nativ"
    inner.StudyDate = date(2026, 11, 3)
    inner.StudyTime = time(10, 5, 7, 120000)
    inner.ContentDate = "20261103"
    inner.SliceThickness = np.float64(1.25)
    inner.ImagePositionPatient = [-120.5, "13.25", 7]
    inner.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    inner.TextValue = "y" * 70_001  # UT: a 32-bit length, no limit
    inner.InstanceNumber = "12"
    inner.ReferencedFrameNumber = [1, 2, 3]
    inner.FrameIncrementPointer = 0x00181063  # AT
    inner.RescaleSlope = 0.5
    inner.RealWorldValueFirstValueMapped = -3  # 'US or SS' in a nested item: resolved by the ancestors
    inner.RecommendedDisplayFrameRateInFloat = 12.5  # FL
    inner.add_new(0x00189219, "SS", [-1, 2])  # SS, several values
    inner.LUTDescriptor = [4096, 0, 12]  # 'US or SS', first value always US
    inner.add_new(0x60003000, "OB or OW", b"\x01\x02\x03")  # Overlay Data, odd length padded
    inner.add_new(0x00180000, "UL", 99)  # a retired group length: not written
    inner.ConceptNameCodeSequence = Sequence([])  # an empty sequence
    deep = Dataset()
    deep.CodeValue = "T-62000"
    deep.CodingSchemeDesignator = "SRT"
    deep.CodeMeaning = ""
    deep.is_undefined_length_sequence_item = True
    undefined = Sequence([deep, copy.deepcopy(deep)])
    inner.AnatomicRegionSequence = undefined
    inner["AnatomicRegionSequence"].is_undefined_length = True
    ds.ReferencedSeriesSequence = Sequence([inner, Dataset()])
    return ds


def test_awkward_elements_are_written_as_pydicom_writes_them(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="exceeds the size of 64 kByte"):
        _assert_same_file(_awkward, tmp_path)
    back = pydicom.dcmread(tmp_path / "written.dcm")
    inner = back.ReferencedSeriesSequence[0]
    assert str(inner.PatientName) == "Müller^Jürgen" and inner.RealWorldValueFirstValueMapped == -3
    assert back.SmallestImagePixelValue == -2 and "00180000" not in {f"{e.tag:08X}" for e in inner}


def test_a_file_read_back_and_written_again_is_written_as_pydicom_writes_it(tmp_path: Path, ct: Case) -> None:  # noqa: F811
    """Raw elements (never decoded), from a file in this transfer syntax and from one in another."""
    path = tmp_path / "seg.dcm"
    _outputs(ct)["sr"]().save_as(path, enforce_file_format=True)
    _assert_same_file(lambda: pydicom.dcmread(path), tmp_path)
    implicit = pydicom.dcmread(path)
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    implicit_path = tmp_path / "implicit.dcm"
    implicit.save_as(implicit_path, enforce_file_format=True)
    _assert_same_file(lambda: pydicom.dcmread(implicit_path), tmp_path)

    def read_implicit_to_write_explicit() -> Dataset:
        ds = pydicom.dcmread(implicit_path)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        return ds

    _assert_same_file(read_implicit_to_write_explicit, tmp_path)


#: (keyword, strategy of its value) for the elements drawn into each item: every VR group the encoder handles
#: itself, and some it leaves to pydicom
_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=0x17F, exclude_characters="\\"), max_size=12)
_ELEMENTS: list[tuple[str, st.SearchStrategy[object]]] = [
    ("CodeValue", st.text("ABCXYZ0123456789", max_size=9)),  # SH
    ("CodeMeaning", _TEXT),  # LO, ASCII or not
    ("ReferencedSOPInstanceUID", st.integers(0, 10**12).map(lambda n: f"1.2.3.{n}")),  # UI, odd or even length
    ("ImageType", st.lists(st.sampled_from(["DERIVED", "PRIMARY", "AXIAL", "X"]), max_size=3)),  # CS, multi
    ("SliceThickness", st.floats(-1e6, 1e6, allow_nan=False, width=32)),  # DS
    ("ImagePositionPatient", st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=3, max_size=3)),
    ("InstanceNumber", st.integers(-(2**31), 2**31 - 1)),  # IS
    ("Rows", st.integers(0, 65535)),  # US
    ("ReferencedFrameNumber", st.lists(st.integers(1, 2**31 - 1), max_size=4)),  # IS, multi
    ("RecommendedDisplayFrameRateInFloat", st.floats(-1e6, 1e6, allow_nan=False, width=32)),  # FL
    ("FloatPixelPaddingValue", st.floats(allow_nan=False, width=32)),  # FL
    ("LongitudinalTemporalOffsetFromEvent", st.floats(allow_nan=False)),  # FD
    ("SimpleFrameList", st.lists(st.integers(0, 2**32 - 1), max_size=4)),  # UL, multi
    ("PatientName", _TEXT),  # PN: pydicom's
    ("ContentDate", st.dates().map(lambda d: d.strftime("%Y%m%d"))),  # DA as a string
    ("StudyDate", st.dates()),  # DA as a date: pydicom's
    ("TextValue", _TEXT),  # UT
    ("RealWorldValueFirstValueMapped", st.integers(-32768, 32767)),  # 'US or SS': resolved from an ancestor
]


def _drawn_item(draw: st.DrawFn, depth: int) -> Dataset:
    item = Dataset()
    if draw(st.booleans()):
        item.SpecificCharacterSet = draw(st.sampled_from(["ISO_IR 100", "ISO_IR 192"]))
    for keyword, values in draw(st.lists(st.sampled_from(_ELEMENTS), max_size=6, unique_by=lambda e: e[0])):
        setattr(item, keyword, draw(values))
    if depth < 3 and draw(st.booleans()):
        nested = [_drawn_item(draw, depth + 1) for _ in range(draw(st.integers(0, 3)))]
        for child in nested:
            child.is_undefined_length_sequence_item = draw(st.booleans())
        item.ContentSequence = Sequence(nested)
        item["ContentSequence"].is_undefined_length = draw(st.booleans())
    return item


@st.composite
def _datasets(draw: st.DrawFn) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"
    ds.SOPInstanceUID = "2.25.42"
    ds.PixelRepresentation = draw(st.sampled_from([0, 1]))
    ds.ContentSequence = Sequence([_drawn_item(draw, 0) for _ in range(draw(st.integers(0, 4)))])
    return ds


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom checks the drawn values as they are set
@given(_datasets())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_drawn_datasets_are_written_as_pydicom_writes_them(ds: Dataset) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's value checks on what was drawn
        try:
            expected = _pydicom_bytes(copy.deepcopy(ds))
        except (ValueError, OverflowError, OSError) as exc:  # pydicom cannot write it: neither may this writer
            with pytest.raises(type(exc)):
                save_dataset(ds, io.BytesIO())
            return
        buffer = io.BytesIO()
        save_dataset(ds, buffer)
    assert buffer.getvalue() == expected


def test_a_sequence_read_from_a_file_is_written_as_it_was_read(tmp_path: Path) -> None:
    """pydicom writes the raw bytes of a sequence it read in this transfer syntax, even where it would have
    encoded it otherwise (here an item whose two elements are out of tag order): so does save_dataset."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"
    ds.SOPInstanceUID = "2.25.42"
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.34"  # (0008,1155)
    item.SeriesInstanceUID = "1.2.56"  # (0020,000E)
    ds.ReferencedSeriesSequence = Sequence([item])
    first, second = b"\x08\x00\x55\x11UI\x06\x001.2.34", b"\x20\x00\x0e\x00UI\x06\x001.2.56"
    encoded = _pydicom_bytes(ds)
    assert first + second in encoded
    path = tmp_path / "unordered.dcm"
    path.write_bytes(encoded.replace(first + second, second + first))
    _assert_same_file(lambda: pydicom.dcmread(path), tmp_path)
    assert second + first in (tmp_path / "written.dcm").read_bytes()
