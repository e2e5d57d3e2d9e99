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
3. the spool writer (:mod:`dicom_node.spool_writer`) then writes each file's bytes into its reserved
   temporary file, renames it and indexes the batch. Until then the instances are held: a duplicate is
   recognised, nothing reads them.

So the sender waits for one flush per batch, not for the copy into the page cache, the rename and the
index. At most :data:`~dicom_node.spool_writer.MAX_DEFERRED_BYTES` wait for the writer (then the leader
waits: back-pressure); :meth:`GroupCommit.settle` waits until everything answered is indexed (the native
receiver calls it before it confirms a release). Other batches (``deferred`` False, or several instances at
once) are written, renamed and indexed before their handlers are woken; a failure there keeps nothing of
the batch and raises it in each handler.

Two journals alternate: once the active one holds :data:`~dicom_node.spool_journal.CHECKPOINT_BYTES`, new
batches go to the other, and the writer checkpoints the full one after its last batch. When stores pause
(a thread watches for that) both are checkpointed. While a batch the writer failed to write or index is
kept for a retry, new batches are committed inline (so their senders see the failure, not a Success).

After a crash: both journals' records are replayed when the journal is first taken (each file rewritten
where it is missing or differs, indexed where the index lacks it), then checkpointed;
:meth:`dicom_node.spool.Spool.reconcile` removes temporary files (they never got Success, or their
instance is journaled).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from dicom_node.spool_journal import CHECKPOINT_BYTES, Journal, JournalRecord
from dicom_node.spool_writer import Pending, SpoolWriter

logger = logging.getLogger(__name__)

__all__ = ["GroupCommit", "Pending"]

#: most instances committed in one batch
MAX_BATCH = 64
#: a group of at least this many instances is written and indexed before its Success even when deferred: its
#: handlers (concurrent associations) waited for one another's flush already, and on a busy machine handing
#: the group to the writer cost more than it saved (8 associations 567-634 instances/s inline against
#: 485-514 deferred, side by side); a lone instance (one association) is deferred
INLINE_FROM = 2
#: an idle committer checkpoints after this many seconds without a new instance (a store arriving during
#: the checkpoint waits for it: a short pause of a sender must not trigger one)
IDLE_SECONDS = 1.0


_SHARED: dict[Path, GroupCommit] = {}
_SHARED_LOCK = threading.Lock()


class GroupCommit:
    """The committer (leader protocol and checkpoint thread), the journals it owns and their writer.

    Parameters
    ----------
    root
        the spool folder (on the spool's file system; holds ``journal.wal`` and ``journal-1.wal``).
    tmp
        the folder for temporary files (same file system).
    write_index
        indexes a batch's ``Pending.index`` values in one transaction (several batches' at once for
        deferred ones); called in the committing or the writer's thread. Must be idempotent (an instance
        indexed twice stays one row): a failed deferred batch is indexed again when retried.
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
        self.writer = SpoolWriter(lambda items: self.write_index(items))
        self.batches = 0
        self.committed = 0

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
            self.writer.journals = journals
            self._checkpoint()
            if replayed:
                logger.info("spool journal: %d instances replayed after a restart", replayed)
            self._threads.append(self.writer.start())
            thread = threading.Thread(target=self._checkpoints, name="spool-checkpoint", daemon=True)
            thread.start()
            self._threads.append(thread)

    def prepare(self) -> None:
        """Open the journals and zero-fill them to their working size (at start-up; see
        :meth:`~dicom_node.spool_journal.Journal.preallocate`)."""
        self.open()
        with self._commit_lock:
            for journal in self._journals:
                journal.preallocate()

    @property
    def checkpoints(self) -> int:
        return self.writer.checkpoints

    def _checkpoint(self) -> None:
        """Once every answered instance is written and indexed: make them durable, void both journals.

        Called holding ``_commit_lock`` (or before any commit). Waits for the writer, retries what it
        failed; while something still fails, nothing is voided (the journals keep those records)."""
        self.writer.drain()
        if not self.writer.retry_failed():
            return
        self.writer.sync()
        for journal in self._journals:
            journal.checkpoint()
        self.writer.checkpointed()

    def _safe_checkpoint(self) -> None:
        try:
            self._checkpoint()
        except Exception as exc:  # the journals keep their records; the next checkpoint tries again
            logger.error("spool checkpoint failed: %s", exc)

    def _rotate(self) -> None:
        """When the active journal is full: seal it (the writer checkpoints it after its last batch) and go
        on in the other, once that one's own checkpoint is done. Called holding ``_commit_lock``."""
        if self._journals[self._active].pending_bytes <= CHECKPOINT_BYTES:
            return
        other = 1 - self._active
        if not self.writer.seal(self._active, other):  # the other's checkpoint failed: try both now, here
            self._safe_checkpoint()
            return
        self._active = other

    def settle(self, timeout: float | None = None) -> bool:
        """Wait until every instance answered so far is written and indexed (or failed to be: then False)."""
        return self.writer.settle(timeout)

    def holds(self, key: str) -> bool:
        """Whether an instance with this SOP Instance UID was answered and is not yet indexed."""
        return self.writer.holds(key)

    def held_studies(self) -> set[str]:
        """The studies of the instances answered and not yet indexed."""
        return self.writer.held_studies()

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
        if item.deferred:  # reserved in the handler's own thread: concurrent associations side by side
            try:
                item.reserve(self.tmp)
            except BaseException:
                item.forget()
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
                    inline = (
                        len(batch) >= INLINE_FROM or not all(p.deferred for p in batch) or self.writer.failing()
                    )
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
                if self.writer.failing() or any(journal.pending_bytes for journal in self._journals):
                    self._safe_checkpoint()

    def _fail(self, batch: Sequence[Pending], exc: BaseException) -> None:
        """Every instance of ``batch`` fails alike (raised in each handler); none is kept unacknowledged."""
        logger.error("spool commit of %d instances failed: %s", len(batch), exc)
        for item in batch:
            item.forget()
            item.error = exc

    @staticmethod
    def _records(batch: Sequence[Pending]) -> list[JournalRecord]:
        return [JournalRecord(item.meta, item.data, item.head, item.crc) for item in batch]

    def _commit_inline(self, batch: list[Pending]) -> None:
        """Journal, write, rename and index ``batch`` before its handlers are woken."""
        journal = self._journals[self._active]
        renamed: list[Pending] = []
        start: int | None = None
        journaling = False
        try:
            for item in batch:
                item.reserve(self.tmp)
                item.write(rename=False)
            journaling = True  # from here on a failure voids what the journal got (append does it itself)
            start = journal.append(self._records(batch))
            for item in batch:
                item.rename()
                renamed.append(item)
            self.write_index([item.index for item in batch])
            self.writer.written([item.final for item in batch])
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
        """Journal ``batch`` (reserved already); its handlers answer as soon as this returns, the writer
        writes and indexes it."""
        self.writer.admit(sum(item.size for item in batch))  # back-pressure: the writer is that far behind
        index = self._active
        try:
            self._journals[index].append(self._records(batch))  # rolled back by itself when it fails
        except BaseException as exc:
            self._fail(batch, exc)
            self._safe_checkpoint()  # a new generation: nothing stale can follow the voided records
            return
        self.writer.enqueue(batch, index)
        self.batches += 1
        self.committed += len(batch)
