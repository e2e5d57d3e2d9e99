"""The two-stage quality predictor: per-structure Dice from uncertainty, RCA and image statistics.

Stage one is the segmentation network with its stochastic samples; stage two (after DeVries & Taylor 2018)
is a regressor trained on a calibration cohort whose true Dice is known. It predicts each structure's Dice
with a split-conformal interval: the regressor is fitted on one part of the calibration cohort (split by
subject), and the absolute residuals on the other part give the half-width ``q`` that covers the stated
share of new structures (Vovk et al.; Lei et al. 2018):
``q = the ceil((n + 1) * coverage)``-th smallest residual of the ``n`` held-back structures.

The regressor is a scikit-learn gradient-boosted tree ensemble with fixed seeds. It is not stored as a
pickle: the calibration table it was fitted on ships with the model (``quality-calibration.csv``) and the
regressor is refitted from it when the model is opened (well under a second), giving the same trees.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.ensemble import GradientBoostingRegressor

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


class DicePredictor:
    """Per-structure Dice with a split-conformal interval.

    Build with :meth:`fit` from calibration rows (``split`` fit / conformal), or :meth:`load` from a
    shipped calibration table.
    """

    def __init__(
        self,
        regressor: GradientBoostingRegressor,
        n_labels: int,
        label_names: Sequence[str],
        coverage: float,
        half_width: float,
    ):
        self.regressor = regressor
        self.n_labels = n_labels
        self.label_names = tuple(label_names)
        self.coverage = coverage
        self.half_width = half_width

    @staticmethod
    def _regressor() -> GradientBoostingRegressor:
        return GradientBoostingRegressor(
            n_estimators=300, max_depth=3, learning_rate=0.03, subsample=0.8, min_samples_leaf=4, random_state=0
        )

    @classmethod
    def fit(cls, rows: Sequence[CalibrationRow], label_names: Sequence[str], coverage: float = 0.9) -> DicePredictor:
        n_labels = len(label_names)
        fit_rows = [r for r in rows if r.split == "fit"]
        held = [r for r in rows if r.split == "conformal"]
        if len(fit_rows) < 10:
            raise PredictorError(f"{len(fit_rows)} structures in the fit split; at least 10 are needed")
        reg = cls._regressor()
        reg.fit(
            design_matrix([r.features for r in fit_rows], [r.label for r in fit_rows], n_labels),
            np.array([r.true_dice for r in fit_rows]),
        )
        pred = reg.predict(design_matrix([r.features for r in held], [r.label for r in held], n_labels))
        q = conformal_quantile(np.array([r.true_dice for r in held]) - pred, coverage)
        return cls(reg, n_labels, label_names, coverage, q)

    def predict(self, rows: Sequence[Mapping[str, float]], labels: Sequence[int]) -> list[DicePrediction]:
        """Predicted Dice and interval of each structure (rows and label values in the same order)."""
        if not rows:
            return []
        dice = np.clip(self.regressor.predict(design_matrix(rows, labels, self.n_labels)), 0.0, 1.0)
        return [
            DicePrediction(
                label=int(lab),
                name=self.label_names[int(lab) - 1],
                dice=float(d),
                low=float(max(0.0, d - self.half_width)),
                high=float(min(1.0, d + self.half_width)),
                coverage=self.coverage,
            )
            for d, lab in zip(dice, labels, strict=True)
        ]

    @classmethod
    def load(cls, path: Path, label_names: Sequence[str], coverage: float) -> DicePredictor:
        return cls.fit(read_table(path), label_names, coverage)


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
