"""The benchmark's figures (matplotlib, Agg canvas, no pyplot state), as the audit's :class:`Figure` objects:
forest plots of the true metrics per group, where the errors fall (region shares), and for 2D tasks the mean
false-positive and false-negative maps per group in the common frame."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from matplotlib.text import Text

from fairness_registry.audit.plots import Figure
from fairness_registry.audit.settings import ATTRIBUTE_LABELS

__all__ = ["benchmark_figures", "error_map_plot", "forest_plot", "region_plot"]

_DPI = 110
_METRIC_LABELS = {"dice": "Dice", "nsd": "NSD", "hd95_mm": "HD95 (mm)"}


def _render(fig: MplFigure, key: str, title: str, caption: str) -> Figure:
    FigureCanvasAgg(fig)
    texts = tuple(t.get_text() for t in fig.findobj(Text) if t.get_text())
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight", metadata={"Software": None})
    return Figure(key, title, caption, base64.b64encode(buffer.getvalue()).decode("ascii"), texts)


def _label(grouping: str) -> str:
    return " x ".join(ATTRIBUTE_LABELS.get(a, a) for a in grouping.split(" x "))


def _by_structure(result: Mapping[str, Any], groupings: Sequence[str]) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    for r in result["groups"]:
        if r["grouping"] in groupings:
            out.setdefault(r["structure"], []).append(r)
    return out


def _rows(result: Mapping[str, Any], groupings: Sequence[str]) -> list[tuple[str, str]]:
    """(grouping, group) in report order: the groupings as given, their groups sorted."""
    shown = {(r["grouping"], r["group"]) for r in result["groups"] if r["grouping"] in groupings}
    return [(g, v) for g in groupings for v in sorted(v for gg, v in shown if gg == g)]


def _row_label(row: tuple[str, str]) -> str:
    return f"{_label(row[0])}: {row[1]}"


def forest_plot(result: Mapping[str, Any], groupings: Sequence[str], metric: str = "dice") -> Figure | None:
    """Mean ``metric`` per group of each grouping with its bootstrap 95% CI, one panel per structure (dotted: all
    subjects)."""
    by_structure = _by_structure(result, groupings)
    rows = _rows(result, groupings)
    if not by_structure:
        return None
    overall = {o["structure"]: o for o in result["overall"]}
    fig = MplFigure(figsize=(2.4 * len(by_structure) + 2.0, 0.26 * len(rows) + 1.4), layout="constrained")
    axes = fig.subplots(1, len(by_structure), sharey=True, squeeze=False)[0]
    for ax, (structure, records) in zip(axes, sorted(by_structure.items()), strict=True):
        points = [
            (rows.index((r["grouping"], r["group"])), r[metric]) for r in records if r[metric]["mean"] is not None
        ]
        if points:
            y = np.array([p[0] for p in points])
            mean = np.array([p[1]["mean"] for p in points])
            err = np.array([[p[1]["mean"] - p[1]["low"], p[1]["high"] - p[1]["mean"]] for p in points]).T
            ax.errorbar(mean, y, xerr=np.clip(err, 0, None), fmt="o", color="#1f5fa8", capsize=2, markersize=3)
        if overall[structure][metric]["mean"] is not None:
            ax.axvline(overall[structure][metric]["mean"], color="#1f5fa8", linestyle=":", linewidth=1)
        ax.set_title(structure, fontsize=9)
        ax.set_xlabel(_METRIC_LABELS[metric], fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(rows)), [_row_label(r) for r in rows], fontsize=7)
    axes[0].invert_yaxis()
    title = f"{_METRIC_LABELS[metric]} by group"
    fig.suptitle(f"{title} (95% CI; dotted: all subjects)", fontsize=10)
    return _render(fig, f"forest-{metric}", title, "Mean per group with its subject-level bootstrap 95% interval.")


def region_plot(result: Mapping[str, Any], groupings: Sequence[str], kind: str) -> Figure | None:
    """Heat map of the mean share of ``kind`` (``fp`` or ``fn``) error area in each region, per group."""
    by_structure = _by_structure(result, groupings)
    if not by_structure:
        return None
    keys: Sequence[str] = result["region_keys"]
    rows = _rows(result, groupings)
    fig = MplFigure(figsize=(2.6 * len(by_structure) + 2.4, 0.24 * len(rows) + 1.8), layout="constrained")
    axes = fig.subplots(1, len(by_structure), sharey=True, squeeze=False)[0]
    image = None
    for ax, (structure, records) in zip(axes, sorted(by_structure.items()), strict=True):
        matrix = np.full((len(rows), len(keys)), np.nan)
        for r in records:
            for j, key in enumerate(keys):
                value = r[f"{kind}_regions"].get(key)
                matrix[rows.index((r["grouping"], r["group"])), j] = np.nan if value is None else value
        image = ax.imshow(matrix, cmap="Reds" if kind == "fp" else "Blues", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(keys)), [k.replace("_", " ") for k in keys], rotation=60, fontsize=7)
        ax.set_title(structure, fontsize=9)
    axes[0].set_yticks(range(len(rows)), [_row_label(r) for r in rows], fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.8, label="share of error area")
    name = "false positives" if kind == "fp" else "false negatives"
    title = f"Where the {name} fall, by group"
    fig.suptitle(title, fontsize=10)
    return _render(
        fig,
        f"regions-{kind}",
        title,
        "Mean share of each structure's error area in each region around the true structure (the boundary band is "
        "within the NSD tolerance of its surface; thirds along the head-feet and right-left axes sum to 1); the "
        "values are in report.json.",
    )


def error_map_plot(maps: Mapping[str, Mapping[str, np.ndarray]], truth: np.ndarray, attribute: str) -> Figure | None:
    """Mean false-positive and false-negative maps per group in the common frame (outline: mean true bones)."""
    if not maps:
        return None
    groups = sorted(maps)
    vmax = max(float(np.max(m[k])) for m in maps.values() for k in ("fp", "fn")) or 1.0
    fig = MplFigure(figsize=(4.2, 2.2 * len(groups) + 0.6), layout="constrained")
    axes = fig.subplots(len(groups), 2, squeeze=False)
    image = None
    for i, group in enumerate(groups):
        for j, kind in enumerate(("fp", "fn")):
            ax = axes[i][j]
            image = ax.imshow(maps[group][kind], cmap="magma", vmin=0.0, vmax=vmax)
            ax.contour(truth, levels=[0.5], colors="#7fd3ff", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("false positives" if kind == "fp" else "false negatives", fontsize=8)
            if j == 0:
                ax.set_ylabel(group, fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label="fraction of pixels in error")
    title = f"Error maps by {ATTRIBUTE_LABELS.get(attribute, attribute)}"
    fig.suptitle(title, fontsize=10)
    return _render(
        fig,
        f"maps-{attribute}",
        title,
        "Mean fraction of pixels in error per cell of the common frame (the box of the true structures, left "
        "knees mirrored to right ones; image left is the patient's right), summed over the structures (a pixel given "
        "the wrong bone is a false positive of one and a false negative of the other); outline: where the true "
        "structures lie in at least half of the subjects.",
    )


def benchmark_figures(
    result: Mapping[str, Any], maps: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]], truth: np.ndarray | None
) -> dict[str, list[Figure]]:
    """Every figure: ``{"forest": [...], "regions": [...], "maps": [...]}``; ``maps`` is attribute -> group ->
    ``{"fp", "fn"}`` mean maps (2D tasks; empty otherwise)."""
    out: dict[str, list[Figure]] = {"forest": [], "regions": [], "maps": []}
    groupings = [g for g in result["groupings"] if " x " not in g]
    for metric in ("dice", "nsd", "hd95_mm"):
        if (figure := forest_plot(result, groupings, metric)) is not None:
            out["forest"].append(figure)
    for kind in ("fp", "fn"):
        if (figure := region_plot(result, groupings, kind)) is not None:
            out["regions"].append(figure)
    if truth is not None:
        for attribute, by_group in maps.items():
            if (figure := error_map_plot(by_group, truth, attribute)) is not None:
                out["maps"].append(figure)
    return out
