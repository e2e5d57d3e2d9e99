"""The comparison of mitigation strategies on one balanced held-out cohort, with the audit's definitions.

Per candidate the measured cases become an audit frame whose estimator columns hold the *true* Dice, and
:func:`fairness_registry.audit.compute.compute_audit` computes the per-group means with patient-level
bootstrap CIs, the gap (with its CI), the skewed error ratio and ES-Dice exactly as the audit does. The
structure ``all`` is each case's mean Dice over its structures. For an intersection of attributes the group
label (``F/Black``) is written into the first attribute's column.

The winning rule: the candidate with the highest worst-group Dice (structure ``all``) among those whose
overall Dice is at most :data:`MAX_OVERALL_DROP` below the baseline's (``none``); the baseline is always
eligible, so the rule never ships a model worse overall than what it replaces by that margin.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from datetime import time as dtime
from typing import Any

import numpy as np
import pandas as pd

from fairness_registry.audit.compute import compute_audit
from fairness_registry.audit.settings import FRAME_COLUMNS, AuditSettings
from fairnode.mitigation.measure import CaseScores

logger = logging.getLogger(__name__)

#: an eligible winner's overall Dice may be at most this far below the baseline's
MAX_OVERALL_DROP = 0.01
ALL = "all"
WINNING_RULE = (
    f"highest worst-group Dice (mean over structures) among strategies whose overall Dice drops less than "
    f"{MAX_OVERALL_DROP} below the baseline's"
)


def comparison_frame(cases: Sequence[CaseScores], attributes: Sequence[str]) -> pd.DataFrame:
    """The audit frame of one candidate's cases, true Dice in every estimator column (and ``all`` rows)."""
    rows: list[dict[str, Any]] = []
    for c in cases:
        d = c.demographics
        day = datetime.fromisoformat(str(d["study_date"])).date()
        base = {
            "pseudonym": hashlib.sha256(c.case.encode()).hexdigest()[:16],
            "case_id": c.index + 1,
            "study_date": day,
            "received_at": datetime.combine(day, dtime(12, 0), tzinfo=UTC),
            "site": d["site"],
            "manufacturer": d["manufacturer"],
            "scanner_model": d["scanner_model"],
            "model": c.candidate,
            "model_version": "",
            "sex": d["sex"],
            "age_years": d["age_years"],
            "age_band": d["age_band"],
            "ethnic_group": d["ethnic_group"],
            "bmi": d["bmi"],
            "bmi_band": d["bmi_band"],
            "case_route": "PASS",
            "route": "PASS",
            "review_state": "not_needed",
        }
        if len(attributes) > 1:
            base[attributes[0]] = c.group
        per: list[tuple[str, dict[str, float | None]]] = list(c.structures.items())
        dices = [v["dice"] for _, v in per if v["dice"] is not None]
        nsds = [v["nsd"] for _, v in per if v["nsd"] is not None]
        hds = [v["hd95_mm"] for _, v in per if v["hd95_mm"] is not None]
        summary = {
            "dice": float(np.mean(dices)) if dices else None,
            "nsd": float(np.mean(nsds)) if nsds else None,
            "hd95_mm": float(np.mean(hds)) if hds else None,
        }
        for name, v in [*per, (ALL, summary)]:
            rows.append(
                base
                | {
                    "structure": name,
                    "volume": None,
                    "rca_dice": v["dice"],
                    "predicted_dice": v["dice"],
                    "predicted_low": None,
                    "predicted_high": None,
                    "true_dice": v["dice"],
                    "true_nsd": v["nsd"],
                    "true_hd95_mm": v["hd95_mm"],
                }
            )
    frame = pd.DataFrame(rows)
    for col in FRAME_COLUMNS:
        if col not in frame.columns:
            frame[col] = None
    for col in ("rca_dice", "predicted_dice", "true_dice", "true_nsd", "true_hd95_mm", "volume"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame


def _bootstrap_mean(values: np.ndarray, n: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = [float(np.nanmean(rng.choice(values, len(values)))) for _ in range(n)]
    lo, hi = np.percentile(means, [2.5, 97.5])
    return round(float(lo), 4), round(float(hi), 4)


def _r(v: Any) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), 4)


def summarise_candidate(
    cases: Sequence[CaseScores], attributes: Sequence[str], *, bootstrap: int = 1000
) -> dict[str, Any]:
    """Per structure: overall Dice with CI, per-group Dice with CIs, NSD, HD95, gap, SER, ES-Dice, worst group."""
    frame = comparison_frame(cases, attributes)
    n_patients = frame["pseudonym"].nunique()
    smallest = int(frame.groupby(attributes[0])["pseudonym"].nunique().min())
    settings = AuditSettings(
        min_cell=max(1, min(10, smallest)), min_cases=max(1, min(20, n_patients)), bootstrap=bootstrap
    )
    audit = compute_audit(frame, settings=settings)
    column = attributes[0]
    out: dict[str, Any] = {}
    for structure, sub in frame.groupby("structure", sort=False):
        dice = sub["true_dice"].to_numpy(dtype=float)
        lo, hi = _bootstrap_mean(dice, bootstrap, 0)
        groups = {
            r["group"]: {
                "dice": _r(r["predictor"]["mean"]),
                "low": _r(r["predictor"]["low"]),
                "high": _r(r["predictor"]["high"]),
                "patients": r["patients"],
                "nsd": _r((r["truth"] or {}).get("nsd")),
                "hd95_mm": _r((r["truth"] or {}).get("hd95_mm")),
            }
            for r in audit["metrics"]
            if r["attribute"] == column and r["structure"] == structure and r["predictor"]
        }
        disp = next(
            (
                d
                for d in audit["disparities"]
                if d["attribute"] == column and d["structure"] == structure and d["estimator"] == "predictor"
            ),
            None,
        )
        worst = min(groups, key=lambda g: groups[g]["dice"] or 0.0) if groups else None
        out[str(structure)] = {
            "dice": _r(float(np.nanmean(dice))),
            "dice_low": lo,
            "dice_high": hi,
            "nsd": _r(float(sub["true_nsd"].mean())),
            "hd95_mm": _r(float(sub["true_hd95_mm"].mean())),
            "groups": groups,
            "worst_group": worst,
            "worst_group_dice": groups[worst]["dice"] if worst else None,
            "gap": _r(disp["gap"]) if disp else None,
            "gap_low": _r(disp["gap_low"]) if disp else None,
            "gap_high": _r(disp["gap_high"]) if disp else None,
            "ser": _r(disp["ser"]) if disp and disp["ser"] is not None else None,
            "es_dice": _r(disp["es_dice"]) if disp else None,
            "p_holm": _r(disp["p_holm"]) if disp and disp["p_holm"] is not None else None,
        }
    return out


def compare(
    cases: Sequence[CaseScores],
    strategies: dict[str, str],
    attributes: Sequence[str],
    *,
    baseline: str,
    majority: str | None,
    bootstrap: int = 1000,
) -> dict[str, Any]:
    """The comparison of every candidate (``strategies``: candidate name -> strategy) and the winner.

    ``majority`` is the group most represented in training; its Dice change against ``baseline`` says
    whether mitigation costs the majority.
    """
    per = {
        name: summarise_candidate([c for c in cases if c.candidate == name], attributes, bootstrap=bootstrap)
        for name in strategies
    }
    if baseline not in per:
        raise ValueError(f"baseline {baseline!r} is not among the candidates {sorted(per)}")
    base = per[baseline][ALL]
    rows = []
    for name, strategy in strategies.items():
        s = per[name][ALL]
        maj = s["groups"].get(majority, {}).get("dice") if majority else None
        maj_base = base["groups"].get(majority, {}).get("dice") if majority else None
        rows.append(
            {
                "strategy": strategy,
                "model": name,
                "dice": s["dice"],
                "dice_ci": [s["dice_low"], s["dice_high"]],
                "groups": {g: v["dice"] for g, v in s["groups"].items()},
                "group_ci": {g: [v["low"], v["high"]] for g, v in s["groups"].items()},
                "worst_group": s["worst_group"],
                "worst_group_dice": s["worst_group_dice"],
                "gap": s["gap"],
                "gap_ci": [s["gap_low"], s["gap_high"]],
                "ser": s["ser"],
                "es_dice": s["es_dice"],
                "majority_change": _r(maj - maj_base) if maj is not None and maj_base is not None else None,
                "overall_change": _r(s["dice"] - base["dice"]),
                "nsd": s["nsd"],
                "hd95_mm": s["hd95_mm"],
            }
        )
    eligible = [r for r in rows if r["model"] == baseline or (r["overall_change"] or 0.0) > -MAX_OVERALL_DROP]
    winner = max(eligible, key=lambda r: (r["worst_group_dice"] or 0.0, r["dice"] or 0.0))
    return {
        "attributes": list(attributes),
        "baseline": baseline,
        "majority": majority,
        "rule": WINNING_RULE,
        "winner": {"model": winner["model"], "strategy": winner["strategy"]},
        "eligible": [r["model"] for r in eligible],
        "table": rows,
        "per_structure": per,
    }
