"""Measured cases in, the benchmark's JSON-ready result out (no files): groups, disparities, regression, errors.

Definitions are the audit's (:mod:`fairness_registry.audit.stats`), applied to the true metrics of a
labelled cohort instead of the audit's estimates:

- per group and intersection (:data:`ATTRIBUTES`, :data:`INTERSECTIONS`): mean Dice, NSD and HD95 of each
  structure with a subject-level bootstrap 95% CI (percentile), means by fairlearn's ``MetricFrame``;
- disparities of Dice and NSD: :func:`fairness_registry.audit.stats.disparities` (gap with bootstrap CI,
  ratio, skewed error ratio, SD, ES-Dice, Mann-Whitney / Kruskal-Wallis with Holm correction);
- adjusted effects: :func:`fairness_registry.audit.stats.regression` (sex, age, BMI, ethnic group, scanner
  model and log structure size) on Dice and NSD;
- where errors fall: the mean share of false-positive and false-negative area in each region, per group.

Groups and cells with fewer than ``min_cell`` subjects are left out (listed under ``hidden``).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame

from fairness_registry.audit.settings import INTERSECTIONS, REGION_KEYS, AuditSettings
from fairness_registry.audit.stats import disparities, regression
from fairnode.benchmark.measure import CaseResult
from fairnode.benchmark.settings import BenchmarkSettings

__all__ = ["ATTRIBUTES", "METRICS", "case_frame", "compute_benchmark", "group_columns"]

#: Attributes groups are formed from, in report order.
ATTRIBUTES: tuple[str, ...] = ("sex", "age_band", "ethnic_group", "bmi_band")
#: Metric -> frame column; disparities are computed for the overlap metrics (higher is better).
METRICS: dict[str, str] = {"dice": "dice", "nsd": "nsd", "hd95_mm": "hd95_mm"}
_DISPARITY_METRICS = ("dice", "nsd")
#: The audit's functions read the estimator column of this name; the benchmark puts a true metric there.
_ALIAS = "predicted_dice"


def _json_clean(value: Any) -> Any:
    """Strict JSON: numpy scalars to Python, non-finite floats to ``None``."""
    if isinstance(value, Mapping):
        return {str(k): _json_clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


def group_columns() -> dict[str, tuple[str, ...]]:
    """Grouping name -> the attributes it combines (one for a group, two for an intersection)."""
    out: dict[str, tuple[str, ...]] = {a: (a,) for a in ATTRIBUTES}
    out.update({f"{a} x {b}": (a, b) for a, b in INTERSECTIONS})
    return out


def case_frame(cases: Sequence[CaseResult], site: str) -> pd.DataFrame:
    """One row per (case, structure): the metrics, sizes, region shares and the covariates the audit's
    regression reads (``pseudonym`` is the case's index in the cohort, never a patient identifier)."""
    rows = []
    for c in cases:
        d = c.demographics
        for s in c.structures:
            row: dict[str, Any] = {
                "pseudonym": c.case,
                "case_id": c.case,
                "structure": s["name"],
                "site": site,
                "sex": d["sex"],
                "age_years": pd.to_numeric(d["age_years"], errors="coerce"),
                "age_band": d["age_band"],
                "bmi": pd.to_numeric(d["bmi"], errors="coerce"),
                "bmi_band": d["bmi_band"],
                "ethnic_group": d["ethnic_group"],
                "scanner_model": d["model_name"],
                "volume": s["volume"],
                "fp_size": s["fp_size"],
                "fn_size": s["fn_size"],
                **{m: s[m] for m in METRICS},
            }
            for kind in ("fp", "fn"):
                for key in REGION_KEYS:
                    row[f"{kind}_{key}"] = s[f"{kind}_regions"].get(key, np.nan)
            rows.append(row)
    frame = pd.DataFrame(rows)
    for name, attributes in group_columns().items():
        if len(attributes) == 2:
            frame[name] = frame[attributes[0]].astype(str) + " & " + frame[attributes[1]].astype(str)
    return frame


def _rng(settings: BenchmarkSettings, *key: str) -> np.random.Generator:
    return np.random.default_rng([settings.seed, zlib.crc32("|".join(key).encode("utf-8"))])


def _boot(values: np.ndarray, settings: BenchmarkSettings, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap means of ``values`` (one per subject; NaN ignored)."""
    idx = rng.integers(0, len(values), size=(settings.bootstrap, len(values)))
    with np.errstate(invalid="ignore"):
        return np.asarray(np.nanmean(values[idx], axis=1)) if np.isfinite(values).any() else np.full(len(idx), np.nan)


def _ci(mean: float, draws: np.ndarray) -> dict[str, float | None]:
    if not np.isfinite(mean) or not np.isfinite(draws).any():
        return {"mean": None, "low": None, "high": None}
    low, high = np.nanpercentile(draws, [2.5, 97.5])
    return {"mean": float(mean), "low": float(low), "high": float(high)}


def _group_means(sub: pd.DataFrame, labels: np.ndarray) -> pd.DataFrame:
    """Per-group means of every metric (fairlearn MetricFrame; NaN values ignored)."""
    matrix = sub[list(METRICS)].to_numpy(dtype=float)

    def means(_y: np.ndarray, rows: np.ndarray) -> tuple[float, ...]:
        block = matrix[rows.astype(int)]
        with np.errstate(invalid="ignore"):
            return tuple(float(v) for v in np.nanmean(np.where(np.isfinite(block), block, np.nan), axis=0))

    positions = np.arange(len(sub))
    frame = MetricFrame(metrics={"m": means}, y_true=positions, y_pred=positions, sensitive_features=labels)
    by_group = frame.by_group["m"]
    return pd.DataFrame([list(v) for v in by_group.to_numpy()], index=by_group.index, columns=list(METRICS))


def _records(
    frame: pd.DataFrame, settings: BenchmarkSettings
) -> tuple[list[dict[str, Any]], dict[Any, Any], list[Any]]:
    records: list[dict[str, Any]] = []
    boot: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}
    hidden: list[dict[str, Any]] = []
    for structure, sub in frame.groupby("structure", sort=True):
        for name in group_columns():
            labels = sub[name].astype(str).to_numpy()
            counts = pd.Series(labels).value_counts()
            means = _group_means(sub, labels)
            for group in sorted(counts.index):
                n = int(counts[group])
                if n < settings.min_cell:
                    if structure == frame["structure"].iloc[0]:
                        hidden.append({"grouping": name, "group": group, "n": n})
                    continue
                rows = sub[labels == group]
                record: dict[str, Any] = {"grouping": name, "group": group, "structure": str(structure), "n": n}
                for metric, column in METRICS.items():
                    draws = _boot(
                        rows[column].to_numpy(dtype=float),
                        settings,
                        _rng(settings, name, group, str(structure), metric),
                    )
                    record[metric] = _ci(float(means.loc[group, metric]), draws)
                    boot.setdefault((name, str(structure), metric), {})[group] = draws
                for kind in ("fp", "fn"):
                    record[f"{kind}_regions"] = {k: float(rows[f"{kind}_{k}"].mean()) for k in REGION_KEYS}
                    record[f"{kind}_size"] = float(rows[f"{kind}_size"].mean())
                records.append(record)
    return records, boot, hidden


def _disparities(frame: pd.DataFrame, records: list[dict[str, Any]], boot: dict[Any, Any]) -> list[dict[str, Any]]:
    """The audit's disparity measures for each overlap metric (Holm correction over all of them together)."""
    out: list[dict[str, Any]] = []
    for metric in _DISPARITY_METRICS:
        aliased = frame.assign(**{_ALIAS: frame[metric], "rca_dice": np.nan})
        recs = [
            {"attribute": r["grouping"], "structure": r["structure"], "group": r["group"],
             "predictor": r[metric] if r[metric]["mean"] is not None else None, "rca": None}
            for r in records
        ]  # fmt: skip
        draws = {(a, s, "predictor"): g for (a, s, m), g in boot.items() if m == metric}
        for d in disparities(aliased, recs, draws):
            d.pop("estimator")
            out.append({"metric": metric, **d})
    return out


def _regression(frame: pd.DataFrame, settings: BenchmarkSettings) -> tuple[list[dict[str, Any]], list[str]]:
    audit = AuditSettings(min_cell=settings.min_cell, min_cases=1, bootstrap=settings.bootstrap, seed=settings.seed)
    models, notes = [], []
    for metric in _DISPARITY_METRICS:
        aliased = frame.assign(**{_ALIAS: frame[metric], "rca_dice": np.nan})
        fitted, why = regression(aliased, audit)
        models += [{"metric": metric, **{k: v for k, v in m.items() if k != "estimator"}} for m in fitted]
        notes += [f"{metric}: {n.replace(', quality predictor', '').replace(', predictor', '')}" for n in why
                  if ", rca:" not in n]  # fmt: skip
    return models, notes


def compute_benchmark(
    cases: Sequence[CaseResult], *, settings: BenchmarkSettings, model: dict[str, Any], cohort: dict[str, Any]
) -> dict[str, Any]:
    """The benchmark result (strict JSON): ``overall``, ``groups``, ``disparities``, ``regression``,
    ``regression_notes``, ``hidden``, ``model``, ``cohort``, ``settings``."""
    if not cases:
        raise ValueError("no case was measured")
    frame = case_frame(cases, site=str(cohort.get("name", "cohort")))
    overall = []
    for structure, sub in frame.groupby("structure", sort=True):
        row: dict[str, Any] = {"structure": str(structure), "n": int(sub["case_id"].nunique())}
        for metric, column in METRICS.items():
            values = sub[column].to_numpy(dtype=float)
            draws = _boot(values, settings, _rng(settings, "all", str(structure), metric))
            row[metric] = _ci(float(np.nanmean(values)) if np.isfinite(values).any() else float("nan"), draws)
        overall.append(row)
    records, boot, hidden = _records(frame, settings)
    models, notes = _regression(frame, settings)
    result = {
        "model": model,
        "cohort": cohort,
        "settings": settings.model_dump(mode="json"),
        "overall": overall,
        "groups": records,
        "groupings": list(group_columns()),
        "disparities": _disparities(frame, records, boot),
        "regression": models,
        "regression_notes": notes,
        "hidden": hidden,
        "region_keys": list(REGION_KEYS),
    }
    cleaned: dict[str, Any] = _json_clean(result)
    return cleaned
