"""The durable spool: received instances on disk, their index, study state and deliveries.

Files are the truth. A store is journaled (one flush per group of instances), renamed into
``incoming/<study>/<series>/<sop>.dcm`` and indexed before Success is returned (:mod:`dicom_node.group_commit`);
on start-up :meth:`Spool.reconcile` replays the journal, indexes any file a crash left unindexed, and puts
studies that were being processed back in the queue. The index (:mod:`dicom_node.spool_index`) is one
SQLite database in WAL mode (``spool.db``), written by the committer and read by the assembler and the job
runner; deliveries are in :mod:`dicom_node.spool_deliveries`.

Study states: ``receiving`` (instances arriving) -> ``ready`` (assembly decided it is complete) ->
``processing`` -> ``done`` or ``failed``. An instance arriving for a ``done``/``failed`` study starts a new
run (``run`` + 1) and sends it back to ``receiving``; one arriving while the study is ``processing`` marks it
for a new run that starts when the current one finishes (:meth:`Spool.finish`). Retention
(:mod:`dicom_node.retention`) moves a finished, delivered study to ``purging`` while it removes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import cast

from dicom_node.group_commit import GroupCommit, Pending
from dicom_node.spool_deliveries import SpoolDeliveries
from dicom_node.spool_files import fsync_path, write_all
from dicom_node.spool_incoming import IncomingInstance
from dicom_node.spool_index import SCHEMA, Delivery, InstanceRecord, SpoolIndex, StudyState
from dicom_node.spool_journal import JournalRecord

logger = logging.getLogger(__name__)

__all__ = ["SCHEMA", "Delivery", "InstanceRecord", "Spool", "SpoolIndex", "StudyState"]


class Spool(SpoolDeliveries):
    """The spool folder and its index.

    Parameters
    ----------
    root
        folder holding ``incoming/``, ``tmp/``, ``quarantine/``, ``outbox/`` and ``spool.db``.
    """

    def __init__(self, root: Path):
        self.root = root
        self.incoming = root / "incoming"
        self.tmp = root / "tmp"
        self.quarantine_dir = root / "quarantine"
        self.outbox = root / "outbox"
        for d in (self.incoming, self.tmp, self.quarantine_dir, self.outbox):
            d.mkdir(parents=True, exist_ok=True)
        super().__init__(root / "spool.db")
        self._committer = GroupCommit.shared(root, self.tmp, self._record_batch, self._replay)
        self._conn().executescript(SCHEMA)
        columns = {r[1] for r in self._conn().execute("PRAGMA table_info(studies)")}
        if "not_before" not in columns:  # a spool made before studies could be deferred
            self._conn().execute("ALTER TABLE studies ADD COLUMN not_before REAL NOT NULL DEFAULT 0")

    # -- writing instances --------------------------------------------------------------------------------
    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return self.incoming / study_uid / series_uid / f"{sop_uid}.dcm"

    def write_atomically(self, data: bytes, final: Path) -> None:
        """Write ``data`` to ``final`` durably: temp file, fsync, rename, fsync of the folder."""
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp / f"{final.name}.{threading.get_ident()}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            write_all(fd, [data])
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)  # a partial write (disk full, I/O error) never reaches its final name
            raise
        os.close(fd)
        tmp.replace(final)
        fsync_path(final.parent)

    def store(
        self,
        data: bytes | IncomingInstance,
        *,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        sop_class_uid: str,
        calling_ae: str,
        deferred: bool = False,
    ) -> bool:
        """Store one encoded instance durably; returns False when it was already there.

        ``data``: the file's bytes, or the :class:`~dicom_node.spool_incoming.IncomingInstance` the receiver
        gathered them in. ``deferred``: return once the instance is journaled (durable), its file written and
        indexed afterwards (:meth:`settle` waits for that); else once it is indexed too.
        A duplicate SOP Instance UID is idempotent: the first copy is kept and nothing changes.
        """
        if self.is_known(sop_uid):
            return False
        path = self.instance_path(study_uid, series_uid, sop_uid)
        path.parent.mkdir(parents=True, exist_ok=True)
        # durable (journaled) together with the instances that arrive at the same time (group commit); on
        # failure nothing of it is kept, so nothing unacknowledged stays
        record = InstanceRecord(sop_uid, study_uid, series_uid, sop_class_uid, path)
        meta = {
            "path": str(path.relative_to(self.incoming)),
            "sop_uid": sop_uid,
            "study_uid": study_uid,
            "series_uid": series_uid,
            "sop_class_uid": sop_class_uid,
            "calling_ae": calling_ae,
        }
        index = (record, calling_ae)
        if isinstance(data, IncomingInstance):
            pending = Pending(data.dataset, path, meta, index, data.head, data.crc, deferred, sop_uid)
        else:
            pending = Pending(data, path, meta, index, deferred=deferred, key=sop_uid)
        self._committer.commit(pending)
        return True

    def is_known(self, sop_uid: str) -> bool:
        """Whether the spool holds this instance (indexed, or answered and about to be)."""
        return self._committer.holds(sop_uid) or super().is_known(sop_uid)

    def has_study(self, study_uid: str) -> bool:
        """Whether the spool holds (any run of) the study, indexed or answered and about to be."""
        return study_uid in self._committer.held_studies() or super().has_study(study_uid)

    def pending_count(self, held: Collection[str] = ()) -> int:
        """Studies not yet processed, counting those whose instances are answered and not yet indexed."""
        return super().pending_count(set(held) | self._committer.held_studies())

    def prepare(self) -> None:
        """At start-up: the journals zero-filled to their working size, so that stores overwrite them in place."""
        self._committer.prepare()

    def settle(self, timeout: float | None = None) -> bool:
        """Wait until every instance answered so far is written and indexed; False when one failed to be
        (it stays journaled and is retried) or ``timeout`` passed."""
        return self._committer.settle(timeout)

    def _replay(self, journaled: JournalRecord) -> None:
        """After a crash: write a journaled instance's file back where it is missing or differs, and
        index it where the index lacks it (called by the committer before its first batch)."""
        meta = journaled.meta
        path = self.incoming / meta["path"]
        if self.incoming.resolve() not in path.resolve().parents:
            logger.error("spool journal: record for %s points outside the spool; ignored", meta.get("sop_uid"))
            return
        if not (path.is_file() and path.read_bytes() == journaled.data):
            path.parent.mkdir(parents=True, exist_ok=True)
            self.write_atomically(journaled.data, path)
        if not self.is_known(meta["sop_uid"]):
            rec = InstanceRecord(meta["sop_uid"], meta["study_uid"], meta["series_uid"], meta["sop_class_uid"], path)
            self.record(rec, meta["calling_ae"])

    def record(self, rec: InstanceRecord, calling_ae: str, now: float | None = None) -> None:
        """Index an instance already on disk and move its study to ``receiving`` (a new run if it was done)."""
        now = time.time() if now is None else now
        with self._tx() as db:
            self._record_in(db, rec, calling_ae, now)

    def _record_batch(self, items: Sequence[object]) -> None:
        """Index a group commit's instances (``(InstanceRecord, calling AE)`` each) in one transaction."""
        now = time.time()
        with self._tx() as db:
            for item in items:
                rec, calling_ae = cast(tuple[InstanceRecord, str], item)
                self._record_in(db, rec, calling_ae, now)

    @staticmethod
    def _record_in(db: sqlite3.Connection, rec: InstanceRecord, calling_ae: str, now: float) -> None:
        inserted = db.execute(
            "INSERT OR IGNORE INTO instances VALUES (?,?,?,?,?,?,?)",
            (rec.sop_uid, rec.study_uid, rec.series_uid, rec.sop_class_uid, str(rec.path), calling_ae, now),
        ).rowcount
        if not inserted:
            return
        row = db.execute("SELECT state FROM studies WHERE study_uid=?", (rec.study_uid,)).fetchone()
        if row is None:
            db.execute(
                "INSERT INTO studies (study_uid, state, run, first_received, last_received) "
                "VALUES (?, 'receiving', 1, ?, ?)",
                (rec.study_uid, now, now),
            )
        elif row[0] in ("done", "failed", "purging"):  # purging: retention takes only the older files
            db.execute(
                "UPDATE studies SET state='receiving', run=run+1, first_received=?, last_received=?, reason='' "
                "WHERE study_uid=?",
                (now, now, rec.study_uid),
            )
        elif row[0] == "processing":  # the running job has its file list already: run again after it
            db.execute("UPDATE studies SET last_received=?, rerun=1 WHERE study_uid=?", (now, rec.study_uid))
        else:
            db.execute("UPDATE studies SET last_received=? WHERE study_uid=?", (now, rec.study_uid))

    def quarantine(self, data: bytes, reason: str, calling_ae: str) -> Path:
        """Keep bad input aside for inspection: the bytes and a sidecar text file with the reason."""
        stamp = f"{time.time():.6f}-{threading.get_ident()}"
        path = self.quarantine_dir / f"{stamp}.dcm"
        self.write_atomically(data, path)
        path.with_suffix(".txt").write_text(f"calling AE: {calling_ae}\nreason: {reason}\n", encoding="utf-8")
        return path

    # -- study state --------------------------------------------------------------------------------------
    def set_state(self, study_uid: str, state: str, *, expect: str | None = None, reason: str = "") -> bool:
        """Move a study to ``state`` (only from ``expect`` when given); returns whether it moved."""
        with self._tx() as db:
            if expect is None:
                n = db.execute(
                    "UPDATE studies SET state=?, reason=? WHERE study_uid=?", (state, reason, study_uid)
                ).rowcount
            else:
                n = db.execute(
                    "UPDATE studies SET state=?, reason=? WHERE study_uid=? AND state=?",
                    (state, reason, study_uid, expect),
                ).rowcount
        return bool(n)

    def finish(self, study_uid: str, state: str, reason: str = "") -> StudyState | None:
        """End the ``processing`` run of a study as ``done`` or ``failed``; if instances arrived meanwhile,
        start the next run (``receiving``, ``run`` + 1) instead. Returns the new state, None if not processing.
        """
        with self._tx() as db:
            row = db.execute(
                "SELECT rerun FROM studies WHERE study_uid=? AND state='processing'", (study_uid,)
            ).fetchone()
            if row is None:
                return None
            if row[0]:
                db.execute(
                    "UPDATE studies SET state='receiving', run=run+1, rerun=0, reason=? WHERE study_uid=?",
                    (f"instances arrived during run; previous run {state}: {reason}"[:500], study_uid),
                )
            else:
                db.execute("UPDATE studies SET state=?, reason=? WHERE study_uid=?", (state, reason, study_uid))
        return self.study(study_uid)

    def defer(self, study_uid: str, reason: str, delay_seconds: float, now: float | None = None) -> bool:
        """Put a ``processing`` study back as ``ready``, not to be claimed for ``delay_seconds`` (a resource
        it needs, such as the registry, is unavailable); the same run is resumed. Returns whether it moved.
        """
        now = time.time() if now is None else now
        with self._tx() as db:
            n = db.execute(
                "UPDATE studies SET state='ready', not_before=?, reason=?, rerun=0 "
                "WHERE study_uid=? AND state='processing'",
                (now + delay_seconds, reason[:500], study_uid),
            ).rowcount
        return bool(n)

    def claim_ready(self, now: float | None = None) -> StudyState | None:
        """Take the oldest ``ready`` study that is not deferred for processing (atomically), or None."""
        now = time.time() if now is None else now
        with self._tx() as db:
            row = db.execute(
                "SELECT study_uid FROM studies WHERE state='ready' AND not_before<=? ORDER BY last_received LIMIT 1",
                (now,),
            ).fetchone()
            if row is None:
                return None
            db.execute("UPDATE studies SET state='processing' WHERE study_uid=?", (row[0],))
        return self.study(row[0])

    def reconcile(self) -> tuple[int, int]:
        """After a restart: index files a crash left unindexed; re-queue interrupted studies.

        Returns
        -------
        (files indexed, studies re-queued)
        """
        import pydicom
        from pydicom.errors import InvalidDicomError

        self._committer.open()  # replays the journal: what got Success is back in place and indexed
        known = {r[0] for r in self._conn().execute("SELECT path FROM instances")}
        indexed = 0
        for path in self.incoming.rglob("*.dcm"):
            if str(path) in known:
                continue
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                rec = InstanceRecord(
                    str(ds.SOPInstanceUID),
                    str(ds.StudyInstanceUID),
                    str(ds.SeriesInstanceUID),
                    str(ds.SOPClassUID),
                    path,
                )
            except (InvalidDicomError, AttributeError, OSError, ValueError) as exc:  # kept aside, never deleted
                logger.warning("spool file %s unreadable (%s); moved to quarantine", path, exc)
                path.replace(self.quarantine_dir / path.name)
                continue
            self.record(rec, calling_ae="(recovered)", now=path.stat().st_mtime)
            indexed += 1
        for p in self.tmp.iterdir():
            p.unlink()  # partial writes never got a Success status
        for (study_uid,) in self._conn().execute("SELECT study_uid FROM studies WHERE state='purging'").fetchall():
            doomed = [
                (r[0], Path(r[1]))
                for r in self._conn().execute("SELECT sop_uid, path FROM instances WHERE study_uid=?", (study_uid,))
            ]
            self._finish_purge(study_uid, doomed)
            logger.info("spool reconcile: removal of study %s finished", study_uid)
        with self._tx() as db:
            requeued = db.execute("UPDATE studies SET state='ready' WHERE state='processing'").rowcount
        if indexed or requeued:
            logger.info("spool reconcile: %d files indexed, %d studies re-queued", indexed, requeued)
        return indexed, requeued

    # -- retention ----------------------------------------------------------------------------------------
    def removable_studies(self) -> list[StudyState]:
        """Studies retention may remove, oldest (last instance) first: ``done`` or ``failed`` with every
        delivery ``sent`` (none ``pending`` or ``dead``)."""
        rows = self._conn().execute(
            "SELECT * FROM studies s WHERE s.state IN ('done', 'failed') AND NOT EXISTS "
            "(SELECT 1 FROM deliveries d WHERE d.study_uid = s.study_uid AND d.state != 'sent') "
            "ORDER BY s.last_received"
        )
        return [StudyState(*r) for r in rows]

    def purge(self, study_uid: str) -> int | None:
        """Remove a removable study: its instance files, its outbox, then its rows; returns the bytes freed,
        or None when it is not removable (any more).

        Crash safe: the study is first marked ``purging`` in the index, so a restart finishes the removal
        (:meth:`reconcile`) rather than indexing the files left as a new study. An instance arriving during
        the removal starts a new run of the study (as for a ``done`` one) and is kept.
        """
        with self._tx() as db:
            n = db.execute(
                "UPDATE studies SET state='purging' WHERE study_uid=? AND state IN ('done', 'failed') AND NOT EXISTS "
                "(SELECT 1 FROM deliveries d WHERE d.study_uid=? AND d.state != 'sent')",
                (study_uid, study_uid),
            ).rowcount
            if not n:
                return None
            doomed = [
                (r[0], Path(r[1]))
                for r in db.execute("SELECT sop_uid, path FROM instances WHERE study_uid=?", (study_uid,))
            ]
        return self._finish_purge(study_uid, doomed)

    def _finish_purge(self, study_uid: str, doomed: list[tuple[str, Path]]) -> int:
        freed = 0
        for _, path in doomed:
            with contextlib.suppress(FileNotFoundError):  # removed by an earlier, interrupted purge
                freed += path.stat().st_size
                path.unlink()
        outbox = self.outbox / study_uid
        freed += sum(p.stat().st_size for p in outbox.rglob("*") if p.is_file())
        shutil.rmtree(outbox, ignore_errors=True)
        with self._tx() as db:
            db.executemany("DELETE FROM instances WHERE sop_uid=?", [(uid,) for uid, _ in doomed])
            db.execute("DELETE FROM deliveries WHERE study_uid=? AND state='sent'", (study_uid,))
            db.execute("DELETE FROM studies WHERE study_uid=? AND state='purging'", (study_uid,))
        study_dir = self.incoming / study_uid
        for folder in [*study_dir.glob("*"), study_dir]:
            with contextlib.suppress(OSError):  # only empty folders go: a new run's files stay
                folder.rmdir()
        return freed
