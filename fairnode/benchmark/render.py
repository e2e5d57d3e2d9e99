"""Write the benchmark report: ``report.json``, a self-contained ``report.html`` (inline CSS, figures as base64
PNG) and ``report.pdf`` from the same HTML with the audit's renderer
(:func:`fairness_registry.audit.render.render_pdf`).

The template is ``templates/benchmark.html.j2`` of this package, in the audit report's page style."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from fairness_registry.audit.plots import Figure
from fairness_registry.audit.render import number_text, p_value_text
from fairness_registry.audit.render import write_report as write_report_files
from fairness_registry.audit.settings import ATTRIBUTE_LABELS

__all__ = ["render_html", "write_report"]

logger = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


def _ci(value: Mapping[str, Any] | None, digits: int = 3) -> str:
    if not value or value.get("mean") is None:
        return "–"
    mean, low, high = (number_text(value[k], digits) for k in ("mean", "low", "high"))
    return f"{mean} ({low}–{high})"


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
    env.filters.update(num=number_text, ci=_ci, pval=p_value_text, grouping=_grouping)
    return env


def render_html(report: Mapping[str, Any], figures: Mapping[str, list[Figure]]) -> str:
    """The self-contained HTML report (also the PDF's source)."""
    return _environment().get_template("benchmark.html.j2").render(report=report, figures=figures)


def write_report(
    out_dir: Path, report: Mapping[str, Any], figures: Mapping[str, list[Figure]], *, pdf: bool = True
) -> dict[str, Path]:
    """Write ``report.json``, ``report.html`` and (unless ``pdf=False``) ``report.pdf``; format -> path."""
    return write_report_files(out_dir, report, figures, pdf=pdf, html_of=render_html, what="benchmark")
