"""Run a scenario: its model (bundled, or a small biased one trained here), its deployment cohort through
:func:`fairnode.pipeline.analyse`, and the audit frame built from the estimates.

Per-case results are appended to a JSON-lines cache as they are measured, so an interrupted run resumes
where it stopped; a trained model is kept in its folder and reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from datetime import time as dtime
from pathlib import Path

import numpy as np
import pandas as pd

from cohorts import ct_abdomen
from cohorts.image import SyntheticImage
from cohorts.kinds import get_kind
from cohorts.shift import ShiftSpec
from cohorts.subjects import Subject, draw_subject
from fairnode.bias_discovery.scenarios import Scenario
from fairnode.calibration import CALIBRATION_SEED, CalibrationOptions, calibrate
from fairnode.pipeline import QualitySettings, analyse
from inference.model_card import bundled_models, load_card, save_card
from inference.segmenter import Segmenter
from inference.training import RECIPES, TrainingProgress, train_model
from quality.assess import QualityModel
from quality.settings import QualityCalibrationSettings
from quality.uncertainty import dice

logger = logging.getLogger(__name__)

#: deployment cohorts are drawn from this seed (training 1000, validation 2000, RCA bank 3000,
#: calibration 4000, quality validation 5000+: none of their subjects is reused)
DEPLOY_SEED = 6000
#: the quality files a biased model borrows from the bundled model of its task
QUALITY_FILES: tuple[str, ...] = ("rca-bank.npz", "quality-calibration.csv")
SPATIAL_KEYS: tuple[str, ...] = ("boundary", "superior", "middle", "inferior", "left", "centre", "right", "field_edge")

Step = Callable[[str], None]


@dataclass(frozen=True)
class Schedule:
    """How the small biased models are trained (much shorter than the bundled recipes)."""

    n_train: int = 80
    iterations: int = 250
    workers: int = 1
    #: subjects of the balanced calibration cohort each trained model is recalibrated on (0: keep the bundled
    #: model's predictor and RCA calibration, as a deployment that retrains without recalibrating would)
    n_calibration: int = 0


@dataclass
class CaseResult:
    """One deployment case: demographics, the case route and per structure the estimates and true Dice."""

    case: str
    index: int
    demographics: dict[str, str | float | int]
    route: str
    structures: list[dict[str, object]]
    seconds: float
    #: ids of the RCA references the case was registered onto, most similar first
    references: list[str] = dataclasses.field(default_factory=list)


# ------------------------------------------------------------------------------------------------ models
def bundled_folder(kind: str, models_dir: Path | None = None) -> Path:
    folders = bundled_models(models_dir) if models_dir else bundled_models()
    if kind not in folders:
        raise ValueError(f"no bundled model for {kind!r} (have: {', '.join(folders) or 'none'})")
    return folders[kind]


def biased_model(
    scenario: Scenario,
    work: Path,
    schedule: Schedule,
    progress: TrainingProgress | None = None,
    models_dir: Path | None = None,
) -> Path:
    """The folder of the scenario's model: the bundled one, or a small model trained on ``scenario.train``.

    A trained model gets the bundled model's quality section and files (RCA bank, calibration table); with
    ``schedule.n_calibration`` > 0 its RCA calibration, Dice predictor and gate are then refitted on its own
    balanced calibration cohort (the bank kept), as a deployment that retrains recalibrates; with 0 its cases
    are assessed as the node would assess a retrained model that was not recalibrated. The model is trained
    once per (scenario, schedule) and recalibrated once, then reused from ``work``.
    """
    bundled = bundled_folder(scenario.kind, models_dir)
    if scenario.train is None:
        return bundled
    base = RECIPES[scenario.kind]
    name = f"{base.name}-{scenario.name}-{schedule.n_train}n-{schedule.iterations}it"
    folder = work / "models" / name
    if (folder / "card.yaml").is_file() and (folder / "model_mc.onnx").is_file():
        _lend_quality(bundled, folder, keep_calibration=schedule.n_calibration > 0)
        return _recalibrated(folder, scenario, schedule, work, progress)
    recipe = dataclasses.replace(
        base,
        name=name,
        description=f"{base.description} Bias study: trained on {scenario.train.description}",
        n_train=schedule.n_train,
        iterations=schedule.iterations,
        train_shift=scenario.train,
    )
    logger.info("training %s (%d subjects, %d iterations)", name, schedule.n_train, schedule.iterations)
    if progress:
        progress.stage(f"{name}: training {schedule.iterations} iterations on {schedule.n_train} subjects", 1)
    # a fresh interpreter: training forks workers, and forking a process that already runs ONNX Runtime
    # sessions (the previous scenarios' analyses) can deadlock the workers
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        card = pool.submit(train_model, recipe, folder, schedule.workers, None, validate_model=False).result()
    if progress:
        progress.advance(f"{card.training.seconds:.0f} s")
    _lend_quality(bundled, folder, keep_calibration=False)
    return _recalibrated(folder, scenario, schedule, work, progress)


def _lend_quality(bundled: Path, folder: Path, *, keep_calibration: bool) -> None:
    """Give the model in ``folder`` the bundled model's quality section and files (RCA bank, calibration table)
    unless it already has that bank (and, with ``keep_calibration``, any calibration fitted on it; else the
    bundled calibration table)."""
    bundled_card, card = load_card(bundled), load_card(folder)
    lent = bundled_card.quality
    if lent is None or lent.rca is None or lent.predictor is None:
        raise ValueError(f"bundled model {bundled.name} has no quality section to lend a biased model")
    q = card.quality
    same_bank = q is not None and q.rca is not None and q.rca.sha256 == lent.rca.sha256
    same_table = q is not None and q.predictor is not None and q.predictor.sha256 == lent.predictor.sha256
    if same_bank and (keep_calibration or same_table):
        return
    logger.info("%s: quality files taken from the bundled %s", card.name, bundled_card.name)
    for f in QUALITY_FILES:
        shutil.copyfile(bundled / f, folder / f)
    save_card(card.model_copy(update={"quality": lent.model_copy(update={"validation": None})}), folder)


def calibration_spec(scenario: Scenario) -> ShiftSpec:
    """The cohort a trained model is recalibrated on: the scenario's balanced deployment composition, drawn
    from the calibration seed (other subjects than the deployment cohort's)."""
    return scenario.deploy.model_copy(update={"name": f"calibration-{scenario.deploy.name}"})


def _recalibrated(
    folder: Path, scenario: Scenario, schedule: Schedule, work: Path, progress: TrainingProgress | None
) -> Path:
    """``folder``'s model with its predictor, RCA calibration and gate fitted on its own balanced calibration
    cohort (``schedule.n_calibration`` subjects; the RCA bank is kept). Done once: the card records the cohort."""
    if schedule.n_calibration <= 0:
        return folder
    card = load_card(folder)
    spec = calibration_spec(scenario)
    cohort = card.quality.predictor.cohort if card.quality and card.quality.predictor else None
    if cohort is not None and (cohort.shift, cohort.n, cohort.seed) == (
        spec.name,
        schedule.n_calibration,
        CALIBRATION_SEED,
    ):
        return folder
    cal = QualityCalibrationSettings()
    options = CalibrationOptions(
        shift_name=spec.name,
        spec=spec,
        n_calibration=schedule.n_calibration,
        keep_bank=True,
        expected_prevalence=cal.expected_prevalence,
        rca_method=cal.rca_calibration,
        min_failures=cal.min_failures,
        failure_dice=cal.failure_dice,
        target_catch=cal.target_catch,
    )
    logger.info("recalibrating %s on %d %s subjects", card.name, schedule.n_calibration, spec.name)
    if progress:
        progress.stage(f"{card.name}: calibrating on {schedule.n_calibration} subjects", schedule.n_calibration)
    calibrate(folder, card, options, work=work / "calibration", step=progress.advance if progress else None)
    return folder


# ------------------------------------------------------------------------------------------------- cases
def generate(subject: Subject) -> SyntheticImage:
    """A subject's image; CT at a 256 matrix as in calibration (the model runs at 3 mm anyway)."""
    if subject.kind == "ct-abdomen":
        return ct_abdomen.generate(subject, matrix=256)
    return get_kind(subject.kind).generate(subject)


def demographics(subject: Subject) -> dict[str, str | float | int]:
    """What the audit frame needs of a subject (no identifiers)."""
    return {
        "sex": subject.sex,
        "age_years": subject.age_years,
        "age_band": subject.age_band,
        "ethnic_group": subject.ethnic_group,
        "bmi": round(subject.bmi, 1),
        "bmi_band": subject.bmi_band,
        "manufacturer": subject.manufacturer,
        "scanner_model": subject.model_name,
        "site": subject.institution,
        "study_date": subject.study_date.isoformat(),
        "scenario_group": subject.group,
    }


def _finite(v: float | None) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), 5)


def measure_case(
    subject: Subject, case: str, segmenter: Segmenter, qm: QualityModel, settings: QualitySettings
) -> CaseResult:
    """Generate one deployment subject, run :func:`analyse` on it, score it against its ground truth."""
    image = generate(subject)
    t0 = time.perf_counter()
    analysis = analyse(image.pixels, tuple(image.spacing), image.modality, segmenter, qm, settings, {})
    seconds = time.perf_counter() - t0
    a = analysis.assessment
    if a is None:
        raise ValueError("quality assessment is switched off; the experiment needs it")
    structures = []
    for s in a.quality.structures:
        regions = dict(getattr(s, "regions", {}) or {})
        structures.append(
            {
                "name": s.name,
                "label": s.label,
                "true_dice": round(dice(analysis.labels == s.label, image.labels == s.label), 5),
                # what the node's gate uses: calibrated where the model has a map for the structure, else raw
                "rca_dice": _finite(s.rca.dice) if s.rca else None,
                "rca_raw_dice": _finite(s.rca.max_dice) if s.rca else None,
                "predicted_dice": _finite(s.prediction.dice) if s.prediction else None,
                "predicted_low": _finite(s.prediction.low) if s.prediction else None,
                "predicted_high": _finite(s.prediction.high) if s.prediction else None,
                "volume": _finite(s.uncertainty.volume),
                "route": s.route.value,
                "regions": {k: float(v) for k, v in regions.items()},
            }
        )
    references = list(a.rca.references) if a.rca is not None else []
    return CaseResult(
        case, subject.index, demographics(subject), a.quality.route.value, structures, round(seconds, 3), references
    )


def cache_path(work: Path, model: Path, deploy: str) -> Path:
    """The case cache of ``model`` on the deployment cohort ``deploy``, named by the model and a fingerprint
    of its quality files (RCA bank, calibration table, RCA settings): a recalibrated model starts afresh."""
    card = load_card(model)
    q = card.quality
    parts = [card.name, card.files.deterministic_sha256]
    if q is not None:
        parts += [
            q.rca.sha256 if q.rca else "",
            json.dumps(q.rca.settings if q.rca else {}, sort_keys=True),
            q.predictor.sha256 if q.predictor else "",
        ]
    tag = hashlib.sha256("|".join(parts).encode()).hexdigest()[:10]
    return work / "cases" / f"{model.name}--{deploy}--{tag}.jsonl"


def _read_cache(path: Path) -> dict[str, CaseResult]:
    out: dict[str, CaseResult] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                d = json.loads(line)
                out[d["case"]] = CaseResult(**d)
    return out


def _append(path: Path, r: CaseResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(dataclasses.asdict(r)) + "\n")


def run_cohort(
    scenario: Scenario,
    model: Path,
    n: int,
    cache: Path,
    settings: QualitySettings | None = None,
    seed: int = DEPLOY_SEED,
    step: Step | None = None,
) -> list[CaseResult]:
    """Measure ``n`` deployment subjects of ``scenario`` with the model in ``model`` (cached in ``cache``)."""
    settings = settings or QualitySettings()
    done = _read_cache(cache)
    segmenter: Segmenter | None = None
    qm: QualityModel | None = None
    out = []
    for i in range(n):
        case = f"{scenario.kind}-{scenario.deploy.name}-{seed}-{i}"
        if case not in done:
            if segmenter is None or qm is None:
                segmenter = Segmenter(model, prefer_gpu=False)
                qm = QualityModel.open(model, segmenter.card)
            subject = draw_subject(scenario.kind, i, seed, scenario.deploy)
            done[case] = measure_case(subject, case, segmenter, qm, settings)
            _append(cache, done[case])
        out.append(done[case])
        if step:
            step(f"{case}: {done[case].seconds:.1f} s")
    return out


# ------------------------------------------------------------------------------------------------- frame
def audit_frame(cases: Sequence[CaseResult], model_name: str, model_version: str, *, with_truth: bool) -> pd.DataFrame:
    """The audit input frame (the columns of ``fairness_registry.audit.data.load_frame``) of measured cases.

    Without truth (``with_truth=False``), the true Dice columns are empty, as in deployment: the audit is
    computed from the estimates alone. Pseudonyms are a hash of the case name, not an identifier.
    """
    rows = []
    for c in cases:
        d = c.demographics
        study_date = datetime.fromisoformat(str(d["study_date"])).date()
        for s in c.structures:
            regions: dict[str, float] = s.get("regions") or {}  # type: ignore[assignment]
            rows.append(
                {
                    "pseudonym": hashlib.sha256(c.case.encode()).hexdigest()[:16],
                    "case_id": c.index + 1,
                    "study_date": study_date,
                    "received_at": datetime.combine(study_date, dtime(12, 0), tzinfo=UTC),
                    "site": d["site"],
                    "manufacturer": d["manufacturer"],
                    "scanner_model": d["scanner_model"],
                    "model": model_name,
                    "model_version": model_version,
                    "structure": s["name"],
                    "sex": d["sex"],
                    "age_years": d["age_years"],
                    "age_band": d["age_band"],
                    "ethnic_group": d["ethnic_group"],
                    "bmi": d["bmi"],
                    "bmi_band": d["bmi_band"],
                    "slice_thickness_mm": None,
                    "kvp": None,
                    "contrast": None,
                    "case_route": c.route,
                    "route": s["route"],
                    "review_state": "not_needed" if c.route == "PASS" else "forwarded",
                    "volume": s["volume"],
                    "rca_dice": s["rca_dice"],
                    "rca_raw_dice": s.get("rca_raw_dice", s["rca_dice"]),
                    "predicted_dice": s["predicted_dice"],
                    "predicted_low": s["predicted_low"],
                    "predicted_high": s["predicted_high"],
                    "true_dice": s["true_dice"] if with_truth else None,
                    "true_nsd": None,
                    "true_hd95_mm": None,
                    **{f"region_{k}": regions.get(k) for k in SPATIAL_KEYS},
                }
            )
    frame = pd.DataFrame(rows)
    for col in ("rca_dice", "rca_raw_dice", "predicted_dice", "predicted_low", "predicted_high", "true_dice", "volume"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame
