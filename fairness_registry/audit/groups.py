"""Counts per group and intersection, and per-group metrics with patient-level bootstrap CIs.

Groups are formed from the frame's attribute columns; ``None``/NaN and ``"unknown"`` are the same missing
category (:data:`~fairness_registry.audit.settings.MISSING`), counted but never a group of the audit. Every
count is of distinct patients (pseudonyms) unless named ``cases``. Groups hidden by
:mod:`~fairness_registry.audit.suppression` appear nowhere in the output.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame

from fairness_registry.audit.settings import ATTRIBUTES, ESTIMATORS, INTERSECTIONS, MISSING, REGION_KEYS, AuditSettings
from fairness_registry.audit.suppression import hidden_cells, hidden_line

__all__ = ["GroupMetrics", "count_tables", "group_labels", "group_metrics", "intersection_tables", "patient_values"]

#: Columns handed to fairlearn's MetricFrame as ``y_pred``, in this order.
_METRIC_COLUMNS = ("rca_dice", "predicted_dice", "review", "failure", "true_dice", "true_nsd", "true_hd95_mm")


def group_labels(frame: pd.DataFrame, attribute: str) -> pd.Series:
    """The attribute's values as strings, missing values as :data:`MISSING`."""
    values = frame[attribute]
    labels = values.astype(object).where(values.notna(), MISSING).astype(str)
    return labels.where(~labels.isin(["", "nan", "None", "<NA>"]), MISSING)


def _patients_per_group(frame: pd.DataFrame, labels: pd.Series) -> dict[str, int]:
    counts = frame.groupby(labels.to_numpy())["pseudonym"].nunique()
    return {str(k): int(v) for k, v in counts.items()}


def count_tables(frame: pd.DataFrame, settings: AuditSettings) -> tuple[dict[str, Any], dict[str, set[str]]]:
    """One-way counts per attribute, with the missing rate, and the groups each attribute reports.

    Returns
    -------
    tables
        ``attribute -> {"total", "cells": [{"group", "patients", "cases"}], "suppressed", "missing_rate"}``;
        ``missing_rate`` (share of patients with the attribute not recorded) is ``None`` when the missing
        cell itself is hidden.
    reportable
        ``attribute -> groups`` that are shown (never :data:`MISSING`).
    """
    total = int(frame["pseudonym"].nunique())
    tables: dict[str, Any] = {}
    reportable: dict[str, set[str]] = {}
    for attribute in ATTRIBUTES:
        labels = group_labels(frame, attribute)
        patients = _patients_per_group(frame, labels)
        cases = frame.groupby(labels.to_numpy())["case_id"].nunique()
        hidden = hidden_line(patients, settings.min_cell)
        cells = [
            {"group": group, "patients": n, "cases": int(cases[group])}
            for group, n in sorted(patients.items(), key=lambda item: (item[0] == MISSING, item[0]))
            if group not in hidden
        ]
        missing = patients.get(MISSING, 0)
        tables[attribute] = {
            "total": total,
            "cells": cells,
            "suppressed": len(hidden),
            "missing_rate": None if MISSING in hidden else missing / total if total else None,
        }
        reportable[attribute] = {group for group in patients if group not in hidden and group != MISSING}
    return tables, reportable


def intersection_tables(frame: pd.DataFrame, settings: AuditSettings) -> dict[str, Any]:
    """Two-way counts of patients for each pair in :data:`INTERSECTIONS`, small cells hidden."""
    tables: dict[str, Any] = {}
    for first, second in INTERSECTIONS:
        rows, columns = group_labels(frame, first), group_labels(frame, second)
        grouped = frame.groupby([rows.to_numpy(), columns.to_numpy()])["pseudonym"].nunique()
        counts = {(str(r), str(c)): int(n) for (r, c), n in grouped.items()}
        hidden = hidden_cells(counts, settings.min_cell)
        tables[f"{first} x {second}"] = {
            "rows": first,
            "columns": second,
            "cells": [
                {"row": r, "column": c, "patients": n}
                for (r, c), n in sorted(counts.items(), key=lambda i: (i[0][0] == MISSING, i[0], i[0][1] == MISSING))
                if (r, c) not in hidden
            ],
            "suppressed": len(hidden),
        }
    return tables


def patient_values(sub: pd.DataFrame, column: str) -> pd.Series:
    """Mean of ``column`` per patient (NaN rows ignored; patients without a value dropped)."""
    return sub.groupby("pseudonym")[column].mean().dropna()


@dataclass
class GroupMetrics:
    """Per-group metrics of one structure and the bootstrap means behind their CIs."""

    records: list[dict[str, Any]] = field(default_factory=list)
    #: ``(attribute, structure, estimator) -> {group: bootstrap means}`` for the gap CIs.
    boot: dict[tuple[str, str, str], dict[str, np.ndarray]] = field(default_factory=dict)


def _seed(settings: AuditSettings, *key: str) -> np.random.Generator:
    return np.random.default_rng([settings.seed, zlib.crc32("|".join(key).encode("utf-8"))])


def _bootstrap(sub: pd.DataFrame, settings: AuditSettings, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Bootstrap means of each estimator, resampling patients (all a patient's rows go together)."""
    codes, uniques = pd.factorize(sub["pseudonym"])
    out: dict[str, np.ndarray] = {}
    idx = rng.integers(0, len(uniques), size=(settings.bootstrap, len(uniques)))
    for estimator, column in ESTIMATORS.items():
        values = sub[column].to_numpy(dtype=float)
        finite = np.isfinite(values)
        if not finite.any():
            continue
        sums = np.bincount(codes[finite], weights=values[finite], minlength=len(uniques))
        counts = np.bincount(codes[finite], minlength=len(uniques)).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[estimator] = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    return out


def _metric_frame(sub: pd.DataFrame, labels: pd.Series) -> pd.DataFrame:
    """fairlearn MetricFrame of the per-group means and rates of one structure.

    One metric computes every column's mean at once: ``y_pred`` carries row positions, so fairlearn splits
    a single 1-D array by group (cheap), and the metric reads the rows' values from the matrix.
    """
    matrix = sub.loc[:, list(_METRIC_COLUMNS)].to_numpy(dtype=float)
    names = [*_METRIC_COLUMNS, "n_true"]

    def means(_y_true: np.ndarray, rows: np.ndarray) -> tuple[float, ...]:
        block = matrix[rows.astype(int)]
        finite = np.isfinite(block)
        counts = finite.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(finite, block, 0.0).sum(axis=0) / counts
        return (*(float(v) for v in values), float(counts[_METRIC_COLUMNS.index("true_dice")]))

    positions = np.arange(len(sub))
    frame = MetricFrame(
        metrics={"means": means}, y_true=positions, y_pred=positions, sensitive_features=labels.to_numpy()
    )
    by_group = frame.by_group["means"]
    return pd.DataFrame([list(v) for v in by_group.to_numpy()], index=by_group.index, columns=names)


def _validity(sub: pd.DataFrame) -> dict[str, Any]:
    """Agreement of each estimator with the true Dice (Pearson r, MAE) on the rows that have both."""
    out: dict[str, Any] = {}
    for estimator, column in ESTIMATORS.items():
        both = sub[[column, "true_dice"]].dropna()
        if len(both) < 3:
            continue
        est, true = both[column].to_numpy(), both["true_dice"].to_numpy()
        r = float(np.corrcoef(est, true)[0, 1]) if est.std() > 0 and true.std() > 0 else None
        out[estimator] = {"n": len(both), "r": r, "mae": float(np.abs(est - true).mean())}
    return out


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def group_metrics(frame: pd.DataFrame, reportable: Mapping[str, set[str]], settings: AuditSettings) -> GroupMetrics:
    """Per attribute, group and structure: estimates with bootstrap 95% CIs, rates, truth and validity.

    A record is written only for reportable groups whose cell for that structure is itself shown
    (:func:`~fairness_registry.audit.suppression.hidden_line` over the structure's patient counts); truth
    and validity figures are shown only when at least ``min_cell`` patients have a correction.
    """
    frame = frame.assign(
        review=(frame["route"].fillna(frame["case_route"]) == "REVIEW").astype(float),
        failure=(frame["predicted_dice"].fillna(frame["rca_dice"]) < settings.failure_dice).astype(float),
    )
    out = GroupMetrics()
    for structure, by_structure in frame.groupby("structure", sort=True):
        for attribute in ATTRIBUTES:
            labels = group_labels(by_structure, attribute)
            patients = _patients_per_group(by_structure, labels)
            hidden = hidden_line(patients, settings.min_cell)
            shown = sorted(g for g in reportable[attribute] if g in patients and g not in hidden)
            if not shown:
                continue
            by_group = _metric_frame(by_structure, labels)
            for group in shown:
                sub = by_structure[labels.to_numpy() == group]
                row = by_group.loc[group]
                boot = _bootstrap(sub, settings, _seed(settings, attribute, group, str(structure)))
                record: dict[str, Any] = {
                    "attribute": attribute,
                    "group": group,
                    "structure": str(structure),
                    "patients": patients[group],
                    "cases": int(sub["case_id"].nunique()),
                    "review_rate": _finite(row["review"]),
                    "failure_rate": _finite(row["failure"]),
                }
                for estimator, column in ESTIMATORS.items():
                    means = boot.get(estimator)
                    if means is None:
                        record[estimator] = None
                        continue
                    out.boot[(attribute, str(structure), estimator)] = {
                        **out.boot.get((attribute, str(structure), estimator), {}),
                        group: means,
                    }
                    low, high = np.nanpercentile(means, [2.5, 97.5])
                    record[estimator] = {"mean": _finite(row[column]), "low": _finite(low), "high": _finite(high)}
                truth_patients = int(sub.loc[sub["true_dice"].notna(), "pseudonym"].nunique())
                record["truth"] = (
                    {
                        "cases": int(row["n_true"]),
                        "patients": truth_patients,
                        "dice": _finite(row["true_dice"]),
                        "nsd": _finite(row["true_nsd"]),
                        "hd95_mm": _finite(row["true_hd95_mm"]),
                    }
                    if truth_patients >= settings.min_cell
                    else None
                )
                record["validity"] = _validity(sub) if truth_patients >= settings.min_cell else None
                record["regions"] = {
                    key: _finite(float(sub[f"region_{key}"].mean()))
                    for key in REGION_KEYS
                    if sub[f"region_{key}"].notna().any()
                }
                out.records.append(record)
    return out
