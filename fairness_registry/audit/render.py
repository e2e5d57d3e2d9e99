"""Write the audit report: ``report.json`` (the result and its metadata), ``report.html`` (self-contained:
inline CSS, figures as base64 PNG) and ``report.pdf`` (WeasyPrint, from the same HTML), all with the same
numbers.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from fairness_registry.audit.plots import Figure
from fairness_registry.audit.settings import ATTRIBUTE_LABELS, ESTIMATOR_LABELS, REGION_KEYS
from fairness_registry.audit.trend import group_name

__all__ = [
    "REPORT_FILES",
    "ReportMeta",
    "build_report",
    "number_text",
    "p_value_text",
    "render_html",
    "render_pdf",
    "write_report",
]

logger = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
#: The files :func:`write_report` writes, by format.
REPORT_FILES = {"json": "report.json", "html": "report.html", "pdf": "report.pdf"}


@dataclass(frozen=True)
class ReportMeta:
    """What the report is about: the period (a label such as ``2026Q3`` and its first and last day), the
    model, the site (``None``: every site) and when it was made."""

    period: str
    start: date
    end: date
    model: str
    site: str | None = None
    generated_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, ``generated_at`` defaulting to now (UTC), with the software version."""
        values = asdict(self)
        values["start"], values["end"] = self.start.isoformat(), self.end.isoformat()
        values["generated_at"] = (self.generated_at or datetime.now(UTC)).isoformat(timespec="seconds")
        try:
            values["software"] = f"fairnode {metadata.version('fairnode')}"
        except metadata.PackageNotFoundError:
            values["software"] = "fairnode"
        return values


def build_report(result: Mapping[str, Any], meta: ReportMeta) -> dict[str, Any]:
    """The JSON document of a report: the audit result with ``meta`` (period, model, site, when)."""
    return {"meta": meta.as_dict(), **result}


def number_text(value: object, digits: int = 3) -> str:
    """A number as a report cell shows it: a dash for none, integers as they are, others to ``digits`` places."""
    if value is None:
        return "–"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{float(value):.{digits}f}"  # type: ignore[arg-type]


def _percent(value: object) -> str:
    return "–" if value is None else f"{100 * float(value):.1f}%"  # type: ignore[arg-type]


def p_value_text(value: object) -> str:
    """A p-value as a report cell shows it (a dash for none, "< 0.001" below that)."""
    if value is None:
        return "–"
    p = float(value)  # type: ignore[arg-type]
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _ci(estimate: Mapping[str, Any] | None) -> str:
    if not estimate:
        return "–"
    return f"{number_text(estimate['mean'])} ({number_text(estimate['low'])}–{number_text(estimate['high'])})"


def _pivot(table: Mapping[str, Any]) -> dict[str, Any]:
    """Rows, columns and cell values of a two-way count table (cells not listed shown as a dash)."""
    cells = {(c["row"], c["column"]): c["patients"] for c in table["cells"]}
    order = lambda values: sorted(values, key=lambda v: (v == "unknown", v))  # noqa: E731
    rows, columns = order({r for r, _ in cells}), order({c for _, c in cells})
    return {"rows": rows, "columns": columns, "cells": cells}


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=number_text, pct=_percent, pval=p_value_text, ci=_ci, pivot=_pivot)
    env.globals.update(
        attribute_labels=ATTRIBUTE_LABELS,
        estimator_labels=ESTIMATOR_LABELS,
        short_estimator={"rca": "RCA", "predictor": "predictor"},
        region_keys=REGION_KEYS,
        group_name=group_name,
    )
    return env


def render_html(report: Mapping[str, Any], figures: Mapping[str, list[Figure]]) -> str:
    """The self-contained HTML report (also the PDF's source)."""
    template = _environment().get_template("report.html.j2")
    return template.render(report=report, figures=figures)


def render_pdf(html: str) -> bytes:
    """The PDF of the HTML report (WeasyPrint; A4, page numbers in the footer)."""
    from weasyprint import HTML  # slow import: only when a PDF is made

    pdf: bytes = HTML(string=html, base_url=str(TEMPLATES_DIR)).write_pdf()
    return pdf


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(
    out_dir: Path,
    report: Mapping[str, Any],
    figures: Mapping[str, list[Figure]],
    *,
    pdf: bool = True,
    html_of: Callable[[Mapping[str, Any], Mapping[str, list[Figure]]], str] = render_html,
    what: str = "audit",
) -> dict[str, Path]:
    """Write ``report.json``, ``report.html`` and (unless ``pdf=False``) ``report.pdf`` into ``out_dir``.

    ``html_of`` renders the HTML (the audit's template by default; the model benchmark passes its own) and
    ``what`` names the report in the log.

    Returns
    -------
    dict
        Format -> path written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    document = json.dumps(report, indent=2, allow_nan=False, ensure_ascii=False).encode("utf-8")
    _write_atomically(path := out_dir / REPORT_FILES["json"], document)
    written["json"] = path
    html = html_of(report, figures)
    _write_atomically(path := out_dir / REPORT_FILES["html"], html.encode("utf-8"))
    written["html"] = path
    if pdf:
        _write_atomically(path := out_dir / REPORT_FILES["pdf"], render_pdf(html))
        written["pdf"] = path
    logger.info("%s report written to %s (%s)", what, out_dir, ", ".join(written))
    return written
