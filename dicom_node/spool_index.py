"""The spool's index: its SQLite schema, the records it holds, its connections and the reading queries.

One SQLite database in WAL mode (``spool.db``) holds the instances, the studies' states and the
deliveries; each thread uses its own connection. :class:`~dicom_node.spool.Spool` builds on it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SCHEMA", "Delivery", "InstanceRecord", "SpoolIndex", "StudyState"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    run INTEGER NOT NULL DEFAULT 1,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    rerun INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    run INTEGER NOT NULL,
    path TEXT NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    UNIQUE(path, destination)
);
"""


@dataclass(frozen=True)
class StudyState:
    study_uid: str
    state: str
    run: int
    first_received: float
    last_received: float
    reason: str
    rerun: int = 0
    not_before: float = 0.0  # a deferred ``ready`` study is not claimed before this time


@dataclass(frozen=True)
class InstanceRecord:
    sop_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    path: Path


@dataclass(frozen=True)
class Delivery:
    id: int
    study_uid: str
    run: int
    path: Path
    destination: str
    state: str
    attempts: int
    next_attempt_at: float
    last_error: str


class SpoolIndex:
    """The index database ``db_path``: connections, transactions and the queries that read it."""

    def __init__(self, db_path: Path):
        self.db_path = db_path
        self._local = threading.local()

    # -- connections --------------------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None, check_same_thread=True)
            conn.execute("PRAGMA journal_mode=WAL")
            # the instance file is fsynced before its row is written; a row lost to a power cut is
            # recovered by reconcile(), so NORMAL is safe here
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def is_known(self, sop_uid: str) -> bool:
        row = self._conn().execute("SELECT 1 FROM instances WHERE sop_uid=?", (sop_uid,)).fetchone()
        return row is not None

    # -- reading instances and studies -------------------------------------------------------------------
    def instances(self, study_uid: str) -> list[InstanceRecord]:
        rows = self._conn().execute(
            "SELECT sop_uid, study_uid, series_uid, sop_class_uid, path FROM instances WHERE study_uid=? "
            "ORDER BY series_uid, sop_uid",
            (study_uid,),
        )
        return [InstanceRecord(r[0], r[1], r[2], r[3], Path(r[4])) for r in rows]

    def calling_aes(self, study_uid: str) -> list[str]:
        """The calling AE titles that sent the study's instances."""
        rows = self._conn().execute("SELECT DISTINCT calling_ae FROM instances WHERE study_uid=?", (study_uid,))
        return [str(r[0]) for r in rows]

    def study(self, study_uid: str) -> StudyState | None:
        row = self._conn().execute("SELECT * FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
        return StudyState(*row) if row else None

    def studies(self, state: str | None = None) -> list[StudyState]:
        if state is None:
            rows = self._conn().execute("SELECT * FROM studies ORDER BY first_received")
        else:
            rows = self._conn().execute("SELECT * FROM studies WHERE state=? ORDER BY first_received", (state,))
        return [StudyState(*r) for r in rows]

    def has_study(self, study_uid: str) -> bool:
        """Whether the spool holds (any run of) the study."""
        return self._conn().execute("SELECT 1 FROM studies WHERE study_uid=?", (study_uid,)).fetchone() is not None

    def pending_count(self, held: Collection[str] = ()) -> int:
        """Studies not yet processed: ``receiving``, ``ready`` or ``processing``, and of the ``held``
        studies (instances answered, not yet indexed) those the index does not count among them: each
        opens, or opens again, a study once indexed. Read in one snapshot of the index, so that an instance
        indexed meanwhile counts once."""
        pending = "('receiving', 'ready', 'processing')"
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            count = int(conn.execute(f"SELECT COUNT(*) FROM studies WHERE state IN {pending}").fetchone()[0])
            for study_uid in held:
                row = conn.execute(
                    f"SELECT 1 FROM studies WHERE study_uid=? AND state IN {pending}", (study_uid,)
                ).fetchone()
                count += row is None
        finally:
            conn.execute("COMMIT")
        return count

    def series_uids(self, study_uid: str) -> set[str]:
        rows = self._conn().execute("SELECT DISTINCT series_uid FROM instances WHERE study_uid=?", (study_uid,))
        return {r[0] for r in rows}
