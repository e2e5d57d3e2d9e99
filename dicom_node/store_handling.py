"""What both receivers do with one C-STORE: guard, check the header, write atomically, index, answer.

The dataset is not decoded: only its header up to the pixel data is walked
(:func:`~dicom_node.header_scan.scan_header`, or pydicom's ``read_dataset`` with ``stop_when`` for
streams the walk leaves to it), the pixel data's length is read from its element header, and the few
elements after it (if any) are parsed to be sure the stream ends well. The bytes written to the spool are the ones
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
from dicom_node.header_scan import LONG_LENGTH_VRS, PIXEL_TAGS, UNDEFINED_LENGTH, Scan, scan_header
from dicom_node.presentation import NATIVE_SYNTAXES, UID_PATTERN
from dicom_node.spool import Spool
from dicom_node.spool_incoming import IncomingInstance
from dicom_node.status import StoreStatus

logger = logging.getLogger(__name__)

__all__ = ["Header", "StoreRequest", "read_header", "read_header_start", "store_instance", "truncation"]


@dataclass(frozen=True)
class StoreRequest:
    """One C-STORE as received: the command's UIDs, the presentation context's transfer syntax, the
    encoded dataset and the calling AE title."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    dataset: bytes
    calling_ae: str


class Header:
    """The dataset's elements before its pixel data, and how many pixel data bytes the stream holds
    (``pixel_bytes`` None: no pixel data, or encapsulated pixel data of undefined length).

    ``scan`` locates the top-level values straight in ``data`` (:func:`~dicom_node.header_scan.scan_header`);
    pydicom parses the header only when the scan could not (``scan`` None) or when a value is wanted that
    the raw bytes do not give simply (:attr:`dataset`).
    """

    def __init__(
        self, data: bytes, transfer_syntax: str, scan: Scan | None, pixel_bytes: int | None, dataset: Dataset | None
    ) -> None:
        self.data, self.transfer_syntax, self.scan, self.pixel_bytes = data, transfer_syntax, scan, pixel_bytes
        self._dataset = dataset

    @property
    def dataset(self) -> Dataset:
        """pydicom's dataset of the elements before the pixel data (parsed on first use)."""
        if self._dataset is None:
            self._dataset = _parse_to_pixels(self.data, self.transfer_syntax)[0]
        return self._dataset

    def raw(self, tag: int, vr: str) -> object:
        """A top-level element's value decoded straight from its bytes where that is simple and gives what
        pydicom gives: ``vr`` UI (one UID; trailing NULs and spaces removed), US (one 2-byte value) or IS
        (one unsigned integer). :data:`_MISSING` when the element is absent; :data:`_SLOW` for anything else
        (another VR, empty, several values, an odd length), which the caller leaves to pydicom."""
        if self.scan is None:
            elem = self.dataset.get_item(tag, keep_deferred=True)
            if elem is None:
                return _MISSING
            if not isinstance(elem, RawDataElement) or not isinstance(elem.value, bytes):
                return _SLOW
            return _decode(elem.value, elem.VR, vr, elem.is_little_endian)
        found = self.scan.elements.get(tag)
        if found is None:
            return _MISSING
        element_vr, offset, length = found
        if length < 0:
            return _SLOW
        little = self.transfer_syntax != ExplicitVRBigEndian
        return _decode(self.data[offset : offset + length], element_vr, vr, little)


def _syntax(transfer_syntax: str) -> tuple[bool, bool]:
    """(implicit VR, little endian) of a transfer syntax's dataset encoding."""
    return transfer_syntax == ImplicitVRLittleEndian, transfer_syntax != ExplicitVRBigEndian


def _inflate(raw: bytes, limit: int) -> bytes:
    """The deflated dataset inflated (raw deflate, PS3.5 A.5), at most ``limit`` bytes."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = inflater.decompress(raw, limit)
    if inflater.unconsumed_tail:
        raise ValueError(f"the deflated dataset inflates to more than {limit} bytes")
    return out


def _at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) in PIXEL_TAGS


def _parse_to_pixels(data: bytes, transfer_syntax: str) -> tuple[Dataset, int]:
    """pydicom's parse of the elements before the pixel data, and the offset of the element that stopped it."""
    fp = BytesIO(data)
    implicit, little = _syntax(transfer_syntax)
    ds = read_dataset(fp, implicit, little, stop_when=_at_pixels)
    return ds, fp.tell()


def read_header_start(prefix: bytes, transfer_syntax: str) -> Scan | None:
    """Where the top-level values lie in the first bytes of a dataset that is still arriving, up to the
    pixel data element; None when ``prefix`` does not reach that element's header (or the dataset is
    deflated, or is not one the scan reads without doubt): :func:`read_header` then reads the whole dataset.

    What it returns is what :func:`read_header` finds itself in the whole dataset: the elements before the
    pixel data lie wholly inside ``prefix`` once the walk has stopped at a pixel data element.
    """
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        return None
    return scan_header(prefix, *_syntax(transfer_syntax), prefix=True)


def read_header(raw: bytes, transfer_syntax: str, inflate_limit: int = 4 * 2**30, start: Scan | None = None) -> Header:
    """Read the encoded dataset's header; raises (any pydicom error, ``ValueError``) on garbage.

    ``start``: what :func:`read_header_start` found in the dataset's first bytes (not walked again).
    """
    data = _inflate(raw, inflate_limit) if transfer_syntax == DeflatedExplicitVRLittleEndian else raw
    implicit, little = _syntax(transfer_syntax)
    walked = start is not None and transfer_syntax != DeflatedExplicitVRLittleEndian
    scan = start if walked else scan_header(data, implicit, little)
    ds: Dataset | None = None
    if scan is not None:
        pos = len(data) if scan.pixels is None else scan.pixels
    else:
        ds, pos = _parse_to_pixels(data, transfer_syntax)
    if len(data) - pos < 8:
        return Header(data, transfer_syntax, scan, None, ds)
    end = "<" if little else ">"
    if implicit:
        (length,) = struct.unpack_from(f"{end}I", data, pos + 4)
        head = 8
    elif data[pos + 4 : pos + 6] in LONG_LENGTH_VRS:
        if len(data) - pos < 12:
            return Header(data, transfer_syntax, scan, 0, ds)
        (length,) = struct.unpack_from(f"{end}I", data, pos + 8)
        head = 12
    else:
        (length,) = struct.unpack_from(f"{end}H", data, pos + 6)
        head = 8
    fp = BytesIO(data)
    if length == UNDEFINED_LENGTH:  # encapsulated: read the fragments and what follows as pydicom does
        fp.seek(pos)
        rest = read_dataset(fp, implicit, little)
        ds = ds if ds is not None else _parse_to_pixels(data, transfer_syntax)[0]
        ds.update(rest)
        return Header(data, transfer_syntax, None, None, ds)
    available = min(length, len(data) - pos - head)
    if available == length and pos + head + length < len(data):  # elements after the pixel data (rare)
        fp.seek(pos + head + length)
        rest = read_dataset(fp, implicit, little)
        if len(rest):
            ds = ds if ds is not None else _parse_to_pixels(data, transfer_syntax)[0]
            ds.update(rest)
            return Header(data, transfer_syntax, None, available, ds)
    return Header(data, transfer_syntax, scan, available, ds)


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


def _decode(value: bytes, element_vr: str | None, vr: str, little: bool) -> object:
    """The value of :meth:`Header.raw` from an element's bytes (``element_vr`` None: implicit VR)."""
    if element_vr not in (vr, None) or not value or b"\\" in value:
        return _SLOW
    if vr == "US":
        return int.from_bytes(value, "little" if little else "big") if len(value) == 2 else _SLOW
    if vr == "UI":
        return value.decode("latin-1").rstrip("\0 ")
    text = value.rstrip(b" \0").lstrip(b" ")
    return int(text) if text and _DIGITS.issuperset(text) else _SLOW


def _expected_fast(header: Header) -> int | None:
    """The pixel data's expected bytes from the raw elements, or None when pydicom must decode them."""
    rows, columns, bits, samples = (
        header.raw(_TAGS[k], "US") for k in ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel")
    )
    frames = header.raw(_TAGS["NumberOfFrames"], "IS")
    if any(v is _SLOW or v is _MISSING for v in (rows, columns, bits)) or samples is _SLOW or frames is _SLOW:
        return None
    n_samples = 1 if samples is _MISSING else cast(int, samples)
    n_frames = 1 if frames is _MISSING else cast(int, frames) or 1
    return cast(int, rows) * cast(int, columns) * n_samples * cast(int, bits) * n_frames // 8


def truncation(header: Header) -> str | None:
    """A reason when native (uncompressed) pixel data is shorter than its header says, else None."""
    pixel_bytes = header.pixel_bytes
    if pixel_bytes is None:
        return None
    expected = _expected_fast(header)
    if expected is None:
        ds = header.dataset
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


def _uid(header: Header, keyword: str) -> str:
    value = header.raw(_TAGS[keyword], "UI")
    if value is _MISSING:
        return ""
    if value is _SLOW:
        return str(header.dataset.get(keyword, "") or "")
    return cast(str, value)


def _uids(header: Header) -> tuple[str, str, str, str]:
    return (
        _uid(header, "SOPInstanceUID"),
        _uid(header, "StudyInstanceUID"),
        _uid(header, "SeriesInstanceUID"),
        _uid(header, "SOPClassUID"),
    )


def store_instance(
    request: StoreRequest,
    spool: Spool,
    guards: StoreGuards,
    encode: Callable[[], bytes] | IncomingInstance,
    header_start: Scan | None = None,
) -> StoreStatus:
    """Guard, check, write ``encode()`` (the file: meta header and dataset) atomically, index; the status.

    ``encode`` may instead be the :class:`~dicom_node.spool_incoming.IncomingInstance` the native receiver
    gathered the dataset in (``request.dataset`` holds the same bytes): that instance is answered once
    journaled, its file written and indexed afterwards (the receiver settles the spool before a release).
    ``header_start``: what :func:`read_header_start` found while the dataset arrived.
    """
    calling, raw = request.calling_ae, request.dataset
    refused = guards.check(calling_ae=calling, nbytes=len(raw))
    if refused is not None:
        return _refuse(refused, request)
    try:
        header = read_header(raw, request.transfer_syntax, start=header_start)
        sop_uid, study_uid, series_uid, sop_class = _uids(header)
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
            reason = truncation(header)
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
            encode if isinstance(encode, IncomingInstance) else encode(),
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=sop_uid,
            sop_class_uid=sop_class,
            calling_ae=calling,
            deferred=isinstance(encode, IncomingInstance),
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
