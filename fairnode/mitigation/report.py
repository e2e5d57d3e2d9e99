"""The comparison's readable table (rich) and grouped-bar plot with 95% CIs (matplotlib, Agg canvas)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.table import Table


def _f(v: Any, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _signed(v: float | None) -> str:
    return "-" if v is None else f"{v:+.3f}"


def comparison_table(result: dict[str, Any]) -> Table:
    """One row per strategy: overall and per-group Dice (mean over structures), gap, SER, ES-Dice, ..."""
    groups = sorted({g for r in result["table"] for g in r["groups"]})
    winner = result["winner"]["model"]
    table = Table(title=f"Mitigation comparison ({'/'.join(result['attributes'])}); winner: {winner}")
    table.add_column("strategy", overflow="fold")
    table.add_column("Dice [95% CI]", overflow="fold")
    for g in groups:
        table.add_column(f"Dice {g}", overflow="fold")
    for col in (
        "worst group",
        "gap [95% CI]",
        "SER",
        "ES-Dice",
        f"Δ {result['majority'] or 'majority'}",
        "Δ overall",
        "NSD",
        "HD95 mm",
    ):
        table.add_column(col, overflow="fold")
    for r in result["table"]:
        lo, hi = r["dice_ci"]
        glo, ghi = r["gap_ci"]
        mark = " *" if r["model"] == winner else ""
        table.add_row(
            r["strategy"] + mark,
            f"{_f(r['dice'])} [{_f(lo)}, {_f(hi)}]",
            *(_f(r["groups"].get(g)) for g in groups),
            f"{r['worst_group'] or '-'} {_f(r['worst_group_dice'])}",
            f"{_f(r['gap'])} [{_f(glo)}, {_f(ghi)}]",
            _f(r["ser"], 2),
            _f(r["es_dice"]),
            _signed(r["majority_change"]),
            _signed(r["overall_change"]),
            _f(r["nsd"]),
            _f(r["hd95_mm"], 2),
        )
    return table


def markdown_table(result: dict[str, Any]) -> str:
    """The same table as GitHub markdown (README, closing note)."""
    groups = sorted({g for r in result["table"] for g in r["groups"]})
    head = [
        "strategy",
        "Dice [95% CI]",
        *(f"Dice {g}" for g in groups),
        "worst group",
        "gap [95% CI]",
        "SER",
        "ES-Dice",
        f"Δ {result['majority'] or 'majority'}",
        "NSD",
        "HD95 mm",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["table"]:
        name = f"**{r['strategy']}**" if r["model"] == result["winner"]["model"] else r["strategy"]
        lines.append(
            "| "
            + " | ".join(
                [
                    name,
                    f"{_f(r['dice'])} [{_f(r['dice_ci'][0])}, {_f(r['dice_ci'][1])}]",
                    *(_f(r["groups"].get(g)) for g in groups),
                    f"{r['worst_group']} {_f(r['worst_group_dice'])}",
                    f"{_f(r['gap'])} [{_f(r['gap_ci'][0])}, {_f(r['gap_ci'][1])}]",
                    _f(r["ser"], 2),
                    _f(r["es_dice"]),
                    _signed(r["majority_change"]),
                    _f(r["nsd"]),
                    _f(r["hd95_mm"], 2),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def grouped_bar_plot(result: dict[str, Any], path: Path) -> Path:
    """Bars of Dice (mean over structures) per strategy: overall and each group, with 95% CI whiskers."""
    groups = sorted({g for r in result["table"] for g in r["groups"]})
    series = ["overall", *groups]
    rows = result["table"]
    fig = Figure(figsize=(max(6.0, 1.3 * len(rows) * len(series) / 2), 4.0), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(series)
    x = np.arange(len(rows))
    for k, name in enumerate(series):
        if name == "overall":
            values = [r["dice"] for r in rows]
            cis = [r["dice_ci"] for r in rows]
        else:
            values = [r["groups"].get(name) for r in rows]
            cis = [r["group_ci"].get(name, [None, None]) for r in rows]
        v = np.array([np.nan if a is None else a for a in values], dtype=float)
        lo = np.array([np.nan if c[0] is None else c[0] for c in cis], dtype=float)
        hi = np.array([np.nan if c[1] is None else c[1] for c in cis], dtype=float)
        ax.bar(
            x + (k - (len(series) - 1) / 2) * width, v, width, yerr=np.vstack([v - lo, hi - v]), capsize=3, label=name
        )
    ax.set_xticks(x, [r["strategy"] for r in rows], rotation=20, ha="right")
    finite = [r["worst_group_dice"] for r in rows if r["worst_group_dice"] is not None]
    ax.set_ylim(max(0.0, min(finite or [0.0]) - 0.1), 1.0)
    ax.set_ylabel("Dice (mean over structures)")
    ax.set_title(f"Strategies on the balanced held-out cohort ({'/'.join(result['attributes'])}), 95% CIs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
