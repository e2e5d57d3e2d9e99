"""The audits on disk: ``<audits_dir>/<model>/<period>/report.{html,pdf,json}`` (written by ``fairnode audit``),
and the runs started from the web app (:class:`AuditRunner`).

Only aggregates live there (the audit suppresses small cells); this module lists them and resolves a
requested file without ever leaving the audits folder.
"""

from __future__ import annotations

import logging
import re
import subprocess
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

__all__ = ["FORMATS", "AuditEntry", "AuditRun", "AuditRunner", "audit_file", "list_audits"]

logger = logging.getLogger(__name__)

#: Report formats, with their media types.
FORMATS = {"html": "text/html; charset=utf-8", "pdf": "application/pdf", "json": "application/json"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class AuditEntry(BaseModel):
    """One audit found on disk."""

    model: str
    period: str
    formats: list[str]
    written_at: datetime


def list_audits(audits_dir: Path | None) -> list[AuditEntry]:
    """Every ``<model>/<period>`` folder holding at least one report, newest period first."""
    if audits_dir is None or not audits_dir.is_dir():
        return []
    found: list[AuditEntry] = []
    for folder in audits_dir.glob("*/*"):
        if not folder.is_dir() or not (NAME_RE.fullmatch(folder.parent.name) and NAME_RE.fullmatch(folder.name)):
            continue
        formats = [f for f in FORMATS if (folder / f"report.{f}").is_file()]
        if formats:
            stamp = max((folder / f"report.{f}").stat().st_mtime for f in formats)
            found.append(
                AuditEntry(
                    model=folder.parent.name,
                    period=folder.name,
                    formats=formats,
                    written_at=datetime.fromtimestamp(stamp, UTC),
                )
            )
    return sorted(found, key=lambda a: (a.period, a.model), reverse=True)


def audit_file(audits_dir: Path | None, model: str, period: str, fmt: str) -> Path | None:
    """The report file, or ``None`` when the names are not accepted or the file does not exist."""
    if audits_dir is None or fmt not in FORMATS or not (NAME_RE.fullmatch(model) and NAME_RE.fullmatch(period)):
        return None
    path = audits_dir / model / period / f"report.{fmt}"
    return path if path.is_file() else None


class AuditRun(BaseModel):
    """One audit started from the web app."""

    period: str
    model: str | None
    started_at: datetime
    state: str  # running, done, failed
    message: str = ""


class AuditRunner:
    """Runs audits in child processes (``fairnode audit ...``), one log file each, and remembers them.

    Parameters
    ----------
    command : callable
        ``(period, model) -> argv`` of the audit command.
    log_dir : pathlib.Path
        Where each run's output goes (``<started>-<period>.log``).
    """

    def __init__(self, command: Callable[[str, str | None], list[str]], log_dir: Path) -> None:
        self._command = command
        self._log_dir = log_dir
        self._runs: list[tuple[AuditRun, subprocess.Popen[bytes], Path]] = []
        self._lock = threading.Lock()

    def __call__(self, period: str, model: str | None) -> str:
        """Start one audit; what was started, in words."""
        self._log_dir.mkdir(parents=True, exist_ok=True)
        now = datetime.now(UTC)
        log = self._log_dir / f"{now:%Y%m%dT%H%M%S}-{period}.log"
        with log.open("wb") as fh:
            process = subprocess.Popen(self._command(period, model), stdout=fh, stderr=subprocess.STDOUT)
        with self._lock:
            self._runs.append((AuditRun(period=period, model=model, started_at=now, state="running"), process, log))
        logger.info("audit %s (%s) started, pid %d, log %s", period, model or "the only model", process.pid, log)
        return f"audit {period} of {model or 'the only model'}"

    def runs(self) -> list[AuditRun]:
        """The runs started by this process, newest first, with their state and the last line they wrote."""
        shown = []
        with self._lock:
            for run, process, log in self._runs:
                code = process.poll()
                state = "running" if code is None else "done" if code == 0 else "failed"
                message = ""
                if code is not None and code != 0:
                    lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
                    message = lines[-1][:300] if lines else f"exit status {code}"
                shown.append(run.model_copy(update={"state": state, "message": message}))
        return shown[::-1]
