"""The raw header walk (dicom_node.header_scan) finds what pydicom's parse finds, or leaves the stream to
pydicom: on generated datasets of every transfer syntax (sequences nested, of defined and undefined
length, icon images inside items, private elements) it must give a result equal to pydicom's; on those
streams broken at random, whenever it gives a result, pydicom parses the stream without error to the same
elements."""

from __future__ import annotations

from io import BytesIO

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_node.header_scan import PIXEL_TAGS, Scan, scan_header

SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)


def _flags(syntax: str) -> tuple[bool, bool]:
    return syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian


def _encode(ds: Dataset, syntax: str) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = _flags(syntax)
    write_dataset(fp, ds)
    return fp.getvalue()


def _pydicom(data: bytes, syntax: str) -> tuple[Dataset, int]:
    fp = BytesIO(data)
    ds = read_dataset(fp, *_flags(syntax), stop_when=lambda tag, vr, length: int(tag) in PIXEL_TAGS)
    return ds, fp.tell()


def _assert_same(scan: Scan, data: bytes, ds: Dataset, stop: int) -> None:
    """The walk's elements are pydicom's: the same tags, VRs and value bytes, the same stop."""
    assert set(scan.elements) == set(map(int, ds.keys()))
    for tag, (vr, offset, length) in scan.elements.items():
        elem = ds.get_item(tag, keep_deferred=True)
        if length < 0:  # an undefined-length sequence: pydicom parsed its items
            assert elem.VR == "SQ"
            continue
        assert isinstance(elem, RawDataElement)
        assert vr == elem.VR
        assert (elem.value or b"") == data[offset : offset + length]
    assert stop == (len(data) if scan.pixels is None else scan.pixels)


def _item(depth: int, draw: st.DrawFn) -> Dataset:
    item = Dataset()
    item.CodeValue = draw(st.text("ABCDEFGH0123456789", min_size=0, max_size=9))
    item.CodeMeaning = draw(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30))
    if draw(st.booleans()):
        item.ReferencedSOPInstanceUID = "1.2.3." + str(draw(st.integers(0, 10**9)))
    if draw(st.booleans()):  # an icon image inside an item: pixel data that must not end the walk
        item.Rows, item.Columns, item.BitsAllocated, item.SamplesPerPixel = 2, 2, 8, 1
        item.PixelData = bytes(4)
    if depth < 3 and draw(st.booleans()):
        _add_sequence(item, "ConceptNameCodeSequence", depth + 1, draw)
    return item


def _add_sequence(ds: Dataset, keyword: str, depth: int, draw: st.DrawFn) -> None:
    """A sequence of 0-3 items, the sequence and each item of defined or undefined length."""
    items = [_item(depth, draw) for _ in range(draw(st.integers(0, 3)))]
    for item in items:
        item.is_undefined_length_sequence_item = draw(st.booleans())
    setattr(ds, keyword, Sequence(items))
    ds[keyword].is_undefined_length = draw(st.booleans())


@st.composite
def datasets(draw: st.DrawFn) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.826.0.1." + str(draw(st.integers(0, 10**12)))
    ds.StudyInstanceUID = "1.2.826.0.2." + str(draw(st.integers(0, 10**12)))
    ds.SeriesInstanceUID = "1.2.826.0.3." + str(draw(st.integers(0, 10**12)))
    ds.PatientName = draw(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20))
    ds.StudyDescription = draw(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80))
    if draw(st.booleans()):
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"][: draw(st.integers(1, 3))]
    if draw(st.booleans()):
        ds.ImagePositionPatient = [draw(st.floats(-500, 500, allow_nan=False)) for _ in range(3)]
    if draw(st.booleans()):
        _add_sequence(ds, "ReferencedImageSequence", 1, draw)
    if draw(st.booleans()):
        _add_sequence(ds, "IconImageSequence", 1, draw)
    if draw(st.booleans()):
        ds.add_new(0x00090010, "LO", "PRIVATE CREATOR")
        ds.add_new(0x00091001, "OB", bytes(draw(st.integers(0, 40))))
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = 4, 4, 16, 1
    if draw(st.booleans()):
        ds.PixelData = bytes(32)
    return ds


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ds=datasets(), syntax=st.sampled_from(SYNTAXES))
def test_walk_of_well_formed_datasets_is_pydicoms(ds: Dataset, syntax: str) -> None:
    data = _encode(ds, syntax)
    scan = scan_header(data, *_flags(syntax))
    assert scan is not None, "a well-formed dataset is left to pydicom"
    parsed, stop = _pydicom(data, syntax)
    _assert_same(scan, data, parsed, stop)
    assert (scan.pixels is not None) == ("PixelData" in ds)
    if scan.pixels is not None:  # the first fragment up to the pixel data's header is enough
        head = 8 if syntax == ImplicitVRLittleEndian else 12
        start = scan_header(data[: scan.pixels + head], *_flags(syntax), prefix=True)
        assert start == scan
        assert scan_header(data[: scan.pixels + head - 1], *_flags(syntax), prefix=True) is None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ds=datasets(),
    syntax=st.sampled_from(SYNTAXES),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255), st.sampled_from("sid")), max_size=4),
)
def test_walk_of_broken_streams_gives_pydicoms_elements_or_nothing(
    ds: Dataset, syntax: str, edits: list[tuple[int, int, str]]
) -> None:
    data = bytearray(_encode(ds, syntax))
    for where, value, how in edits:  # set, insert or delete a byte
        i = where % (len(data) + 1)
        if how == "s" and i < len(data):
            data[i] = value
        elif how == "i":
            data.insert(i, value)
        elif how == "d" and i < len(data):
            del data[i]
    raw = bytes(data)
    scan = scan_header(raw, *_flags(syntax))
    if scan is None:
        return  # pydicom's to parse, as before the walk existed
    parsed, stop = _pydicom(raw, syntax)  # must not raise where the walk succeeded
    _assert_same(scan, raw, parsed, stop)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300), syntax=st.sampled_from(SYNTAXES))
def test_walk_of_garbage_gives_pydicoms_elements_or_nothing(raw: bytes, syntax: str) -> None:
    scan = scan_header(raw, *_flags(syntax))
    if scan is not None:
        parsed, stop = _pydicom(raw, syntax)
        _assert_same(scan, raw, parsed, stop)


def test_what_the_walk_leaves_to_pydicom() -> None:
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3"
    ds.BitsAllocated = 8
    ds.PixelData = bytes(8)
    explicit = _encode(ds, ExplicitVRLittleEndian)
    assert scan_header(explicit, False, True) is not None
    unknown_vr = explicit[:4] + b"ZZ" + explicit[6:]
    assert scan_header(unknown_vr, False, True) is None  # pydicom guesses a 2-byte length
    assert scan_header(explicit[:-3], False, True) is not None  # the pixel value cut: read_header's concern
    assert scan_header(explicit[:10], False, True) is None  # the UID's value runs past the end
    assert scan_header(_encode(ds, ImplicitVRLittleEndian), False, True) is None  # implicit sent as explicit
    assert scan_header(explicit, True, True) is None  # explicit sent as implicit: pydicom switches
    assert scan_header(explicit[:8], False, True, prefix=True) is None
    deep = Dataset()
    inner = deep
    for _ in range(20):  # nested deeper than the walk goes
        item = Dataset()
        item.is_undefined_length_sequence_item = True
        inner.ReferencedImageSequence = Sequence([item])
        inner["ReferencedImageSequence"].is_undefined_length = True
        inner = item
    assert scan_header(_encode(deep, ExplicitVRLittleEndian), False, True) is None
