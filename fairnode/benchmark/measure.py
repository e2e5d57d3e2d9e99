"""One labelled case measured: per structure Dice, NSD and HD95 (MONAI), and where its errors fall.

Errors of structure ``s``: false positives (predicted ``s``, truth not ``s``) and false negatives (truth ``s``,
predicted not ``s``). Where they fall is given twice:

- as shares of each error's area (volume) in the regions of :func:`quality.spatial.structure_regions`
  around the *true* structure: the boundary band (within ``nsd_tolerance_mm`` of its surface), its
  superior/middle/inferior and right/centre/left thirds, and the field edge (errors further than
  ``error_margin_mm`` from the structure are not located);
- for 2D images, as maps in a common frame: the box of the true structures (all labels), a left knee mirrored
  to a right one (``ImageLaterality``), resampled to ``frame_shape`` with area averaging, so each cell holds
  the fraction of its pixels in error. Averaged over a group these show where its errors concentrate.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from monai.transforms import Resize

from fairnode.benchmark.cohort import LabelledCase
from fairnode.benchmark.settings import BenchmarkSettings
from inference.metrics import monai_scores
from inference.segmenter import Segmenter
from quality.spatial import structure_regions

__all__ = ["DEMOGRAPHICS", "CaseResult", "common_frame", "measure_case"]

logger = logging.getLogger(__name__)

#: Manifest columns kept per case (never the patient ID or the study UIDs).
DEMOGRAPHICS: tuple[str, ...] = (
    "sex",
    "age_years",
    "age_band",
    "bmi",
    "bmi_band",
    "ethnic_group",
    "manufacturer",
    "model_name",
)


@dataclass
class CaseResult:
    """One case: its index in the cohort, demographics, per-structure scores and error locations.

    ``maps`` (2D only) holds ``fp`` and ``fn``, ``(structures, *frame_shape)`` float32 fractions, and ``truth``
    ``(*frame_shape)`` the fraction of each cell inside any true structure.
    """

    case: str
    demographics: dict[str, str]
    structures: list[dict[str, Any]]
    seconds: float
    maps: dict[str, np.ndarray] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("maps")
        return out


def _crop(*masks: np.ndarray, pad: int) -> tuple[slice, ...]:
    """The box holding every mask's voxels, grown by ``pad`` voxels (the whole image when all are empty)."""
    found = np.argwhere(np.logical_or.reduce(masks))
    if not len(found):
        return tuple(slice(None) for _ in masks[0].shape)
    lo = np.maximum(found.min(axis=0) - pad, 0)
    hi = np.minimum(found.max(axis=0) + pad + 1, masks[0].shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def common_frame(
    maps: np.ndarray, truth: np.ndarray, mirror: bool, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """``maps`` ``(k, rows, columns)`` and the truth's union in the frame of the true structures' box.

    The box is that of ``truth > 0`` grown by 5% on each side; ``mirror`` flips the columns (a left knee seen as
    a right one). Returns ``(k, *shape)`` and ``(*shape)`` area-averaged fractions.
    """
    union = truth > 0
    found = np.argwhere(union)
    if not len(found):
        return np.zeros((maps.shape[0], *shape), np.float32), np.zeros(shape, np.float32)
    lo, hi = found.min(axis=0), found.max(axis=0) + 1
    pad = np.ceil(0.05 * (hi - lo)).astype(int)
    lo, hi = np.maximum(lo - pad, 0), np.minimum(hi + pad, union.shape)
    box = (slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1])))
    stack = np.concatenate([maps[(slice(None), *box)], union[box][None]], axis=0).astype(np.float32)
    if mirror:
        stack = stack[..., ::-1]
    resized = np.asarray(Resize(shape, mode="area")(torch.from_numpy(np.ascontiguousarray(stack))))
    return resized[:-1].astype(np.float32), resized[-1].astype(np.float32)


def measure_case(case: LabelledCase, segmenter: Segmenter, settings: BenchmarkSettings, *, index: str) -> CaseResult:
    """Segment ``case`` and score each of the model's structures against its ground truth."""
    t0 = time.perf_counter()
    pred = segmenter.segment(case.pixels, case.spacing)
    truth = case.truth
    spacing = case.spacing
    unit = float(np.prod(spacing)) / (1000.0 if truth.ndim == 3 else 1.0)
    pad = [int(np.ceil(settings.error_margin_mm / s)) + 1 for s in spacing]
    structures = []
    fp_maps, fn_maps = [], []
    for label in segmenter.card.labels:
        p, t = pred == label.value, truth == label.value
        box = _crop(p, t, pad=max(pad))
        scores = monai_scores(p[box], t[box], spacing, settings.nsd_tolerance_mm)
        fp, fn = p & ~t, t & ~p
        located = {
            kind: structure_regions(
                err.astype(np.float32),
                t,
                spacing,
                margin_mm=settings.error_margin_mm,
                boundary_mm=settings.nsd_tolerance_mm,
            )
            for kind, err in (("fp", fp), ("fn", fn))
        }
        structures.append(
            {
                "name": label.name,
                "dice": scores.dice,
                "nsd": scores.nsd,
                "hd95_mm": scores.hd95_mm,
                "volume": float(t.sum()) * unit,
                "fp_size": float(fp.sum()) * unit,
                "fn_size": float(fn.sum()) * unit,
                "fp_regions": located["fp"],
                "fn_regions": located["fn"],
            }
        )
        fp_maps.append(fp)
        fn_maps.append(fn)
    maps: dict[str, np.ndarray] = {}
    if truth.ndim == 2:
        mirror = str(case.header.get("ImageLaterality", "R")).upper() == "L"
        both, union = common_frame(np.stack([*fp_maps, *fn_maps]), truth, mirror, settings.frame_shape)
        n = len(fp_maps)
        maps = {"fp": both[:n], "fn": both[n:], "truth": union}
    demographics = {k: str(case.row.get(k, "")) for k in DEMOGRAPHICS}
    return CaseResult(index, demographics, structures, round(time.perf_counter() - t0, 3), maps)
