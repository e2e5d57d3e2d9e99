"""Group commit of spool writes: the instances that arrive together are made durable and indexed together.

Each C-STORE handler writes its instance to a temporary file and hands it to :class:`GroupCommit`, then
waits. One committer thread takes every instance waiting at that moment as one batch and, for the batch:

1. makes the temporary files' data durable (``fsync`` of the one file; for several, one ``syncfs`` of the
   spool's file system where Linux has it, else an ``fsync`` per file);
2. renames each into its final name and makes the renames durable (``fsync`` of each distinct folder);
3. indexes all of them in one SQLite transaction;

and only then wakes the handlers, which answer Success. So Success still means "fsynced in the spool and
indexed", while concurrent associations share the cost of the flushes. A crash at any point leaves what
:meth:`dicom_node.spool.Spool.reconcile` already handles: temporary files (removed; they never got
Success) or renamed files without an index row (indexed at start-up).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["GroupCommit", "Pending"]

#: most instances committed in one batch
MAX_BATCH = 64


def _load_syncfs() -> Callable[[int], None] | None:
    """``syncfs(2)`` of the C library (Linux), or None where there is none."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        func = libc.syncfs
    except (OSError, AttributeError):
        return None

    def syncfs(fd: int) -> None:
        if func(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs failed: {os.strerror(err)}")

    return syncfs


_SYNCFS = _load_syncfs()


@dataclass
class Pending:
    """One instance written to ``tmp`` (``fd`` still open, not yet fsynced), to go to ``final``.

    ``index`` is what the committer hands to the index writer for this instance.
    """

    fd: int
    tmp: Path
    final: Path
    index: object
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class GroupCommit:
    """The committer thread (started on first use).

    Parameters
    ----------
    root
        a folder on the spool's file system (for ``syncfs``).
    write_index
        indexes a batch's ``Pending.index`` values in one transaction; called in the committer's thread.
    """

    def __init__(self, root: Path, write_index: Callable[[Sequence[object]], None]):
        self.root = root
        self.write_index = write_index
        self._queue: queue.SimpleQueue[Pending] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.committed = 0

    def commit(self, item: Pending) -> None:
        """Hand over ``item`` and wait until it is durable and indexed; raises what the commit raised."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="spool-commit", daemon=True)
                self._thread.start()
        self._queue.put(item)
        item.done.wait()
        if item.error is not None:
            raise item.error

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._commit(batch)

    def _commit(self, batch: list[Pending]) -> None:
        renamed: list[Pending] = []
        try:
            if len(batch) > 1 and _SYNCFS is not None:
                _SYNCFS(batch[0].fd)
            else:
                for item in batch:
                    os.fsync(item.fd)
            for item in batch:
                os.close(item.fd)
                item.fd = -1
            for item in batch:
                item.tmp.replace(item.final)
                renamed.append(item)
            for folder in {item.final.parent for item in batch}:
                dfd = os.open(folder, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
            self.write_index([item.index for item in batch])
            self.batches += 1
            self.committed += len(batch)
        except BaseException as exc:  # every instance of the batch fails alike; none is kept unacknowledged
            logger.error("spool commit of %d instances failed: %s", len(batch), exc)
            for item in batch:
                if item.fd >= 0:
                    os.close(item.fd)
                    item.fd = -1
                item.tmp.unlink(missing_ok=True)
                item.error = exc
            for item in renamed:
                item.final.unlink(missing_ok=True)
        finally:
            for item in batch:
                item.done.set()
