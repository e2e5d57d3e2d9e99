"""An instance as the native receiver reads it off the wire: its file meta header, its dataset's
fragments and the CRC-32 of both, carried on as each fragment arrives.

The receiver hands each dataset fragment to :meth:`IncomingInstance.add` (a view of the PDU it came in:
nothing is copied); the fragments are joined once, for the checks of
:func:`dicom_node.store_handling.store_instance`. :meth:`dicom_node.spool.Spool.store` then journals the
instance with the CRC already computed and answers it once the journal is flushed; the spool's file is
written afterwards (:mod:`dicom_node.group_commit`). Nothing touches the disk while the instance arrives,
so a refused, abandoned or oversized instance leaves nothing behind.
"""

from __future__ import annotations

import zlib

__all__ = ["IncomingInstance"]


class IncomingInstance:
    """The instance being received: ``head`` (preamble, ``DICM`` and the file meta group), then the
    dataset's fragments as :meth:`add` gets them."""

    def __init__(self, head: bytes):
        self.head = head
        self.crc = zlib.crc32(head)
        self.size = 0
        self._parts: list[bytes | memoryview] = []
        self._data: bytes | None = None

    def add(self, fragment: bytes | memoryview) -> None:
        """Append one dataset fragment (kept as it is, not copied: the caller must not change it)."""
        self._parts.append(fragment)
        self.size += len(fragment)
        self.crc = zlib.crc32(fragment, self.crc)

    @property
    def dataset(self) -> bytes:
        """The dataset's bytes received so far (joined once, when first asked for)."""
        if self._data is None or len(self._parts) > 1:
            self._data = b"".join(self._parts)
            self._parts = [self._data]
        return self._data
