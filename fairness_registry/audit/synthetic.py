"""Synthetic audit input frames with planted group effects, for tests, benchmarks and experiments.

Nothing here touches a database: :func:`synthetic_frame` returns a frame with the columns of
:data:`fairness_registry.audit.settings.FRAME_COLUMNS` that :func:`~fairness_registry.audit.compute.compute_audit`
accepts as it accepts the registry's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd

from fairness_registry.audit.settings import FRAME_COLUMNS, REGION_KEYS

__all__ = ["DEFAULT_STRUCTURES", "synthetic_frame"]

#: Structures of the synthetic model and their typical true Dice.
DEFAULT_STRUCTURES: Mapping[str, float] = {"liver": 0.92, "spleen": 0.88, "kidney": 0.86}

_SEXES = ("F", "M")
_AGE = {"18-39": (18, 39), "40-59": (40, 59), "60-74": (60, 74), "75+": (75, 95)}
_ETHNIC = {"White": 0.6, "Black": 0.15, "Asian": 0.15, "Hispanic": 0.1}
_SCANNERS = ("SOMATOM Force", "Revolution CT", "Aquilion ONE")


def _bmi_band(value: float) -> str:
    if value < 18.5:
        return "underweight"
    if value < 25.0:
        return "normal"
    if value < 30.0:
        return "overweight"
    return "obese"


def synthetic_frame(
    n_patients: int,
    *,
    seed: int = 0,
    effects: Mapping[tuple[str, str], float] | None = None,
    structures: Mapping[str, float] = DEFAULT_STRUCTURES,
    sites: Sequence[str] = ("North", "South", "East"),
    cases_per_patient: float = 1.2,
    truth_fraction: float = 0.15,
    missing_fraction: float = 0.05,
    start: date = date(2026, 7, 1),
    days: int = 90,
    model: str = "ct-abdomen",
) -> pd.DataFrame:
    """A frame of ``n_patients`` patients' cases with planted effects on the true Dice.

    Parameters
    ----------
    n_patients
        Number of distinct pseudonyms; each has 1 + Poisson(``cases_per_patient`` - 1) cases.
    seed
        Seed of everything random.
    effects
        ``(attribute, group) -> delta`` added to the true Dice of every structure of that group's cases,
        e.g. ``{("sex", "F"): -0.06}``. Attributes: ``sex``, ``age_band``, ``ethnic_group``, ``bmi_band``,
        ``site``, ``scanner_model``.
    structures
        Structure name -> typical true Dice.
    sites
        Site names, drawn uniformly.
    truth_fraction
        Share of cases with a correction (true Dice, NSD, HD95).
    missing_fraction
        Share of patients whose ethnic group and BMI are not recorded.
    start, days
        Studies are received uniformly over ``days`` days from ``start``.
    model
        The model name on every row.

    Returns
    -------
    pandas.DataFrame
        One row per (case, structure). RCA compresses the true Dice (slope 0.5, biased low), the predictor
        follows it more closely (slope 0.85), as published for these estimators.
    """
    rng = np.random.default_rng(seed)
    effects = dict(effects or {})
    sex = rng.choice(_SEXES, n_patients)
    age = rng.integers(18, 95, n_patients)
    age_band = np.array([next(b for b, (lo, hi) in _AGE.items() if lo <= a <= hi) for a in age])
    ethnic = rng.choice(list(_ETHNIC), n_patients, p=list(_ETHNIC.values())).astype(object)
    bmi = np.clip(rng.normal(26.5, 5.0, n_patients), 15.0, 55.0)
    bmi_band = np.array([_bmi_band(b) for b in bmi], dtype=object)
    missing = rng.random(n_patients) < missing_fraction
    ethnic[missing] = "unknown"
    bmi_values = np.where(missing, np.nan, bmi)
    bmi_band[missing] = "unknown"
    site = rng.choice(list(sites), n_patients)
    scanner = rng.choice(_SCANNERS, n_patients)
    n_cases = 1 + rng.poisson(max(cases_per_patient - 1.0, 0.0), n_patients)
    patient = np.repeat(np.arange(n_patients), n_cases)
    n_rows = len(patient)
    received = [
        datetime(start.year, start.month, start.day, tzinfo=UTC) + timedelta(seconds=float(s))
        for s in rng.uniform(0, days * 86400.0, n_rows)
    ]
    base = pd.DataFrame(
        {
            "pseudonym": [f"p{index:06d}" for index in patient],
            "case_id": np.arange(1, n_rows + 1),
            "received_at": received,
            "study_date": [r.date() for r in received],
            "site": site[patient],
            "manufacturer": "ACME",
            "scanner_model": scanner[patient],
            "model": model,
            "model_version": "1.0.0",
            "sex": sex[patient],
            "age_years": age[patient],
            "age_band": age_band[patient],
            "ethnic_group": ethnic[patient],
            "bmi": bmi_values[patient],
            "bmi_band": bmi_band[patient],
            "slice_thickness_mm": rng.choice([1.0, 2.5, 5.0], n_rows),
            "kvp": rng.choice([100.0, 120.0], n_rows),
            "contrast": rng.random(n_rows) < 0.7,
        }
    )
    shift = np.zeros(n_rows)
    for (attribute, group), delta in effects.items():
        shift += np.where(base[attribute].to_numpy() == group, delta, 0.0)
    has_truth = rng.random(n_rows) < truth_fraction
    frames = []
    for name, typical in structures.items():
        true = np.clip(typical + shift + rng.normal(0, 0.03, n_rows), 0.0, 1.0)
        rca = np.clip(0.45 + 0.5 * true + rng.normal(0, 0.02, n_rows), 0.0, 1.0)
        predicted = np.clip(0.12 + 0.85 * true + rng.normal(0, 0.02, n_rows), 0.0, 1.0)
        regions = rng.dirichlet(np.ones(len(REGION_KEYS)) * 4.0, n_rows)
        regions[:, 0] += np.clip(typical - true, 0, None)  # errors fall on the boundary
        regions /= regions.sum(axis=1, keepdims=True)
        route = np.where(predicted < 0.8, "REVIEW", "PASS")
        frame = base.assign(
            structure=name,
            route=route,
            volume=rng.normal(1500.0 if name == "liver" else 200.0, 50.0, n_rows),
            rca_dice=rca,
            predicted_dice=predicted,
            predicted_low=np.clip(predicted - 0.06, 0, 1),
            predicted_high=np.clip(predicted + 0.05, 0, 1),
            true_dice=np.where(has_truth, true, np.nan),
            true_nsd=np.where(has_truth, np.clip(true + 0.03, 0, 1), np.nan),
            true_hd95_mm=np.where(has_truth, 2.0 + 40.0 * (1.0 - true), np.nan),
            **{f"region_{key}": regions[:, i] for i, key in enumerate(REGION_KEYS)},
        )
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    case_review = frame.groupby("case_id")["route"].transform(lambda r: "REVIEW" if (r == "REVIEW").any() else "PASS")
    frame["case_route"] = case_review
    frame["review_state"] = np.where(frame["case_route"] == "REVIEW", "forwarded", "not_needed")
    return frame.loc[:, list(FRAME_COLUMNS)].sort_values(["case_id", "structure"], ignore_index=True)
