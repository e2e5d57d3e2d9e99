"""The weakly supervised liver-lesion step of the pipeline: after the organ model on a CT abdomen series.

Settings (``lesions:`` in the settings file, ``FAIRNODE_LESIONS__ENABLED`` etc.): off by default. When on and
the lesion model (``ct-liver-lesion-weak``) sits beside the organ model, :func:`run_lesions` takes the
organ model's liver, runs :class:`inference.weak.shipped.LesionModel`, writes ``lesion-seg.dcm`` and
``lesion-sr.dcm`` (:mod:`dicom_node.writers.lesion`), with ``counterfactual`` on also
``lesion-counterfactual.dcm`` (the image with the lesions inpainted, a Parametric Map in HU), into the series'
output folder and records the findings on the series' outcome. A doubtful finding (see the model's card)
sends the series to review.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydantic import BaseModel, ConfigDict

from dicom_node.writers.common import OutputSettings
from fairnode.series_outputs import mark_for_review, write_dataset

logger = logging.getLogger(__name__)

#: the lesion model's folder name and card file (as in :mod:`inference.weak.shipped`, kept here so that the
#: settings need not import the networks)
NAME = "ct-liver-lesion-weak"
CARD = "lesion-card.yaml"

#: the keys of a series outcome's ``lesions`` that name the files written for PACS
OUTPUT_KEYS: tuple[str, ...] = ("seg_path", "sr_path", "counterfactual_path")


class LesionSettings(BaseModel):
    """Whether and after which organ model the lesion model runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    #: also write the counterfactual image (what the model inpainted) for the radiologist to compare
    counterfactual: bool = False
    organ_model: str = "ct-abdomen"
    liver_label: int = 1
    model: str = NAME


_open: dict[Path, Any] = {}


def lesion_folder(organ_folder: Path, settings: LesionSettings) -> Path | None:
    """The lesion model's folder beside the organ model's, or ``None`` when it is not installed."""
    folder = organ_folder.parent / settings.model
    return folder if (folder / CARD).is_file() else None


def run_lesions(
    ctx: Any,
    model_name: str,
    sources: Sequence[pydicom.Dataset],
    volume: Any,
    labels: np.ndarray,
    out: Path,
    run: int,
    outcome: Any,
) -> list[Path]:
    """Run the lesion model on one segmented series and write its SEG and SR; the paths written.

    ``ctx`` is the pipeline's context (its ``lesions``, ``models``, ``outputs`` and ``quality``), ``volume``
    the series' volume (``pixels``, ``spacing``), ``labels`` the organ model's labels on it and ``outcome``
    the series' outcome, which gets ``lesions`` (and review reasons when the finding is doubtful).
    """
    from dicom_node.writers.lesion import build_counterfactual_map, build_lesion_seg, build_lesion_sr
    from inference.weak.shipped import LesionModel, counterfactual_image

    settings: LesionSettings = ctx.lesions
    organ_folder: Path = ctx.models.folders[model_name]
    outputs: OutputSettings = ctx.outputs
    review_route: str = ctx.quality.review_route
    pixels, spacing = volume.pixels, volume.spacing
    folder = lesion_folder(organ_folder, settings)
    if folder is None:
        logger.info("lesion model %s not installed beside %s: no lesion search", settings.model, organ_folder)
        return []
    if folder not in _open:
        _open[folder] = LesionModel(folder)
    model = _open[folder]
    result = model.run(pixels, spacing, labels == settings.liver_label)
    seg = build_lesion_seg(sources, result.mask, model.card, outputs, run=run)
    sr = build_lesion_sr(sources, seg, result, model.card, outputs, run=run)
    written: list[pydicom.Dataset] = [seg, sr]
    paths = [out / "lesion-seg.dcm", out / "lesion-sr.dcm"]
    if settings.counterfactual:
        image = counterfactual_image(pixels, result)
        written.append(build_counterfactual_map(sources, image, model.card, outputs, run=run))
        paths.append(out / "lesion-counterfactual.dcm")
    if result.route == "REVIEW" and review_route == "forward":
        for ds in written:
            mark_for_review(ds)
    for ds, path in zip(written, paths, strict=True):
        write_dataset(ds, path)
    outcome.lesions = {
        "model": f"{model.card.name} {model.card.version}",
        "count": result.count,
        "volumes_ml": result.volumes_ml,
        "total_ml": round(result.total_ml, 2),
        "probability_before": result.probability_before,
        "probability_after": result.probability_after,
        "mc_agreement": result.mc_agreement,
        "route": result.route,
        "reasons": result.reasons,
        "seg_path": str(paths[0]),
        "sr_path": str(paths[1]),
        "counterfactual_path": str(paths[2]) if settings.counterfactual else None,
    }
    if result.route == "REVIEW":
        outcome.review_reasons = [*outcome.review_reasons, *(f"liver lesion: {r}" for r in result.reasons)]
        if outcome.route is not None:
            outcome.route = "REVIEW"
            outcome.review_state = {"forward": "forwarded", "hold": "held"}.get(review_route, "sent_for_review")
    logger.info(
        "series %s: %d liver lesion(s), %.1f ml, %s", outcome.series_uid, result.count, result.total_ml, result.route
    )
    return paths
