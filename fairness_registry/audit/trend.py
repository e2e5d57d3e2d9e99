"""Trend against earlier audits, the alerts, and the plain-language findings of the first page."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fairness_registry.audit.settings import ATTRIBUTE_LABELS, ESTIMATOR_LABELS, AuditSettings

__all__ = ["alerts", "findings", "group_name", "trend"]


def group_name(attribute: str, group: str) -> str:
    """How the report names a group, e.g. ``"sex F"``, ``"age band 75+"``."""
    return f"{ATTRIBUTE_LABELS.get(attribute, attribute)} {group}"


def _p(value: float) -> str:
    """A p-value as the report words it: ``p < 0.001`` or ``p = 0.012``."""
    return "p < 0.001" if value < 0.001 else f"p = {value:.3f}"


def _means(result: Mapping[str, Any]) -> dict[tuple[str, str, str, str], float]:
    out: dict[tuple[str, str, str, str], float] = {}
    for r in result.get("metrics", []):
        for estimator in ESTIMATOR_LABELS:
            value = (r.get(estimator) or {}).get("mean")
            if value is not None:
                out[(r["attribute"], r["group"], r["structure"], estimator)] = float(value)
    return out


def _gaps(result: Mapping[str, Any]) -> dict[tuple[str, str, str], float]:
    return {(d["attribute"], d["structure"], d["estimator"]): float(d["gap"]) for d in result.get("disparities", [])}


def trend(current: Mapping[str, Any], previous: Sequence[Mapping[str, Any]], label: str) -> dict[str, Any]:
    """Group means and gaps over the earlier audits (oldest first) and this one.

    Returns
    -------
    dict
        ``{"periods": [...], "means": [{"attribute", "group", "structure", "estimator", "values": [...]}],
        "gaps": [{"attribute", "structure", "estimator", "values": [...]}]}``, ``values`` aligned with
        ``periods`` (``None`` where an audit did not report the group).
    """
    audits = [*previous, current]
    periods = [
        str(a.get("meta", {}).get("period") or a.get("label") or f"audit {i + 1}") for i, a in enumerate(previous)
    ]
    periods.append(label)
    means = [_means(a) for a in audits]
    gaps = [_gaps(a) for a in audits]
    return {
        "periods": periods,
        "means": [
            {
                "attribute": k[0],
                "group": k[1],
                "structure": k[2],
                "estimator": k[3],
                "values": [m.get(k) for m in means],
            }
            for k in sorted(means[-1])
        ],
        "gaps": [
            {"attribute": k[0], "structure": k[1], "estimator": k[2], "values": [g.get(k) for g in gaps]}
            for k in sorted(gaps[-1])
        ],
    }


def alerts(
    result: Mapping[str, Any], previous: Sequence[Mapping[str, Any]], settings: AuditSettings
) -> list[dict[str, Any]]:
    """Disparity, trend-drop and trend-gap alerts (see :class:`~fairness_registry.audit.AuditSettings`).

    A trend alert compares with the latest earlier audit and also needs the earlier value to lie outside this
    period's bootstrap 95% CI (of the group's estimate, or of the gap), so sampling noise in small groups does
    not raise it.
    """
    out: list[dict[str, Any]] = []
    means = _means(result)
    for d in result["disparities"]:
        if d["p_holm"] is None or d["p_holm"] >= settings.p_alert:
            continue
        best = means[(d["attribute"], d["best"], d["structure"], d["estimator"])]
        for (attribute, group, structure, estimator), mean in sorted(means.items()):
            if (attribute, structure, estimator) != (d["attribute"], d["structure"], d["estimator"]):
                continue
            if best - mean > settings.gap_alert:
                out.append(
                    {
                        "kind": "disparity",
                        "attribute": attribute,
                        "group": group,
                        "structure": structure,
                        "estimator": estimator,
                        "value": round(best - mean, 4),
                        "limit": settings.gap_alert,
                        "message": f"{structure}: {group_name(attribute, group)} has an estimated Dice "
                        f"({ESTIMATOR_LABELS[estimator]}) {best - mean:.3f} below {group_name(attribute, d['best'])} "
                        f"(alert above {settings.gap_alert:.3f}; Holm-corrected {_p(d['p_holm'])})",
                    }
                )
    if not previous:
        return out
    last_means, last_gaps = _means(previous[-1]), _gaps(previous[-1])
    highs = {
        (r["attribute"], r["group"], r["structure"], e): r[e]["high"]
        for r in result["metrics"]
        for e in ESTIMATOR_LABELS
        if r.get(e)
    }
    for key, mean in sorted(means.items()):
        before = last_means.get(key)
        # beyond the margin, and the earlier estimate outside this period's 95% CI (not sampling noise)
        if before is not None and before - mean > settings.trend_drop_margin and before > highs[key]:
            attribute, group, structure, estimator = key
            out.append(
                {
                    "kind": "trend-drop",
                    "attribute": attribute,
                    "group": group,
                    "structure": structure,
                    "estimator": estimator,
                    "value": round(before - mean, 4),
                    "limit": settings.trend_drop_margin,
                    "message": f"{structure}: the estimated Dice ({ESTIMATOR_LABELS[estimator]}) of "
                    f"{group_name(attribute, group)} fell by {before - mean:.3f} since the last audit "
                    f"({before:.3f} to {mean:.3f}; alert above {settings.trend_drop_margin:.3f})",
                }
            )
    compared = {
        (d["attribute"], d["structure"], d["estimator"]): d.get("compared") for d in previous[-1].get("disparities", [])
    }
    for d in result["disparities"]:
        attribute, structure, estimator, gap = d["attribute"], d["structure"], d["estimator"], d["gap"]
        before = last_gaps.get((attribute, structure, estimator))
        if compared.get((attribute, structure, estimator)) != d["compared"]:
            continue  # a gap over other groups (some too small then or now) is not comparable
        if before is not None and gap - before > settings.trend_gap_margin and before < d["gap_low"]:
            out.append(
                {
                    "kind": "trend-gap",
                    "attribute": attribute,
                    "group": None,
                    "structure": structure,
                    "estimator": estimator,
                    "value": round(gap - before, 4),
                    "limit": settings.trend_gap_margin,
                    "message": f"{structure}: the gap between {ATTRIBUTE_LABELS.get(attribute, attribute)} groups "
                    f"({ESTIMATOR_LABELS[estimator]}) grew by {gap - before:.3f} since the last audit "
                    f"({before:.3f} to {gap:.3f}; alert above {settings.trend_gap_margin:.3f})",
                }
            )
    return out


def _action(attribute: str, group: str) -> str:
    if attribute == "site":
        return (
            f"Check site {group}'s acquisition protocol (contrast, slice thickness, kVp) and scanners, and send "
            "more of its cases to review until the cause is found."
        )
    return (
        f"Send more cases of {group_name(attribute, group)} to review (a stricter review threshold for this "
        "group), collect corrected segmentations for it, and consider retraining with a mitigation (balanced "
        "training set, stratified batch sampling or a group-specific model), checking that no other group loses."
    )


def findings(result: Mapping[str, Any], settings: AuditSettings) -> list[dict[str, str]]:
    """The first page in plain language: each finding has a ``level`` (``risk``, ``info`` or ``ok``), a
    ``title``, a ``text`` and an ``action``."""
    out: list[dict[str, str]] = []
    records = {(r["attribute"], r["group"], r["structure"]): r for r in result["metrics"]}
    flagged: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for alert in result["alerts"]:
        if alert["kind"] == "disparity":
            flagged.setdefault((alert["attribute"], alert["group"]), []).append(alert)
    for (attribute, group), group_alerts in flagged.items():
        structures = sorted({a["structure"] for a in group_alerts})
        parts = []
        for structure in structures:
            record = records[(attribute, group, structure)]
            estimates = []
            for alert in (a for a in group_alerts if a["structure"] == structure):
                est = record[alert["estimator"]]
                estimates.append(
                    f"{ESTIMATOR_LABELS[alert['estimator']]} {est['mean']:.3f} (95% CI {est['low']:.3f} to "
                    f"{est['high']:.3f}), {alert['value']:.3f} below the best group"
                )
            parts.append(f"{structure} ({record['patients']} patients): " + "; ".join(estimates))
        name = group_name(attribute, group)
        out.append(
            {
                "level": "risk",
                "title": f"{name[:1].upper()}{name[1:]} at risk: {', '.join(structures)}",
                "text": f"Estimated Dice for {name}: " + ". ".join(parts) + ". Each difference is beyond the "
                f"alert margin of {settings.gap_alert:.2f} and unlikely to be chance (Holm-corrected p < "
                f"{settings.p_alert}).",
                "action": _action(attribute, group),
            }
        )
    trends: dict[tuple[str, str, str | None], list[dict[str, Any]]] = {}
    for alert in result["alerts"]:
        if alert["kind"] != "disparity":
            trends.setdefault((alert["kind"], alert["attribute"], alert["group"]), []).append(alert)
    for (kind, attribute, trend_group), trend_alerts in trends.items():
        who = (
            group_name(attribute, trend_group)
            if trend_group
            else f"{ATTRIBUTE_LABELS.get(attribute, attribute)} groups"
        )
        out.append(
            {
                "level": "risk",
                "title": f"{'Worse than last time' if kind == 'trend-drop' else 'Gap widening'}: {who}",
                "text": "; ".join(a["message"] for a in trend_alerts) + ".",
                "action": "Compare this period's cases with the last (new scanners, protocols, referral mix, model "
                "version) and review more of the affected group's cases.",
            }
        )
    adjusted: dict[tuple[str, str], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for model in result["regression"]:
        for term in model["terms"]:
            p = term["p_holm"]
            if p is not None and p < settings.p_alert and abs(term["estimate"]) > settings.gap_alert:
                adjusted.setdefault((model["structure"], term["term"]), []).append((model, term))
    for (structure, name), fits in adjusted.items():
        out.append(
            {
                "level": "info",
                "title": f"Adjusted effect: {name} ({structure})",
                "text": f"With the other factors held equal, {name} changes the estimated Dice of the {structure} by "
                + "; ".join(
                    f"{term['estimate']:+.3f} ({ESTIMATOR_LABELS[model['estimator']]}, 95% CI {term['low']:+.3f} to "
                    f"{term['high']:+.3f}, Holm-corrected {_p(term['p_holm'])})"
                    for model, term in fits
                )
                + ".",
                "action": "Use this to tell which factor drives a group difference before choosing a mitigation.",
            }
        )
    if not flagged:
        out.insert(
            0,
            {
                "level": "ok",
                "title": "No group found at risk",
                "text": f"No group's estimated Dice is more than {settings.gap_alert:.2f} below the best group's "
                f"with a Holm-corrected p below {settings.p_alert}, for any structure or estimator.",
                "action": "Keep the audit quarterly; no change needed on the evidence of this period.",
            },
        )
    missing = {a: t["missing_rate"] for a, t in result["counts"].items() if t["missing_rate"] is not None}
    high = {a: m for a, m in missing.items() if m > 0.2}
    if high:
        out.append(
            {
                "level": "info",
                "title": "Demographics often missing",
                "text": "Not recorded for many patients: "
                + ", ".join(f"{ATTRIBUTE_LABELS.get(a, a)} {m:.0%}" for a, m in sorted(high.items()))
                + ". Groups cannot be audited where they are not recorded.",
                "action": "Ask the sites to fill these header fields, or import them from the EHR.",
            }
        )
    if not any(r["truth"] for r in result["metrics"]):
        out.append(
            {
                "level": "info",
                "title": "Estimates not checked against corrections",
                "text": f"No group has corrected segmentations from at least {settings.min_cell} patients, so the "
                "estimators' accuracy per group could not be checked this period.",
                "action": "Have radiologists correct a sample of cases of every group.",
            }
        )
    return out
