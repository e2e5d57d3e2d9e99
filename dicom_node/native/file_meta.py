"""The DICOM file header (PS3.10 7.1) written in front of each received dataset: preamble, prefix and the
File Meta Information group, packed directly (the same bytes pydicom's ``write_file_meta_info`` gives)."""

from __future__ import annotations

import struct

__all__ = ["file_header"]


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2sHI", 0x0002, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _ui(uid: str) -> bytes:
    raw = uid.encode("ascii", "replace")
    return raw + b"\0" if len(raw) % 2 else raw


def _text(text: str) -> bytes:
    raw = text.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


def file_header(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax: str,
    implementation_uid: str,
    implementation_version: str,
    source_ae: str,
) -> bytes:
    """128-byte preamble, ``DICM`` and group 0002 (Explicit VR Little Endian) for one instance."""
    body = b"".join(
        (
            _element(0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, b"UI", _ui(sop_class_uid)),
            _element(0x0003, b"UI", _ui(sop_instance_uid)),
            _element(0x0010, b"UI", _ui(transfer_syntax)),
            _element(0x0012, b"UI", _ui(implementation_uid)),
            _element(0x0013, b"SH", _text(implementation_version[:16])),
            _element(0x0016, b"AE", _text(source_ae[:16])) if source_ae else b"",
        )
    )
    return bytes(128) + b"DICM" + _element(0x0000, b"UL", struct.pack("<I", len(body))) + body
