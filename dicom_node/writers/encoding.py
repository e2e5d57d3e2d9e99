"""Writing an output object to a DICOM file, its sequences encoded in one pass.

An output of a 128-slice CT carries some 12,000 sequence items (a SEG's or a parametric map's per-frame
functional groups, an SR's content tree); pydicom's writer, general enough for any dataset, spends about
40 µs on each of their 30,000 elements, and re-runs its ambiguous-VR correction over every nested level. Here
:func:`save_dataset` encodes each top-level sequence itself, as Explicit VR Little Endian, and hands it to
pydicom as an already encoded (raw) element, so pydicom still writes the preamble, the File Meta Information
and every top-level element: the file is byte for byte the one ``ds.save_as(path, enforce_file_format=True)``
writes (tested on every output the node builds).

The values whose encoding is plain (ASCII strings, numbers, nested sequences) are encoded here; any other
element (person names, non-ASCII text, date or time objects, binary values, values too long for a 16-bit
length) is written by pydicom's own element writer, and an ambiguous VR is resolved by pydicom's correction
with the same ancestors it would use. Datasets in another transfer syntax are written by pydicom alone.
"""

from __future__ import annotations

from pathlib import Path
from struct import Struct, pack
from struct import error as struct_error
from typing import Any, BinaryIO, Final, cast

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr_element, write_data_element
from pydicom.multival import MultiValue
from pydicom.uid import UID, ExplicitVRLittleEndian
from pydicom.valuerep import AMBIGUOUS_VR

#: VRs whose explicit-VR header has a 32-bit length (PS3.5 7.1.2).
_LONG_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OW", "OV", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
#: Binary numbers: the struct format of one value.
_NUMBERS: Final = {"US": "H", "UL": "L", "SS": "h", "SL": "l", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
#: Strings pydicom writes in its default encoding, with their padding byte.
_STRINGS: Final = {"AE": b" ", "AS": b" ", "CS": b" ", "UR": b" ", "UI": b"\0", "DA": b" ", "DT": b" ", "TM": b" "}
#: Text in the dataset's character set (fast path for ASCII only, where every character set agrees).
_TEXTS: Final = frozenset({"LO", "SH", "LT", "ST", "UT", "UC"})
#: Numbers as strings: written from the value's original string where it has one.
_NUMBER_STRINGS: Final = frozenset({"DS", "IS"})
#: LUT Descriptors: pydicom writes their first value as US whatever the VR.
_LUT_DESCRIPTORS: Final = frozenset({0x00283002, 0x00281101, 0x00281102, 0x00281103})
_ITEM: Final = pack("<HHL", 0xFFFE, 0xE000, 0)[:4]
_ITEM_DELIMITER: Final = pack("<HHL", 0xFFFE, 0xE00D, 0)
_SEQUENCE_DELIMITER: Final = pack("<HHL", 0xFFFE, 0xE0DD, 0)
_EXPLICIT_LITTLE: Final = (False, True)
_SHORT = Struct("<HH2sH")
_LONG = Struct("<HH2s2xL")
_LENGTH = Struct("<L")


def save_dataset(ds: Dataset, path: Path | str | BinaryIO) -> None:
    """Write ``ds`` to ``path`` as ``ds.save_as(path, enforce_file_format=True)`` does, its sequences encoded
    by this module (see the module's docstring); ``ds`` is changed only as ``save_as`` changes it (ambiguous
    VRs resolved, the pixel data's length form set by the transfer syntax)."""
    meta = getattr(ds, "file_meta", None)
    syntax = UID(str(meta.TransferSyntaxUID)) if meta is not None and "TransferSyntaxUID" in meta else None
    if syntax is None or syntax.is_private or syntax.is_implicit_VR or not syntax.is_little_endian:
        ds.save_as(path, enforce_file_format=True)
        return
    if "PixelData" in ds:
        # as pydicom's file writer does before resolving the pixel data's VR (encapsulated pixel data is OB)
        ds["PixelData"].is_undefined_length = syntax.is_compressed
    proxy = Dataset()
    proxy.file_meta = ds.file_meta
    if hasattr(ds, "preamble"):
        proxy.preamble = ds.preamble
    encodings = ds.get("SpecificCharacterSet")
    ancestors = [ds]
    convert = _converts(ds)
    for tag in sorted(ds.keys()):
        elem = _read(ds, tag, convert)
        if elem.VR == "SQ" and isinstance(elem, DataElement):  # a raw one is written as it was read
            value = b"".join(_item(item, encodings, ancestors) for item in elem.value)
            undefined = bool(getattr(elem, "is_undefined_length", False))
            proxy[tag] = RawDataElement(tag, "SQ", 0xFFFFFFFF if undefined else len(value), value, 0, False, True)
        else:
            if elem.VR in AMBIGUOUS_VR:
                elem = correct_ambiguous_vr_element(elem, ds, True, ancestors)
            proxy[tag] = elem
    # the proxy's elements are in the encoding they will be written in: pydicom writes them as they are
    proxy.set_original_encoding(False, True, proxy._character_set)
    proxy.save_as(path, enforce_file_format=True)


def _read(ds: Dataset, tag: int, convert: bool) -> DataElement | RawDataElement:
    """The element at ``tag`` as pydicom's writer reads it: decoded when ``convert`` (a raw element)."""
    elem = ds.get_item(tag)
    return ds[tag] if convert and elem.is_raw else elem


def _converts(ds: Dataset) -> bool:
    """Whether pydicom's writer reads ``ds``'s elements decoded (``ds[tag]``), as it does unless ``ds`` was
    read in Explicit VR Little Endian with the character set it has now."""
    return ds.original_encoding != _EXPLICIT_LITTLE or ds.original_character_set != ds._character_set


def _item(ds: Dataset, parent_encodings: Any, ancestors: list[Dataset]) -> bytes:
    """One sequence item: its tag, its length (or undefined, then its delimiter) and its elements."""
    ancestors.insert(0, ds)
    try:
        body = _dataset(ds, ds.get("SpecificCharacterSet", parent_encodings), ancestors)
    finally:
        del ancestors[0]
    if getattr(ds, "is_undefined_length_sequence_item", False):
        return _ITEM + b"\xff\xff\xff\xff" + body + _ITEM_DELIMITER
    return _ITEM + _LENGTH.pack(len(body)) + body


def _dataset(ds: Dataset, encodings: Any, ancestors: list[Dataset]) -> bytes:
    """The elements of ``ds`` in tag order (retired group lengths left out, as pydicom does)."""
    convert = _converts(ds)
    parts = []
    for tag in sorted(ds.keys()):
        if tag & 0xFFFF == 0 and tag >> 16 > 6:
            continue
        elem = _read(ds, tag, convert)
        parts.append(_element(elem, ds, encodings, ancestors))
    return b"".join(parts)


def _element(elem: DataElement | RawDataElement, ds: Dataset, encodings: Any, ancestors: list[Dataset]) -> bytes:
    """One element, header and value."""
    if isinstance(elem, RawDataElement):
        return _by_pydicom(elem, encodings)
    if elem.VR in AMBIGUOUS_VR:  # resolved in place (a decoded element stays one)
        elem = cast(DataElement, correct_ambiguous_vr_element(elem, ds, True, ancestors))
    vr = str(elem.VR)
    if vr == "SQ":
        value = b"".join(_item(item, encodings, ancestors) for item in cast(list[Dataset], elem.value or []))
        tag = elem.tag
        if elem.is_undefined_length:
            return _LONG.pack(tag >> 16, tag & 0xFFFF, b"SQ", 0xFFFFFFFF) + value + _SEQUENCE_DELIMITER
        return _LONG.pack(tag >> 16, tag & 0xFFFF, b"SQ", len(value)) + value
    encoded = _value(elem, vr)
    if encoded is None or elem.is_undefined_length or (len(encoded) > 0xFFFF and vr not in _LONG_VRS):
        return _by_pydicom(elem, encodings)
    tag = elem.tag
    header = _LONG if vr in _LONG_VRS else _SHORT
    return header.pack(tag >> 16, tag & 0xFFFF, vr.encode(), len(encoded)) + encoded


def _value(elem: DataElement, vr: str) -> bytes | None:
    """The encoded value of ``elem`` where it is plain, else ``None`` (pydicom writes it)."""
    if elem.is_empty:
        return b""
    value = elem.value
    if vr in _NUMBERS:
        try:
            if isinstance(value, int | float):
                return pack("<" + _NUMBERS[vr], value)
            if isinstance(value, list | MultiValue) and elem.tag not in _LUT_DESCRIPTORS:
                return pack(f"<{len(value)}{_NUMBERS[vr]}", *value)
        except struct_error:
            pass  # pydicom reports the value that does not fit
        return None
    if vr in _STRINGS:
        text = _joined(value)
        if text is None:
            return None
        return _padded(text.encode(), _STRINGS[vr])
    if vr in _NUMBER_STRINGS:
        values = value if isinstance(value, list | MultiValue | tuple) else (value,)
        if not all(isinstance(v, str | int | float) for v in values):
            return None  # e.g. an array or a Decimal: pydicom formats it
        text = "\\".join(v.original_string if hasattr(v, "original_string") else str(v) for v in values)
        return _padded(text.encode(), b" ") if text.isascii() else None
    if vr in _TEXTS:
        text = _joined(value)
        return None if text is None else _padded(text.encode(), b" ")
    return None


def _joined(value: object) -> str | None:
    """A string value, or several joined by backslashes, where every one is an ASCII ``str``."""
    if isinstance(value, str):
        return value if value.isascii() else None
    if isinstance(value, list | MultiValue | tuple):
        strings = [v for v in value if isinstance(v, str) and v.isascii()]
        if len(strings) == len(value):
            return "\\".join(strings)
    return None


def _padded(data: bytes, pad: bytes) -> bytes:
    return data + pad if len(data) % 2 else data


def _by_pydicom(elem: DataElement | RawDataElement, encodings: Any) -> bytes:
    """``elem`` as pydicom's element writer encodes it in Explicit VR Little Endian."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_data_element(buffer, elem, encodings)
    return buffer.getvalue()


__all__ = ["ExplicitVRLittleEndian", "save_dataset"]
