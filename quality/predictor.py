"""The two-stage quality predictor: per-structure Dice from uncertainty, RCA and image statistics.

Stage one is the segmentation network with its stochastic samples; stage two (after DeVries & Taylor 2018)
is a regressor trained on a calibration cohort whose true Dice is known. It predicts each structure's Dice
with a conformal interval whose width follows how sure the regressor is of that structure.

The regressor is a scikit-learn extremely randomised tree ensemble (``ExtraTreesRegressor``, fixed seed)
fitted on every calibration subject. The interval is cross-conformal with normalised scores (Vovk 2015;
Lei et al. 2018 §5.2; Barber et al. 2021): the subjects are split into :data:`FOLDS` folds, a regressor fitted
without each fold predicts it, and each held-out structure's score is its absolute residual divided by its
difficulty ``sigma(x) = spread of the trees' predictions + SIGMA_FLOOR``. The half-width of a new
structure's interval is ``q * sigma(x)``, ``q`` the ``ceil((n + 1) * coverage)``-th smallest of the ``n``
scores: narrow where the trees agree (most good segmentations), wide where they do not.

Cards calibrated before carry ``sklearn GradientBoostingRegressor`` as their regressor and a constant
split-conformal half-width (the regressor fitted on the ``fit`` split, the residuals of the ``conformal``
split); they are loaded with that method unchanged until they are calibrated again.

Neither is stored as a pickle: the calibration table it was fitted on ships with the model
(``quality-calibration.csv``) and the regressor is refitted from it when the model is opened (about a
second), giving the same trees; ``q`` is read from the card.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import numpy as np
from sklearn.ensemble import ExtraTreesRegressor, GradientBoostingRegressor
from sklearn.model_selection import GroupKFold

from quality.types import DicePrediction, StructureRca, StructureUncertainty

#: Features of one structure, in column order (the structure's identity is added as one-hot columns).
FEATURES: tuple[str, ...] = (
    "mean_entropy",
    "mean_mutual_information",
    "sample_dice",
    "volume_cv",
    "log_volume_ratio",
    "rca_max_dice",
    "rca_mean_dice",
    "rca_hd95_mm",
    "image_mean",
    "image_std",
    "image_saturated",
    "structure_mean",
    "structure_std",
)

#: How the card names each method (its ``quality.predictor.regressor``); the first is what calibration fits.
REGRESSOR = (
    "sklearn ExtraTreesRegressor(n_estimators=300, max_features=0.5, min_samples_leaf=1, random_state=0); "
    "interval: cross-conformal, 5 folds by subject, half-width = half_width * (tree spread + 0.01)"
)
LEGACY_REGRESSOR = (
    "sklearn GradientBoostingRegressor(n_estimators=300, max_depth=3, learning_rate=0.03, "
    "subsample=0.8, min_samples_leaf=4, random_state=0)"
)
#: Folds of the cross-conformal interval (by subject).
FOLDS = 5
#: Added to the trees' spread so that no structure gets an interval of zero width.
SIGMA_FLOOR = 0.01

#: HD95 used when it is undefined (a structure empty in the propagated mask or the reference), in mm.
HD95_CAP_MM = 100.0


class PredictorError(ValueError):
    """A calibration table that cannot be read or is too small to fit the predictor."""


@dataclass(frozen=True)
class ImageStats:
    """Simple statistics of the network input (normalised to [0, 1]) that flag unusual images."""

    mean: float
    std: float
    saturated: float
    structure_mean: dict[int, float]
    structure_std: dict[int, float]


def image_stats(model_input: np.ndarray, labels: np.ndarray) -> ImageStats:
    """Statistics of the normalised image ``(*spatial)`` over the body and inside each predicted structure."""
    x = model_input.reshape(labels.shape)
    body = x > 0.02
    region = x[body] if body.any() else x.ravel()
    means: dict[int, float] = {}
    stds: dict[int, float] = {}
    for value in np.unique(labels):
        if value == 0:
            continue
        inside = x[labels == value]
        means[int(value)], stds[int(value)] = float(inside.mean()), float(inside.std())
    return ImageStats(
        mean=float(region.mean()),
        std=float(region.std()),
        saturated=float((region >= 0.999).mean()),
        structure_mean=means,
        structure_std=stds,
    )


def structure_features(
    uncertainty: StructureUncertainty, rca: StructureRca | None, stats: ImageStats, expected_volume: float
) -> dict[str, float]:
    """The feature row of one structure (``expected_volume``: the typical true volume of this structure)."""
    hd95 = rca.hd95_mm if rca is not None and math.isfinite(rca.hd95_mm) else HD95_CAP_MM
    return {
        "mean_entropy": uncertainty.mean_entropy,
        "mean_mutual_information": uncertainty.mean_mutual_information,
        "sample_dice": uncertainty.sample_dice,
        "volume_cv": min(uncertainty.volume_cv, 5.0),
        "log_volume_ratio": float(np.log((uncertainty.volume + 1e-3) / max(expected_volume, 1e-3))),
        "rca_max_dice": rca.max_dice if rca is not None else float("nan"),
        "rca_mean_dice": rca.mean_dice if rca is not None else float("nan"),
        "rca_hd95_mm": min(hd95, HD95_CAP_MM),
        "image_mean": stats.mean,
        "image_std": stats.std,
        "image_saturated": stats.saturated,
        "structure_mean": stats.structure_mean.get(uncertainty.label, 0.0),
        "structure_std": stats.structure_std.get(uncertainty.label, 0.0),
    }


def design_matrix(rows: Sequence[Mapping[str, float]], labels: Sequence[int], n_labels: int) -> np.ndarray:
    """Feature rows and the structures' label values -> the regressor's input matrix."""
    x = np.array([[float(r[f]) for f in FEATURES] for r in rows], dtype=np.float64).reshape(len(rows), len(FEATURES))
    onehot = np.zeros((len(rows), n_labels))
    onehot[np.arange(len(rows)), np.asarray(labels, dtype=int) - 1] = 1.0
    return np.nan_to_num(np.hstack([x, onehot]), nan=-1.0)


def conformal_quantile(residuals: np.ndarray, coverage: float) -> float:
    """Split-conformal half-width for ``coverage`` from absolute residuals of held-back structures."""
    n = len(residuals)
    rank = math.ceil((n + 1) * coverage)
    if n == 0 or rank > n:
        raise PredictorError(f"{n} held-back structures are too few for a {coverage:.0%} conformal interval")
    return float(np.sort(np.abs(residuals))[rank - 1])


@dataclass(frozen=True)
class CalibrationRow:
    """One structure of one calibration subject: features, true Dice and which split it belongs to."""

    subject: str
    label: int
    name: str
    split: str  # fit | conformal
    true_dice: float
    features: dict[str, float]


Regressor: TypeAlias = ExtraTreesRegressor | GradientBoostingRegressor


def _trees() -> ExtraTreesRegressor:
    return ExtraTreesRegressor(n_estimators=300, max_features=0.5, min_samples_leaf=1, random_state=0)


def _boosted() -> GradientBoostingRegressor:
    return GradientBoostingRegressor(
        n_estimators=300, max_depth=3, learning_rate=0.03, subsample=0.8, min_samples_leaf=4, random_state=0
    )


def _sigma(regressor: Regressor, x: np.ndarray) -> np.ndarray:
    """Difficulty of each row: the spread of the trees' predictions plus :data:`SIGMA_FLOOR` (1 for the
    legacy method, whose half-width is constant)."""
    if not isinstance(regressor, ExtraTreesRegressor):
        return np.ones(len(x))
    per_tree = np.stack([tree.predict(x) for tree in regressor.estimators_])
    return np.asarray(per_tree.std(axis=0) + SIGMA_FLOOR, dtype=np.float64)


class DicePredictor:
    """Per-structure Dice with a conformal interval.

    Build with :meth:`fit` from calibration rows, or :meth:`load` from a shipped calibration table.
    ``half_width`` is ``q``: the interval of a structure is ``dice +- q * sigma(x)`` (``sigma`` = 1 for the
    legacy method). ``out_of_fold`` holds, for each calibration structure ``(subject, label)``, the prediction
    of a regressor that did not see that subject (empty for the legacy method): what calibrating the gate on
    calibration subjects must use.
    """

    def __init__(
        self,
        regressor: Regressor,
        n_labels: int,
        label_names: Sequence[str],
        coverage: float,
        half_width: float,
        out_of_fold: Mapping[tuple[str, int], DicePrediction] | None = None,
    ):
        self.regressor = regressor
        self.n_labels = n_labels
        self.label_names = tuple(label_names)
        self.coverage = coverage
        self.half_width = half_width
        self.out_of_fold = dict(out_of_fold or {})

    @property
    def legacy(self) -> bool:
        return not isinstance(self.regressor, ExtraTreesRegressor)

    @property
    def description(self) -> str:
        """What the card records as ``quality.predictor.regressor``."""
        return LEGACY_REGRESSOR if self.legacy else REGRESSOR

    @classmethod
    def fit(
        cls,
        rows: Sequence[CalibrationRow],
        label_names: Sequence[str],
        coverage: float = 0.9,
        *,
        legacy: bool = False,
        half_width: float | None = None,
    ) -> DicePredictor:
        """Fit on calibration rows. ``half_width``: the ``q`` a card already holds (skips the folds);
        ``legacy``: the earlier method (fit split, constant split-conformal half-width)."""
        if legacy:
            return cls._fit_legacy(rows, label_names, coverage)
        n_labels = len(label_names)
        if len(rows) < 10:
            raise PredictorError(f"{len(rows)} calibration structures; at least 10 are needed")
        x = design_matrix([r.features for r in rows], [r.label for r in rows], n_labels)
        y = np.array([r.true_dice for r in rows])
        reg = _trees().fit(x, y)
        oof: dict[tuple[str, int], DicePrediction] = {}
        if half_width is None:
            subjects = np.array([r.subject for r in rows])
            folds = min(FOLDS, len(set(subjects)))
            if folds < 2:
                raise PredictorError("the calibration rows come from one subject; at least two are needed")
            pred, sigma = np.zeros(len(rows)), np.ones(len(rows))
            for train, held in GroupKFold(folds).split(x, y, subjects):
                part = _trees().fit(x[train], y[train])
                pred[held], sigma[held] = part.predict(x[held]), _sigma(part, x[held])
            half_width = conformal_quantile((y - pred) / sigma, coverage)
            base = cls(reg, n_labels, label_names, coverage, half_width)
            oof = {
                (r.subject, r.label): base._prediction(r.label, float(p), float(s))
                for r, p, s in zip(rows, pred, sigma, strict=True)
            }
        return cls(reg, n_labels, label_names, coverage, half_width, oof)

    @classmethod
    def _fit_legacy(cls, rows: Sequence[CalibrationRow], label_names: Sequence[str], coverage: float) -> DicePredictor:
        n_labels = len(label_names)
        fit_rows = [r for r in rows if r.split == "fit"]
        held = [r for r in rows if r.split == "conformal"]
        if len(fit_rows) < 10:
            raise PredictorError(f"{len(fit_rows)} structures in the fit split; at least 10 are needed")
        reg = _boosted()
        reg.fit(
            design_matrix([r.features for r in fit_rows], [r.label for r in fit_rows], n_labels),
            np.array([r.true_dice for r in fit_rows]),
        )
        pred = reg.predict(design_matrix([r.features for r in held], [r.label for r in held], n_labels))
        q = conformal_quantile(np.array([r.true_dice for r in held]) - pred, coverage)
        return cls(reg, n_labels, label_names, coverage, q)

    def _prediction(self, label: int, dice: float, sigma: float) -> DicePrediction:
        d = float(np.clip(dice, 0.0, 1.0))
        w = self.half_width * sigma
        return DicePrediction(
            label=int(label),
            name=self.label_names[int(label) - 1],
            dice=d,
            low=float(max(0.0, d - w)),
            high=float(min(1.0, d + w)),
            coverage=self.coverage,
        )

    def predict(self, rows: Sequence[Mapping[str, float]], labels: Sequence[int]) -> list[DicePrediction]:
        """Predicted Dice and interval of each structure (rows and label values in the same order)."""
        if not rows:
            return []
        x = design_matrix(rows, labels, self.n_labels)
        dice, sigma = self.regressor.predict(x), _sigma(self.regressor, x)
        return [self._prediction(int(lab), float(d), float(s)) for d, s, lab in zip(dice, sigma, labels, strict=True)]

    @classmethod
    def load(
        cls,
        path: Path,
        label_names: Sequence[str],
        coverage: float,
        *,
        regressor: str | None = None,
        half_width: float | None = None,
    ) -> DicePredictor:
        """Refit from a shipped calibration table; ``regressor`` and ``half_width`` as the card records them
        (a legacy regressor is refitted with the legacy method; ``half_width`` skips the folds)."""
        legacy = regressor is not None and regressor.startswith("sklearn GradientBoostingRegressor")
        return cls.fit(
            read_table(path), label_names, coverage, legacy=legacy, half_width=None if legacy else half_width
        )


def write_table(rows: Sequence[CalibrationRow], path: Path) -> None:
    """Write calibration rows as CSV (one row per structure and subject)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["subject", "label", "name", "split", "true_dice", *FEATURES])
        for r in rows:
            w.writerow(
                [
                    r.subject,
                    r.label,
                    r.name,
                    r.split,
                    repr(float(r.true_dice)),
                    *(repr(float(r.features[f])) for f in FEATURES),
                ]
            )


def read_table(path: Path) -> list[CalibrationRow]:
    """Read a calibration table written by :func:`write_table`."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = {"subject", "label", "name", "split", "true_dice", *FEATURES} - set(reader.fieldnames or [])
            if missing:
                raise PredictorError(f"calibration table {path} lacks the columns {sorted(missing)}")
            return [
                CalibrationRow(
                    subject=row["subject"],
                    label=int(row["label"]),
                    name=row["name"],
                    split=row["split"],
                    true_dice=float(row["true_dice"]),
                    features={f: float(row[f]) for f in FEATURES},
                )
                for row in reader
            ]
    except (OSError, ValueError, KeyError) as exc:
        if isinstance(exc, PredictorError):
            raise
        raise PredictorError(f"cannot read calibration table {path}: {exc}") from exc
