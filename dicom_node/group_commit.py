"""Group commit of spool writes: the instances that arrive together are made durable together.

Each C-STORE handler hands its instance to :class:`GroupCommit`. The handler that finds no commit under
way (the *leader*) commits, itself, every instance waiting at that moment as one batch: no hand-over to
another thread, so a lone association pays no thread wake-up. The others wait, each on its own event; when
the batch is done the leader wakes each of its instances' handlers, and hands the lead to the handler of
the first instance that queued up meanwhile (one wake-up, not a procession through a lock), which commits
those.

A lone *deferred* instance (what the native receiver stores, :class:`Pending` ``deferred``, in a batch
smaller than :data:`INLINE_FROM`: one association sending) is answered as soon as it is durable:

1. each instance's temporary file is created and its size reserved (``posix_fallocate``), so that a full
   disk is refused before Success;
2. the batch is appended to the active journal (:mod:`dicom_node.spool_journal`) with one ``fdatasync``:
   from here on it survives a crash or a power cut, and its handlers answer Success;
3. the *materialiser* thread then writes each file's bytes into its reserved temporary file, renames it to
   its final name and indexes the batch (several batches in one SQLite transaction). Until then the
   instances are held (:meth:`GroupCommit.holds`: a duplicate is recognised) but not indexed, so nothing
   reads them.

So the sender waits for one flush per batch, not for the copy into the page cache, the rename and the
index. At most :data:`MAX_DEFERRED_BYTES` wait for the materialiser (then the leader waits: back-pressure);
:meth:`GroupCommit.settle` waits until everything answered is indexed (the native receiver calls it before
it confirms a release). Other batches (``deferred`` False, or several instances at once) are written, renamed
and indexed before their handlers are woken; a failure there keeps nothing of the batch and raises it in each handler.

Two journals alternate: once the active one holds :data:`~dicom_node.spool_journal.CHECKPOINT_BYTES`, new
batches go to the other, and the materialiser, after the last batch of the full one, makes the spool's file
system durable (one ``syncfs``; else an ``fsync`` of each file and folder written since) and starts that
journal's new generation, which voids its records. When stores pause (a thread watches for that) both are
checkpointed. A batch the materialiser fails to write or index (the index locked, say) is logged and kept:
its records stay in the journal, it is retried at each checkpoint, no checkpoint voids it while it fails,
and meanwhile new batches are committed inline (so their senders see the failure, not a Success).

After a crash: both journals' records are replayed when the journal is first taken (each file rewritten
where it is missing or differs, indexed where the index lacks it), then checkpointed;
:meth:`dicom_node.spool.Spool.reconcile` removes temporary files (they never got Success, or their
instance is journaled).
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from dicom_node.spool_files import HAS_SYNCFS, fsync_path, reserve, start_writeback, syncfs, write_all
from dicom_node.spool_journal import CHECKPOINT_BYTES, Journal, JournalRecord

logger = logging.getLogger(__name__)

__all__ = ["GroupCommit", "Pending"]

#: most instances committed in one batch
MAX_BATCH = 64
#: a group of at least this many instances is written and indexed before its Success even when deferred: its
#: handlers (concurrent associations) waited for one another's flush already, and on a busy machine handing
#: the group to the materialiser cost more than it saved (8 associations 567-634 instances/s inline against
#: 485-514 deferred, side by side); a lone instance (one association) is deferred
INLINE_FROM = 2
#: most bytes answered but not yet written, renamed and indexed by the materialiser
MAX_DEFERRED_BYTES = 256 * 10**6
#: threads the materialiser writes files with
WRITERS = 2
#: most instances the materialiser indexes in one transaction
MAX_INDEX_BATCH = 256
#: an idle committer checkpoints after this many seconds without a new instance (a store arriving during
#: the checkpoint waits for it: a short pause of a sender must not trigger one)
IDLE_SECONDS = 1.0


_SHARED: dict[Path, GroupCommit] = {}
_SHARED_LOCK = threading.Lock()


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


@dataclass(eq=False)
class _Deferred:
    """A journaled batch the materialiser has still to write and index; ``journal``: which one holds it."""

    items: list[Pending]
    journal: int

    @property
    def size(self) -> int:
        return sum(item.size for item in self.items)


@dataclass(frozen=True)
class _Seal:
    """In the materialiser's queue after a full journal's last batch: checkpoint that journal."""

    journal: int


_NAMES = itertools.count()  # temporary file names: unique in this process


class GroupCommit:
    """The committer (leader protocol, materialiser and checkpoint threads) and the journals it owns.

    Parameters
    ----------
    root
        the spool folder (on the spool's file system; holds ``journal.wal`` and ``journal-1.wal``).
    tmp
        the folder for temporary files (same file system).
    write_index
        indexes a batch's ``Pending.index`` values in one transaction (several batches' at once for
        deferred ones); called in the committing or the materialiser's thread. Must be idempotent (an
        instance indexed twice stays one row): a failed deferred batch is indexed again when retried.
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
        self._lock = threading.Lock()  # guards opening and the threads' start
        self._threads: list[threading.Thread] = []
        self._commit_lock = threading.Lock()  # held while committing a batch, rotating or checkpointing
        self._dirty = threading.Event()  # set after a commit, cleared by the idle checkpoint
        self._last_commit = 0.0
        self._journals: list[Journal] = []
        self._active = 0  # the journal appended to
        # the materialiser's state, guarded by _state
        self._state = threading.Condition()
        self._queue: deque[_Deferred | _Seal] = deque()
        self._busy = False  # the materialiser works on what it took from the queue
        self._deferred_batches = 0  # queued or being materialised
        self._deferred_bytes = 0
        self._unindexed: dict[str, Pending] = {}  # answered, not yet indexed (queued or failed)
        self._failed: list[_Deferred] = []  # journaled batches whose writing or indexing failed
        self._sealed: int | None = None  # a full journal waiting for its checkpoint
        self._unsynced: list[Path] = []  # files renamed since the last checkpoint (without syncfs)
        # the materialiser's file writes: side by side (copying into fresh page-cache memory is the cost)
        self._writers = ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="spool-file")
        self.batches = 0
        self.committed = 0
        self.materialised = 0
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
        :class:`~dicom_node.spool.Spool` objects on one folder share its journals and threads."""
        key = root.resolve()
        with _SHARED_LOCK:
            committer = _SHARED.get(key)
            if committer is None or committer.stale():
                committer = _SHARED[key] = cls(root, tmp, write_index, replay)
            return committer

    def stale(self) -> bool:
        """Whether the spool folder was removed and made anew under this committer's open journal."""
        if not self._journals:
            return False
        journal = self._journals[0]
        try:
            return journal.path.stat().st_ino != os.fstat(journal._fd).st_ino
        except FileNotFoundError:
            return True

    # -- the journals -------------------------------------------------------------------------------------
    def open(self) -> None:
        """Take the journals (exclusively: one writer per spool), replay what a crash left, checkpoint."""
        with self._lock:
            if self._journals:
                return
            journals = [Journal(self.root / "journal.wal"), Journal(self.root / "journal-1.wal")]
            try:
                fcntl.flock(journals[0]._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                for journal in journals:
                    journal.close()
                raise RuntimeError(
                    f"the spool {self.root} is written by another process; one receiver per spool folder"
                ) from None
            replayed = 0
            for journal in journals:
                for record in journal.records():
                    self.replay(record)
                    replayed += 1
            self._journals = journals
            self._checkpoint()
            if replayed:
                logger.info("spool journal: %d instances replayed after a restart", replayed)
            for target, name in ((self._checkpoints, "spool-checkpoint"), (self._materialise_loop, "spool-writer")):
                thread = threading.Thread(target=target, name=name, daemon=True)
                thread.start()
                self._threads.append(thread)

    def prepare(self) -> None:
        """Open the journals and zero-fill them to their working size (at start-up; see
        :meth:`~dicom_node.spool_journal.Journal.preallocate`)."""
        self.open()
        with self._commit_lock:
            for journal in self._journals:
                journal.preallocate()

    def _sync(self) -> None:
        """Make every file renamed so far durable, with its folder."""
        with self._state:
            paths, self._unsynced = self._unsynced, []
        try:
            if HAS_SYNCFS:
                syncfs(self._journals[0]._fd)
            else:
                for path in paths:
                    fsync_path(path)
                for folder in {p.parent for p in paths}:
                    fsync_path(folder)
        except BaseException:
            with self._state:
                self._unsynced[:0] = paths
            raise

    def _checkpoint(self) -> None:
        """Once every answered instance is written and indexed: make them durable, void both journals.

        Called holding ``_commit_lock`` (or before any commit). Waits for the materialiser, retries what
        it failed; while something still fails, nothing is voided (the journals keep those records)."""
        self._drain()
        with self._state:
            failed = list(self._failed)
        for batch in failed:
            self._retry(batch)
        with self._state:
            if self._failed:
                held = sum(len(b.items) for b in self._failed)
                logger.error("spool checkpoint postponed: %d journaled instances are not yet indexed", held)
                return
        self._sync()
        for journal in self._journals:
            journal.checkpoint()
        with self._state:
            self._sealed = None
            self._state.notify_all()
        self.checkpoints += 1

    def _safe_checkpoint(self) -> None:
        try:
            self._checkpoint()
        except Exception as exc:  # the journals keep their records; the next checkpoint tries again
            logger.error("spool checkpoint failed: %s", exc)

    def _rotate(self) -> None:
        """When the active journal is full: seal it (the materialiser checkpoints it after its last batch)
        and go on in the other, once that one's own checkpoint is done. Called holding ``_commit_lock``."""
        if self._journals[self._active].pending_bytes <= CHECKPOINT_BYTES:
            return
        other = 1 - self._active
        with self._state:
            self._state.wait_for(lambda: self._sealed != other)
        if self._journals[other].pending_bytes:  # its checkpoint failed: try both now, here
            self._safe_checkpoint()
            return
        with self._state:
            self._sealed = self._active
            self._queue.append(_Seal(self._active))
            self._state.notify_all()
        self._active = other

    def _drain(self) -> None:
        """Wait until the materialiser has done everything queued (a sealed journal's checkpoint too)."""
        with self._state:
            self._state.wait_for(lambda: not self._queue and not self._busy)

    def settle(self, timeout: float | None = None) -> bool:
        """Wait until every instance answered so far is written and indexed (or failed to be: then False)."""
        with self._state:
            done = self._state.wait_for(lambda: self._deferred_batches == 0, timeout)
            return done and not self._failed

    def holds(self, key: str) -> bool:
        """Whether an instance with this SOP Instance UID was answered and is not yet indexed."""
        with self._state:
            return key in self._unindexed

    # -- committing ---------------------------------------------------------------------------------------
    def commit(self, item: Pending) -> None:
        """Store ``item``, waiting until it is durable (and, unless deferred, indexed); raises what the
        commit raised.

        The calling thread commits itself when no commit is under way (no hand-over to another thread):
        it takes everything waiting at that moment as one batch. While a commit is under way, the
        instances arriving queue up; the leader then wakes the handler of the first of them, which
        commits them all.
        """
        self.open()
        if item.deferred:
            try:
                self._reserve(item)
            except BaseException:
                self._forget(item)
                raise
        with self._mutex:
            self._waiting.append(item)
            lead = not self._leading
            self._leading = True
        if not lead:
            item.wake.wait()  # committed by a leader, or asked to lead
        if not item.done:
            self._lead(item)
        self._dirty.set()
        if item.error is not None:
            raise item.error

    def _lead(self, item: Pending) -> None:
        """Commit batches from the front of the queue until ``item``'s is done, then pass the lead on."""
        try:
            while not item.done:
                with self._commit_lock:  # the checkpoint thread takes it too
                    with self._mutex:
                        batch = [self._waiting.popleft() for _ in range(min(MAX_BATCH, len(self._waiting)))]
                    self._rotate()
                    with self._state:
                        inline = bool(self._failed) or len(batch) >= INLINE_FROM or not all(p.deferred for p in batch)
                    try:
                        if inline:
                            self._commit_inline(batch)
                        else:
                            self._commit_deferred(batch)
                    finally:
                        for pending in batch:
                            pending.done = True
                            pending.wake.set()
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
        while True:
            self._dirty.wait()
            idle = time.monotonic() - self._last_commit
            if idle < IDLE_SECONDS:
                time.sleep(IDLE_SECONDS - idle)
                continue
            with self._commit_lock:
                self._dirty.clear()
                if self._failed or any(journal.pending_bytes for journal in self._journals):
                    self._safe_checkpoint()

    def _reserve(self, item: Pending) -> None:
        """Create the instance's temporary file with its size allocated (a full disk fails here); in the
        handler's own thread for a deferred instance (concurrent associations reserve side by side)."""
        if item.fd is not None:
            return
        item.tmp = self.tmp / f"{item.final.name}.{next(_NAMES)}.part"
        item.fd = reserve(item.tmp, item.size)

    @staticmethod
    def _forget(item: Pending) -> None:
        """Close and remove the temporary file of an instance that gets no Success."""
        if item.fd is not None:
            os.close(item.fd)
            item.fd = None
        if item.tmp is not None:
            item.tmp.unlink(missing_ok=True)

    def _fail(self, batch: Sequence[Pending], exc: BaseException) -> None:
        """Every instance of ``batch`` fails alike (raised in each handler); none is kept unacknowledged."""
        logger.error("spool commit of %d instances failed: %s", len(batch), exc)
        for item in batch:
            self._forget(item)
            item.error = exc

    @staticmethod
    def _rename(item: Pending) -> None:
        """Give a written instance its final name."""
        assert item.tmp is not None
        item.tmp.replace(item.final)
        item.placed = True

    def _records(self, batch: Sequence[Pending]) -> list[JournalRecord]:
        return [JournalRecord(item.meta, item.data, item.head, item.crc) for item in batch]

    def _commit_inline(self, batch: list[Pending]) -> None:
        """Journal, write, rename and index ``batch`` before its handlers are woken."""
        journal = self._journals[self._active]
        renamed: list[Pending] = []
        start: int | None = None
        journaling = False
        try:
            for item in batch:
                self._reserve(item)
                self._place_one(item, rename=False)
            journaling = True  # from here on a failure voids what the journal got (append does it itself)
            start = journal.append(self._records(batch))
            for item in batch:
                self._rename(item)
                renamed.append(item)
            self.write_index([item.index for item in batch])
            with self._state:
                self._unsynced.extend(item.final for item in batch)
            self.batches += 1
            self.committed += len(batch)
        except BaseException as exc:
            self._fail(batch, exc)
            for item in renamed:
                item.final.unlink(missing_ok=True)
            if journaling:
                if start is not None:
                    journal.rollback(start)
                self._safe_checkpoint()  # a new generation: nothing stale can follow the voided records

    def _commit_deferred(self, batch: list[Pending]) -> None:
        """Reserve and journal ``batch``; its handlers answer as soon as this returns, the materialiser
        writes and indexes it."""
        nbytes = sum(item.size for item in batch)
        with self._state:  # back-pressure: the materialiser is that far behind
            self._state.wait_for(
                lambda: not self._deferred_bytes or self._deferred_bytes + nbytes <= MAX_DEFERRED_BYTES
            )
        index = self._active
        try:
            self._journals[index].append(self._records(batch))  # rolled back by itself when it fails
        except BaseException as exc:
            self._fail(batch, exc)
            self._safe_checkpoint()  # a new generation: nothing stale can follow the voided records
            return
        with self._state:
            for item in batch:
                if item.key:
                    self._unindexed[item.key] = item
            self._queue.append(_Deferred(batch, index))
            self._deferred_batches += 1
            self._deferred_bytes += nbytes
            self._state.notify_all()
        self.batches += 1
        self.committed += len(batch)

    # -- the materialiser ---------------------------------------------------------------------------------
    def _materialise_loop(self) -> None:
        """The materialiser thread: write and index deferred batches, checkpoint sealed journals."""
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

    def _place_one(self, item: Pending, *, rename: bool = True) -> None:
        """Write the instance's bytes into its temporary file and (``rename``) give it its final name."""
        if item.placed:
            return
        assert item.tmp is not None
        if item.fd is None:  # a retry: the file is written anew
            item.fd = reserve(item.tmp, item.size)
        try:
            write_all(item.fd, [item.head, item.data] if item.head else [item.data])
            start_writeback(item.fd)
        finally:
            os.close(item.fd)
            item.fd = None
        if rename:
            self._rename(item)

    def _write_and_index(self, items: list[Pending]) -> None:
        for _ in self._writers.map(self._place_one, items):  # raises the first failure
            pass
        with self._state:
            self._unsynced.extend(item.final for item in items)
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
                if item.fd is not None:
                    os.close(item.fd)
                    item.fd = None
            with self._state:
                self._failed.extend(batches)
        with self._state:
            self._deferred_batches -= len(batches)
            self._deferred_bytes -= nbytes
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
                self._sync()
                self._journals[index].checkpoint()
                self.checkpoints += 1
        except Exception as exc:  # the journal keeps its records; the next checkpoint tries again
            logger.error("spool checkpoint failed: %s", exc)
        finally:
            with self._state:
                self._sealed = None
                self._state.notify_all()
