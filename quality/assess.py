"""One segmentation's quality, start to end: uncertainty -> RCA -> predictor -> gate.

:class:`QualityModel` is what a model's card and folder hold for quality (reference bank, calibration table,
gate limits), opened once. :func:`assess` takes the arrays of one case on the model grid and returns the
gate's :class:`~quality.types.CaseQuality`, the uncertainty maps and the feature rows (which calibration
stores with the true Dice).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from inference.model_card import ModelCard, ModelCardError
from quality import gate, rca, spatial, uncertainty
from quality.predictor import DicePredictor, PredictorError, image_stats, read_table, structure_features
from quality.rca_calibration import RcaCalibration
from quality.types import CaseQuality, DicePrediction, SamplingMethod, StructureRca, UncertaintyMaps

logger = logging.getLogger(__name__)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _checked(folder: Path, name: str, sha256: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise ModelCardError(f"{path} named by the model card is missing")
    if _sha256(path) != sha256:
        raise ModelCardError(f"{path} does not match the sha256 in the model card; re-run calibration")
    return path


@dataclass
class QualityModel:
    """The quality side of one bundled model."""

    card: ModelCard
    bank: rca.ReferenceBank | None = None
    predictor: DicePredictor | None = None
    limits: gate.GateLimits | None = None
    expected_volume: dict[str, float] = field(default_factory=dict)
    rca_settings: rca.RcaSettings | None = None
    rca_calibration: RcaCalibration | None = None

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(lab.name for lab in self.card.labels)

    @classmethod
    def open(cls, folder: Path, card: ModelCard) -> QualityModel:
        """Load what the card's ``quality`` section names (each file's sha256 checked)."""
        q = card.quality
        model = cls(card=card)
        if q is None:
            return model
        if q.rca is not None:
            model.bank = rca.ReferenceBank.load(_checked(folder, q.rca.file, q.rca.sha256))
            model.expected_volume = reference_volumes(model.bank, card.input.spatial_dims)
            try:
                model.rca_settings = rca.RcaSettings.for_bank(model.bank.ndim, q.rca.settings)
            except rca.RcaError as exc:
                raise ModelCardError(f"{folder}: quality.rca.settings: {exc}") from exc
        if q.predictor is not None:
            table = _checked(folder, q.predictor.table, q.predictor.sha256)
            try:
                model.predictor = DicePredictor.load(
                    table,
                    model.label_names,
                    q.predictor.coverage,
                    regressor=q.predictor.regressor,
                    half_width=q.predictor.half_width,
                )
                if q.rca is not None and q.rca.calibration is not None:
                    model.rca_calibration = RcaCalibration.fit(
                        read_table(table), q.rca.calibration.method, q.rca.calibration.split
                    )
            except PredictorError as exc:
                raise ModelCardError(str(exc)) from exc
        if q.gate is not None:
            g = q.gate
            model.limits = gate.GateLimits(
                predicted_low_min=g.predicted_low_min,
                rca_min=g.rca_min,
                volume_range=dict(g.volume_range),
                spacing_range=g.spacing_range,
                image_mean_range=g.image_mean_range,
                image_std_range=g.image_std_range,
                saturated_max=g.saturated_max,
                modality=card.input.modality,
                unit=g.volume_unit,
                structures={n: (t.predicted_low_min, t.rca_min) for n, t in g.structures.items()},
                shift=g.budget_shift,
            )
        return model


def reference_volumes(bank: rca.ReferenceBank, dims: int) -> dict[str, float]:
    """Median true volume (ml for 3D, mm² for 2D) of each structure over the bank's references."""
    voxel = float(np.prod(bank.spacing)) / (1000.0 if dims == 3 else 1.0)
    out = {}
    for value, name in enumerate(bank.label_names, start=1):
        vols = [float((r.labels == value).sum()) * voxel for r in bank.references]
        out[name] = float(np.median(vols)) if vols else 1.0
    return out


@dataclass
class Assessment:
    """The result of :func:`assess`."""

    quality: CaseQuality
    maps: UncertaintyMaps
    features: dict[int, dict[str, float]]
    timings: dict[str, float]
    rca: rca.RcaResult | None = None


@dataclass(frozen=True)
class RcaRun:
    """The RCA of one label map: its result, or why it could not be computed, and the seconds it took."""

    result: rca.RcaResult | None
    problem: str | None
    seconds: float


def run_rca(model_input: np.ndarray, labels: np.ndarray, qm: QualityModel) -> RcaRun | None:
    """RCA of the label map ``labels`` (model grid) of ``model_input``; ``None`` when the model has no bank.

    Independent of the stochastic samples, so a caller may run it beside the sampling (the node's pipeline
    does, on its own thread) and hand the run to :func:`assess`. A failure to compute it is a problem the gate
    reports, not an error.
    """
    if qm.bank is None:
        return None
    card = qm.card
    k = card.quality.rca.k if card.quality and card.quality.rca else 5
    t0 = time.perf_counter()
    try:
        image = model_input.reshape(labels.shape)
        result = rca.estimate(image, labels, card.input.spacing_mm, qm.bank, k=k, settings=qm.rca_settings)
        problem = None
    except (rca.RcaError, RuntimeError) as exc:  # SimpleITK raises RuntimeError on degenerate images
        result = None
        problem = f"RCA could not be computed ({type(exc).__name__}: {str(exc).splitlines()[-1][:200]})"
        logger.warning("%s", problem)
    return RcaRun(result, problem, time.perf_counter() - t0)


def assess(
    model_input: np.ndarray,
    labels: np.ndarray,
    samples: np.ndarray,
    qm: QualityModel,
    *,
    modality: str,
    source_spacing: Sequence[float],
    method: SamplingMethod,
    use_rca: bool = True,
    rca_run: RcaRun | None = None,
) -> Assessment:
    """Quality of the label map ``labels`` (model grid) of the image ``model_input`` (``(1, *grid)``).

    ``samples`` are the stochastic softmax samples ``(n, classes, *grid)``; ``source_spacing`` is the
    spacing of the image as received (for the gate's input checks). ``rca_run`` is the :func:`run_rca` of the
    same label map when the caller ran it already (then not timed here); otherwise RCA runs here when
    ``use_rca``.
    """
    card = qm.card
    spacing = card.input.spacing_mm
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    maps = uncertainty.maps(samples)
    scores = uncertainty.structure_scores(samples, labels, spacing, qm.label_names, maps)
    timings["uncertainty"] = time.perf_counter() - t0
    image = model_input.reshape(labels.shape)
    if rca_run is None and use_rca:
        rca_run = run_rca(model_input, labels, qm)
        if rca_run is not None:
            timings["rca"] = rca_run.seconds
    result = rca_run.result if rca_run is not None else None
    rca_problem = rca_run.problem if rca_run is not None else None
    by_label: dict[int, StructureRca] = result.by_label() if result else {}
    if qm.rca_calibration is not None:
        by_label = {v: qm.rca_calibration.calibrate(r) for v, r in by_label.items()}
    t0 = time.perf_counter()
    stats = image_stats(image, labels)
    features = {
        u.label: structure_features(u, by_label.get(u.label), stats, qm.expected_volume.get(u.name, 1.0))
        for u in scores
    }
    predictions: dict[int, DicePrediction] = {}
    if qm.predictor is not None:
        labs = [u.label for u in scores]
        predictions = {p.label: p for p in qm.predictor.predict([features[v] for v in labs], labs)}
    problems = gate.input_reasons(modality, source_spacing, stats, qm.limits) if qm.limits else []
    if rca_problem is not None:
        problems.append(rca_problem)
    quality = gate.decide(
        structures=scores,
        rca=by_label,
        predictions=predictions,
        input_problems=problems,
        limits=qm.limits,
        method=method,
        samples=int(samples.shape[0]),
    )
    timings["predictor_gate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    regions = spatial.region_shares(maps.entropy, labels, spacing, len(qm.label_names))
    quality = replace(
        quality, structures=tuple(replace(s, regions=regions.get(s.label, {})) for s in quality.structures)
    )
    timings["regions"] = time.perf_counter() - t0
    return Assessment(quality=quality, maps=maps, features=features, timings=timings, rca=result)
