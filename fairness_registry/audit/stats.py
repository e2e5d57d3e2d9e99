"""Disparity measures, group tests with Holm correction, and the adjusted regression.

Formulas (over the shown groups' mean estimated Dice ``D_g`` of one structure and estimator):

- gap = max D_g - min D_g, with a 95% CI from the groups' patient-level bootstrap means;
- ratio = min D_g / max D_g;
- skewed error ratio SER = max(1 - D_g) / min(1 - D_g);
- SD = population standard deviation of the D_g (ddof 0);
- ES-Dice = D / (1 + SD), D the mean over all the structure's cases (FairMedFM's equity-scaled Dice).

Tests compare the groups' per-patient mean estimates: Mann-Whitney U for two groups, Kruskal-Wallis for
more; the p-values of all tests of one audit are Holm-corrected together.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from fairness_registry.audit.groups import group_labels, patient_values
from fairness_registry.audit.settings import ESTIMATORS, MISSING, AuditSettings

__all__ = ["REGRESSION_TERMS", "disparities", "regression"]

logger = logging.getLogger(__name__)

#: Covariates of the adjusted model: name -> (frame column, kind, scale). Numbers are per ``scale`` units.
REGRESSION_TERMS: dict[str, tuple[str, str, float]] = {
    "sex": ("sex", "category", 1.0),
    "age (per 10 years)": ("age_years", "number", 10.0),
    "BMI (per 5 kg/m²)": ("bmi", "number", 5.0),
    "ethnic_group": ("ethnic_group", "category", 1.0),
    "scanner_model": ("scanner_model", "category", 1.0),
    "structure volume (log)": ("volume", "log", 1.0),
}
_MIN_ROWS = 30
_LABELS = {"sex": "sex", "ethnic_group": "ethnic group", "scanner_model": "scanner"}
_SCALE = 100.0


def _test(samples: Sequence[np.ndarray]) -> tuple[str, float | None, float | None]:
    """Mann-Whitney U (two groups) or Kruskal-Wallis (more): (name, statistic, p)."""
    name = "Mann-Whitney U" if len(samples) == 2 else "Kruskal-Wallis"
    if any(len(s) < 2 for s in samples):
        return name, None, None
    try:
        if len(samples) == 2:
            result = stats.mannwhitneyu(samples[0], samples[1], alternative="two-sided")
        else:
            result = stats.kruskal(*samples)
    except ValueError as exc:  # all values identical
        logger.debug("group test not computed: %s", exc)
        return name, None, None
    statistic, p = float(result.statistic), float(result.pvalue)
    return name, statistic, p if np.isfinite(p) else None


def disparities(
    frame: pd.DataFrame,
    records: Sequence[Mapping[str, Any]],
    boot: Mapping[tuple[str, str, str], Mapping[str, np.ndarray]],
) -> list[dict[str, Any]]:
    """Disparity measures and the group test per (attribute, structure, estimator) with >= 2 shown groups.

    ``p_holm`` is the Holm-corrected p-value over every test in the returned list.
    """
    out: list[dict[str, Any]] = []
    keys = sorted({(r["attribute"], r["structure"]) for r in records})
    for attribute, structure in keys:
        rows = [r for r in records if r["attribute"] == attribute and r["structure"] == structure]
        sub = frame[frame["structure"] == structure]
        labels = group_labels(sub, attribute)
        for estimator, column in ESTIMATORS.items():
            means = {
                r["group"]: r[estimator]["mean"] for r in rows if r[estimator] and r[estimator]["mean"] is not None
            }
            if len(means) < 2:
                continue
            draws = np.vstack([boot[(attribute, structure, estimator)][g] for g in means])
            gap_draws = np.nanmax(draws, axis=0) - np.nanmin(draws, axis=0)
            gap_low, gap_high = np.nanpercentile(gap_draws, [2.5, 97.5])
            samples = [patient_values(sub[labels.to_numpy() == g], column).to_numpy() for g in means]
            test, statistic, p = _test(samples)
            out.append(
                disparity_record(
                    (attribute, structure, estimator),
                    means,
                    (float(gap_low), float(gap_high)),
                    float(sub[column].mean()),
                    (test, statistic, p),
                )
            )
    holm_correct(out)
    return out


def disparity_record(
    key: tuple[str, str, str],
    means: Mapping[str, float],
    gap_interval: tuple[float, float],
    overall: float | None,
    tested: tuple[str | None, float | None, float | None],
) -> dict[str, Any]:
    """One entry of the disparities of an audit (and of a group-level merge) from the group means.

    Parameters
    ----------
    key
        ``(attribute, structure, estimator)``.
    means
        Mean of the estimator per shown group (at least two).
    gap_interval
        The 95% interval of the gap (largest minus smallest group mean), from the bootstrap.
    overall
        The estimator's mean over every case of the structure (``None``: unknown, no ``es_dice``).
    tested
        The group test's name, statistic and p-value (``None`` where not computed); ``p_holm`` is set
        afterwards over all entries (:func:`holm_correct`).
    """
    attribute, structure, estimator = key
    values = np.array(list(means.values()))
    errors = 1.0 - values
    sd = float(values.std(ddof=0))
    test, statistic, p = tested
    return {
        "attribute": attribute,
        "structure": structure,
        "estimator": estimator,
        "groups": len(means),
        "compared": sorted(means),
        "best": max(means, key=means.__getitem__),
        "worst": min(means, key=means.__getitem__),
        "gap": float(values.max() - values.min()),
        "gap_low": gap_interval[0],
        "gap_high": gap_interval[1],
        "ratio": float(values.min() / values.max()) if values.max() > 0 else None,
        "ser": float(errors.max() / errors.min()) if errors.min() > 0 else None,
        "sd": sd,
        "es_dice": overall / (1.0 + sd) if overall is not None else None,
        "test": test,
        "statistic": statistic,
        "p": p,
        "p_holm": None,
    }


def holm_correct(entries: Sequence[dict[str, Any]]) -> None:
    """Set ``p_holm`` of every entry with a p-value: Holm-corrected over all of them."""
    tested = [d for d in entries if d["p"] is not None]
    if tested:
        corrected = multipletests([d["p"] for d in tested], method="holm")[1]
        for d, p in zip(tested, corrected, strict=True):
            d["p_holm"] = float(p)


def _design(
    sub: pd.DataFrame, column: str, settings: AuditSettings
) -> tuple[pd.DataFrame, dict[str, str], list[str]] | None:
    """Complete-case rows of the covariates, small levels dropped; the reference level per category; and the
    covariates left out because they are recorded for fewer than half the cases."""
    data = pd.DataFrame({"y": sub[column], "pseudonym": sub["pseudonym"], "site": group_labels(sub, "site")})
    references: dict[str, str] = {}
    for _term, (source, kind, scale) in REGRESSION_TERMS.items():
        if kind == "number":
            data[source] = pd.to_numeric(sub[source], errors="coerce") / scale
        elif kind == "log":  # Dice depends on structure size: adjust for it
            volume = pd.to_numeric(sub[source], errors="coerce")
            data[source] = np.log(volume.where(volume > 0))
        else:
            data[source] = group_labels(sub, source).replace(MISSING, np.nan)
    data = data[data["y"].notna() & (data["site"] != MISSING)]
    left_out = [
        term
        for term, (source, _kind, _scale) in REGRESSION_TERMS.items()
        if len(data) == 0 or data[source].notna().mean() < 0.5
    ]
    data = data.drop(columns=[REGRESSION_TERMS[term][0] for term in left_out]).dropna()
    categories = [s for s, kind, _ in REGRESSION_TERMS.values() if kind == "category" and s in data]
    for source in ("site", *categories):
        patients = data.groupby(source)["pseudonym"].nunique()
        data = data[data[source].isin(patients[patients >= settings.min_cell].index)]
    for source in categories:
        counts = data[source].value_counts()
        if len(counts) >= 2:
            references[source] = str(counts.index[0])
    return (data, references, left_out) if len(data) >= _MIN_ROWS else None


def _fit(data: pd.DataFrame, references: Mapping[str, str]) -> tuple[str, Any, dict[str, str], list[str]]:
    """Fit MixedLM (site random intercept, >= 3 sites) or OLS (site fixed, 2 sites; none, 1 site).

    Returns the method, the fitted model, ``term -> variable`` of the reported terms, and notes.
    """
    parts = [pd.Series(1.0, index=data.index, name="const")]
    names: dict[str, str] = {}
    for term, (source, kind, _scale) in REGRESSION_TERMS.items():
        if source not in data:
            continue
        if kind in ("number", "log"):
            if data[source].std() > 0:
                parts.append(data[source].rename(term))
                names[term] = source
        elif source in references:
            for level in sorted(set(data[source]) - {references[source]}):
                name = f"{_LABELS.get(source, source)} {level} vs {references[source]}"
                parts.append((data[source] == level).astype(float).rename(name))
                names[name] = source
    sites = sorted(set(data["site"]))
    site_terms = [(data["site"] == site).astype(float).rename(f"site: {site} vs {sites[0]}") for site in sites[1:]]
    exog = pd.concat(parts, axis=1)
    # Dice points (x100) keep the variance components away from the optimiser's tolerance.
    endog = data["y"] * _SCALE
    notes: list[str] = []
    if len(sites) >= 3:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            mixed = sm.MixedLM(endog, exog, groups=data["site"]).fit(reml=True, method=["bfgs", "lbfgs"])
        trouble = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
        if mixed.converged and not trouble:
            return "MixedLM (site as random intercept)", mixed, names, notes
        notes.append(
            "the mixed model did not converge (the site variance is probably near zero: "
            f"{trouble[0] if trouble else 'not converged'}); site entered as a fixed effect instead"
        )
    method = "OLS (site as fixed effect)" if len(sites) >= 2 else "OLS (one site)"
    fitted = sm.OLS(endog, pd.concat([exog, *site_terms], axis=1)).fit()
    return method, fitted, names, notes


def regression(frame: pd.DataFrame, settings: AuditSettings) -> tuple[list[dict[str, Any]], list[str]]:
    """Adjusted effects on the estimated Dice per structure and estimator.

    The estimated Dice of each case is regressed on sex, age, BMI, ethnic group, scanner model and the log of
    the structure's volume (Dice depends on size; complete cases only, a covariate recorded for fewer than half
    the cases left out; levels with fewer than ``min_cell`` patients dropped, the commonest level the reference),
    with site as a random intercept when there are at least three sites (a fixed effect when fewer, or when
    the mixed model does not converge, e.g. because the site variance is near zero). p-values are Holm-corrected over
    the terms of each model (the intercept and site terms excluded).

    Returns
    -------
    models
        ``[{"structure", "estimator", "method", "n", "terms": [{"term", "estimate", "low", "high", "p",
        "p_holm"}]}]``.
    notes
        Why a model was not fitted, or did not converge.
    """
    models: list[dict[str, Any]] = []
    notes: list[str] = []
    for structure, sub in frame.groupby("structure", sort=True):
        for estimator, column in ESTIMATORS.items():
            prepared = _design(sub, column, settings)
            if prepared is None:
                notes.append(f"{structure}, {estimator}: fewer than {_MIN_ROWS} complete cases; no adjusted model")
                continue
            data, references, left_out = prepared
            if left_out:
                notes.append(
                    f"{structure}, {estimator}: {', '.join(left_out)} left out of the adjusted model "
                    "(recorded for fewer than half the cases)"
                )
            try:
                method, fitted, terms, fit_notes = _fit(data, references)
            except (np.linalg.LinAlgError, ValueError) as exc:
                notes.append(f"{structure}, {estimator}: adjusted model could not be fitted ({exc})")
                continue
            notes.extend(f"{structure}, {estimator}: {note}" for note in fit_notes)
            conf = fitted.conf_int()
            p_values = [float(fitted.pvalues[t]) for t in terms]
            finite = [i for i, p in enumerate(p_values) if np.isfinite(p)]
            corrected: dict[int, float] = {}
            if finite:
                adjusted = multipletests([p_values[i] for i in finite], method="holm")[1]
                corrected = {i: float(p) for i, p in zip(finite, adjusted, strict=True)}
            models.append(
                {
                    "structure": str(structure),
                    "estimator": estimator,
                    "method": method,
                    "n": len(data),
                    "patients": int(data["pseudonym"].nunique()),
                    "terms": [
                        {
                            "term": term,
                            "variable": terms[term],
                            "estimate": float(fitted.params[term]) / _SCALE,
                            "low": float(conf.loc[term].iloc[0]) / _SCALE,
                            "high": float(conf.loc[term].iloc[1]) / _SCALE,
                            "p": p_values[i] if np.isfinite(p_values[i]) else None,
                            "p_holm": corrected.get(i),
                        }
                        for i, term in enumerate(terms)
                    ],
                }
            )
    return models, notes
