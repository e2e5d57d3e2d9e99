"""The spool writer: files and index entries of instances already answered from the journal.

:class:`~dicom_node.group_commit.GroupCommit` answers a lone instance once it is journaled and hands the
batch to :class:`SpoolWriter`, whose thread (``spool-writer``) writes each file's bytes into the temporary
file reserved for it, renames it to its final name and indexes the batches it finds waiting (up to
:data:`MAX_INDEX_BATCH` instances in one SQLite transaction). Until then the instances are *held*: a
duplicate is recognised (:meth:`SpoolWriter.holds`) and the backlog guard counts their studies
(:meth:`SpoolWriter.held_studies`), but nothing reads them.

A batch it fails to write or index (the index locked, say) is logged and kept: its records stay in the
journal, it is retried at each checkpoint, and no checkpoint voids its journal while it fails. After the
last batch of a sealed (full) journal the writer checkpoints that journal: the spool's file system made
durable (one ``syncfs``; else an ``fsync`` of each file and folder written since), then the journal's new
generation, which voids its records.

:class:`Pending` (one instance to store, with its reserved temporary file) is shared by both modules.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from dicom_node.spool_files import HAS_SYNCFS, drop_cached, fsync_path, reserve, start_writeback, syncfs, write_all
from dicom_node.spool_journal import Journal

logger = logging.getLogger(__name__)

__all__ = ["Pending", "SpoolWriter"]

#: most bytes answered but not yet written, renamed and indexed
MAX_DEFERRED_BYTES = 256 * 10**6
#: threads the writer writes files with (copying into fresh page-cache memory is the cost: side by side)
WRITERS = 2
#: most instances indexed in one transaction
MAX_INDEX_BATCH = 256
#: bytes of the most recent durable files left in the page cache when a checkpoint hands the older ones back
#: (:meth:`SpoolWriter.sync`): a study of up to about 500 CT slices is read from memory
CACHED_BYTES = 256 * 2**20

_NAMES = itertools.count()  # temporary file names: unique in this process


@dataclass(eq=False)  # compared by identity (the commit queue looks for one)
class Pending:
    """One instance to store: its file's bytes (``head`` + ``data``), its final path, and what the journal
    and index get.

    ``meta`` (strings) is journaled with the bytes so that a crash can be replayed; ``index`` is what the
    committer hands to the index writer for this instance; ``crc``: the CRC-32 of the bytes when already
    computed. ``deferred``: Success once journaled, the file and index written afterwards (``key``, the SOP
    Instance UID, is then held until indexed).
    """

    data: bytes
    final: Path
    meta: dict[str, str]
    index: object
    head: bytes = b""
    crc: int | None = None
    deferred: bool = False
    key: str = ""
    tmp: Path | None = None
    fd: int | None = None  # the reserved temporary file, open until written
    placed: bool = False  # renamed to its final name
    #: set when the instance is committed (or failed: ``error``), or when its handler is to lead
    wake: threading.Event = field(default_factory=threading.Event)
    done: bool = False
    error: BaseException | None = None

    @property
    def size(self) -> int:
        return len(self.head) + len(self.data)

    def reserve(self, folder: Path) -> None:
        """Create the temporary file in ``folder`` with its size allocated (a full disk fails here)."""
        if self.fd is not None:
            return
        self.tmp = folder / f"{self.final.name}.{next(_NAMES)}.part"
        self.fd = reserve(self.tmp, self.size)

    def forget(self) -> None:
        """Close and remove the temporary file of an instance that gets no Success."""
        self._close()
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)

    def write(self, *, rename: bool = True) -> None:
        """Write the bytes into the temporary file (reserved anew on a retry) and (``rename``) place it."""
        if self.placed:
            return
        assert self.tmp is not None
        if self.fd is None:
            self.fd = reserve(self.tmp, self.size)
        try:
            write_all(self.fd, [self.head, self.data] if self.head else [self.data])
            start_writeback(self.fd)
        finally:
            self._close()
        if rename:
            self.rename()

    def rename(self) -> None:
        """Give the written instance its final name."""
        assert self.tmp is not None
        self.tmp.replace(self.final)
        self.placed = True

    def _close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@dataclass(eq=False)
class _Deferred:
    """A journaled batch still to write and index; ``journal``: which one holds it."""

    items: list[Pending]
    journal: int

    @property
    def size(self) -> int:
        return sum(item.size for item in self.items)


@dataclass(frozen=True)
class _Seal:
    """In the queue after a full journal's last batch: checkpoint that journal."""

    journal: int


class SpoolWriter:
    """Writes and indexes answered batches in its own thread; checkpoints the journals it is handed.

    ``write_index`` indexes ``Pending.index`` values in one transaction and must be idempotent (a failed
    batch is indexed again when retried).
    """

    def __init__(self, write_index: Callable[[Sequence[object]], None]):
        self.write_index = write_index
        self.journals: list[Journal] = []
        self._state = threading.Condition()  # guards everything below
        self._queue: deque[_Deferred | _Seal] = deque()
        self._busy = False  # working on what it took from the queue
        self._batches = 0  # queued or being written
        self._bytes = 0
        self._unindexed: dict[str, Pending] = {}  # answered, not yet indexed (queued or failed)
        self._failed: list[_Deferred] = []  # journaled batches whose writing or indexing failed
        self._sealed: int | None = None  # a full journal waiting for its checkpoint
        self._unsynced: list[Path] = []  # files renamed since the last checkpoint
        self._cached: deque[tuple[Path, int]] = deque()  # durable files not handed back, oldest first, with sizes
        self._cached_bytes = 0
        self._files = ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="spool-file")
        self.materialised = 0
        self.checkpoints = 0

    def start(self) -> threading.Thread:
        """Start the writer's thread (once :attr:`journals` is set)."""
        thread = threading.Thread(target=self._loop, name="spool-writer", daemon=True)
        thread.start()
        return thread

    # -- what the committer asks ------------------------------------------------------------------------
    def admit(self, nbytes: int) -> None:
        """Back-pressure: wait until ``nbytes`` more fit under :data:`MAX_DEFERRED_BYTES`."""
        with self._state:
            self._state.wait_for(lambda: not self._bytes or self._bytes + nbytes <= MAX_DEFERRED_BYTES)

    def enqueue(self, batch: list[Pending], journal: int) -> None:
        """Take a batch just journaled in ``journal`` (its handlers answer Success now)."""
        with self._state:
            for item in batch:
                if item.key:
                    self._unindexed[item.key] = item
            self._queue.append(_Deferred(batch, journal))
            self._batches += 1
            self._bytes += sum(item.size for item in batch)
            self._state.notify_all()

    def written(self, paths: Sequence[Path]) -> None:
        """Files renamed by the committer itself: made durable at the next checkpoint."""
        with self._state:
            self._unsynced.extend(paths)

    def seal(self, journal: int, other: int) -> bool:
        """Seal the full ``journal`` once ``other``'s checkpoint is done; False when ``other`` still holds
        records (its checkpoint failed: the caller checkpoints both)."""
        with self._state:
            self._state.wait_for(lambda: self._sealed != other)
        if self.journals[other].pending_bytes:
            return False
        with self._state:
            self._sealed = journal
            self._queue.append(_Seal(journal))
            self._state.notify_all()
        return True

    def failing(self) -> bool:
        with self._state:
            return bool(self._failed)

    def holds(self, key: str) -> bool:
        """Whether an instance with this SOP Instance UID was answered and is not yet indexed."""
        with self._state:
            return key in self._unindexed

    def held_studies(self) -> set[str]:
        """The Study Instance UIDs of the instances answered and not yet indexed."""
        with self._state:
            return {item.meta.get("study_uid", "") for item in self._unindexed.values()} - {""}

    def drain(self) -> None:
        """Wait until everything queued is done (a sealed journal's checkpoint too)."""
        with self._state:
            self._state.wait_for(lambda: not self._queue and not self._busy)

    def settle(self, timeout: float | None = None) -> bool:
        """Wait until every instance answered so far is written and indexed (or failed to be: then False)."""
        with self._state:
            done = self._state.wait_for(lambda: self._batches == 0, timeout)
            return done and not self._failed

    def retry_failed(self) -> bool:
        """Retry every failed batch; whether none fails any more."""
        with self._state:
            failed = list(self._failed)
        for batch in failed:
            self._retry(batch)
        with self._state:
            if self._failed:
                held = sum(len(b.items) for b in self._failed)
                logger.error("spool checkpoint postponed: %d journaled instances are not yet indexed", held)
                return False
        return True

    def sync(self) -> None:
        """Make every file renamed so far durable, with its folder; then hand back the cached pages of the durable
        files beyond the most recent :data:`CACHED_BYTES` (:func:`~dicom_node.spool_files.drop_cached`), so that
        the files written next reuse that memory.

        On a stream of stores (a full journal's checkpoint) the file step took 1.36-1.69 ms per 512 kB instance
        over 1,500 on one association without handing pages back, 0.28-0.32 ms with it. The most recent files
        stay cached: the study whose stores just paused is read from memory by the pipeline, not from the disk.
        """
        with self._state:
            paths, self._unsynced = self._unsynced, []
        try:
            if HAS_SYNCFS:
                syncfs(self.journals[0]._fd)
            else:
                for path in paths:
                    fsync_path(path)
                for folder in {p.parent for p in paths}:
                    fsync_path(folder)
        except BaseException:
            with self._state:
                self._unsynced[:0] = paths
            raise
        sized: list[tuple[Path, int]] = []
        for path in paths:  # outside the lock: the writer's other callers need not wait for these stats
            try:
                sized.append((path, path.stat().st_size))
            except OSError:  # gone meanwhile: nothing cached to hand back
                continue
        older: list[Path] = []
        with self._state:
            self._cached.extend(sized)
            self._cached_bytes += sum(size for _, size in sized)
            while self._cached and self._cached_bytes > CACHED_BYTES:
                path, size = self._cached.popleft()
                self._cached_bytes -= size
                older.append(path)
        if older:
            drop_cached(older)

    def checkpointed(self) -> None:
        """Both journals were checkpointed: nothing is sealed any more."""
        with self._state:
            self._sealed = None
            self._state.notify_all()
        self.checkpoints += 1

    # -- the thread -------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            work: list[_Deferred] | _Seal
            with self._state:
                self._state.wait_for(lambda: bool(self._queue))
                first = self._queue[0]
                if isinstance(first, _Seal):
                    self._queue.popleft()
                    work = first
                else:
                    work, count = [], 0
                    while self._queue and isinstance(self._queue[0], _Deferred):
                        if work and count + len(self._queue[0].items) > MAX_INDEX_BATCH:
                            break
                        batch = self._queue.popleft()
                        assert isinstance(batch, _Deferred)
                        work.append(batch)
                        count += len(batch.items)
                self._busy = True
            try:
                if isinstance(work, _Seal):
                    self._checkpoint_sealed(work.journal)
                else:
                    self._materialise(work)
            except Exception:  # a bug: logged; what is journaled stays replayable
                logger.exception("spool writer")
            finally:
                with self._state:
                    self._busy = False
                    self._state.notify_all()

    def _write_and_index(self, items: list[Pending]) -> None:
        for _ in self._files.map(Pending.write, items):  # raises the first failure
            pass
        self.written([item.final for item in items])
        self.write_index([item.index for item in items])
        with self._state:
            for item in items:
                self._unindexed.pop(item.key, None)
                item.data = item.head = b""  # the journal holds the bytes until the checkpoint
        self.materialised += len(items)

    def _materialise(self, batches: list[_Deferred]) -> None:
        items = [item for batch in batches for item in batch.items]
        nbytes = sum(batch.size for batch in batches)
        try:
            self._write_and_index(items)
        except Exception as exc:
            logger.error(
                "spool: %d answered instances not yet written or indexed (%s); kept in the journal, "
                "retried at the next checkpoint",
                len(items),
                exc,
            )
            for item in items:
                item._close()
            with self._state:
                self._failed.extend(batches)
        with self._state:
            self._batches -= len(batches)
            self._bytes -= nbytes
            self._state.notify_all()

    def _retry(self, batch: _Deferred) -> bool:
        try:
            self._write_and_index(batch.items)
        except Exception as exc:
            logger.error("spool: retry of %d journaled instances failed: %s", len(batch.items), exc)
            return False
        with self._state:
            self._failed.remove(batch)
            self._state.notify_all()
        logger.info("spool: %d journaled instances written and indexed on retry", len(batch.items))
        return True

    def _checkpoint_sealed(self, index: int) -> None:
        """After the last batch of the sealed journal ``index``: make it durable and void it."""
        try:
            with self._state:
                failed = [batch for batch in self._failed if batch.journal == index]
            if all([self._retry(batch) for batch in failed]):
                self.sync()
                self.journals[index].checkpoint()
                self.checkpoints += 1
        except Exception as exc:  # the journal keeps its records; the next checkpoint tries again
            logger.error("spool checkpoint failed: %s", exc)
        finally:
            with self._state:
                self._sealed = None
                self._state.notify_all()
