"""The receiving side of an association's socket: exact reads through one preallocated buffer.

Small reads (PDU and PDV headers) are served from a buffer filled by ``recv_into``; a PDU body is read
into a ``bytearray`` of its own (its bytes go there straight from the kernel, and the fragments cut from it
are views, never copies). On a plain TCP socket the kernel is asked, with ``SO_RCVLOWAT``, not to wake the
reader before the bytes it waits for are all there (capped at :data:`LOWAT_CAP`): a 128 kB PDU is then one
wake-up instead of one per TCP segment burst, which matters on a busy machine where every wake-up waits
for a CPU. The low-water mark is never above what the peer must still send for the PDU being read, so a
peer that follows PS3.8 never leaves the reader waiting; one that stops inside a PDU is cut off by the
socket's timeout as before, and a closed connection wakes the reader whatever the mark.
"""

from __future__ import annotations

import socket
import ssl

__all__ = ["LOWAT_CAP", "ConnectionClosedError", "Wire"]

#: the largest low-water mark set (bytes); larger reads wake up once per this many bytes
LOWAT_CAP = 1 << 20
#: reads smaller than this leave the low-water mark at 1 byte (no system call to change it)
_LOWAT_MIN = 4096


class ConnectionClosedError(Exception):
    """The peer closed the connection before the bytes asked for were there."""


class Wire:
    """Reads from ``sock`` (blocking, with the socket's own timeout).

    Parameters
    ----------
    sock
        the accepted connection (a TLS socket is read the same way, without a low-water mark: TLS records
        do not map onto bytes on the wire).
    size
        the buffer for small reads, in bytes.
    """

    def __init__(self, sock: socket.socket, size: int = 1 << 16):
        self.sock = sock
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._start = 0  # buffered bytes are _buf[_start:_end]
        self._end = 0
        self._lowat = 1
        self._use_lowat = not isinstance(sock, ssl.SSLSocket) and hasattr(socket, "SO_RCVLOWAT")

    def _mark(self, want: int) -> None:
        """Set the low-water mark for a read of ``want`` more bytes that the peer must send."""
        if not self._use_lowat:
            return
        mark = min(want, LOWAT_CAP) if want >= _LOWAT_MIN else 1
        if mark != self._lowat:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, mark)
            except OSError:  # a hint only: reading works without it
                self._use_lowat = False
                return
            self._lowat = mark

    def _recv_into(self, target: memoryview, want: int) -> int:
        self._mark(want)
        n = self.sock.recv_into(target)
        if n == 0:
            raise ConnectionClosedError("connection closed")
        return n

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes (``n`` at most the buffer's size)."""
        if self._end - self._start < n:
            if self._start:  # keep what is buffered at the front
                left = self._end - self._start
                self._buf[:left] = self._view[self._start : self._end]
                self._start, self._end = 0, left
            while self._end < n:
                self._end += self._recv_into(self._view[self._end :], n - self._end)
        out = bytes(self._view[self._start : self._start + n])
        self._start += n
        if self._start == self._end:
            self._start = self._end = 0
        return out

    def read_into(self, target: memoryview) -> None:
        """Fill ``target`` exactly: the buffered bytes first, then straight from the socket."""
        pos = min(len(target), self._end - self._start)
        if pos:
            target[:pos] = self._view[self._start : self._start + pos]
            self._start += pos
            if self._start == self._end:
                self._start = self._end = 0
        while pos < len(target):
            pos += self._recv_into(target[pos:], len(target) - pos)

    def read_body(self, n: int) -> bytearray:
        """A PDU body of ``n`` bytes in a ``bytearray`` of its own."""
        body = bytearray(n)
        self.read_into(memoryview(body))
        return body
