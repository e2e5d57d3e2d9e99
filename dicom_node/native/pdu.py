"""Upper layer PDUs (PS3.8 section 9.3): parse what an association requestor sends, build the answers.

Parsing is strict about lengths (a PDU or item that claims more bytes than it has raises
:class:`PduError`) and lenient about what it does not need (unknown items are skipped).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = [
    "APPLICATION_CONTEXT",
    "AssociateRequest",
    "ContextResult",
    "PduError",
    "PduType",
    "abort",
    "associate_ac",
    "associate_rj",
    "iter_pdvs",
    "p_data",
    "parse_associate_rq",
    "release_rp",
]

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"


class PduType:
    ASSOCIATE_RQ = 0x01
    ASSOCIATE_AC = 0x02
    ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    RELEASE_RQ = 0x05
    RELEASE_RP = 0x06
    ABORT = 0x07


class ContextResult:
    """Presentation context results of an A-ASSOCIATE-AC (PS3.8 9.3.3.2)."""

    ACCEPTANCE = 0
    USER_REJECTION = 1
    NO_REASON = 2
    ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
    TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


class PduError(ValueError):
    """A PDU that does not follow PS3.8 (the association is aborted)."""


@dataclass
class PresentationContextRQ:
    context_id: int
    abstract_syntax: str = ""
    transfer_syntaxes: list[str] = field(default_factory=list)


@dataclass
class AssociateRequest:
    """The parts of an A-ASSOCIATE-RQ the acceptor decides on."""

    protocol_version: int
    called_ae: str
    calling_ae: str
    application_context: str = ""
    contexts: list[PresentationContextRQ] = field(default_factory=list)
    max_pdu: int = 0
    implementation_uid: str = ""
    implementation_version: str = ""


def _uid(raw: bytes | bytearray) -> str:
    return raw.rstrip(b"\0 ").decode("ascii", "replace")


def _items(body: bytes | bytearray, start: int) -> Iterator[tuple[int, bytes | bytearray]]:
    """(item type, item value) of the variable items from ``start`` (2-byte lengths)."""
    pos = start
    while pos < len(body):
        if len(body) - pos < 4:
            raise PduError(f"item header cut short at byte {pos} of {len(body)}")
        kind, length = body[pos], struct.unpack_from(">H", body, pos + 2)[0]
        value = body[pos + 4 : pos + 4 + length]
        if len(value) != length:
            raise PduError(f"item 0x{kind:02X} claims {length} bytes, {len(value)} are there")
        yield kind, value
        pos += 4 + length


def parse_associate_rq(body: bytes | bytearray) -> AssociateRequest:
    """The A-ASSOCIATE-RQ PDU's body (after the 6-byte PDU header)."""
    if len(body) < 68:
        raise PduError(f"A-ASSOCIATE-RQ of {len(body)} bytes; at least 68 are needed")
    rq = AssociateRequest(
        protocol_version=struct.unpack_from(">H", body, 0)[0],
        called_ae=body[4:20].decode("ascii", "replace").strip(" \0"),
        calling_ae=body[20:36].decode("ascii", "replace").strip(" \0"),
    )
    for kind, value in _items(body, 68):
        if kind == 0x10:
            rq.application_context = _uid(value)
        elif kind == 0x20:
            if len(value) < 4:
                raise PduError("presentation context item shorter than 4 bytes")
            pc = PresentationContextRQ(value[0])
            for sub, sub_value in _items(value, 4):
                if sub == 0x30:
                    pc.abstract_syntax = _uid(sub_value)
                elif sub == 0x40:
                    pc.transfer_syntaxes.append(_uid(sub_value))
            rq.contexts.append(pc)
        elif kind == 0x50:
            for sub, sub_value in _items(value, 0):
                if sub == 0x51 and len(sub_value) == 4:
                    rq.max_pdu = struct.unpack(">I", sub_value)[0]
                elif sub == 0x52:
                    rq.implementation_uid = _uid(sub_value)
                elif sub == 0x55:
                    rq.implementation_version = sub_value.decode("ascii", "replace").strip()
    return rq


def _pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBI", kind, 0, len(body)) + body


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def _ae(title: str) -> bytes:
    return title.encode("ascii", "replace")[:16].ljust(16)


def associate_ac(
    rq: AssociateRequest,
    results: list[tuple[int, int, str]],
    *,
    max_pdu: int,
    implementation_uid: str,
    implementation_version: str,
) -> bytes:
    """A-ASSOCIATE-AC: ``results`` holds (context id, result, transfer syntax) for each proposed context."""
    parts = [
        struct.pack(">HH", 1, 0),
        _ae(rq.called_ae),
        _ae(rq.calling_ae),
        bytes(32),
        _item(0x10, APPLICATION_CONTEXT.encode()),
    ]
    for context_id, result, syntax in results:
        sub = _item(0x40, syntax.encode() if result == ContextResult.ACCEPTANCE else b"")
        parts.append(_item(0x21, struct.pack(">BBBB", context_id, 0, result, 0) + sub))
    user = (
        _item(0x51, struct.pack(">I", max_pdu))
        + _item(0x52, implementation_uid.encode())
        + _item(0x55, implementation_version.encode()[:16])
    )
    parts.append(_item(0x50, user))
    return _pdu(PduType.ASSOCIATE_AC, b"".join(parts))


def associate_rj(result: int, source: int, reason: int) -> bytes:
    return _pdu(PduType.ASSOCIATE_RJ, struct.pack(">BBBB", 0, result, source, reason))


def release_rp() -> bytes:
    return _pdu(PduType.RELEASE_RP, bytes(4))


def abort(source: int = 2, reason: int = 0) -> bytes:
    """A-ABORT (source 0: service user, 2: service provider; PS3.8 9.3.8)."""
    return _pdu(PduType.ABORT, struct.pack(">BBBB", 0, 0, source, reason))


def p_data(context_id: int, header: int, data: bytes) -> bytes:
    """One P-DATA-TF with one PDV (``header``: bit 0 command, bit 1 last fragment)."""
    return _pdu(PduType.P_DATA_TF, struct.pack(">IBB", len(data) + 2, context_id, header) + data)


def iter_pdvs(body: bytes | bytearray | memoryview) -> Iterator[tuple[int, int, memoryview]]:
    """(context id, message control header, fragment) of each PDV in a P-DATA-TF body."""
    view = memoryview(body)
    pos = 0
    while pos < len(view):
        if len(view) - pos < 6:
            raise PduError(f"PDV header cut short at byte {pos} of {len(view)}")
        (length,) = struct.unpack_from(">I", view, pos)
        if length < 2 or pos + 4 + length > len(view):
            raise PduError(f"PDV of {length} bytes at byte {pos} does not fit the P-DATA-TF of {len(view)}")
        yield view[pos + 4], view[pos + 5], view[pos + 6 : pos + 4 + length]
        pos += 4 + length
