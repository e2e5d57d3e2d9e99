"""The audit's pure core: an audit input frame in, a JSON-ready result out (no database, no files).

:func:`compute_audit` accepts the frame :func:`fairness_registry.audit.data.load_frame` reads, or one built
elsewhere with the columns of :data:`~fairness_registry.audit.settings.FRAME_COLUMNS`. Groups and cells
with fewer than ``settings.min_cell`` patients are absent from the result (see
:mod:`~fairness_registry.audit.suppression`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from fairness_registry.audit.groups import count_tables, group_labels, group_metrics, intersection_tables
from fairness_registry.audit.settings import ATTRIBUTES, ESTIMATORS, FRAME_COLUMNS, MISSING, AuditError, AuditSettings
from fairness_registry.audit.stats import disparities, regression
from fairness_registry.audit.trend import alerts, findings, trend

__all__ = ["RESULT_VERSION", "compute_audit"]

logger = logging.getLogger(__name__)

#: Version of the result's layout (stored in ``result["version"]``).
RESULT_VERSION = 1
_DEMOGRAPHICS = ("sex", "age_band", "ethnic_group", "bmi_band")


def _check(frame: pd.DataFrame, settings: AuditSettings) -> None:
    missing = [c for c in FRAME_COLUMNS if c not in frame.columns]
    if missing:
        raise AuditError(f"the audit frame lacks the columns {missing}; it needs every column of FRAME_COLUMNS")
    if frame.empty:
        raise AuditError("the audit frame is empty: no finished case in the period asked for")
    patients = frame["pseudonym"].nunique()
    if patients < settings.min_cases:
        raise AuditError(
            f"only {patients} patients in the period; an audit needs at least {settings.min_cases} "
            "(audit.min_cases); choose a longer period"
        )


def patients_missing_demographics(frame: pd.DataFrame) -> pd.Series:
    """Per patient (indexed by pseudonym): whether any of their rows lacks sex, age band, ethnic group or BMI
    band."""
    missing_any = np.zeros(len(frame), dtype=bool)
    for attribute in _DEMOGRAPHICS:
        missing_any |= (group_labels(frame, attribute) == MISSING).to_numpy()
    return pd.Series(missing_any).groupby(frame["pseudonym"].to_numpy()).any()


def frame_summary(
    frame: pd.DataFrame, *, missing: Mapping[str, Any], sites: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``summary`` of an audit (and of a site's export): totals, structures, models, first and last day of
    receipt, cases with a truth; ``sites`` after the model versions and ``missing`` (how demographics are
    missing) before the cases with a truth, in the order given."""
    return {
        "patients": int(frame["pseudonym"].nunique()),
        "cases": int(frame["case_id"].nunique()),
        "structures": sorted(str(s) for s in frame["structure"].unique()),
        "models": sorted(str(m) for m in frame["model"].dropna().unique()),
        "model_versions": sorted(str(m) for m in frame["model_version"].dropna().unique()),
        **(sites or {}),
        "first_received": str(pd.to_datetime(frame["received_at"]).min().date()),
        "last_received": str(pd.to_datetime(frame["received_at"]).max().date()),
        **missing,
        "cases_with_truth": int(frame.loc[frame["true_dice"].notna(), "case_id"].nunique()),
    }


def _overall(frame: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for structure, sub in frame.groupby("structure", sort=True):
        record: dict[str, Any] = {
            "structure": str(structure),
            "patients": int(sub["pseudonym"].nunique()),
            "cases": int(sub["case_id"].nunique()),
        }
        for estimator, column in ESTIMATORS.items():
            values = sub[column].dropna()
            record[estimator] = float(values.mean()) if len(values) else None
        out.append(record)
    return out


def _clean(value: Any) -> Any:
    """Make ``value`` strict JSON: numpy scalars to Python, non-finite floats to ``None``."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def compute_audit(
    frame: pd.DataFrame,
    *,
    settings: AuditSettings,
    previous: Sequence[Mapping[str, Any]] = (),
    label: str = "this audit",
) -> dict[str, Any]:
    """The fairness audit of one frame.

    Parameters
    ----------
    frame
        The audit input frame, one row per (case, structure) of finished cases.
    settings
        Suppression, alert margins, bootstrap size and seed.
    previous
        Earlier results of this function (oldest first) for the trend; their ``meta.period`` (or ``label``)
        names them.
    label
        Name of this audit's period in the trend (e.g. ``"2026Q3"``).

    Returns
    -------
    dict
        JSON-ready: ``summary``, ``counts``, ``intersections``, ``overall``, ``metrics``, ``disparities``,
        ``regression``, ``trend``, ``alerts`` (the contract's alert dicts), ``findings``, ``notes``,
        ``settings``.

    Raises
    ------
    AuditError
        Columns missing, no rows, or fewer than ``settings.min_cases`` patients.
    """
    _check(frame, settings)
    frame = frame.reset_index(drop=True)
    logger.info("audit of %d rows", len(frame))
    counts, reportable = count_tables(frame, settings)
    metrics = group_metrics(frame, reportable, settings)
    models, notes = regression(frame, settings)
    result: dict[str, Any] = {
        "version": RESULT_VERSION,
        "label": label,
        "summary": frame_summary(
            frame,
            sites={"sites": len(reportable["site"])},
            missing={"missing_demographics_rate": float(patients_missing_demographics(frame).mean())},
        ),
        "counts": counts,
        "intersections": intersection_tables(frame, settings),
        "overall": _overall(frame),
        "metrics": metrics.records,
        "disparities": disparities(frame, metrics.records, metrics.boot),
        "regression": models,
        "notes": notes,
        "settings": settings.model_dump(),
        "attributes": list(ATTRIBUTES),
    }
    result["trend"] = trend(result, previous, label)
    result["alerts"] = alerts(result, previous, settings)
    result["findings"] = findings(result, settings)
    cleaned: dict[str, Any] = _clean(result)
    return cleaned
