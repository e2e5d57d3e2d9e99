"""One study through the house: select series, build volumes, segment, write SEG + SR, record.

:func:`process_study` is the one pipeline function. The node's job runner calls it on a study from the
spool, and ``fairnode run DIR`` calls it on files from a folder; it never touches the network (delivery is
the caller's: the runner enqueues the written files for the forwarder).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from dicom_node.selection import DEFAULT_RULES, SeriesInfo, SeriesRule, select
from dicom_node.volume import VolumeError, load_volume, read_series
from dicom_node.writers import OutputSettings
from fairness_registry.settings import RegistrySettings
from fairnode.corrections import take_corrections
from fairnode.lesions import OUTPUT_KEYS as LESION_OUTPUT_KEYS
from fairnode.lesions import LesionSettings, run_lesions
from fairnode.pipeline_registry import PipelineRegistry as _Registry  # noqa: F401 (the registry rows, by context)
from fairnode.pipeline_registry import keep_and_write
from fairnode.registry_writes import CaseResult, SeriesEntry, SeriesFactsRecord, StudyRecord
from fairnode.series_outputs import (
    PROBABILITY_FILE,
    SEG_FILE,
    SR_FILE,
    UNCERTAINTY_FILE,
    write_series_outputs,
)
from inference.backends import InferenceSettings
from inference.model_card import ModelCardError
from inference.model_store import find_models, open_segmenter
from inference.preprocess import labels_to_source, to_model_grid
from inference.segmenter import Segmenter
from quality.assess import Assessment, QualityModel, assess, run_rca
from quality.rca import RcaError
from quality.seeding import sample_seed, seed_samplers
from quality.types import CaseQuality, Route, SamplingMethod

logger = logging.getLogger(__name__)


#: The SeriesOutcome fields (and keys of its dict) that hold an output file's path, in forwarding order
#: (the lesion step's are fairnode.lesions.OUTPUT_KEYS, inside ``lesions``): the SEG and the SR (its verdict)
#: first, then the quality maps, which are larger (a 128-slice CT: SEG 12 MB, SR 0.2 MB, maps 6 and 27 MB).
OUTPUT_PATH_KEYS: tuple[str, ...] = ("seg_path", "sr_path", "probability_seg_path", "uncertainty_path")


@dataclass
class SeriesOutcome:
    """What happened to one series."""

    series_uid: str
    modality: str
    model: str | None
    reason: str
    status: str  # skipped | done | failed
    timings: dict[str, float] = field(default_factory=dict)
    seg_path: str | None = None
    sr_path: str | None = None
    seg_uid: str | None = None
    sr_uid: str | None = None
    measurements: dict[str, float] = field(default_factory=dict)
    providers: list[str] = field(default_factory=list)
    probability_seg_path: str | None = None
    uncertainty_path: str | None = None
    route: str | None = None  # PASS | REVIEW, once quality was assessed
    review_reasons: list[str] = field(default_factory=list)
    review_state: str | None = None  # not_needed | held | forwarded | sent_for_review
    quality: dict[str, dict[str, float | None]] = field(default_factory=dict)
    lesions: dict[str, object] = field(default_factory=dict)  # the liver-lesion step's findings (fairnode.lesions)

    @property
    def outputs(self) -> list[Path]:
        paths = (getattr(self, k) for k in OUTPUT_PATH_KEYS)
        lesion_paths = (self.lesions.get(k) for k in LESION_OUTPUT_KEYS)
        return [Path(p) for p in paths if p] + [Path(str(p)) for p in lesion_paths if p]


@dataclass
class StudyOutcome:
    study_uid: str
    run: int
    series: list[SeriesOutcome]
    seconds: float

    @property
    def outputs(self) -> list[Path]:
        return [p for s in self.series for p in s.outputs]

    @property
    def failed(self) -> bool:
        return any(s.status == "failed" for s in self.series)


class Models:
    """Opens each model (and its quality side) once per process, on first use: the bundled ones (``models_dir``,
    default the shipped folder) and those imported into ``imported_dir`` (see :mod:`inference.model_store`)."""

    def __init__(
        self,
        models_dir: Path | None,
        prefer_gpu: bool,
        imported_dir: Path | None = None,
        inference: InferenceSettings | None = None,
    ):
        self.folders = find_models(models_dir, imported_dir)
        self.prefer_gpu = prefer_gpu
        self.inference = inference
        self._open: dict[str, Segmenter] = {}
        self._quality: dict[str, QualityModel] = {}

    def quality(self, name: str) -> QualityModel:
        if name not in self._quality:
            seg = self.get(name)
            try:
                self._quality[name] = QualityModel.open(self.folders[name], seg.card)
            except RcaError as exc:
                raise ModelCardError(str(exc)) from exc
        return self._quality[name]

    def opened(self) -> dict[str, Segmenter]:
        return dict(self._open)

    def get(self, name: str) -> Segmenter:
        if name not in self._open:
            if name not in self.folders:
                have = ", ".join(self.folders) or "none"
                raise ModelCardError(f"model '{name}' is not installed (bundled or imported: {have})")
            self._open[name] = open_segmenter(self.folders[name], prefer_gpu=self.prefer_gpu, inference=self.inference)
        return self._open[name]


@dataclass(frozen=True)
class QualitySettings:
    """How quality is estimated and what happens to REVIEW cases.

    ``method``/``samples`` of None take the model card's. ``review_route``: ``forward`` sends REVIEW
    outputs to PACS at once with SeriesDescription marked NEEDS REVIEW; ``hold`` keeps them in the outbox
    until a radiologist acts; ``review-destination`` sends them to the review destination only.
    """

    enabled: bool = True
    method: str | None = None
    samples: int | None = None
    rca: bool = True
    review_route: str = "forward"


@dataclass
class PipelineContext:
    """What the pipeline needs, built once by the composition root."""

    rules: Sequence[SeriesRule]
    models: Models
    outputs: OutputSettings
    registry_session: Callable[[], object] | None
    secret: bytes
    quality: QualitySettings = field(default_factory=QualitySettings)
    registry_options: RegistrySettings = field(default_factory=RegistrySettings)
    #: where registry records wait until the registry takes them (None: beside each study run's outputs)
    registry_pending: Path | None = None
    #: the weakly supervised liver-lesion step after the CT abdomen organ model (off by default)
    lesions: LesionSettings = field(default_factory=LesionSettings)

    def __post_init__(self) -> None:
        """Refuse, at start-up, configured selection rules that name a model this node does not have.

        The shipped default rules also cover models a node may not have installed (e.g. ``mr-brain``): those
        are dropped with a log line, so such series are skipped ("no rule matches") rather than failed.
        """
        if not self.rules:
            return
        installed = set(self.models.folders)
        kept = [r for r in self.rules if r.model in installed or r not in DEFAULT_RULES]
        for model in sorted({r.model for r in self.rules if r not in kept}):
            logger.info("default selection rules for %s not used: the model is not installed", model)
        self.rules = kept
        missing = sorted({rule.model for rule in self.rules} - installed)
        if missing:
            have = ", ".join(sorted(self.models.folders)) or "none"
            raise ModelCardError(
                f"selection rules name model(s) not installed on this node: {', '.join(missing)} (installed: {have}); "
                "fix 'rules' in the settings or install the model"
            )


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = round(time.perf_counter() - t0, 4)


def process_study(
    files: Sequence[Path],
    *,
    study_uid: str,
    run: int,
    out_dir: Path,
    ctx: PipelineContext,
    defer_registry: bool = False,
) -> StudyOutcome:
    """Process every series of a study found in ``files``; outputs go to ``out_dir/<series>/``.

    Failures of one series (bad geometry, undecodable pixels) are recorded with their reason and do not
    stop the others. A ``summary.json`` is written to ``out_dir``.

    The registry is told last: once every output is written, the study run's rows are kept as a record
    (:mod:`fairnode.registry_pending`) and written, so a registry that refuses never fails the study nor
    holds back its results; the record waits for a retry. With ``defer_registry`` the record is only kept,
    for the caller to write once the results are on their way
    (:func:`~fairnode.pipeline_registry.pending_registry`).
    """
    t0 = time.perf_counter()
    headers: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        if str(ds.get("StudyInstanceUID", "")) != study_uid:
            continue
        headers.setdefault(str(ds.SeriesInstanceUID), []).append((f, ds))
    if not headers:
        raise ValueError(f"none of the {len(files)} files given belongs to study {study_uid}")
    # a corrected SEG of a processed series is ground truth for its case, not a new series to segment
    taken = take_corrections(
        headers,
        out_dir=out_dir,
        registry_session=ctx.registry_session,
        model_folders=ctx.models.folders,
        manufacturer=ctx.outputs.manufacturer,
    )
    corrections = [SeriesOutcome(t.series_uid, "SEG", t.model, t.reason, t.status) for t in taken]
    if not headers:
        return _summary(StudyOutcome(study_uid, run, corrections, round(time.perf_counter() - t0, 3)), out_dir)
    infos = [SeriesInfo.from_datasets([d for _, d in items]) for items in headers.values()]
    selections = select(infos, ctx.rules)
    first = next(iter(headers.values()))[0][1]
    outcomes: list[SeriesOutcome] = corrections
    record = StudyRecord(study_uid, run, first)
    for info, sel in zip(infos, selections, strict=True):
        outcome = SeriesOutcome(info.series_uid, info.modality, sel.model, sel.reason, "skipped")
        outcomes.append(outcome)
        entry = SeriesEntry(SeriesFactsRecord.of(info), sel.model, sel.reason, "", headers[info.series_uid][0][1])
        record.series.append(entry)
        if sel.model is None:
            logger.info("study %s series %s skipped: %s", study_uid, info.series_uid, sel.reason)
            continue
        quality: CaseQuality | None = None
        logger.info("study %s series %s: segmenting with %s (run %d)", study_uid, info.series_uid, sel.model, run)
        try:
            quality = _segment_series(
                [p for p, _ in headers[info.series_uid]], sel.model, run, out_dir / info.series_uid, ctx, outcome
            )
            outcome.status = "done"
        except (VolumeError, ModelCardError, ValueError, OSError) as exc:
            outcome.status = "failed"
            outcome.reason = f"{type(exc).__name__}: {exc}"
            logger.error("study %s series %s failed: %s", study_uid, info.series_uid, outcome.reason)
        entry.result, entry.quality = CaseResult.of(outcome), quality
        entry.model_version = _model_version(ctx, sel.model)
    result = _summary(StudyOutcome(study_uid, run, outcomes, round(time.perf_counter() - t0, 3)), out_dir)
    keep_and_write(ctx, record, out_dir, write=not defer_registry)
    return result


def _model_version(ctx: PipelineContext, model: str | None) -> str:
    """The installed version of ``model`` (empty when none or not installed: its series fails)."""
    if model is None or model not in ctx.models.folders:
        return ""
    try:
        return ctx.models.get(model).card.version
    except ModelCardError:
        return ""


def _summary(result: StudyOutcome, out_dir: Path) -> StudyOutcome:
    """Write ``summary.json`` of a study's run into ``out_dir``; the outcome."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(asdict(result), indent=2), encoding="utf-8")
    return result


def _segment_series(
    paths: list[Path], model: str, run: int, out: Path, ctx: PipelineContext, outcome: SeriesOutcome
) -> CaseQuality | None:
    t = outcome.timings
    with _timed(t, "read"):
        datasets = read_series(paths)
    with _timed(t, "volume"):
        volume = load_volume(datasets)
    segmenter = ctx.models.get(model)
    card = segmenter.card
    outcome.providers = segmenter.providers_in_use
    qm = ctx.models.quality(model) if ctx.quality.enabled else None
    analysis = analyse(volume.pixels, volume.spacing, str(datasets[0].Modality), segmenter, qm, ctx.quality, t)
    labels, assessment = analysis.labels, analysis.assessment
    sources = list(volume.datasets)
    quality = assessment.quality if assessment is not None else None
    with _timed(t, "outputs"):
        written = write_series_outputs(
            sources,
            labels,
            volume.spacing,
            assessment,
            card,
            ctx.outputs,
            out,
            run=run,
            selection_reason=outcome.reason,
            providers=outcome.providers,
            mark_review=quality is not None and quality.route == Route.REVIEW and ctx.quality.review_route == "forward",
        )
    seg, sr, measurements = written.seg, written.sr, written.measurements
    outcome.seg_path, outcome.sr_path = str(out / SEG_FILE), str(out / SR_FILE)
    if assessment is not None:
        outcome.probability_seg_path = str(out / PROBABILITY_FILE)
        outcome.uncertainty_path = str(out / UNCERTAINTY_FILE)
        _record_quality(outcome, assessment.quality, ctx.quality.review_route)
    if ctx.lesions.enabled and model == ctx.lesions.organ_model:  # liver lesions after the organ model
        with _timed(t, "lesions"):
            run_lesions(ctx, model, sources, volume, labels, out, run, outcome)
    outcome.measurements = {
        m.label_name: float(m.volume_ml if m.volume_ml is not None else (m.area_mm2 or 0.0)) for m in measurements
    }
    outcome.seg_uid, outcome.sr_uid = str(seg.SOPInstanceUID), str(sr.SOPInstanceUID)
    logger.info(
        "series %s segmented by %s %s in %.2f s (inference %.2f s): %s; quality %s",
        outcome.series_uid,
        card.name,
        card.version,
        sum(t.values()),
        t["inference"],
        ", ".join(f"{k} {v:.1f}" for k, v in outcome.measurements.items()),
        outcome.route or "not assessed",
    )
    return quality


@dataclass
class Analysis:
    """One image segmented and assessed: labels on the source grid, quality on the model grid."""

    labels: np.ndarray
    assessment: Assessment | None


def analyse(
    pixels: np.ndarray,
    spacing: tuple[float, ...],
    modality: str,
    segmenter: Segmenter,
    qm: QualityModel | None,
    settings: QualitySettings,
    t: dict[str, float],
) -> Analysis:
    """Segment an image and, when ``qm`` is given, assess its quality (stage timings added to ``t``).

    The one place where inference meets quality: the node's pipeline and quality calibration and
    validation all call it, so what is validated is what runs.
    """
    card = segmenter.card
    with _timed(t, "inference"):
        x = to_model_grid(pixels, spacing, card.input)
        grid_probs = segmenter.model_grid_probabilities(x)
        if qm is None:
            return Analysis(labels_to_source(grid_probs, pixels.shape), None)
    spec = card.quality
    method = SamplingMethod(settings.method or (spec.sampling if spec else "mc-dropout"))
    n = settings.samples or (spec.samples if spec else 6)
    grid_labels = np.argmax(grid_probs, axis=0).astype(np.uint8)
    with ThreadPoolExecutor(1, thread_name_prefix="beside-sampling") as beside:
        # RCA and the source-grid labels need the label map, not the samples: they run on a thread of their own
        # while the network samples (on the GPU where there is one)
        rca_job = beside.submit(run_rca, x, grid_labels, qm) if settings.rca else None
        labels_job = beside.submit(labels_to_source, grid_probs, pixels.shape)
        with _timed(t, "sampling"):
            seed_samplers(sample_seed(x))  # the same image gives the same samples
            samples = segmenter.samples(x, n, method.value)
        with _timed(t, "rca"):  # what RCA adds after the samples
            rca_run = rca_job.result() if rca_job is not None else None
        with _timed(t, "labels"):  # and the labels
            labels = labels_job.result()
    result = assess(
        x,
        grid_labels,
        samples,
        qm,
        modality=modality,
        source_spacing=spacing,
        method=method,
        use_rca=False,
        rca_run=rca_run,
    )
    t.update({k: round(v, 4) for k, v in result.timings.items()})
    if rca_run is None:
        t.pop("rca")
    return Analysis(labels, result)


def _clean(v: float | None) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), 4)


def _record_quality(outcome: SeriesOutcome, quality: CaseQuality, review_route: str) -> None:
    outcome.route = quality.route.value
    outcome.review_reasons = list(quality.reasons)
    if quality.route == Route.PASS:
        outcome.review_state = "not_needed"
    else:
        outcome.review_state = {"forward": "forwarded", "hold": "held"}.get(review_route, "sent_for_review")
    for s in quality.structures:
        outcome.quality[s.name] = {
            "volume": _clean(s.uncertainty.volume),
            "mean_entropy": _clean(s.uncertainty.mean_entropy),
            "sample_dice": _clean(s.uncertainty.sample_dice),
            "volume_cv": _clean(s.uncertainty.volume_cv),
            "rca_max_dice": _clean(s.rca.max_dice) if s.rca else None,
            "rca_mean_dice": _clean(s.rca.mean_dice) if s.rca else None,
            "predicted_dice": _clean(s.prediction.dice) if s.prediction else None,
            "predicted_low": _clean(s.prediction.low) if s.prediction else None,
            "predicted_high": _clean(s.prediction.high) if s.prediction else None,
        }
