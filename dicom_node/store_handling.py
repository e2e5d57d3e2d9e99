"""What both receivers do with one C-STORE: guard, check the header, write atomically, index, answer.

The dataset is not decoded: only its header up to the pixel data is parsed (pydicom's ``read_dataset``
with ``stop_when``), the pixel data's length is read from its element header, and the few elements after
it (if any) are parsed to be sure the stream ends well. The bytes written to the spool are the ones
received, behind a file meta header.

Statuses (:class:`~dicom_node.status.StoreStatus`): SUCCESS (stored, or a duplicate already stored);
OUT_OF_RESOURCES (disk below watermark, or the disk filled up during the write); INSTANCE_TOO_LARGE,
RATE_LIMITED, BACKLOG_FULL (the guards of :class:`~dicom_node.guards.StoreGuards`); CANNOT_UNDERSTAND
(undecodable header, kept in quarantine); MISSING_UID (no SOP Instance / Study / Series UID, kept in
quarantine); INVALID_UID (one of them is not a UID, kept in quarantine: UIDs name the spool's folders);
DATASET_DOES_NOT_MATCH_SOP_CLASS (dataset UIDs differ from the request's); PIXEL_DATA_TRUNCATED (kept in
quarantine); PROCESSING_FAILURE (the spool could not write).
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import cast

from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from dicom_node.guards import Refusal, StoreGuards
from dicom_node.presentation import NATIVE_SYNTAXES, UID_PATTERN
from dicom_node.spool import Spool
from dicom_node.spool_incoming import IncomingFile
from dicom_node.status import StoreStatus

logger = logging.getLogger(__name__)

__all__ = ["Header", "StoreRequest", "read_header", "read_header_start", "store_instance", "truncation"]

_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_LONG_VRS = frozenset({b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UN", b"UT", b"UC", b"UR", b"SV", b"UV"})
_UNDEFINED = 0xFFFFFFFF


@dataclass(frozen=True)
class StoreRequest:
    """One C-STORE as received: the command's UIDs, the presentation context's transfer syntax, the
    encoded dataset and the calling AE title."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    dataset: bytes
    calling_ae: str


@dataclass(frozen=True)
class Header:
    """The dataset's elements before its pixel data, and how many pixel data bytes the stream holds
    (None: no pixel data, or encapsulated pixel data of undefined length)."""

    dataset: Dataset
    pixel_bytes: int | None


def _at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) in _PIXEL_TAGS


def _inflate(raw: bytes, limit: int) -> bytes:
    """The deflated dataset inflated (raw deflate, PS3.5 A.5), at most ``limit`` bytes."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = inflater.decompress(raw, limit)
    if inflater.unconsumed_tail:
        raise ValueError(f"the deflated dataset inflates to more than {limit} bytes")
    return out


def _parse_to_pixels(data: bytes, transfer_syntax: str) -> tuple[Dataset, int]:
    """The elements before the pixel data, and the offset of the element that stopped the parse."""
    fp = BytesIO(data)
    ds = read_dataset(
        fp, transfer_syntax == ImplicitVRLittleEndian, transfer_syntax != ExplicitVRBigEndian, stop_when=_at_pixels
    )
    return ds, fp.tell()


def read_header_start(prefix: bytes, transfer_syntax: str) -> tuple[Dataset, int] | None:
    """The elements before the pixel data from the first bytes of a dataset that is still arriving, and
    the pixel data element's offset; None when ``prefix`` does not reach the pixel data element (or the
    dataset is deflated, or does not parse): :func:`read_header` then parses the whole dataset.

    What it returns is what :func:`read_header` parses itself from the whole dataset: the elements before
    the pixel data lie wholly inside ``prefix`` once the parse has stopped at a pixel data tag.
    """
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        return None
    try:
        ds, pos = _parse_to_pixels(prefix, transfer_syntax)
    except Exception:  # pydicom raises many types on garbage: the whole dataset is parsed again later
        return None
    if len(prefix) - pos < 4:
        return None
    group, element = struct.unpack_from("<HH" if transfer_syntax != ExplicitVRBigEndian else ">HH", prefix, pos)
    return (ds, pos) if (group << 16 | element) in _PIXEL_TAGS else None


def read_header(
    raw: bytes, transfer_syntax: str, inflate_limit: int = 4 * 2**30, start: tuple[Dataset, int] | None = None
) -> Header:
    """Parse the encoded dataset's header; raises (any pydicom error, ``ValueError``) on garbage.

    ``start``: what :func:`read_header_start` parsed from the dataset's first bytes (not parsed again).
    """
    data = _inflate(raw, inflate_limit) if transfer_syntax == DeflatedExplicitVRLittleEndian else raw
    implicit = transfer_syntax == ImplicitVRLittleEndian
    little = transfer_syntax != ExplicitVRBigEndian
    if start is not None and transfer_syntax != DeflatedExplicitVRLittleEndian:
        ds, pos = start
    else:
        ds, pos = _parse_to_pixels(data, transfer_syntax)
    fp = BytesIO(data)
    if len(data) - pos < 8:
        return Header(ds, None)
    end = "<" if little else ">"
    if implicit:
        (length,) = struct.unpack_from(f"{end}I", data, pos + 4)
        head = 8
    elif data[pos + 4 : pos + 6] in _LONG_VRS:
        if len(data) - pos < 12:
            return Header(ds, 0)
        (length,) = struct.unpack_from(f"{end}I", data, pos + 8)
        head = 12
    else:
        (length,) = struct.unpack_from(f"{end}H", data, pos + 6)
        head = 8
    if length == _UNDEFINED:  # encapsulated: read the fragments and what follows as pydicom does
        fp.seek(pos)
        rest = read_dataset(fp, implicit, little)
        ds.update(rest)
        return Header(ds, None)
    available = min(length, len(data) - pos - head)
    if available == length:  # the elements after the pixel data (rare) must parse too
        fp.seek(pos + head + length)
        ds.update(read_dataset(fp, implicit, little))
    return Header(ds, available)


_SLOW = object()  # the element is left to pydicom to decode
_MISSING = object()  # the dataset has no such element
_DIGITS = frozenset(b"0123456789")
_TAGS = {
    k: int(tag_for_keyword(k) or 0)
    for k in (
        "Rows",
        "Columns",
        "BitsAllocated",
        "SamplesPerPixel",
        "NumberOfFrames",
        "SOPInstanceUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPClassUID",
    )
}


def _raw(ds: Dataset, tag: int, vr: str) -> object:
    """A top-level element's value decoded straight from its bytes where that is simple and gives what
    pydicom gives: ``vr`` UI (one UID; trailing NULs and spaces removed), US (one 2-byte value) or IS (one
    unsigned integer). :data:`_MISSING` when the element is absent; :data:`_SLOW` for anything else (not
    a raw element, another VR, empty, several values, an odd length), which the caller leaves to pydicom.
    This spares pydicom's conversion and validation on the few elements every store reads."""
    elem = ds.get_item(tag, keep_deferred=True)
    if elem is None:
        return _MISSING
    if not isinstance(elem, RawDataElement) or elem.VR not in (vr, None):
        return _SLOW
    value = elem.value
    if not isinstance(value, bytes) or not value or b"\\" in value:
        return _SLOW
    if vr == "US":
        return int.from_bytes(value, "little" if elem.is_little_endian else "big") if len(value) == 2 else _SLOW
    if vr == "UI":
        return value.decode("latin-1").rstrip("\0 ")
    text = value.rstrip(b" \0").lstrip(b" ")
    return int(text) if text and _DIGITS.issuperset(text) else _SLOW


def _expected_fast(ds: Dataset) -> int | None:
    """The pixel data's expected bytes from the raw elements, or None when pydicom must decode them."""
    rows, columns, bits, samples = (
        _raw(ds, _TAGS[k], "US") for k in ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel")
    )
    frames = _raw(ds, _TAGS["NumberOfFrames"], "IS")
    if any(v is _SLOW or v is _MISSING for v in (rows, columns, bits)) or samples is _SLOW or frames is _SLOW:
        return None
    n_samples = 1 if samples is _MISSING else cast(int, samples)
    n_frames = 1 if frames is _MISSING else cast(int, frames) or 1
    return cast(int, rows) * cast(int, columns) * n_samples * cast(int, bits) * n_frames // 8


def truncation(ds: Dataset, pixel_bytes: int | None) -> str | None:
    """A reason when native (uncompressed) pixel data is shorter than its header says, else None."""
    if pixel_bytes is None:
        return None
    expected = _expected_fast(ds)
    if expected is None:
        try:
            expected = (
                int(ds.Rows)
                * int(ds.Columns)
                * int(getattr(ds, "SamplesPerPixel", 1))
                * int(ds.BitsAllocated)
                * int(getattr(ds, "NumberOfFrames", 1) or 1)
                // 8
            )
        except (AttributeError, TypeError, ValueError) as exc:
            return f"image pixel module incomplete: {exc}"
    if pixel_bytes < expected:
        return f"pixel data is {pixel_bytes} bytes, Rows x Columns x Samples x Bits x Frames needs {expected}"
    return None


def _refuse(refused: tuple[StoreStatus, Refusal], request: StoreRequest) -> StoreStatus:
    status, refusal = refused
    logger.warning(
        "store of SOP %s from %s refused (%s): %s",
        request.sop_instance_uid,
        request.calling_ae,
        status.name,
        refusal.reason,
    )
    return status


def _uid(ds: Dataset, keyword: str) -> str:
    value = _raw(ds, _TAGS[keyword], "UI")
    if value is _MISSING:
        return ""
    if value is _SLOW:
        return str(ds.get(keyword, "") or "")
    return cast(str, value)


def _uids(ds: Dataset) -> tuple[str, str, str, str]:
    return (
        _uid(ds, "SOPInstanceUID"),
        _uid(ds, "StudyInstanceUID"),
        _uid(ds, "SeriesInstanceUID"),
        _uid(ds, "SOPClassUID"),
    )


def store_instance(
    request: StoreRequest,
    spool: Spool,
    guards: StoreGuards,
    encode: Callable[[], bytes] | IncomingFile,
    header_start: tuple[Dataset, int] | None = None,
) -> StoreStatus:
    """Guard, check, write ``encode()`` (the file: meta header and dataset) atomically, index; the status.

    ``encode`` may instead be the :class:`~dicom_node.spool_incoming.IncomingFile` the dataset was written
    to as it arrived (``request.dataset`` holds the same bytes); the caller discards it when it was not
    stored. ``header_start``: what :func:`read_header_start` parsed while the dataset arrived.
    """
    calling, raw = request.calling_ae, request.dataset
    refused = guards.check(calling_ae=calling, nbytes=len(raw))
    if refused is not None:
        return _refuse(refused, request)
    try:
        header = read_header(raw, request.transfer_syntax, start=header_start)
        sop_uid, study_uid, series_uid, sop_class = _uids(header.dataset)
    except Exception as exc:  # pydicom raises many types on garbage; all mean "cannot understand"
        spool.quarantine(raw, f"undecodable dataset: {exc}", calling)
        logger.warning("store from %s: undecodable dataset (%s), quarantined", calling, type(exc).__name__)
        return StoreStatus.CANNOT_UNDERSTAND
    named = (("SOPInstanceUID", sop_uid), ("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid))
    missing = [n for n, v in named if not v]
    if missing:
        spool.quarantine(raw, f"missing {', '.join(missing)}", calling)
        logger.warning("store from %s: missing %s, quarantined", calling, ", ".join(missing))
        return StoreStatus.MISSING_UID
    # the UIDs name the spool's folders and files: only well-formed ones may reach the file system
    invalid = [n for n, v in named if not UID_PATTERN.fullmatch(v)]
    if invalid:
        why = f"{', '.join(invalid)} not a UID (digits and dots, at most 64 characters)"
        spool.quarantine(raw, why, calling)
        logger.warning("store from %s: %s, quarantined", calling, why)
        return StoreStatus.INVALID_UID
    refused = guards.check_study(study_uid)
    if refused is not None:
        return _refuse(refused, request)
    if sop_uid != request.sop_instance_uid or sop_class != request.sop_class_uid:
        logger.warning("store from %s: dataset UIDs differ from the request (%s)", calling, sop_uid)
        return StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    if request.transfer_syntax in NATIVE_SYNTAXES:
        try:
            reason = truncation(header.dataset, header.pixel_bytes)
        except Exception as exc:  # an image pixel element whose value does not decode (an unknown VR)
            spool.quarantine(raw, f"undecodable image pixel module: {exc}", calling)
            logger.warning("store from %s: undecodable image pixel module (%s), quarantined", calling, exc)
            return StoreStatus.CANNOT_UNDERSTAND
        if reason:
            spool.quarantine(raw, reason, calling)
            logger.warning("store from %s: %s (SOP %s), quarantined", calling, reason, sop_uid)
            return StoreStatus.PIXEL_DATA_TRUNCATED
    try:
        stored = spool.store(
            encode if isinstance(encode, IncomingFile) else encode(),
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=sop_uid,
            sop_class_uid=sop_class,
            calling_ae=calling,
        )
    except sqlite3.OperationalError as exc:  # the index: "database or disk is full", or locked past its timeout
        status = StoreStatus.OUT_OF_RESOURCES if "full" in str(exc) else StoreStatus.PROCESSING_FAILURE
        logger.error("store from %s: spool index write failed for %s: %s (%s)", calling, sop_uid, exc, status.name)
        return status
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            logger.error("store from %s: disk full while writing %s (%s); nothing kept", calling, sop_uid, exc)
            return StoreStatus.OUT_OF_RESOURCES
        logger.error("store from %s: spool write failed for %s: %s", calling, sop_uid, exc)
        return StoreStatus.PROCESSING_FAILURE
    if not stored:
        logger.debug("duplicate SOP %s from %s ignored", sop_uid, calling)
    return StoreStatus.SUCCESS
