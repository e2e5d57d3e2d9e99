"""Group commit of spool writes: the instances that arrive together are made durable and indexed together.

Each C-STORE handler hands its instance to :class:`GroupCommit`. The handler that finds no commit under
way (the *leader*) commits, itself, every instance waiting at that moment as one batch: no hand-over to
another thread, so a lone association pays no thread wake-up. The others wait, each on its own event; when
the batch is done the leader wakes each of its instances' handlers, and hands the lead to the handler of
the first instance that queued up meanwhile (one wake-up, not a procession through a lock), which commits
those. The batch:

1. writes each instance to a temporary file (not flushed), unless the receiver wrote it already while
   its bytes arrived (:mod:`dicom_node.spool_incoming`);
2. appends them all to the spool's journal (:mod:`dicom_node.spool_journal`) with one ``fdatasync``:
   from here on they survive a crash or a power cut;
3. renames each temporary file to its final name;
4. indexes all of them in one SQLite transaction;

and only then wakes the handlers, which answer Success. So Success still means "fsynced in the spool and
indexed", with one flush per batch, shared by concurrent associations. When stores pause (a thread
watches for that), and at least every :data:`~dicom_node.spool_journal.CHECKPOINT_BYTES` of journal, a
checkpoint follows: one
``syncfs`` of the spool's file system (else an ``fsync`` of each file and folder written since), then a
new journal generation. A failure at any step keeps nothing of the batch (temporary and renamed files
removed, journal records voided, index transaction rolled back) and raises it in each handler.

After a crash: the journal's records are replayed when the journal is first taken (each file rewritten
where it is missing or differs, indexed where the index lacks it), then checkpointed;
:meth:`dicom_node.spool.Spool.reconcile` removes temporary files (they never got Success).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dicom_node.spool_journal import CHECKPOINT_BYTES, Journal, JournalRecord

logger = logging.getLogger(__name__)

__all__ = ["GroupCommit", "Pending"]

#: most instances committed in one batch
MAX_BATCH = 64
#: an idle committer checkpoints after this many seconds without a new instance (a store arriving during
#: the checkpoint waits for it: a short pause of a sender must not trigger one)
IDLE_SECONDS = 1.0


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
#: whether the write-back of each renamed file is started right after its commit (``sync_file_range``,
#: not waited for), so that the checkpoint's ``syncfs`` finds little left to write rather than every
#: file since the last checkpoint at once (which stalls the stores waiting behind it)
START_WRITEBACK = True
_SYNC_FILE_RANGE_WRITE = 2


def _load_start_writeback() -> Callable[[Path], None] | None:
    """Starts the write-back of a file's dirty pages (``sync_file_range(2)``, Linux), or None."""
    try:
        func = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]

    def start(path: Path) -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # a hint only: what the journal promises does not depend on it
            return
        try:
            func(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)
        finally:
            os.close(fd)

    return start


_START_WRITEBACK = _load_start_writeback()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_SHARED: dict[Path, GroupCommit] = {}
_SHARED_LOCK = threading.Lock()


@dataclass(eq=False)  # compared by identity (the commit queue looks for one)
class Pending:
    """One instance to store: its file's bytes (``head`` + ``data``), its final path, and what the journal
    and index get.

    ``meta`` (strings) is journaled with the bytes so that a crash can be replayed; ``index`` is what the
    committer hands to the index writer for this instance. ``tmp``: the temporary file that already holds
    the bytes (written as they arrived, :class:`~dicom_node.spool_incoming.IncomingFile`), else None and
    the committer writes one; ``crc``: their CRC-32 when already computed.
    """

    data: bytes
    final: Path
    meta: dict[str, str]
    index: object
    head: bytes = b""
    crc: int | None = None
    tmp: Path | None = None
    #: set when the instance is committed (or failed: ``error``), or when its handler is to lead
    wake: threading.Event = field(default_factory=threading.Event)
    done: bool = False
    error: BaseException | None = None


class GroupCommit:
    """The committer thread (started on first use) and the journal it owns.

    Parameters
    ----------
    root
        the spool folder (on the spool's file system; holds ``journal.wal``).
    tmp
        the folder for temporary files (same file system).
    write_index
        indexes a batch's ``Pending.index`` values in one transaction; called in the committer's thread.
    replay
        writes back and indexes one journal record after a crash; called before the first batch.
    """

    def __init__(
        self,
        root: Path,
        tmp: Path,
        write_index: Callable[[Sequence[object]], None],
        replay: Callable[[JournalRecord], None],
    ):
        self.root = root
        self.tmp = tmp
        self.write_index = write_index
        self.replay = replay
        self._waiting: deque[Pending] = deque()  # handed in, not yet taken into a batch
        self._leading = False  # whether a handler leads (commits, or is woken to commit)
        self._mutex = threading.Lock()  # guards _waiting and _leading
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None  # the checkpoint thread
        self._commit_lock = threading.Lock()  # held by the thread committing a batch, or checkpointing
        self._dirty = threading.Event()  # set after a commit, cleared by the checkpoint
        self._last_commit = 0.0
        self._journal: Journal | None = None
        self._unsynced: list[Path] = []  # files renamed since the last checkpoint
        self.batches = 0
        self.committed = 0
        self.checkpoints = 0

    @classmethod
    def shared(
        cls,
        root: Path,
        tmp: Path,
        write_index: Callable[[Sequence[object]], None],
        replay: Callable[[JournalRecord], None],
    ) -> GroupCommit:
        """The one committer of the spool folder ``root`` in this process (made on first use): several
        :class:`~dicom_node.spool.Spool` objects on one folder share its journal and thread."""
        key = root.resolve()
        with _SHARED_LOCK:
            committer = _SHARED.get(key)
            if committer is None or committer.stale():
                committer = _SHARED[key] = cls(root, tmp, write_index, replay)
            return committer

    def stale(self) -> bool:
        """Whether the spool folder was removed and made anew under this committer's open journal."""
        if self._journal is None:
            return False
        try:
            return self._journal.path.stat().st_ino != os.fstat(self._journal._fd).st_ino
        except FileNotFoundError:
            return True

    # -- the journal --------------------------------------------------------------------------------------
    def open(self) -> None:
        """Take the journal (exclusively: one writer per spool), replay what a crash left, checkpoint."""
        with self._lock:
            if self._journal is not None:
                return
            journal = Journal(self.root / "journal.wal")
            try:
                fcntl.flock(journal._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                journal.close()
                raise RuntimeError(
                    f"the spool {self.root} is written by another process; one receiver per spool folder"
                ) from None
            replayed = 0
            for record in journal.records():
                self.replay(record)
                replayed += 1
            self._journal = journal
            self._checkpoint()
            if replayed:
                logger.info("spool journal: %d instances replayed after a restart", replayed)

    def _checkpoint(self) -> None:
        """Make every renamed file and folder durable, then void the journal's records."""
        assert self._journal is not None
        if _SYNCFS is not None:
            _SYNCFS(self._journal._fd)
        else:
            for path in self._unsynced:
                _fsync_path(path)
            for folder in {p.parent for p in self._unsynced}:
                _fsync_path(folder)
        self._journal.checkpoint()
        self._unsynced.clear()
        self.checkpoints += 1

    # -- committing ---------------------------------------------------------------------------------------
    def commit(self, item: Pending) -> None:
        """Store ``item``, waiting until it is durable and indexed; raises what the commit raised.

        The calling thread commits itself when no commit is under way (no hand-over to another thread):
        it takes everything waiting at that moment as one batch. While a commit is under way, the
        instances arriving queue up; the leader then wakes the handler of the first of them, which
        commits them all.
        """
        self.open()
        assert self._journal is not None
        with self._mutex:
            self._waiting.append(item)
            lead = not self._leading
            self._leading = True
        if not lead:
            item.wake.wait()  # committed by a leader, or asked to lead
        if not item.done:
            self._lead(item)
        self._dirty.set()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._checkpoints, name="spool-checkpoint", daemon=True)
                self._thread.start()
        if item.error is not None:
            raise item.error

    def _lead(self, item: Pending) -> None:
        """Commit batches from the front of the queue until ``item``'s is done, then pass the lead on."""
        assert self._journal is not None
        try:
            while not item.done:
                with self._commit_lock:  # the checkpoint thread takes it too
                    with self._mutex:
                        batch = [self._waiting.popleft() for _ in range(min(MAX_BATCH, len(self._waiting)))]
                    if self._journal.pending_bytes > CHECKPOINT_BYTES:
                        self._safe_checkpoint()
                    self._commit(batch)
                    self._last_commit = time.monotonic()
        finally:
            with self._mutex:
                if item in self._waiting:  # an error escaped a commit before this item's batch: it leaves
                    self._waiting.remove(item)
                following = self._waiting[0] if self._waiting else None
                self._leading = following is not None
            if following is not None:
                following.wake.set()  # its handler leads next

    def _checkpoints(self) -> None:
        """The checkpoint thread: once stores have paused for :data:`IDLE_SECONDS`, checkpoint."""
        assert self._journal is not None
        while True:
            self._dirty.wait()
            idle = time.monotonic() - self._last_commit
            if idle < IDLE_SECONDS:
                time.sleep(IDLE_SECONDS - idle)
                continue
            with self._commit_lock:
                self._dirty.clear()
                if self._journal.pending_bytes:
                    self._safe_checkpoint()

    def _safe_checkpoint(self) -> None:
        try:
            self._checkpoint()
        except OSError as exc:  # the journal keeps its records; the next checkpoint tries again
            logger.error("spool checkpoint failed: %s", exc)

    def _write_tmp(self, item: Pending) -> None:
        item.tmp = self.tmp / f"{item.final.name}.{threading.get_ident()}.part"
        fd = os.open(item.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for part in (item.head, item.data):
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    def _commit(self, batch: list[Pending]) -> None:
        assert self._journal is not None
        renamed: list[Pending] = []
        start: int | None = None
        journaling = False
        try:
            for item in batch:
                if item.tmp is None:
                    self._write_tmp(item)
            journaling = True  # from here on a failure voids what the journal got (append does it itself)
            start = self._journal.append([JournalRecord(item.meta, item.data, item.head, item.crc) for item in batch])
            for item in batch:
                assert item.tmp is not None
                item.tmp.replace(item.final)
                renamed.append(item)
            self.write_index([item.index for item in batch])
            self._unsynced.extend(item.final for item in batch)
            if START_WRITEBACK and _START_WRITEBACK is not None:
                for item in batch:
                    _START_WRITEBACK(item.final)
            self.batches += 1
            self.committed += len(batch)
        except BaseException as exc:  # every instance of the batch fails alike; none is kept unacknowledged
            logger.error("spool commit of %d instances failed: %s", len(batch), exc)
            for item in batch:
                if item.tmp is not None:
                    item.tmp.unlink(missing_ok=True)
                item.error = exc
            for item in renamed:
                item.final.unlink(missing_ok=True)
            if journaling:
                if start is not None:
                    self._journal.rollback(start)
                self._safe_checkpoint()  # a new generation: nothing stale can follow the voided records
        finally:
            for item in batch:
                item.done = True
                item.wake.set()
