"""The UIDs and image pixel values a store reads straight from the raw header elements are the ones
pydicom decodes, across transfer syntaxes and odd encodings (those are left to pydicom)."""

from __future__ import annotations

import pytest
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from dicom_node.store_handling import _uids, read_header, truncation


def _encode(ds: Dataset, syntax: str) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR = syntax == ImplicitVRLittleEndian
    fp.is_little_endian = syntax != ExplicitVRBigEndian
    write_dataset(fp, ds)
    return fp.getvalue()


def _reference(ds: Dataset, pixel_bytes: int | None) -> tuple[tuple[str, ...], str | None]:
    """What the store read before: pydicom's decoding of every element."""
    uids = tuple(
        str(ds.get(k, "") or "") for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID")
    )
    if pixel_bytes is None:
        return uids, None
    try:
        expected = (
            int(ds.Rows)
            * int(ds.Columns)
            * int(getattr(ds, "SamplesPerPixel", 1))
            * int(ds.BitsAllocated)
            * int(getattr(ds, "NumberOfFrames", 1) or 1)
            // 8
        )
    except (AttributeError, TypeError, ValueError):
        return uids, "incomplete"
    return uids, (f"short of {expected}" if pixel_bytes < expected else None)


def _image(**changes: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = 4, 6
    ds.BitsAllocated = 16
    ds.PixelData = bytes(4 * 6 * 2)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


VARIANTS: list[dict[str, object]] = [
    {},
    {"SamplesPerPixel": None},
    {"NumberOfFrames": "2"},  # 2 frames declared, 1 sent: truncated
    {"NumberOfFrames": "0"},
    {"NumberOfFrames": " 1"},
    {"NumberOfFrames": "1.0"},
    {"Rows": None},
    {"Rows": 400},
    {"SOPInstanceUID": "1.2.3\\4.5"},  # two values: not a UID
    {"StudyInstanceUID": ""},
    {"SeriesInstanceUID": None},
    {"SOPClassUID": "1.2.3 "},
]


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
@pytest.mark.parametrize("changes", VARIANTS, ids=[str(v) or "plain" for v in VARIANTS])
def test_raw_values_match_pydicoms(syntax: str, changes: dict[str, object]) -> None:
    raw = _encode(_image(**changes), syntax)
    fast = read_header(raw, syntax)
    assert fast.scan is not None  # the values below come from the raw walk, not pydicom's parse
    slow = read_header(raw, syntax)
    uids, verdict = _reference(slow.dataset, slow.pixel_bytes)
    assert _uids(fast) == uids
    reason = truncation(fast)
    if verdict is None:
        assert reason is None
    elif verdict == "incomplete":
        assert reason is not None and reason.startswith("image pixel module incomplete")
    else:
        assert reason is not None and verdict.split()[-1] in reason
