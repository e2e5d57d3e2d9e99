"""Earlier audits on disk: ``<audits_dir>/<model>/<period>[_<site>]/report.json``, read for the trend.

``fairnode audit`` writes each report there (the review app's governance pages list the same folders).
Only aggregates are stored: the reports' small cells are already suppressed.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import date
from pathlib import Path
from typing import Any

__all__ = ["archive_dir", "previous_results"]

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _slug(text: str) -> str:
    slug = _UNSAFE.sub("-", text).strip("-.")
    return slug[:40] or "site"


def archive_dir(audits_dir: Path, model: str, label: str, site: str | None = None) -> Path:
    """Where the report of ``model`` for period ``label`` (and ``site``, if one) is kept."""
    name = label if site is None else f"{label}_{_slug(site)}"
    return audits_dir / _slug(model) / name


def previous_results(
    audits_dir: Path, *, model: str, site: str | None, before: date, limit: int
) -> list[dict[str, Any]]:
    """The last ``limit`` reports of ``model`` (same ``site``) whose period ended before ``before``, oldest first.

    Files that cannot be read are skipped with a warning (an earlier audit is context, not a requirement).
    """
    folder = audits_dir / _slug(model)
    found: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(folder.glob("*/report.json")) if folder.is_dir() else []:
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
            meta = report["meta"]
            end, start = date.fromisoformat(meta["end"]), str(meta["start"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("earlier audit %s skipped: %s", path, exc)
            continue
        if meta.get("model") == model and meta.get("site") == site and end < before:
            found.append((start, report))
    found.sort(key=lambda item: item[0])
    return [report for _, report in found[-limit:]] if limit else []
