"""A site's audit aggregates, for a hospital group's audit: sums and moments per shown cell, no case row.

:func:`site_export` turns one site's audit input frame into a JSON-ready document that
:func:`fairness_registry.audit.merge.merge_exports` combines with other sites'. It holds, for every cell the
site's own audit shows (the same small-cell suppression, :mod:`~fairness_registry.audit.suppression`):

- counts of patients and cases (one-way and two-way tables, as in the site's report);
- per (attribute, group, structure): the sums behind each mean (``sum``, ``n``), the patient-level second
  moments behind the bootstrap's variance (``ss``, ``cc``, ``sc``: sums over patients of ``s_i**2``,
  ``c_i**2`` and ``s_i * c_i``, where ``s_i`` and ``c_i`` are the sum and number of patient ``i``'s values),
  the row-level sum of squares (``sq``, for the variance), and the site's own bootstrap summary (mean,
  95% CI, standard error);
- truth and validity sums (only where the site shows them) and the spatial region sums.

Suppressed cells are absent, as in the site's report. No pseudonym, case identifier or value of a single case is
written: every figure is a count, or a sum over a shown cell (at least ``min_cell`` patients); the summary
has what the site's report shows (totals, first and last day of receipt, models).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from fairness_registry.audit.compute import _check, _clean, frame_summary, patients_missing_demographics
from fairness_registry.audit.groups import count_tables, group_labels, group_metrics, intersection_tables
from fairness_registry.audit.settings import ATTRIBUTES, ESTIMATORS, REGION_KEYS, AuditSettings

__all__ = ["EXPORT_KIND", "EXPORT_VERSION", "estimator_moments", "site_export"]

logger = logging.getLogger(__name__)

#: ``kind`` and ``version`` of the document (checked by the merge).
EXPORT_KIND = "fairnode-site-audit-export"
EXPORT_VERSION = 1
_TRUTH = {"dice": "true_dice", "nsd": "true_nsd", "hd95_mm": "true_hd95_mm"}


def estimator_moments(sub: pd.DataFrame, column: str) -> dict[str, float] | None:
    """Sums behind the mean of ``column`` and its patient-level bootstrap variance (``None``: no value).

    ``sum``/``n``: over rows with a value; ``sq``: sum of squared values; ``ss``, ``cc``, ``sc``: sums over
    patients of ``s_i**2``, ``c_i**2``, ``s_i c_i`` (``s_i``, ``c_i``: the sum and count of patient ``i``'s
    values); ``patients``: patients with a value.
    """
    values = pd.to_numeric(sub[column], errors="coerce")
    finite = values.notna() & np.isfinite(values.astype(float))
    if not finite.any():
        return None
    per_patient = values[finite].groupby(sub.loc[finite, "pseudonym"].to_numpy())
    s, c = per_patient.sum().to_numpy(dtype=float), per_patient.count().to_numpy(dtype=float)
    kept = values[finite].to_numpy(dtype=float)
    return {
        "sum": float(kept.sum()),
        "n": float(kept.size),
        "sq": float((kept**2).sum()),
        "ss": float((s**2).sum()),
        "cc": float((c**2).sum()),
        "sc": float((s * c).sum()),
        "patients": float(len(s)),
    }


def _sum_count(series: pd.Series) -> dict[str, float]:
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
    finite = np.isfinite(values)
    return {"sum": float(values[finite].sum()), "n": float(finite.sum())}


def _validity_sums(sub: pd.DataFrame) -> dict[str, Any]:
    """Per estimator, the sums Pearson r and the MAE against the true Dice are computed from."""
    out: dict[str, Any] = {}
    for estimator, column in ESTIMATORS.items():
        both = sub[[column, "true_dice"]].apply(pd.to_numeric, errors="coerce").dropna()
        if len(both) < 3:
            continue
        x, y = both[column].to_numpy(dtype=float), both["true_dice"].to_numpy(dtype=float)
        out[estimator] = {
            "n": float(len(x)),
            "x": float(x.sum()),
            "y": float(y.sum()),
            "xx": float((x * x).sum()),
            "yy": float((y * y).sum()),
            "xy": float((x * y).sum()),
            "abs": float(np.abs(x - y).sum()),
        }
    return out


def _overall(frame: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for structure, sub in frame.groupby("structure", sort=True):
        out.append(
            {
                "structure": str(structure),
                "patients": int(sub["pseudonym"].nunique()),
                "cases": int(sub["case_id"].nunique()),
                **{estimator: _sum_count(sub[column]) for estimator, column in ESTIMATORS.items()},
            }
        )
    return out


def _cells(frame: pd.DataFrame, settings: AuditSettings, reportable: Mapping[str, set[str]]) -> list[dict[str, Any]]:
    """Sums and moments of every (attribute, group, structure) the site's own audit shows."""
    metrics = group_metrics(frame, reportable, settings)
    frame = frame.assign(
        review=(frame["route"].fillna(frame["case_route"]) == "REVIEW").astype(float),
        failure=(frame["predicted_dice"].fillna(frame["rca_dice"]) < settings.failure_dice).astype(float),
    )
    cells = []
    for record in metrics.records:
        attribute, group, structure = record["attribute"], record["group"], record["structure"]
        by_structure = frame[frame["structure"] == structure]
        sub = by_structure[group_labels(by_structure, attribute).to_numpy() == group]
        cell: dict[str, Any] = {
            "attribute": attribute,
            "group": group,
            "structure": structure,
            "patients": record["patients"],
            "cases": record["cases"],
            "review": _sum_count(sub["review"]),
            "failure": _sum_count(sub["failure"]),
        }
        for estimator, column in ESTIMATORS.items():
            moments = estimator_moments(sub, column)
            if moments is None or record[estimator] is None:
                cell[estimator] = None
                continue
            draws = metrics.boot[(attribute, structure, estimator)][group]
            cell[estimator] = {
                **moments,
                "bootstrap": {**record[estimator], "se": float(np.nanstd(draws)), "resamples": len(draws)},
            }
        if record["truth"] is not None:
            cell["truth"] = {
                "patients": record["truth"]["patients"],
                **{name: _sum_count(sub[column]) for name, column in _TRUTH.items()},
            }
            cell["validity"] = _validity_sums(sub)
        else:
            cell["truth"], cell["validity"] = None, None
        cell["regions"] = {
            key: _sum_count(sub[f"region_{key}"]) for key in REGION_KEYS if sub[f"region_{key}"].notna().any()
        }
        cells.append(cell)
    return cells


def site_export(
    frame: pd.DataFrame, *, settings: AuditSettings, site: str, meta: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The aggregates of one site's audit input frame, JSON-ready (see the module docstring).

    Parameters
    ----------
    frame
        The site's audit input frame (:func:`fairness_registry.audit.data.load_frame`).
    settings
        The site's audit settings (``min_cell`` decides what is shown; the merge requires the same everywhere).
    site
        The name the group-level audit gives this site.
    meta
        Period, model and the like, copied into ``meta`` (with ``site`` and when it was made).

    Raises
    ------
    AuditError
        Columns missing, no rows, or fewer than ``settings.min_cases`` patients.
    """
    _check(frame, settings)
    frame = frame.reset_index(drop=True)
    counts, reportable = count_tables(frame, settings)
    document = {
        "kind": EXPORT_KIND,
        "version": EXPORT_VERSION,
        "meta": {
            **dict(meta or {}),
            "site": site,
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        "settings": settings.model_dump(),
        "attributes": list(ATTRIBUTES),
        "summary": frame_summary(
            frame, missing={"patients_missing_demographics": int(patients_missing_demographics(frame).sum())}
        ),
        "counts": counts,
        "intersections": intersection_tables(frame, settings),
        "overall": _overall(frame),
        "cells": (cells := _cells(frame, settings, reportable)),
    }
    logger.info("site export of %s: %d cells", site, len(cells))
    cleaned: dict[str, Any] = _clean(document)
    return cleaned
