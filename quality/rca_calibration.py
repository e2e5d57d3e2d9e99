"""RCA calibrated per structure: raw RCA (max Dice over the references) mapped to an estimate of true Dice.

Raw RCA reads low on good segmentations, because registering different anatomy caps the Dice a propagated
mask can reach on any reference, and by how much depends on the structure (small, thin or variable ones lose
most). A monotone map per structure, fitted on a calibration cohort with known truth, removes that bias
without changing the order of the estimates: isotonic regression (scikit-learn ``IsotonicRegression``,
clipped to [0, 1] and to the fitted range) or a straight line. A map is kept only where it helps: fitted on
one split of the calibration table, it must lower the mean absolute error against true Dice on the other
split (``check_split``); otherwise that structure's RCA stays raw (a structure whose RCA misleads in a way no
monotone map repairs, e.g. one absent from the truth but propagated onto every reference, is better left
raw than bent). Like the Dice predictor it is not stored: the
calibration table that ships with the model holds raw RCA and true Dice, and the maps are refitted from it
when the model is opened (milliseconds, deterministic).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LinearRegression

from quality.predictor import CalibrationRow
from quality.types import StructureRca

logger = logging.getLogger(__name__)

Method = Literal["isotonic", "linear"]

#: A structure with fewer calibration rows (finite raw RCA) than this keeps its raw RCA.
MIN_ROWS = 10


@dataclass(frozen=True)
class _Map:
    method: Method
    model: IsotonicRegression | LinearRegression
    n: int

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        x = np.asarray(raw, dtype=np.float64).reshape(-1)
        y = self.model.predict(x if self.method == "isotonic" else x.reshape(-1, 1))
        return np.clip(np.asarray(y, dtype=np.float64), 0.0, 1.0)


class RcaCalibration:
    """Per-structure maps from raw RCA to true Dice; structures without one stay raw."""

    def __init__(self, maps: dict[str, _Map], method: Method):
        self._maps = maps
        self.method = method

    @classmethod
    def fit(
        cls,
        rows: Sequence[CalibrationRow],
        method: Method = "isotonic",
        split: str | None = "fit",
        check_split: str | None = "conformal",
    ) -> RcaCalibration:
        """Fit one map per structure on ``rows`` of ``split`` (``None``: all rows) with a finite raw RCA; keep
        it where it lowers the MAE on the rows of ``check_split`` (``None``: keep every map)."""
        if method not in ("isotonic", "linear"):
            raise ValueError(f"RCA calibration method {method!r} is not known (accepted: isotonic, linear)")
        maps: dict[str, _Map] = {}
        for name in sorted({r.name for r in rows}):
            use = [
                r
                for r in rows
                if r.name == name and (split is None or r.split == split) and math.isfinite(r.features["rca_max_dice"])
            ]
            if len(use) < MIN_ROWS:
                logger.warning("RCA calibration: %s has %d rows (< %d); its RCA stays raw", name, len(use), MIN_ROWS)
                continue
            x = np.array([r.features["rca_max_dice"] for r in use])
            y = np.array([r.true_dice for r in use])
            model: IsotonicRegression | LinearRegression
            if method == "isotonic":
                model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(x, y)
            else:
                model = LinearRegression().fit(x.reshape(-1, 1), y)
            fitted = _Map(method, model, len(use))
            check = [
                r
                for r in rows
                if r.name == name
                and check_split is not None
                and r.split == check_split
                and math.isfinite(r.features["rca_max_dice"])
            ]
            if check:
                raw = np.array([r.features["rca_max_dice"] for r in check])
                true = np.array([r.true_dice for r in check])
                before, after = float(np.mean(np.abs(raw - true))), float(np.mean(np.abs(fitted(raw) - true)))
                if after >= before:
                    logger.info("RCA calibration: %s MAE %.3f raw, %.3f calibrated; stays raw", name, before, after)
                    continue
            maps[name] = fitted
        return cls(maps, method)

    @property
    def n_by_structure(self) -> dict[str, int]:
        """Rows each structure's map was fitted on."""
        return {name: m.n for name, m in self._maps.items()}

    def has(self, name: str) -> bool:
        return name in self._maps

    def apply(self, name: str, raw: float) -> float | None:
        """Calibrated RCA of structure ``name`` (``None`` when it has no map or ``raw`` is not finite)."""
        if name not in self._maps or not math.isfinite(raw):
            return None
        return float(self._maps[name](np.array([raw]))[0])

    def calibrate(self, rca: StructureRca) -> StructureRca:
        """``rca`` with ``calibrated_dice`` set (unchanged when its structure has no map)."""
        return replace(rca, calibrated_dice=self.apply(rca.name, rca.max_dice))
