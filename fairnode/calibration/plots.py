"""The validation figure: predicted and RCA Dice against true Dice per structure, and the risk-coverage curve."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from fairnode.calibration.score import Scored


def validation_plot(
    scored: Sequence[Scored],
    curve: Sequence[dict[str, float | None]],
    title: str,
    path: Path,
    failure_dice: float = 0.8,
) -> Path:
    """One PNG: per structure a scatter of the estimates against true Dice, and the risk-coverage curve (share
    of failing structures caught against the share of cases reviewed, and against the share of structures
    flagged, every threshold moved together; the calibrated operating point marked)."""
    names = sorted({s.name for s in scored}, key=lambda n: min(s.label for s in scored if s.name == n))
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(3.2 * (len(names) + 1), 3.4), constrained_layout=True)
    for ax, name in zip(axes[:-1], names, strict=True):
        rows = [s for s in scored if s.name == name]
        truth = [s.true_dice for s in rows]
        ax.scatter(truth, [s.predicted.dice if s.predicted else float("nan") for s in rows], s=9, label="predicted")
        rca = [s.rca_calibrated if s.rca_calibrated is not None else s.rca_raw for s in rows]
        ax.scatter(truth, [float("nan") if v is None else v for v in rca], s=9, marker="x", label="RCA")
        flagged = [s for s in rows if s.structure_route == "REVIEW"]
        ax.scatter([s.true_dice for s in flagged], [0.02] * len(flagged), s=6, marker="|", color="red", label="flagged")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
        ax.axvline(failure_dice, color="grey", lw=0.6, ls=":")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="true Dice", title=name)
    axes[0].set_ylabel("estimated Dice")
    axes[0].legend(fontsize=7, loc="upper left")
    ax = axes[-1]
    pts = [(c["review_rate"], c["caught"]) for c in curve if c["review_rate"] is not None and c["caught"] is not None]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], label="cases (reviewed / failing caught)")
    spts = [
        (c["structure_review_rate"], c["structure_caught"])
        for c in curve
        if c["structure_review_rate"] is not None and c["structure_caught"] is not None
    ]
    ax.plot([p[0] for p in spts], [p[1] for p in spts], ls="--", label="structures (flagged / failing flagged)")
    at = [c for c in curve if c["shift"] == 0.0 and c["review_rate"] is not None and c["caught"] is not None]
    if at:
        ax.scatter([at[0]["review_rate"]], [at[0]["caught"]], color="red", zorder=3, label="calibrated")
    ax.axhline(0.95, color="grey", lw=0.6, ls=":")
    ax.set(
        xlim=(0, 1), ylim=(0, 1.02), xlabel="share reviewed", ylabel="failing structures caught", title="risk-coverage"
    )
    ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
