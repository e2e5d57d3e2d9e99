"""Spool retention: remove finished studies by age and by disk use, so a node that runs for months keeps
room on its disk.

A study may be removed only when it is ``done`` or ``failed`` and every delivery of it is ``sent``: a
study still receiving, waiting, being processed, or with a delivery ``pending`` or ``dead`` (undelivered)
is never touched. Two limits, each switched off by 0:

- ``max_age_days``: a removable study whose last instance arrived longer ago than this is removed;
- ``max_spool_gb``: while the spool's files (``incoming/`` and ``outbox/``) take more than this, removable
  studies are removed oldest first (by their last instance) until they fit.

Removal is crash safe (see :meth:`dicom_node.spool.Spool.purge`): the study is marked ``purging`` before
any file goes, so a restart finishes the removal instead of indexing the remaining files as a new study.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from dicom_node.spool import Spool

logger = logging.getLogger(__name__)

__all__ = ["Retention", "RetentionReport", "RetentionSettings", "folder_bytes"]


class RetentionSettings(BaseModel):
    """How long finished studies stay in the spool (0 switches a limit off).

    Attributes
    ----------
    max_age_days : float
        Removable studies whose last instance is older than this many days are removed.
    max_spool_gb : float
        Bytes (in GB, 10**9) the spool's files may take; beyond, removable studies go oldest first.
    interval_seconds : float
        How often the node applies the limits.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_age_days: float = Field(0.0, ge=0, description="0: kept whatever their age")
    max_spool_gb: float = Field(0.0, ge=0, description="0: no limit on the spool's size")
    interval_seconds: float = Field(3600.0, gt=0)


@dataclass(frozen=True)
class RetentionReport:
    """What one pass removed: study UIDs by age and by size, the bytes freed, the spool's size after."""

    by_age: tuple[str, ...]
    by_size: tuple[str, ...]
    freed_bytes: int
    spool_bytes: int


def folder_bytes(folder: Path) -> int:
    """Total size in bytes of the regular files under ``folder`` (0 when it does not exist)."""
    total = 0
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
    return total


class Retention:
    """Applies :class:`RetentionSettings` to a spool: :meth:`apply` once, or :meth:`start` a thread."""

    def __init__(self, spool: Spool, settings: RetentionSettings):
        self.spool = spool
        self.settings = settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def spool_bytes(self) -> int:
        return folder_bytes(self.spool.incoming) + folder_bytes(self.spool.outbox)

    def apply(self, now: float | None = None) -> RetentionReport:
        """One pass over the removable studies; returns what it removed."""
        now = time.time() if now is None else now
        removable = self.spool.removable_studies()  # oldest first
        by_age: list[str] = []
        freed = 0
        if self.settings.max_age_days:
            cutoff = now - self.settings.max_age_days * 86400.0
            for study in [s for s in removable if s.last_received < cutoff]:
                freed += self._remove(study.study_uid, "older than max_age_days")
                by_age.append(study.study_uid)
        by_size: list[str] = []
        size = self.spool_bytes()
        if self.settings.max_spool_gb:
            limit = int(self.settings.max_spool_gb * 1e9)
            for study in removable:
                if size <= limit:
                    break
                if study.study_uid in by_age:
                    continue
                n = self._remove(study.study_uid, "spool above max_spool_gb")
                freed += n
                size -= n
                by_size.append(study.study_uid)
            if size > limit:
                logger.warning(
                    "spool holds %.2f GB, above max_spool_gb %.2f GB, but nothing more may be removed "
                    "(studies pending, processing or undelivered)",
                    size / 1e9,
                    self.settings.max_spool_gb,
                )
        return RetentionReport(tuple(by_age), tuple(by_size), freed, size)

    def _remove(self, study_uid: str, why: str) -> int:
        freed = self.spool.purge(study_uid)
        if freed is None:
            return 0  # it became pending or undelivered meanwhile
        logger.info("retention: study %s removed (%s), %d bytes freed", study_uid, why, freed)
        return freed

    def start(self) -> None:
        if not (self.settings.max_age_days or self.settings.max_spool_gb):
            return
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.apply()
            except OSError:  # a file system error this pass; the next pass tries again
                logger.exception("retention pass failed")
            self._stop.wait(self.settings.interval_seconds)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
