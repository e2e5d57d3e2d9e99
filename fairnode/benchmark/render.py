"""Write the benchmark report: ``report.json``, a self-contained ``report.html`` (inline CSS, figures as base64
PNG) and ``report.pdf`` from the same HTML with the audit's renderer
(:func:`fairness_registry.audit.render.render_pdf`).

The template is ``templates/benchmark.html.j2`` of this package, in the audit report's page style."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from fairness_registry.audit.plots import Figure
from fairness_registry.audit.render import REPORT_FILES, render_pdf
from fairness_registry.audit.settings import ATTRIBUTE_LABELS

__all__ = ["render_html", "write_report"]

logger = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


def _number(value: object, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{float(value):.{digits}f}"  # type: ignore[arg-type]


def _ci(value: Mapping[str, Any] | None, digits: int = 3) -> str:
    if not value or value.get("mean") is None:
        return "–"
    return f"{_number(value['mean'], digits)} ({_number(value['low'], digits)}–{_number(value['high'], digits)})"


def _p_value(value: object) -> str:
    if value is None:
        return "–"
    p = float(value)  # type: ignore[arg-type]
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _grouping(name: str) -> str:
    return " × ".join(ATTRIBUTE_LABELS.get(a, a) for a in name.split(" x "))


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=_number, ci=_ci, pval=_p_value, grouping=_grouping)
    return env


def render_html(report: Mapping[str, Any], figures: Mapping[str, list[Figure]]) -> str:
    """The self-contained HTML report (also the PDF's source)."""
    return _environment().get_template("benchmark.html.j2").render(report=report, figures=figures)


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
    out_dir: Path, report: Mapping[str, Any], figures: Mapping[str, list[Figure]], *, pdf: bool = True
) -> dict[str, Path]:
    """Write ``report.json``, ``report.html`` and (unless ``pdf=False``) ``report.pdf``; format -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    document = json.dumps(report, indent=2, allow_nan=False, ensure_ascii=False).encode("utf-8")
    _write_atomically(path := out_dir / REPORT_FILES["json"], document)
    written["json"] = path
    html = render_html(report, figures)
    _write_atomically(path := out_dir / REPORT_FILES["html"], html.encode("utf-8"))
    written["html"] = path
    if pdf:
        _write_atomically(path := out_dir / REPORT_FILES["pdf"], render_pdf(html))
        written["pdf"] = path
    logger.info("benchmark report written to %s (%s)", out_dir, ", ".join(written))
    return written
