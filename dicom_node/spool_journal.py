"""The spool's write-ahead journal: where an instance becomes durable before its Success is sent.

A store appends its instance (a small JSON header naming where it goes, and the file's bytes) to one
journal file and flushes it with one ``fdatasync``; the instance's own file is then renamed into
``incoming/`` (not yet flushed) and indexed. So one flush per group of instances makes them durable,
instead of an ``fsync`` of each file and of each folder. A *checkpoint* (when the committer is idle, and
at least every :data:`CHECKPOINT_BYTES`) flushes the spool's file system (``syncfs``; else an ``fsync``
of each file and folder written since the last one) and then starts a new *generation* of the journal,
which makes the records before it void.

The journal file is overwritten in place from the start at each generation, so that appends seldom
change its size and ``fdatasync`` writes data only. Generations are random numbers. A failed commit
voids its records and is followed by a checkpoint. Layout: a 16-byte header (magic, generation), then
records: ``struct`` header (magic, generation, JSON length, data length, CRC-32 of data then JSON), JSON,
data.
Reading stops at the first record that is cut short, of another generation or fails its CRC (what a
crash in the middle of an append leaves); everything before it was flushed before any Success.

After a crash, :meth:`Journal.records` yields what the last generation holds; the spool writes each
instance's file again where it is missing or differs, indexes what is missing, and checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dicom_node.spool_files import fsync_path

logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_BYTES", "PREALLOCATED_BYTES", "Journal", "JournalRecord"]

_FILE_HEAD = struct.Struct(">8sQ")
_MAGIC = b"FNJRNL01"
_RECORD = struct.Struct(">4sQIQI")  # magic, generation, JSON length, data length, CRC-32
_RECORD_MAGIC = b"FNR2"  # CRC-32 of data then JSON (computed as the data arrives)
_RECORD_MAGIC_V1 = b"FNR1"  # CRC-32 of JSON then data (written before; still read)
#: journal bytes after which the next append first checkpoints (bounds the journal's size). Small enough
#: that a new journal is soon overwritten in place (an append that grows the file makes its ``fdatasync``
#: commit the file system's own journal too), large enough that the checkpoint's stall (one ``syncfs``)
#: is rare
CHECKPOINT_BYTES = 64 * 10**6
#: size a journal is zero-filled to when the node starts (:meth:`Journal.preallocate`): a checkpoint's
#: worth and a full batch beyond it, so that appends overwrite blocks and page-cache memory the file
#: already has (as database write-ahead logs are prepared), instead of growing the file
PREALLOCATED_BYTES = CHECKPOINT_BYTES + 32 * 10**6


def _new_generation() -> int:
    """A random generation number: no stale bytes in the file (nor any sent by a peer) can pass for a
    record of the current generation."""
    return int.from_bytes(os.urandom(8), "big")


@dataclass(frozen=True)
class JournalRecord:
    """One journaled instance: ``meta`` (JSON-able) says where it goes, ``head`` + ``data`` are the file's
    bytes (a record read back holds them all in ``data``).

    ``crc``: the CRC-32 of ``head`` + ``data`` when the writer computed it already (as the bytes arrived);
    None: :meth:`Journal.append` computes it.
    """

    meta: dict[str, str]
    data: bytes
    head: bytes = b""
    crc: int | None = None


class Journal:
    """The journal file ``path`` (created on first use); one writer (the committer thread)."""

    def __init__(self, path: Path):
        self.path = path
        fresh = not path.exists()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if fresh or os.fstat(self._fd).st_size < _FILE_HEAD.size:
            self._write_head(_new_generation())
            fsync_path(path.parent)  # the new file's name is durable too
        head = os.pread(self._fd, _FILE_HEAD.size, 0)
        magic, self.generation = _FILE_HEAD.unpack(head)
        if magic != _MAGIC:
            raise ValueError(f"{path} is not a spool journal (magic {magic!r}, expected {_MAGIC!r})")
        self.offset = _FILE_HEAD.size
        self._recovering = True  # until the first checkpoint: the records on file are still live

    def _write_head(self, generation: int) -> None:
        os.pwrite(self._fd, _FILE_HEAD.pack(_MAGIC, generation), 0)
        os.fdatasync(self._fd)

    @property
    def pending_bytes(self) -> int:
        """Bytes appended since the last checkpoint."""
        return self.offset - _FILE_HEAD.size

    def append(self, records: Sequence[JournalRecord]) -> int:
        """Append ``records`` and flush them (``fdatasync``); returns the offset to :meth:`rollback` to.

        On any error the journal is rolled back (the records are void) and the error raised.
        """
        if self._recovering:
            raise RuntimeError("the journal holds records from before a restart; replay and checkpoint first")
        start = self.offset
        parts: list[bytes] = []
        for rec in records:
            meta = json.dumps(rec.meta, separators=(",", ":")).encode()
            data_crc = rec.crc if rec.crc is not None else zlib.crc32(rec.data, zlib.crc32(rec.head))
            size = len(rec.head) + len(rec.data)
            header = _RECORD.pack(_RECORD_MAGIC, self.generation, len(meta), size, zlib.crc32(meta, data_crc))
            parts += [header, meta, rec.head, rec.data] if rec.head else [header, meta, rec.data]
        try:
            written = os.pwritev(self._fd, parts, start)
            if written != sum(len(p) for p in parts):
                raise OSError(f"journal write of {sum(len(p) for p in parts)} bytes wrote {written}")
            os.fdatasync(self._fd)
        except BaseException:
            self.rollback(start)
            raise
        self.offset = start + written
        return start

    def rollback(self, offset: int) -> None:
        """Void what was appended from ``offset`` on (a failed commit): a record header of another
        generation there ends reading; flushed before returning."""
        with contextlib.suppress(OSError):
            os.pwrite(self._fd, bytes(_RECORD.size), offset)
            os.fdatasync(self._fd)
        self.offset = offset

    def records(self) -> Iterator[JournalRecord]:
        """The complete records of the current generation, in order (for recovery)."""
        pos = _FILE_HEAD.size
        size = os.fstat(self._fd).st_size
        while pos + _RECORD.size <= size:
            magic, gen, meta_len, data_len, crc = _RECORD.unpack(os.pread(self._fd, _RECORD.size, pos))
            if (
                magic not in (_RECORD_MAGIC, _RECORD_MAGIC_V1)
                or gen != self.generation
                or pos + _RECORD.size + meta_len + data_len > size
            ):
                break
            body = os.pread(self._fd, meta_len + data_len, pos + _RECORD.size)
            meta, data = body[:meta_len], body[meta_len:]
            v2 = magic == _RECORD_MAGIC
            if (zlib.crc32(meta, zlib.crc32(data)) if v2 else zlib.crc32(data, zlib.crc32(meta))) != crc:
                logger.warning("spool journal %s: record at byte %d fails its CRC; reading stops there", self.path, pos)
                break
            try:
                parsed = json.loads(meta)
            except ValueError:
                break
            yield JournalRecord({str(k): str(v) for k, v in parsed.items()}, data)
            pos += _RECORD.size + meta_len + data_len

    def preallocate(self, size: int = PREALLOCATED_BYTES) -> None:
        """Zero-fill the file from its end up to ``size`` bytes and flush it (once: it keeps that size).
        Zeros end reading like a cut record, so this changes no record."""
        chunk = bytes(1 << 20)
        end = os.fstat(self._fd).st_size
        if end >= size:
            return
        while end < size:
            end += os.pwrite(self._fd, chunk[: size - end], end)
        os.fsync(self._fd)

    def checkpoint(self) -> None:
        """Start a new generation: call only once everything the records describe is durable elsewhere.

        A journal that grew beyond :data:`PREALLOCATED_BYTES` is cut back to that size.
        """
        self.generation = _new_generation()
        self._write_head(self.generation)
        if os.fstat(self._fd).st_size > PREALLOCATED_BYTES:
            os.ftruncate(self._fd, PREALLOCATED_BYTES)
        self.offset = _FILE_HEAD.size
        self._recovering = False

    def close(self) -> None:
        os.close(self._fd)
