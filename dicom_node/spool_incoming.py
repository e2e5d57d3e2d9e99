"""An instance's file written into the spool's ``tmp/`` folder while its bytes arrive.

The native receiver hands each dataset fragment to :meth:`IncomingFile.write` as it reads it off the
wire: the fragment goes to a temporary file (the page cache; not flushed), the CRC-32 the journal needs
is carried on, and the bytes are kept for the checks of :func:`dicom_node.store_handling.store_instance`.
This work overlaps the sender's sending of the next fragment. Once the last fragment is in,
:meth:`dicom_node.spool.Spool.store` journals the file (its flush shared with the instances of the same
group commit) and renames the temporary file into place; so what is left to do after the last byte is
the checks, the journal append with its ``fdatasync``, the rename and the index.

A temporary file is never an instance that got Success: a refused, failed or abandoned instance's file is
removed (:meth:`IncomingFile.discard`), and :meth:`dicom_node.spool.Spool.reconcile` removes whatever a
crash left in ``tmp/``. A write that fails (the disk full) is not raised at once: the receiver reads the
rest of the instance, and :meth:`IncomingFile.written` raises the error when the instance is stored, so
that the sender gets the status meant for it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import zlib
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["IncomingFile"]

_NAMES = itertools.count()


class IncomingFile:
    """The temporary file of one instance being received: ``head`` (the file meta header), then the
    dataset's fragments as :meth:`write` gets them.

    Parameters
    ----------
    folder
        the spool's ``tmp/`` folder (on the spool's file system, so that the file can be renamed into place).
    head
        the bytes before the dataset (preamble, ``DICM`` and the file meta group).
    """

    def __init__(self, folder: Path, head: bytes):
        self.head = head
        self.path = folder / f"{os.getpid()}-{next(_NAMES)}.part"  # never a name from the peer
        self.crc = zlib.crc32(head)
        self.size = 0
        self.error: OSError | None = None
        self._parts: list[bytes | memoryview] = []
        self._data: bytes | None = None
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._write(head)

    def _write(self, data: bytes | memoryview) -> None:
        if self._fd is None:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:  # the disk full: kept for written(); nothing more is written
            self.error = exc
            self._close()
            with contextlib.suppress(OSError):
                self.path.unlink()

    def write(self, fragment: bytes | memoryview) -> None:
        """Append one dataset fragment: to the file, the CRC and the bytes kept.

        ``fragment`` is kept as it is, not copied (a view of the PDU it came in, which nothing reuses):
        the caller must not change it afterwards.
        """
        self._parts.append(fragment)
        self.size += len(fragment)
        self.crc = zlib.crc32(fragment, self.crc)
        self._write(fragment)

    @property
    def dataset(self) -> bytes:
        """The dataset's bytes received so far (joined once, when first asked for)."""
        if self._data is None or len(self._parts) > 1:
            self._data = b"".join(self._parts)
            self._parts = [self._data]
        return self._data

    def written(self) -> Path:
        """Close the file and return its path; raises the error of a write that failed."""
        self._close()
        if self.error is not None:
            raise self.error
        return self.path

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def discard(self) -> None:
        """Close and remove the file, unless it was renamed into place (then nothing is left to remove)."""
        self._close()
        self._parts = []
        self._data = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
