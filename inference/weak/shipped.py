"""The shipped weakly supervised lesion model (``ct-liver-lesion-weak``): export, card, and running it.

Folder layout: ``classifier.onnx`` (dropout off), ``classifier_mc.onnx`` (dropout on, for Monte Carlo
samples; opened with ORT's dropout elimination disabled), ``generator.onnx`` (slice -> counterfactual) and
``lesion-card.yaml``. The card has its own name, not ``card.yaml``: this is not an organ segmentation
model and the organ model store does not list it.

:class:`LesionModel` runs on a volume and the organ model's liver: liver region, slice crops, classifier,
counterfactuals, ``|x - x_cf|`` above the card's threshold inside the region on slices the classifier calls
lesion, small components removed (the networks see the crops inside the region only,
:func:`~inference.weak.slices.network_input`, as in training); lesions are the 3D components of the mask
pasted back on the source grid.
Its quality: the classifier's lesion probability before and after inpainting, and the agreement of Monte
Carlo samples of the classifier with its call on every liver slice; a finding that is doubtful by any of them
goes to review.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage
from torch import nn

from inference.network import with_dropout_always_on
from inference.weak.masks import GATE, MIN_PIXELS, to_mask
from inference.weak.slices import (
    CROP,
    WINDOW_HU,
    CropBox,
    add_crops,
    crop_box,
    cut,
    liver_region,
    network_input,
    paste,
)

logger = logging.getLogger(__name__)

NAME = "ct-liver-lesion-weak"
CARD = "lesion-card.yaml"  # fairnode.lesions names the same folder and file
MC_DISABLED = ["EliminateDropout"]


class LesionCard(BaseModel):
    """What the lesion model is, how it was trained and how well it does."""

    model_config = ConfigDict(extra="forbid")

    name: str = NAME
    version: str = Field(pattern=r"^\d+\.\d+\.\d+$")
    description: str
    supervision: str = "trained from image-level labels only"
    segment_label: str = "liver lesion"
    code: tuple[str, str, str] = ("52988006", "SCT", "Lesion")
    category: tuple[str, str, str] = ("49755003", "SCT", "Morphologically Abnormal Structure")
    anatomic_region: tuple[str, str, str] = ("10200004", "SCT", "Liver")
    color: tuple[int, int, int] = (250, 210, 60)
    organ_model: str = "ct-abdomen"
    crop: int = CROP
    window_hu: tuple[float, float] = WINDOW_HU
    threshold: float = Field(gt=0, description="|x - x_cf| above which a pixel is lesion (chosen on validation)")
    gate: float = GATE
    min_pixels: int = MIN_PIXELS
    mc_samples: int = 8
    review: dict[str, float] = Field(
        default_factory=lambda: {
            "probability_after_max": 0.5,
            "mc_agreement_min": 0.8,
            "uncertain_low": 0.3,
            "uncertain_high": 0.7,
        }
    )
    validation: dict[str, object] = Field(default_factory=dict)
    training: dict[str, object] = Field(default_factory=dict)
    reproduce: tuple[str, ...] = ()


def load_lesion_card(folder: Path) -> LesionCard:
    return LesionCard.model_validate(yaml.safe_load((folder / CARD).read_text(encoding="utf-8")))


def export(classifier: nn.Module, generator: nn.Module, card: LesionCard, folder: Path) -> None:
    """Write the three ONNX graphs and the card into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(2, 1, CROP, CROP)
    axes = {"x": {0: "batch"}, "y": {0: "batch"}}
    mc = with_dropout_always_on(copy.deepcopy(classifier)).eval()  # dropout applied in eval mode too
    for model, name in (
        (classifier.eval(), "classifier.onnx"),
        (mc, "classifier_mc.onnx"),
        (generator.eval(), "generator.onnx"),
    ):
        with torch.no_grad():
            torch.onnx.export(
                model,
                (x,),
                str(folder / name),
                input_names=["x"],
                output_names=["y"],
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )
    (folder / CARD).write_text(
        yaml.safe_dump(card.model_dump(mode="json"), sort_keys=False, width=110), encoding="utf-8"
    )


@dataclass
class LesionResult:
    """The lesion model's findings on one volume.

    ``mask``: boolean on the source grid; ``volumes_ml``: per lesion (3D component), largest first;
    ``change_hu``: what the counterfactual changed, ``counterfactual - image`` in HU on the crops
    ``(n, CROP, CROP)`` of ``box``, and ``region`` the liver region on the source grid
    (:func:`counterfactual_image` puts the change back inside it); ``probability_before``/``after``: the
    highest slice lesion probability of the
    image and of its counterfactual; ``mc_agreement``: mean share of Monte Carlo classifier samples agreeing
    with the call, over the liver slices; ``route`` ``PASS`` or ``REVIEW`` with ``reasons``.
    """

    mask: np.ndarray
    volumes_ml: list[float]
    probability_before: float
    probability_after: float
    mc_agreement: float
    route: str
    reasons: list[str] = field(default_factory=list)
    change_hu: np.ndarray | None = None
    box: CropBox | None = None
    region: np.ndarray | None = None

    @property
    def count(self) -> int:
        return len(self.volumes_ml)

    @property
    def total_ml(self) -> float:
        return float(sum(self.volumes_ml))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-z)))


class LesionModel:
    """The shipped lesion model, opened once (ONNX Runtime, CPU)."""

    def __init__(self, folder: Path, threads: int = 1):
        self.folder = folder
        self.card = load_lesion_card(folder)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        self._clf = ort.InferenceSession(str(folder / "classifier.onnx"), opts, providers=providers)
        self._gen = ort.InferenceSession(str(folder / "generator.onnx"), opts, providers=providers)
        self._mc = ort.InferenceSession(
            str(folder / "classifier_mc.onnx"), opts, providers=providers, disabled_optimizers=MC_DISABLED
        )

    def _run(self, session: ort.InferenceSession, x: np.ndarray, batch: int = 32) -> np.ndarray:
        return np.concatenate([session.run(None, {"x": x[i : i + batch]})[0] for i in range(0, len(x), batch)])

    def run(self, pixels: np.ndarray, spacing: tuple[float, ...], liver: np.ndarray) -> LesionResult:
        """Find liver lesions in ``pixels`` (HU, ``(slices, rows, cols)``) given the organ model's ``liver``."""
        card = self.card
        region = liver_region(liver.astype(bool), float(spacing[1]))
        box = crop_box(region, spacing)
        empty = np.zeros(pixels.shape, bool)
        if box is None:
            return LesionResult(empty, [], 0.0, 0.0, 1.0, "PASS", ["no liver found: no lesion search"])
        regions = cut(region.astype(np.float32), box, order=0) > 0.5
        x = network_input(cut(pixels, box, fill=-1000.0), regions)
        p = _sigmoid(self._run(self._clf, x)[:, 0])
        cf = self._run(self._gen, x).astype(np.float32)
        p_after = _sigmoid(self._run(self._clf, cf)[:, 0])
        calls = p >= card.gate
        mc = np.stack([_sigmoid(self._run(self._mc, x)[:, 0]) >= card.gate for _ in range(card.mc_samples)])
        agreement = float((mc == calls[None]).mean())
        crops = to_mask(np.abs(x - cf)[:, 0], card.threshold, regions, p, card.min_pixels)
        mask = paste(crops, box, pixels.shape) & region
        lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
        voxel_ml = float(np.prod(spacing)) / 1000.0
        sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:] * voxel_ml
        volumes = sorted((round(float(v), 2) for v in sizes), reverse=True)
        r = card.review
        reasons = []
        before, after = float(p.max()), float(p_after[calls].max()) if calls.any() else 0.0
        if calls.any() and after >= r["probability_after_max"]:
            reasons.append(f"lesion classifier still calls the inpainted image lesion (p {after:.2f})")
        if agreement < r["mc_agreement_min"]:
            reasons.append(f"Monte Carlo lesion calls agree on {agreement:.0%} of liver slices")
        unsure = int(((p >= r["uncertain_low"]) & (p < r["uncertain_high"])).sum())
        if unsure:
            reasons.append(f"{unsure} liver slice(s) with an uncertain lesion probability")
        if calls.any() and not volumes:
            reasons.append("lesion classifier calls a lesion that the counterfactual does not localise")
        lo, hi = WINDOW_HU
        return LesionResult(
            mask=mask,
            volumes_ml=volumes,
            probability_before=round(before, 4),
            probability_after=round(after, 4),
            mc_agreement=round(agreement, 4),
            route="REVIEW" if reasons else "PASS",
            reasons=reasons,
            change_hu=((cf - x)[:, 0] * (hi - lo)).astype(np.float32),
            box=box,
            region=region,
        )


def counterfactual_image(pixels: np.ndarray, result: LesionResult) -> np.ndarray:
    """The counterfactual of ``pixels`` (HU, the volume :meth:`LesionModel.run` took), float32 HU: the image
    as the generator inpaints it inside the liver region, on every slice of the region (the generator is
    trained to leave lesion-free slices as they are), and the source itself everywhere else, including
    where the source lies outside :data:`~inference.weak.slices.WINDOW_HU` (the networks see that window
    only, so a change there would be an artefact of the clipping)."""
    out = pixels.astype(np.float32)
    if result.change_hu is None or result.box is None or result.region is None:
        return out
    lo, hi = WINDOW_HU
    where = result.region & (pixels >= lo) & (pixels <= hi)
    add_crops(out, result.change_hu, result.box, where)
    return out
