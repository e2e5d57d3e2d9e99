"""The report's figures (matplotlib, Agg canvas, no pyplot state): forest plots, distributions, trend lines
and where the uncertainty falls.

Every figure is drawn from the audit result (or, for distributions, from the frame restricted to the groups
the result shows), so a suppressed group never appears in a plot. Each figure carries the text it shows
(:attr:`Figure.labels`) so tests can check it.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from matplotlib.text import Text

from fairness_registry.audit.groups import group_labels
from fairness_registry.audit.settings import ATTRIBUTE_LABELS, ESTIMATOR_LABELS, ESTIMATORS, REGION_KEYS

__all__ = ["Figure", "distribution_plot", "forest_plot", "report_figures", "spatial_plot", "trend_plot"]

_COLOURS = {"rca": "#1f5fa8", "predictor": "#c2571a"}
_MARKERS = {"rca": "o", "predictor": "s"}
_DPI = 110


@dataclass(frozen=True)
class Figure:
    """One rendered figure: its title, a caption, the PNG (base64) and every text it shows."""

    key: str
    title: str
    caption: str
    png_base64: str
    labels: tuple[str, ...]


def _render(fig: MplFigure, key: str, title: str, caption: str) -> Figure:
    FigureCanvasAgg(fig)
    texts = tuple(t.get_text() for t in fig.findobj(Text) if t.get_text())
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight", metadata={"Software": None})
    return Figure(key, title, caption, base64.b64encode(buffer.getvalue()).decode("ascii"), texts)


def _records(result: Mapping[str, Any], attribute: str) -> dict[str, list[Mapping[str, Any]]]:
    by_structure: dict[str, list[Mapping[str, Any]]] = {}
    for r in result["metrics"]:
        if r["attribute"] == attribute:
            by_structure.setdefault(r["structure"], []).append(r)
    return by_structure


def _axes(fig: MplFigure, n: int) -> list[Axes]:
    axes = fig.subplots(1, n, sharey=True, squeeze=False)[0]
    return list(axes)


def forest_plot(result: Mapping[str, Any], attribute: str) -> Figure | None:
    """Mean estimated Dice per group with its bootstrap 95% CI, one panel per structure, both estimators."""
    by_structure = _records(result, attribute)
    if not by_structure:
        return None
    groups = sorted({r["group"] for rows in by_structure.values() for r in rows})
    fig = MplFigure(figsize=(3.0 * len(by_structure) + 1.2, 0.45 * len(groups) + 1.6), layout="constrained")
    overall = {o["structure"]: o for o in result["overall"]}
    for ax, (structure, rows) in zip(_axes(fig, len(by_structure)), sorted(by_structure.items()), strict=True):
        for offset, estimator in zip((-0.12, 0.12), ESTIMATORS, strict=True):
            points = [(groups.index(r["group"]), r[estimator]) for r in rows if r[estimator]]
            if not points:
                continue
            y = np.array([p[0] for p in points]) + offset
            mean = np.array([p[1]["mean"] for p in points])
            err = np.array([[p[1]["mean"] - p[1]["low"], p[1]["high"] - p[1]["mean"]] for p in points]).T
            ax.errorbar(
                mean, y, xerr=err, fmt=_MARKERS[estimator], color=_COLOURS[estimator], capsize=3,
                label=ESTIMATOR_LABELS[estimator], markersize=5,
            )  # fmt: skip
            if overall[structure][estimator] is not None:
                ax.axvline(overall[structure][estimator], color=_COLOURS[estimator], linestyle=":", linewidth=1)
        ax.set_title(structure)
        ax.set_xlabel("estimated Dice")
        ax.grid(axis="x", alpha=0.3)
    first = fig.axes[0]
    first.set_yticks(range(len(groups)), groups)
    first.invert_yaxis()
    handles, labels = first.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    fig.suptitle(f"Estimated Dice by {ATTRIBUTE_LABELS[attribute]} (95% CI; dotted: all patients)", fontsize=10)
    return _render(
        fig,
        f"forest-{attribute}",
        f"Estimated Dice by {ATTRIBUTE_LABELS[attribute]}",
        "Mean estimated Dice per group with its patient-level bootstrap 95% confidence interval.",
    )


def distribution_plot(frame: pd.DataFrame, result: Mapping[str, Any], attribute: str) -> Figure | None:
    """Box plots of the predictor's estimate per shown group, one panel per structure."""
    by_structure = _records(result, attribute)
    if not by_structure:
        return None
    groups = sorted({r["group"] for rows in by_structure.values() for r in rows})
    fig = MplFigure(figsize=(3.0 * len(by_structure) + 1.2, 0.45 * len(groups) + 1.6), layout="constrained")
    for ax, (structure, rows) in zip(_axes(fig, len(by_structure)), sorted(by_structure.items()), strict=True):
        sub = frame[frame["structure"] == structure]
        labels = group_labels(sub, attribute).to_numpy()
        shown = {r["group"] for r in rows}
        data = [
            sub.loc[labels == g, "predicted_dice"].dropna().to_numpy() if g in shown else np.array([]) for g in groups
        ]
        ax.boxplot(
            [d if len(d) else np.array([np.nan]) for d in data],
            positions=range(len(groups)),
            orientation="horizontal",
            widths=0.6,
            showfliers=False,
            whis=(5, 95),
        )
        ax.set_title(structure)
        ax.set_xlabel("predicted Dice")
        ax.grid(axis="x", alpha=0.3)
    first = fig.axes[0]
    first.set_yticks(range(len(groups)), groups)
    first.invert_yaxis()
    fig.suptitle(f"Distribution of the predicted Dice by {ATTRIBUTE_LABELS[attribute]}", fontsize=10)
    return _render(
        fig,
        f"distribution-{attribute}",
        f"Distribution by {ATTRIBUTE_LABELS[attribute]}",
        "Box: quartiles and median; whiskers: 5th to 95th percentile (no single case is drawn).",
    )


def spatial_plot(result: Mapping[str, Any], attribute: str) -> Figure | None:
    """Heat map of the mean share of uncertainty in each region, per group, one panel per structure."""
    by_structure = {s: [r for r in rows if r["regions"]] for s, rows in _records(result, attribute).items()}
    by_structure = {s: rows for s, rows in by_structure.items() if rows}
    if not by_structure:
        return None
    groups = sorted({r["group"] for rows in by_structure.values() for r in rows})
    fig = MplFigure(figsize=(3.4 * len(by_structure) + 1.6, 0.4 * len(groups) + 2.2), layout="constrained")
    image = None
    for ax, (structure, rows) in zip(_axes(fig, len(by_structure)), sorted(by_structure.items()), strict=True):
        matrix = np.full((len(groups), len(REGION_KEYS)), np.nan)
        for r in rows:
            for j, key in enumerate(REGION_KEYS):
                value = r["regions"].get(key)
                matrix[groups.index(r["group"]), j] = np.nan if value is None else value
        image = ax.imshow(matrix, cmap="Oranges", vmin=0.0, vmax=max(0.3, float(np.nanmax(matrix))), aspect="auto")
        for (i, j), value in np.ndenumerate(matrix):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6)
        ax.set_xticks(range(len(REGION_KEYS)), [k.replace("_", " ") for k in REGION_KEYS], rotation=60, fontsize=7)
        ax.set_title(structure)
    fig.axes[0].set_yticks(range(len(groups)), groups)
    if image is not None:
        fig.colorbar(image, ax=fig.axes, shrink=0.8, label="share of uncertainty")
    fig.suptitle(f"Where the uncertainty falls, by {ATTRIBUTE_LABELS[attribute]}", fontsize=10)
    return _render(
        fig,
        f"spatial-{attribute}",
        f"Where the uncertainty falls, by {ATTRIBUTE_LABELS[attribute]}",
        "Mean share of each structure's entropy mass in each region (rows sum to more than 1: the regions overlap).",
    )


def trend_plot(result: Mapping[str, Any], attribute: str, estimator: str = "predictor") -> Figure | None:
    """Group means over the audits so far (one panel per structure); ``None`` with fewer than two audits."""
    periods: Sequence[str] = result["trend"]["periods"]
    series = [s for s in result["trend"]["means"] if s["attribute"] == attribute and s["estimator"] == estimator]
    if len(periods) < 2 or not series:
        return None
    structures = sorted({s["structure"] for s in series})
    fig = MplFigure(figsize=(3.0 * len(structures) + 1.2, 2.8), layout="constrained")
    for ax, structure in zip(_axes(fig, len(structures)), structures, strict=True):
        for s in (s for s in series if s["structure"] == structure):
            values = [np.nan if v is None else v for v in s["values"]]
            ax.plot(range(len(periods)), values, marker="o", label=s["group"])
        ax.set_xticks(range(len(periods)), list(periods), rotation=30, fontsize=7)
        ax.set_title(structure)
        ax.grid(alpha=0.3)
    fig.axes[0].set_ylabel(f"estimated Dice ({ESTIMATOR_LABELS[estimator]})")
    fig.axes[-1].legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(f"Trend by {ATTRIBUTE_LABELS[attribute]}", fontsize=10)
    return _render(
        fig,
        f"trend-{attribute}",
        f"Trend by {ATTRIBUTE_LABELS[attribute]}",
        "Mean estimated Dice per group in each audit; a missing point is a group not reported that period.",
    )


def report_figures(result: Mapping[str, Any], frame: pd.DataFrame) -> dict[str, list[Figure]]:
    """Every figure of the report: ``{"forest": [...], "distribution": [...], "spatial": [...], "trend": [...]}``."""
    attributes: Sequence[str] = result["attributes"]
    out: dict[str, list[Figure]] = {"forest": [], "distribution": [], "spatial": [], "trend": []}
    for attribute in attributes:
        for kind, figure in (
            ("forest", forest_plot(result, attribute)),
            ("distribution", distribution_plot(frame, result, attribute)),
            ("spatial", spatial_plot(result, attribute)),
            ("trend", trend_plot(result, attribute)),
        ):
            if figure is not None:
                out[kind].append(figure)
    return out
