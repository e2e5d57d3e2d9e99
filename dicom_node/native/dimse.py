"""DIMSE command sets (PS3.7 section 9.3 and E): the few elements a C-ECHO and C-STORE need.

A command set is group 0000 in Implicit VR Little Endian. :func:`parse_command` reads any command set
(elements it does not need are skipped) and raises :class:`CommandError` on one that does not parse;
:func:`response` encodes a C-ECHO-RSP or C-STORE-RSP (or the response to a command the node does not
perform).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["NO_DATASET", "Command", "CommandError", "CommandField", "parse_command", "response"]

#: Command Data Set Type when no dataset follows
NO_DATASET = 0x0101


class CommandField:
    C_STORE_RQ = 0x0001
    C_ECHO_RQ = 0x0030
    C_CANCEL_RQ = 0x0FFF


class CommandError(ValueError):
    """A command set that does not parse (the association is aborted)."""


@dataclass(frozen=True)
class Command:
    command_field: int
    message_id: int
    has_dataset: bool
    sop_class_uid: str = ""
    sop_instance_uid: str = ""


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\0 ").decode("ascii", "replace")


def _us(raw: bytes, name: str) -> int:
    if len(raw) != 2:
        raise CommandError(f"{name} has {len(raw)} bytes; US needs 2")
    return int(struct.unpack("<H", raw)[0])


def parse_command(data: bytes | bytearray | memoryview) -> Command:
    """The command set's fields; raises :class:`CommandError` when it is not a command set."""
    view = memoryview(data)
    values: dict[int, bytes] = {}
    pos = 0
    while pos < len(view):
        if len(view) - pos < 8:
            raise CommandError(f"element header cut short at byte {pos} of {len(view)}")
        group, element, length = struct.unpack_from("<HHI", view, pos)
        if group != 0x0000:
            raise CommandError(f"element ({group:04X},{element:04X}) in a command set (group 0000 only)")
        if pos + 8 + length > len(view):
            raise CommandError(f"element (0000,{element:04X}) claims {length} bytes past the end")
        values[element] = bytes(view[pos + 8 : pos + 8 + length])
        pos += 8 + length
    if 0x0100 not in values:
        raise CommandError("no Command Field (0000,0100)")
    field = _us(values[0x0100], "Command Field")
    message_id = _us(values[0x0110], "Message ID") if 0x0110 in values else 0
    has_dataset = _us(values[0x0800], "Command Data Set Type") != NO_DATASET if 0x0800 in values else False
    return Command(
        command_field=field,
        message_id=message_id,
        has_dataset=has_dataset,
        sop_class_uid=_text(values.get(0x0002, b"")),
        sop_instance_uid=_text(values.get(0x1000, b"")),
    )


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _ui(uid: str) -> bytes:
    raw = uid.encode("ascii", "replace")  # a request's garbage UID is echoed, never a reason to fail
    return raw + b"\0" if len(raw) % 2 else raw


def response(request: Command, status: int, comment: str = "") -> bytes:
    """The response command set to ``request`` with ``status`` (and an Error Comment, at most 64 chars)."""
    body = []
    if request.sop_class_uid:
        body.append(_element(0x0002, _ui(request.sop_class_uid)))
    body.append(_element(0x0100, struct.pack("<H", request.command_field | 0x8000)))
    body.append(_element(0x0120, struct.pack("<H", request.message_id)))
    body.append(_element(0x0800, struct.pack("<H", NO_DATASET)))
    body.append(_element(0x0900, struct.pack("<H", status)))
    if comment:
        text = comment.encode("ascii", "replace")[:64]
        body.append(_element(0x0902, text + b" " if len(text) % 2 else text))
    if request.sop_instance_uid:
        body.append(_element(0x1000, _ui(request.sop_instance_uid)))
    rest = b"".join(body)
    return _element(0x0000, struct.pack("<I", len(rest))) + rest
