"""What the quality estimators return: per-structure scores, the routing decision and the maps behind them.

Pure data: the writers (``dicom_node.writers``), the registry and the review pages read these; nothing here
computes anything. Dice values are in [0, 1]; volumes are millilitres (3D) or square millimetres (2D).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np


class Route(StrEnum):
    """What the gate decided for a case: send on as it is, or have a radiologist look first."""

    PASS = "PASS"
    REVIEW = "REVIEW"


class SamplingMethod(StrEnum):
    """How the stochastic samples were drawn."""

    MC_DROPOUT = "mc-dropout"
    TTA_FLIP = "tta-flip"


@dataclass(frozen=True)
class UncertaintyMaps:
    """Per-voxel maps from N stochastic samples, on one grid.

    Attributes
    ----------
    mean_probabilities
        ``(classes, *spatial)`` float32, the mean softmax over samples (class 0 is background).
    entropy
        ``(*spatial)`` float32, predictive entropy of the mean probabilities, in bits.
    mutual_information
        ``(*spatial)`` float32, entropy minus the mean per-sample entropy (epistemic part), in bits.
    """

    mean_probabilities: np.ndarray
    entropy: np.ndarray
    mutual_information: np.ndarray


@dataclass(frozen=True)
class StructureUncertainty:
    """Scores of one predicted structure that track its Dice (Roy et al. 2019)."""

    label: int
    name: str
    volume: float = field(metadata={"unit": "ml (3D) or mm2 (2D) of the predicted structure"})
    mean_entropy: float = field(metadata={"unit": "bits, mean over voxels inside the predicted structure"})
    mean_mutual_information: float = field(metadata={"unit": "bits"})
    sample_dice: float = field(metadata={"unit": "mean pairwise Dice between samples; 1 = samples agree"})
    volume_cv: float = field(metadata={"unit": "coefficient of variation of the structure volume over samples"})


@dataclass(frozen=True)
class StructureRca:
    """Reverse classification accuracy of one structure over the k references it was checked against."""

    label: int
    name: str
    max_dice: float
    mean_dice: float
    hd95_mm: float = field(metadata={"unit": "mm, 95th percentile Hausdorff distance for the best reference"})
    calibrated_dice: float | None = field(
        default=None,
        metadata={"unit": "max_dice mapped to true Dice by the model's RCA calibration; None: not calibrated"},
    )

    @property
    def dice(self) -> float:
        """The RCA estimate of Dice the gate uses: calibrated when the model has an RCA calibration, else raw."""
        return self.max_dice if self.calibrated_dice is None else self.calibrated_dice

    @property
    def calibrated(self) -> bool:
        return self.calibrated_dice is not None


@dataclass(frozen=True)
class RcaResult:
    structures: tuple[StructureRca, ...]
    references: tuple[str, ...] = field(metadata={"unit": "ids of the k references used, most similar first"})
    seconds: float = 0.0

    def by_label(self) -> dict[int, StructureRca]:
        return {s.label: s for s in self.structures}


@dataclass(frozen=True)
class DicePrediction:
    """The two-stage predictor's estimate of one structure's Dice, with a split-conformal interval."""

    label: int
    name: str
    dice: float
    low: float
    high: float
    coverage: float = field(metadata={"unit": "stated coverage of [low, high], e.g. 0.9"})


@dataclass(frozen=True)
class StructureQuality:
    """Everything known about the quality of one structure, and the gate's verdict on it."""

    label: int
    name: str
    uncertainty: StructureUncertainty
    rca: StructureRca | None
    prediction: DicePrediction | None
    route: Route
    reasons: tuple[str, ...] = ()
    regions: Mapping[str, float] = field(
        default_factory=dict,
        metadata={"unit": "share in [0, 1] of the structure's entropy per region (quality.spatial.REGION_KEYS)"},
    )


@dataclass(frozen=True)
class CaseQuality:
    """The quality of one segmented series: the gate's route with its reasons, and each structure's scores.

    ``reasons`` holds every reason of the case (input checks and each structure's), worded for a
    radiologist: what was measured, against which threshold.
    """

    route: Route
    reasons: tuple[str, ...]
    structures: tuple[StructureQuality, ...]
    method: SamplingMethod
    samples: int

    def by_label(self) -> dict[int, StructureQuality]:
        return {s.label: s for s in self.structures}
