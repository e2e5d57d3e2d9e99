"""Registry records kept on disk until the registry takes them: one folder per study run, retried.

The pipeline keeps every :class:`~fairnode.registry_writes.StudyRecord` here before it writes it, so a
registry that refuses (stopped, unreachable, read-only, a concurrent writer's row in the way) never holds
back results: the record stays and :meth:`PendingRegistry.retry` writes it later (the node at start-up and
periodically, the job runners after each study). Writing a record twice gives its rows once
(:mod:`fairnode.registry_writes`), so a record whose folder outlived its write (a crash in between) is
harmless.

Layout under ``root`` (``<data_dir>/registry-pending`` on a node)::

    <study uid>.run-<n>.<series digest>/record.json   what the registry is told, headers named
    <study uid>.run-<n>.<series digest>/header-<k>.dcm the headers it reads (no pixels)
    <study uid>.run-<n>.<series digest>/attempts.json  how often it was tried, the last error
    refused/<same name>/                              a record the registry rejected as wrong (not retried)

The headers hold what the spool's files hold (the registry pseudonymises them when it writes), and go
with the folder once written.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from fairness_registry.settings import RegistrySettings
from fairnode.registry_writes import REGISTRY_ERRORS, StudyRecord, write_record

logger = logging.getLogger(__name__)

__all__ = ["UNREACHABLE", "PendingRegistry", "RetryReport", "Written"]

RECORD = "record.json"
ATTEMPTS = "attempts.json"
REFUSED = "refused"


class Written(StrEnum):
    """What became of a kept record on a write."""

    WRITTEN = "written"  # its rows are in the registry, its folder is gone
    AWAY = "away"  # the registry could not be reached: kept, and the records after it wait too
    KEPT = "kept"  # the registry was reached but did not take it (a conflicting row): kept, retried
    REFUSED = "refused"  # the registry rejected it as wrong: moved to refused/, not retried
    BUSY = "busy"  # another process is writing it


#: Errors that mean the registry could not be reached at all (the other registry errors: it did not take it).
UNREACHABLE: tuple[type[BaseException], ...] = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)


@dataclass(frozen=True)
class RetryReport:
    """What one pass did: records written, still waiting for the registry, refused by it."""

    written: int
    waiting: int
    refused: int


class PendingRegistry:
    """The kept registry records of one node (or worker) and their writing.

    Parameters
    ----------
    root
        the folder of kept records (created when needed).
    sessions
        opens a registry session (commits on success).
    secret, options
        the pseudonymisation secret and the registry settings (ethnic group table, site).
    """

    def __init__(self, root: Path, sessions: Callable[[], object], *, secret: bytes, options: RegistrySettings) -> None:
        self.root = root
        self.sessions = sessions
        self.secret = secret
        self.options = options
        self._next_retry = 0.0  # monotonic time of the next periodic pass

    # -- keeping -------------------------------------------------------------------------------------------
    def keep(self, record: StudyRecord) -> Path:
        """Persist ``record`` (replacing a kept one of the same study run and series); its folder."""
        digest = hashlib.sha256("\n".join(sorted(s.info.series_uid for s in record.series)).encode()).hexdigest()
        name = f"{record.study_uid}.run-{record.run}.{digest[:12]}"
        final = self.root / name
        tmp = self.root / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        names: dict[int, str] = {}

        def header_name(ds: pydicom.Dataset | None) -> str | None:
            if ds is None:
                return None
            if id(ds) not in names:
                names[id(ds)] = f"header-{len(names)}.dcm"
                _write_header(ds, tmp / names[id(ds)])
            return names[id(ds)]

        data = record.to_dict(header_name)
        (tmp / RECORD).write_text(json.dumps(data, indent=1), encoding="utf-8")
        _fsync_folder(tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        logger.debug("registry record of study %s run %d kept in %s", record.study_uid, record.run, final)
        return final

    def folders(self) -> list[Path]:
        """The kept records waiting to be written, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != REFUSED]
        return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))

    def refused(self) -> list[Path]:
        """The records the registry rejected (kept with the error in ``attempts.json``, not retried)."""
        folder = self.root / REFUSED
        return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    # -- writing -------------------------------------------------------------------------------------------
    def write(self, folder: Path) -> Written:
        """Write one kept record; what became of it (see :class:`Written`)."""
        with _locked(folder) as mine:
            if not mine or not (folder / RECORD).exists():
                return Written.BUSY
            try:
                record = StudyRecord.from_dict(
                    json.loads((folder / RECORD).read_text(encoding="utf-8")),
                    lambda name: pydicom.dcmread(folder / name, force=True) if name else None,
                )
                write_record(record, self.sessions, secret=self.secret, options=self.options)
            except REGISTRY_ERRORS as exc:
                attempts = self._attempted(folder, exc)
                away = isinstance(exc, UNREACHABLE)
                logger.warning(
                    "registry write of %s not taken (attempt %d): %s; kept for a retry",
                    folder.name,
                    attempts,
                    _short(exc),
                )
                return Written.AWAY if away else Written.KEPT
            except Exception as exc:  # a record the registry will never take: kept aside, said loudly
                self._attempted(folder, exc)
                aside = self.root / REFUSED / folder.name
                aside.parent.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(aside, ignore_errors=True)
                folder.rename(aside)
                logger.error(
                    "registry refused the record %s: %s; kept in %s, not retried", folder.name, _short(exc), aside
                )
                return Written.REFUSED
            (folder / RECORD).unlink()  # written: no other process takes it up from here
        shutil.rmtree(folder, ignore_errors=True)
        return Written.WRITTEN

    def retry(self) -> RetryReport:
        """Try the kept records once, oldest first; stops early while the registry cannot be reached.

        A record the registry reached but did not take (a conflicting row, say) stays kept and does not
        hold back the ones after it.
        """
        results: list[Written] = []
        folders = self.folders()
        for folder in folders:
            results.append(self.write(folder))
            if results[-1] is Written.AWAY:
                break
        written, refused = results.count(Written.WRITTEN), results.count(Written.REFUSED)
        if written or refused:
            logger.info("registry records written: %d, refused: %d", written, refused)
        return RetryReport(written, len(folders) - written - refused, refused)

    def retry_due(self, every: float) -> RetryReport | None:
        """:meth:`retry` when the last periodic pass is ``every`` seconds old (None otherwise).

        A pass that finds nothing kept costs a folder listing.
        """
        now = time.monotonic()
        if now < self._next_retry:
            return None
        self._next_retry = now + every
        return self.retry()

    def _attempted(self, folder: Path, exc: BaseException) -> int:
        path = folder / ATTEMPTS
        try:
            seen = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        except (OSError, ValueError):
            seen = {}
        attempts = int(seen.get("attempts", 0)) + 1
        path.write_text(
            json.dumps({"attempts": attempts, "last_error": _short(exc), "last_attempt_at": time.time()}),
            encoding="utf-8",
        )
        return attempts


def _write_header(ds: pydicom.Dataset, path: Path) -> None:
    """Write a header (no pixels) in Explicit VR Little Endian, whatever its file's transfer syntax was."""
    copy = pydicom.Dataset(ds)
    copy.file_meta = FileMetaDataset()
    copy.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    pydicom.dcmwrite(path, copy, enforce_file_format=False)


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


def _fsync_folder(folder: Path) -> None:
    for path in folder.iterdir():
        with path.open("rb") as f:
            os.fsync(f.fileno())


@contextmanager
def _locked(folder: Path) -> Iterator[bool]:
    """Hold the folder's lock (a worker's other pool processes skip it meanwhile); False if held elsewhere."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
