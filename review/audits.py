"""The audits on disk: ``<audits_dir>/<model>/<period>/report.{html,pdf,json}`` (written by ``fairnode audit``).

Only aggregates live there (the audit suppresses small cells); this module lists them and resolves a
requested file without ever leaving the audits folder.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

__all__ = ["FORMATS", "AuditEntry", "audit_file", "list_audits"]

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
