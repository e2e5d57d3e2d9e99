"""The group-level audit of a hospital group, from its sites' exports (:mod:`~fairness_registry.audit.export`).

:func:`merge_exports` returns a result shaped as :func:`~fairness_registry.audit.compute.compute_audit`'s, so
the same renderer writes it. How each figure is combined:

- counts, cases, sums: added over the sites that show the cell (a cell suppressed at a site stays out: its
  patients are missing from the group's figure, and the notes say how many cells were withheld);
- means (estimates, rates, truth, regions): total sum over total count, equal to the mean of the pooled
  cases when no site withheld the cell;
- 95% CIs of a group's estimate: the patient-level bootstrap's variance of the pooled ratio estimator, from
  the patient moments the sites export (``sum(s_i - R c_i)**2 / C**2``, the first-order expansion of the
  bootstrap the single-site audit runs), with a normal interval;
- disparity gap CI: ``bootstrap`` draws of each group's estimate from that normal distribution (groups of one
  attribute are disjoint sets of patients); group test: Wald chi-square of equal means (the rank tests of a
  single-site audit need case values), Holm-corrected over the audit;
- validity: Pearson r and MAE from the exported sums;
- no adjusted regression and no distribution plot (both need case rows, which never leave a site).

Patients are counted once per site: a patient seen at two sites (two pseudonymisation secrets) counts twice.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from fairness_registry.audit.compute import RESULT_VERSION, _clean
from fairness_registry.audit.export import EXPORT_KIND, EXPORT_VERSION
from fairness_registry.audit.plots import Figure, forest_plot, spatial_plot, trend_plot
from fairness_registry.audit.settings import ATTRIBUTES, ESTIMATORS, MISSING, AuditError, AuditSettings
from fairness_registry.audit.stats import disparity_record, holm_correct
from fairness_registry.audit.trend import alerts, findings, trend

__all__ = ["WALD_TEST", "group_figures", "merge_exports"]

logger = logging.getLogger(__name__)

#: Name of the group test of a merged audit.
WALD_TEST = "Wald chi-square"
_Z95 = float(stats.norm.ppf(0.975))


def _check(exports: Sequence[Mapping[str, Any]]) -> AuditSettings:
    """The shared settings of the exports; :class:`AuditError` if they cannot be merged."""
    if len(exports) < 2:
        raise AuditError(f"a group audit merges at least two site exports; got {len(exports)}")
    for i, e in enumerate(exports):
        if e.get("kind") != EXPORT_KIND or e.get("version") != EXPORT_VERSION:
            raise AuditError(
                f"export {i + 1} is not a site audit export of version {EXPORT_VERSION} "
                f"(kind {e.get('kind')!r}, version {e.get('version')!r}); make it with `fairnode audit export`"
            )
    sites = [str(e["meta"]["site"]) for e in exports]
    if len(set(sites)) != len(sites):
        raise AuditError(f"two exports name the same site ({sorted(sites)}); give each site its own name")
    models = {str(e["meta"].get("model")) for e in exports}
    if len(models) != 1:
        raise AuditError(f"the exports audit different models ({sorted(models)}); merge exports of one model")
    min_cells = {int(e["settings"]["min_cell"]) for e in exports}
    if len(min_cells) != 1:
        raise AuditError(f"the sites suppress at different min_cell ({sorted(min_cells)}); export with one value")
    return AuditSettings(**exports[0]["settings"])


def _ratio(total: float, count: float) -> float | None:
    return total / count if count > 0 else None


def _sum(items: Iterable[Mapping[str, Any] | None]) -> dict[str, float]:
    """Key-wise sum of sum/count dicts (``None`` items skipped)."""
    out: dict[str, float] = {}
    for item in items:
        for key, value in (item or {}).items():
            if isinstance(value, int | float):
                out[key] = out.get(key, 0.0) + float(value)
    return out


def _order(group: str) -> tuple[bool, str]:
    return group == MISSING, group


def _counts(exports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    tables: dict[str, Any] = {}
    for attribute in ATTRIBUTES:
        parts = [e["counts"][attribute] for e in exports]
        cells: dict[str, dict[str, Any]] = {}
        for part in parts:
            for c in part["cells"]:
                cell = cells.setdefault(c["group"], {"group": c["group"], "patients": 0, "cases": 0})
                cell["patients"] += c["patients"]
                cell["cases"] += c["cases"]
        total = sum(int(p["total"]) for p in parts)
        missing_known = all(p["missing_rate"] is not None for p in parts)
        tables[attribute] = {
            "total": total,
            "cells": [cells[g] for g in sorted(cells, key=_order)],
            "suppressed": sum(int(p["suppressed"]) for p in parts),
            "missing_rate": (
                sum(p["missing_rate"] * p["total"] for p in parts) / total if missing_known and total else None
            ),
        }
    return tables


def _intersections(exports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, first in exports[0]["intersections"].items():
        cells: dict[tuple[str, str], int] = {}
        for e in exports:
            for c in e["intersections"][name]["cells"]:
                cells[(c["row"], c["column"])] = cells.get((c["row"], c["column"]), 0) + int(c["patients"])
        out[name] = {
            "rows": first["rows"],
            "columns": first["columns"],
            "cells": [
                {"row": r, "column": c, "patients": n}
                for (r, c), n in sorted(cells.items(), key=lambda i: (i[0][0] == MISSING, i[0], i[0][1] == MISSING))
            ],
            "suppressed": sum(int(e["intersections"][name]["suppressed"]) for e in exports),
        }
    return out


def _overall(exports: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    by_structure: dict[str, list[Mapping[str, Any]]] = {}
    for e in exports:
        for o in e["overall"]:
            by_structure.setdefault(o["structure"], []).append(o)
    out = []
    for structure in sorted(by_structure):
        parts = by_structure[structure]
        record: dict[str, Any] = {
            "structure": structure,
            "patients": sum(int(p["patients"]) for p in parts),
            "cases": sum(int(p["cases"]) for p in parts),
        }
        for estimator in ESTIMATORS:
            total = _sum(p[estimator] for p in parts)
            record[estimator] = _ratio(total.get("sum", 0.0), total.get("n", 0.0))
        out.append(record)
    return out


def _estimate(parts: Sequence[Mapping[str, Any]]) -> tuple[dict[str, float | None], float] | None:
    """Mean and normal 95% CI of the pooled ratio estimator, and its standard error."""
    m = _sum({k: v for k, v in p.items() if k != "bootstrap"} for p in parts)
    if m.get("n", 0.0) <= 0:
        return None
    mean = m["sum"] / m["n"]
    residual = m["ss"] - 2.0 * mean * m["sc"] + mean * mean * m["cc"]
    se = math.sqrt(max(residual, 0.0)) / m["n"]
    return {"mean": mean, "low": mean - _Z95 * se, "high": mean + _Z95 * se}, se


def _validity(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    for estimator in ESTIMATORS:
        v = _sum(p.get(estimator) for p in parts)
        n = v.get("n", 0.0)
        if n < 3:
            continue
        vx, vy = n * v["xx"] - v["x"] ** 2, n * v["yy"] - v["y"] ** 2
        r = (n * v["xy"] - v["x"] * v["y"]) / math.sqrt(vx * vy) if vx > 0 and vy > 0 else None
        out[estimator] = {"n": int(n), "r": r, "mae": v["abs"] / n}
    return out


def _metrics(
    exports: Sequence[Mapping[str, Any]], settings: AuditSettings
) -> tuple[list[dict[str, Any]], dict[tuple[str, str, str, str], float], list[str]]:
    """Group records, ``(attribute, group, structure, estimator) -> standard error``, and the partial cells."""
    keyed: dict[tuple[str, str, str], list[tuple[str, Mapping[str, Any]]]] = {}
    for e in exports:
        for cell in e["cells"]:
            keyed.setdefault((cell["attribute"], cell["group"], cell["structure"]), []).append(
                (e["meta"]["site"], cell)
            )
    rank = {a: i for i, a in enumerate(ATTRIBUTES)}
    records: list[dict[str, Any]] = []
    errors: dict[tuple[str, str, str, str], float] = {}
    partial: list[str] = []
    for attribute, group, structure in sorted(keyed, key=lambda k: (k[2], rank[k[0]], k[1])):
        entries = keyed[(attribute, group, structure)]
        sites, cells = [s for s, _ in entries], [c for _, c in entries]
        if attribute != "site" and len(sites) < len(exports):
            partial.append(f"{attribute} {group} ({structure}): from {', '.join(sites)} only")
        review, failure = _sum(c["review"] for c in cells), _sum(c["failure"] for c in cells)
        record: dict[str, Any] = {
            "attribute": attribute,
            "group": group,
            "structure": structure,
            "patients": sum(int(c["patients"]) for c in cells),
            "cases": sum(int(c["cases"]) for c in cells),
            "review_rate": _ratio(review.get("sum", 0.0), review.get("n", 0.0)),
            "failure_rate": _ratio(failure.get("sum", 0.0), failure.get("n", 0.0)),
            "sites": sites,
        }
        for estimator in ESTIMATORS:
            parts = [c[estimator] for c in cells if c.get(estimator)]
            estimate = _estimate(parts) if parts else None
            record[estimator] = estimate[0] if estimate else None
            if estimate:
                errors[(attribute, group, structure, estimator)] = estimate[1]
        truths = [c["truth"] for c in cells if c.get("truth")]
        truth_patients = sum(int(t["patients"]) for t in truths)
        if truths and truth_patients >= settings.min_cell:
            sums = {name: _sum(t[name] for t in truths) for name in ("dice", "nsd", "hd95_mm")}
            record["truth"] = {
                "cases": int(sums["dice"].get("n", 0.0)),
                "patients": truth_patients,
                **{name: _ratio(s.get("sum", 0.0), s.get("n", 0.0)) for name, s in sums.items()},
                # sites that showed their corrections (a site with fewer than min_cell corrected patients does not)
                "sites": [s for s, c in entries if c.get("truth")],
            }
            record["validity"] = _validity([c["validity"] for c in cells if c.get("validity")])
        else:
            record["truth"], record["validity"] = None, None
        regions = {key for c in cells for key in c.get("regions", {})}
        record["regions"] = {
            key: _ratio(s.get("sum", 0.0), s.get("n", 0.0))
            for key in sorted(regions)
            if (s := _sum(c["regions"].get(key) for c in cells))
        }
        records.append(record)
    return records, errors, partial


def _wald(means: Mapping[str, float], errors: Mapping[str, float]) -> tuple[float | None, float | None]:
    """Wald chi-square statistic and p-value of equal group means (None when a variance is zero)."""
    variances = np.array([errors[g] ** 2 for g in means])
    if (variances <= 0).any():
        return None, None
    weights = 1.0 / variances
    values = np.array(list(means.values()))
    pooled = float((weights * values).sum() / weights.sum())
    statistic = float((weights * (values - pooled) ** 2).sum())
    return statistic, float(stats.chi2.sf(statistic, df=len(values) - 1))


def _disparities(
    records: Sequence[Mapping[str, Any]],
    errors: Mapping[tuple[str, str, str, str], float],
    overall: Sequence[Mapping[str, Any]],
    settings: AuditSettings,
) -> list[dict[str, Any]]:
    """The single-site audit's disparity measures from the merged group estimates (see the module docstring)."""
    overall_by = {o["structure"]: o for o in overall}
    out: list[dict[str, Any]] = []
    for attribute, structure in sorted({(r["attribute"], r["structure"]) for r in records}):
        rows = [r for r in records if r["attribute"] == attribute and r["structure"] == structure]
        for estimator in ESTIMATORS:
            means = {r["group"]: float(r[estimator]["mean"]) for r in rows if r[estimator]}
            if len(means) < 2:
                continue
            se = {g: errors[(attribute, g, structure, estimator)] for g in means}
            rng = np.random.default_rng([settings.seed, zlib.crc32(f"{attribute}|{structure}|{estimator}".encode())])
            draws = np.vstack([rng.normal(means[g], se[g], settings.bootstrap) for g in means])
            gap_low, gap_high = np.percentile(draws.max(axis=0) - draws.min(axis=0), [2.5, 97.5])
            statistic, p = _wald(means, se)
            out.append(
                disparity_record(
                    (attribute, structure, estimator),
                    means,
                    (float(gap_low), float(gap_high)),
                    overall_by[structure][estimator],
                    (WALD_TEST, statistic, p),
                )
            )
    holm_correct(out)
    return out


def _summary(exports: Sequence[Mapping[str, Any]], counts: Mapping[str, Any]) -> dict[str, Any]:
    parts = [e["summary"] for e in exports]
    patients = sum(int(p["patients"]) for p in parts)

    def union(key: str) -> list[str]:
        return sorted({str(v) for p in parts for v in p[key]})

    return {
        "patients": patients,
        "cases": sum(int(p["cases"]) for p in parts),
        "structures": union("structures"),
        "models": union("models"),
        "model_versions": union("model_versions"),
        "sites": len([c for c in counts["site"]["cells"] if c["group"] != MISSING]),
        "first_received": min(str(p["first_received"]) for p in parts),
        "last_received": max(str(p["last_received"]) for p in parts),
        "missing_demographics_rate": sum(int(p["patients_missing_demographics"]) for p in parts) / patients,
        "cases_with_truth": sum(int(p["cases_with_truth"]) for p in parts),
    }


def merge_exports(
    exports: Sequence[Mapping[str, Any]],
    *,
    previous: Sequence[Mapping[str, Any]] = (),
    label: str = "group audit",
) -> dict[str, Any]:
    """The group-level audit of several sites' exports (see the module docstring for each figure).

    Parameters
    ----------
    exports
        Documents of :func:`~fairness_registry.audit.export.site_export`, one per site, of one model, made
        with the same ``min_cell``.
    previous
        Earlier group-level results (oldest first) for the trend.
    label
        Name of this audit's period in the trend.

    Returns
    -------
    dict
        Shaped as :func:`~fairness_registry.audit.compute.compute_audit`'s result (``regression`` empty),
        with ``group`` (the sites and how the figures were combined).

    Raises
    ------
    AuditError
        Fewer than two exports, not site exports, two with one site name, several models, or different
        ``min_cell``.
    """
    settings = _check(exports)
    counts = _counts(exports)
    overall = _overall(exports)
    records, errors, partial = _metrics(exports, settings)
    sites = [str(e["meta"]["site"]) for e in exports]
    withheld = sum(int(t["suppressed"]) for t in counts.values())
    notes = [
        f"Group-level audit merged from the aggregates of {len(sites)} sites ({', '.join(sites)}); no case-level "
        "row left a site. Confidence intervals: normal approximation of the patient-level bootstrap; group "
        f"tests: {WALD_TEST} of equal means; no adjusted regression and no distribution plots (they need case rows).",
    ]
    if withheld:
        notes.append(
            f"{withheld} small cells were suppressed at their sites and stay withheld: a group's figures "
            "leave out the patients of the sites that suppressed it."
        )
    notes.extend(f"partial group: {p}" for p in partial)
    result: dict[str, Any] = {
        "version": RESULT_VERSION,
        "label": label,
        "summary": _summary(exports, counts),
        "counts": counts,
        "intersections": _intersections(exports),
        "overall": overall,
        "metrics": records,
        "disparities": _disparities(records, errors, overall, settings),
        "regression": [],
        "notes": notes,
        "settings": settings.model_dump(),
        "attributes": list(ATTRIBUTES),
        "group": {"sites": sites, "periods": sorted({str(e["meta"].get("period")) for e in exports})},
    }
    result["trend"] = trend(result, previous, label)
    result["alerts"] = alerts(result, previous, settings)
    result["findings"] = findings(result, settings)
    logger.info("group audit of %d sites: %d group records", len(sites), len(records))
    cleaned: dict[str, Any] = _clean(result)
    return cleaned


def group_figures(result: Mapping[str, Any]) -> dict[str, list[Figure]]:
    """The report's figures that aggregates allow: forest, spatial and trend (no distribution plot)."""
    out: dict[str, list[Figure]] = {"forest": [], "distribution": [], "spatial": [], "trend": []}
    for attribute in result["attributes"]:
        for kind, figure in (
            ("forest", forest_plot(result, attribute)),
            ("spatial", spatial_plot(result, attribute)),
            ("trend", trend_plot(result, attribute)),
        ):
            if figure is not None:
                out[kind].append(figure)
    return out
