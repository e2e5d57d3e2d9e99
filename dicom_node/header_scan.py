"""A dataset's top-level elements located straight from its bytes, up to the pixel data, without pydicom.

A C-STORE needs a handful of values from the header (the UIDs, the image pixel module) and proof that the
header parses; pydicom's ``read_dataset`` gives both but spends most of a store's processor time on it.
:func:`scan_header` walks the element headers itself and records where each top-level value lies.

It walks only what it can read without doubt: explicit VRs pydicom knows (or implicit VR with every
length defined, apart from sequences the dictionary names), each value inside the bytes given, sequences
of undefined length made of well-formed items, nested to a bounded depth. On anything else it returns
None and the caller lets pydicom parse the dataset, which is lenient where this is strict (it switches
between implicit and explicit VR, reads past odd lengths, guesses unknown VRs). So where this returns a
result, pydicom's ``read_dataset`` stopped at the same pixel data element gives the same top-level elements
with the same VRs and value bytes (tested on generated and random streams).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pydicom.datadict import DicomDictionary
from pydicom.filereader import ENCODED_VR
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

__all__ = ["LONG_LENGTH_VRS", "PIXEL_TAGS", "UNDEFINED_LENGTH", "Scan", "scan_header"]

PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # float, double float and pixel data
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
#: an element's or item's length field when a delimiter ends it
UNDEFINED_LENGTH = 0xFFFFFFFF
_MAX_DEPTH = 16  # sequences nested deeper are left to pydicom
_VRS = frozenset(v for v in ENCODED_VR if len(v) == 2)
#: explicit VRs whose length field is 4 bytes (after 2 reserved bytes)
LONG_LENGTH_VRS = frozenset(str(v).encode() for v in EXPLICIT_VR_LENGTH_32)
_SEQUENCE_TAGS = frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "SQ")


class _DoubtError(Exception):
    """The stream is not one this walk reads without doubt: pydicom is to parse it."""


@dataclass(frozen=True, slots=True)
class Scan:
    """Where the top-level values lie: ``elements`` maps each tag to its VR (None in implicit VR), value
    offset and value length (-1: a sequence of undefined length); ``pixels``: the offset of the pixel data
    element that ended the walk, None when the data ended first."""

    elements: dict[int, tuple[str | None, int, int]]
    pixels: int | None


class _Walker:
    def __init__(self, data: bytes, implicit: bool, little: bool) -> None:
        end = "<" if little else ">"
        self.data, self.size, self.implicit = data, len(data), implicit
        self.explicit_head = struct.Struct(f"{end}HH2sH").unpack_from
        self.implicit_head = struct.Struct(f"{end}HHL").unpack_from
        self.long_length = struct.Struct(f"{end}L").unpack_from

    def element(self, pos: int) -> tuple[int, str | None, int, int]:
        """The element at ``pos``: its tag, VR, value offset and value length (``UNDEFINED_LENGTH`` kept)."""
        if self.size - pos < 8:
            raise _DoubtError
        if self.implicit:
            group, elem, length = self.implicit_head(self.data, pos)
            return group << 16 | elem, None, pos + 8, length
        group, elem, raw_vr, length = self.explicit_head(self.data, pos)
        tag = group << 16 | elem
        if group == 0xFFFE:  # item and delimiters carry no VR
            return tag, None, pos + 8, self._item_head(pos)[1]
        if raw_vr not in _VRS:
            raise _DoubtError
        if raw_vr in LONG_LENGTH_VRS:
            if self.size - pos < 12:
                raise _DoubtError
            return tag, raw_vr.decode(), pos + 12, self.long_length(self.data, pos + 8)[0]
        return tag, raw_vr.decode(), pos + 8, length

    def top_level(self, prefix: bool) -> Scan:
        elements: dict[int, tuple[str | None, int, int]] = {}
        pos = 0
        if self.implicit and self.size >= 6 and all(0x40 < b < 0x5B for b in self.data[4:6]):
            raise _DoubtError  # what pydicom takes for explicit VR despite the transfer syntax
        while pos < self.size:
            tag, vr, value, length = self.element(pos)
            if tag in PIXEL_TAGS:
                return Scan(elements, pos)
            if tag >> 16 == 0xFFFE:
                raise _DoubtError
            if length == UNDEFINED_LENGTH:
                elements[tag] = (vr, value, -1)
                pos = self.sequence(tag, vr, value, 1)
            else:
                pos = value + length
                if pos > self.size:
                    raise _DoubtError
                elements[tag] = (vr, value, length)
        if prefix:  # the pixel data element is still to come
            raise _DoubtError
        return Scan(elements, None)

    def sequence(self, tag: int, vr: str | None, pos: int, depth: int) -> int:
        """Past the delimiter of the undefined-length sequence whose items start at ``pos``."""
        if depth > _MAX_DEPTH or (vr != "SQ" if vr is not None else tag not in _SEQUENCE_TAGS):
            raise _DoubtError
        while True:
            if self.size - pos < 8:
                raise _DoubtError
            item, length = self._item_head(pos)
            pos += 8
            if item == _SEQUENCE_END:
                return pos
            if item != _ITEM:
                raise _DoubtError
            pos = self.item(pos, length, depth)

    def _item_head(self, pos: int) -> tuple[int, int]:
        """The tag and length of the item or delimiter at ``pos`` (they carry no VR)."""
        group, elem, length = self.implicit_head(self.data, pos)
        return group << 16 | elem, length

    def item(self, pos: int, length: int, depth: int) -> int:
        """Past the item whose elements start at ``pos``."""
        end = None if length == UNDEFINED_LENGTH else pos + length
        if end is not None and end > self.size:
            raise _DoubtError
        if not self.implicit and (end is None or end > pos) and self.size - pos >= 6:
            raw_vr = self.data[pos + 4 : pos + 6]
            first = self._item_head(pos)[0]
            if first != _ITEM_END and not (0x40 < raw_vr[0] < 0x5B and 0x40 < raw_vr[1] < 0x5B):
                raise _DoubtError  # an implicit-VR item inside an explicit dataset: pydicom's to read
        while end is None or pos < end:
            tag, vr, value, value_length = self.element(pos)
            if tag == _ITEM_END:
                if end is not None:
                    raise _DoubtError
                return value
            if tag >> 16 == 0xFFFE:
                raise _DoubtError
            pos = self.sequence(tag, vr, value, depth + 1) if value_length == UNDEFINED_LENGTH else value + value_length
            if pos > (self.size if end is None else end):
                raise _DoubtError
        return pos


def scan_header(data: bytes, implicit: bool, little: bool, prefix: bool = False) -> Scan | None:
    """Where the top-level values of the encoded dataset ``data`` lie, up to its pixel data; None when
    the stream is not one this reads without doubt (pydicom is then to parse it).

    ``prefix``: ``data`` is the start of a dataset still arriving, so the walk must reach the pixel data
    element (its tag, VR and length) to give a result.
    """
    try:
        return _Walker(data, implicit, little).top_level(prefix)
    except (_DoubtError, struct.error):
        return None
