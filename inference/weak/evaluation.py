"""COIN and the baselines on the same slices: maps, thresholds from validation, test metrics.

Every method gets the same classifier, liver region, slice gate (``p >= GATE``) and small-component
removal; only its score map differs. Thresholds maximise the pooled IoU of the validation split.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import torch
from torch import nn

from inference.weak import baselines
from inference.weak.cohort import SubjectInfo
from inference.weak.masks import GATE, SubjectScore, choose_threshold, scale_per_slice, score_subject, to_mask
from inference.weak.model import counterfactuals, probabilities
from inference.weak.slices import LesionTruth, SliceSet

logger = logging.getLogger(__name__)

METHODS = ("COIN", "Grad-CAM", "LayerCAM", "Score-CAM", "RISE")
COIN_THRESHOLDS = (0.005, 0.01, 0.015, *np.round(np.arange(0.02, 0.52, 0.02), 3))
MAP_THRESHOLDS = tuple(np.round(np.arange(0.05, 1.0, 0.05), 3))
#: lesion size bands by the scenario's mean lesion radius (mm)
BANDS = {6.0: "small (r~6 mm)", 10.0: "medium (r~10 mm)", 18.0: "large (r~18 mm)", 30.0: "very large (r~30 mm)"}

Case = tuple[SliceSet, LesionTruth, SubjectInfo]


def _maps(method: str, clf: nn.Module, gen: nn.Module, data: SliceSet, p: np.ndarray) -> np.ndarray:
    """Score maps ``(n, CROP, CROP)``; attribution maps only where the gate lets a slice through."""
    if method == "COIN":
        return np.abs(data.images - counterfactuals(gen, data.images))[:, 0]
    out = np.zeros(data.images.shape[:1] + data.images.shape[2:], np.float32)
    on = np.flatnonzero(p >= GATE)
    if on.size == 0:
        return out
    fn: dict[str, Callable[[nn.Module, torch.Tensor], np.ndarray]] = {
        "Grad-CAM": baselines.gradcam,
        "LayerCAM": baselines.layercam,
        "Score-CAM": baselines.scorecam,
        "RISE": baselines.rise,
    }
    out[on] = scale_per_slice(fn[method](clf, torch.from_numpy(data.images[on])))
    return out


def score_maps(clf: nn.Module, gen: nn.Module, cases: list[Case]) -> list[dict[str, np.ndarray]]:
    """Per case: ``p`` (slice probabilities) and each method's maps."""
    out = []
    seconds: dict[str, float] = defaultdict(float)
    for data, _, _ in cases:
        p = probabilities(clf, data.images)
        row = {"p": p}
        for m in METHODS:
            t0 = time.monotonic()
            row[m] = _maps(m, clf, gen, data, p)
            seconds[m] += time.monotonic() - t0
        out.append(row)
    logger.info("map seconds: %s", {k: round(v, 1) for k, v in seconds.items()})
    return out


def thresholds(cases: list[Case], maps: list[dict[str, np.ndarray]]) -> dict[str, tuple[float, float]]:
    """Each method's threshold and its validation pooled IoU."""
    region = np.concatenate([d.regions for d, _, _ in cases])
    truth = np.concatenate([t.masks() for _, t, _ in cases])
    p = np.concatenate([m["p"] for m in maps])
    out = {}
    for m in METHODS:
        score = np.concatenate([row[m] for row in maps])
        out[m] = choose_threshold(score, region, truth, COIN_THRESHOLDS if m == "COIN" else MAP_THRESHOLDS, p)
        logger.info("%s: threshold %.3f, validation IoU %.3f", m, *out[m])
    return out


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarise(scores: list[tuple[SubjectInfo, SubjectScore]]) -> dict[str, object]:
    """IoU/Dice means (lesion subjects), detection rate per lesion, false-positive ml per lesion-free liver."""
    les = [s for _, s in scores if s.iou is not None]
    free = [s for _, s in scores if s.iou is None]
    n_lesions = sum(s.lesions for s in les)
    return {
        "subjects": len(les),
        "iou": _mean([s.iou for s in les if s.iou is not None]),
        "dice": _mean([s.dice for s in les if s.dice is not None]),
        "detection_rate": sum(s.detected for s in les) / n_lesions if n_lesions else None,
        "lesions": n_lesions,
        "lesion_free_subjects": len(free),
        "false_positive_ml_per_lesion_free_liver": _mean([s.false_positive_ml for s in free]),
    }


def test_metrics(
    cases: list[Case], maps: list[dict[str, np.ndarray]], chosen: dict[str, tuple[float, float]]
) -> dict[str, object]:
    """Per method: overall, per size band, per sex and per BMI band; plus the per-subject rows."""
    result: dict[str, object] = {}
    for m in METHODS:
        scores = []
        for (data, truth, info), row in zip(cases, maps, strict=True):
            pred = to_mask(row[m], chosen[m][0], data.regions, row["p"])
            scores.append((info, score_subject(pred, truth.masks(), info.voxel_ml)))
        per: dict[str, object] = {"threshold": chosen[m][0], "validation_iou": chosen[m][1], "all": summarise(scores)}
        per["size_band"] = {
            name: summarise([(i, s) for i, s in scores if i.lesion_mm == mm]) for mm, name in BANDS.items()
        }
        for attr in ("sex", "bmi_band"):
            values = sorted({getattr(i, attr) for i, _ in scores})
            per[attr] = {v: summarise([(i, s) for i, s in scores if getattr(i, attr) == v]) for v in values}
        per["subjects"] = [{"index": i.index, "lesion_mm": i.lesion_mm, **asdict(s)} for i, s in scores]
        result[m] = per
    return result
