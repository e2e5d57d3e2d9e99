"""Quality calibration and validation of a bundled model: the reference bank, the calibration cohort, the
Dice predictor and the gate's thresholds, and the held-out validation that says how well they work.

This is composition-root work: it generates cohorts (``cohorts``), runs the same :func:`fairnode.pipeline.analyse`
the node runs, reads DICOM cohorts (``dicom_node``) and fits the pure estimators of ``quality``.

Seeds: training uses 1 (train) and 2000 (validation); the RCA bank 3000; calibration 4000; held-out quality
validation cohorts 5000 and up. None of these subjects is used twice.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom

from cohorts import ct_abdomen
from cohorts.image import SyntheticImage
from cohorts.kinds import get_kind
from cohorts.make import composition, read_manifest
from cohorts.shift import BALANCED, ShiftSpec
from cohorts.subjects import Subject, draw_subject
from dicom_node.volume import load_volume, read_series
from fairnode.pipeline import QualitySettings, analyse
from inference.metrics import dice
from inference.model_card import (
    CohortSpec,
    GateSpec,
    ModelCard,
    PredictorSpec,
    QualitySpec,
    RcaBankSpec,
    save_card,
    sha256_of,
)
from inference.preprocess import labels_to_model_grid, to_model_grid
from inference.segmenter import Segmenter
from quality import gate
from quality.assess import QualityModel, reference_volumes
from quality.predictor import (
    FEATURES,
    CalibrationRow,
    DicePredictor,
    ImageStats,
    image_stats,
    read_table,
    write_table,
)
from quality.rca import ReferenceBank
from quality.validation import ValidationRow, report

logger = logging.getLogger(__name__)

BANK_SEED = 3000
CALIBRATION_SEED = 4000
#: The RCA grid is this many times coarser than the model grid (6 mm for the CT model, 2 mm for the knee).
RCA_SPACING_FACTOR = 2.0
GROUPS = ("sex", "age_band", "ethnic_group", "bmi_band")

Step = Callable[[str], None]


def _generate(kind: str, subject: Subject) -> SyntheticImage:
    """A subject's image; CT at a 256 matrix (5x faster to make; the model runs at 3 mm anyway)."""
    if kind == "ct-abdomen":
        return ct_abdomen.generate(subject, matrix=256)
    return get_kind(kind).generate(subject)


def _demographics(subject: Subject) -> dict[str, str]:
    return {g: str(getattr(subject, g)) for g in GROUPS}


def _composition(rows: Sequence[dict[str, str]]) -> dict[str, dict[str, int]]:
    """Counts by sex, age band, ethnic group and BMI band, as the card's training composition."""
    counted = composition([{"group": "", **r} for r in rows])
    return {k: v for k, v in counted.items() if k in GROUPS}


# --------------------------------------------------------------------------------------------------- bank
@dataclass
class BankBuild:
    bank: ReferenceBank
    stats: list[ImageStats]
    spacings: list[tuple[float, ...]]
    demographics: list[dict[str, str]]


def build_bank(card: ModelCard, n: int, seed: int = BANK_SEED, step: Step | None = None) -> BankBuild:
    """Reference bank of ``n`` held-out balanced subjects at native resolution, on the model grid."""
    kind = card.training.cohort.kind
    names = tuple(lab.name for lab in card.labels)
    spacing = card.input.spacing_mm
    rca_spacing = tuple(RCA_SPACING_FACTOR * s for s in spacing)
    bank = ReferenceBank.build(rca_spacing, names)
    build = BankBuild(bank, [], [], [])
    for i in range(n):
        subject = draw_subject(kind, i, seed, BALANCED)
        image = get_kind(kind).generate(subject)
        x = to_model_grid(image.pixels, image.spacing, card.input)[0]
        y = labels_to_model_grid(image.labels, image.spacing, card.input)[0]
        demo = _demographics(subject)
        bank.add(f"{kind}-{seed}-{i}", x, y, spacing, demo)
        for axis in card.input.mirror_axes:  # a mirrored knee is the other knee: both sides as references
            bank.add(f"{kind}-{seed}-{i}-mirror{axis}", np.flip(x, axis).copy(), np.flip(y, axis).copy(), spacing, demo)
        build.stats.append(image_stats(x, y))
        build.spacings.append(tuple(image.spacing))
        build.demographics.append(demo)
        if step:
            step(f"reference {i + 1}/{n}")
    return build


def input_limits(card: ModelCard, build: BankBuild) -> gate.GateLimits:
    """The gate's input and plausibility limits from the bank's references (thresholds not yet set).

    Volumes: from half the smallest to 1.6 times the largest reference volume. Intensity mean and spread:
    the references' range widened by half its width on each side. Spacing: half the finest to twice the
    coarsest spacing seen. These are sanity limits; the thresholds on estimates are calibrated separately.
    """
    dims = card.input.spatial_dims
    voxel = float(np.prod(build.bank.spacing)) / (1000.0 if dims == 3 else 1.0)
    ranges = {}
    for value, name in enumerate(build.bank.label_names, start=1):
        vols = [float((r.labels == value).sum()) * voxel for r in build.bank.references]
        ranges[name] = (round(0.5 * min(vols), 3), round(1.6 * max(vols), 3))

    def widened(values: list[float]) -> tuple[float, float]:
        lo, hi = min(values), max(values)
        pad = 0.5 * (hi - lo) + 1e-3
        return (round(lo - pad, 4), round(hi + pad, 4))

    spacings = np.array(build.spacings)
    return gate.GateLimits(
        predicted_low_min=0.0,
        rca_min=0.0,
        volume_range=ranges,
        spacing_range=tuple(
            (round(0.5 * float(lo), 3), round(2.0 * float(hi), 3))
            for lo, hi in zip(spacings.min(0), spacings.max(0), strict=True)
        ),
        image_mean_range=widened([s.mean for s in build.stats]),
        image_std_range=widened([s.std for s in build.stats]),
        saturated_max=round(2 * max(s.saturated for s in build.stats) + 0.01, 4),
        modality=card.input.modality,
        unit="ml" if dims == 3 else "mm2",
    )


# ------------------------------------------------------------------------------------------ measurements
@dataclass
class CaseMeasure:
    """One case measured: per structure its true Dice, features and estimates; the case's route."""

    case: str
    demographics: dict[str, str]
    group: str
    route: str
    reasons: list[str]
    structures: list[dict[str, object]]
    timings: dict[str, float]
    other_flag: bool = False
    extra: dict[str, object] = field(default_factory=dict)


def measure(
    case: str,
    pixels: np.ndarray,
    spacing: tuple[float, ...],
    truth: np.ndarray,
    modality: str,
    segmenter: Segmenter,
    qm: QualityModel,
    settings: QualitySettings,
    demographics: dict[str, str],
    group: str,
) -> CaseMeasure:
    """Run :func:`analyse` on one image with known truth and collect what calibration and validation need."""
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    analysis = analyse(pixels, spacing, modality, segmenter, qm, settings, t)
    t["total"] = round(time.perf_counter() - t0, 3)
    a = analysis.assessment
    if a is None:
        raise ValueError("quality assessment is switched off")
    structures = []
    other = False
    for s in a.quality.structures:
        true = dice(analysis.labels == s.label, truth == s.label)
        flagged = bool(gate.plausibility_reasons(s.uncertainty, qm.limits)) if qm.limits else False
        other = other or flagged
        structures.append(
            {
                "label": s.label,
                "name": s.name,
                "true_dice": round(true, 5),
                "features": a.features[s.label],
                "rca_max_dice": s.rca.max_dice if s.rca else None,
                "predicted_dice": s.prediction.dice if s.prediction else None,
                "predicted_low": s.prediction.low if s.prediction else None,
                "predicted_high": s.prediction.high if s.prediction else None,
                "route": s.route.value,
            }
        )
    input_problems = [r for r in a.quality.reasons if r.startswith(("input:", "RCA could not"))]
    return CaseMeasure(
        case=case,
        demographics=demographics,
        group=group,
        route=a.quality.route.value,
        reasons=list(a.quality.reasons),
        structures=structures,
        timings=t,
        other_flag=other or bool(input_problems),
    )


def _cached(path: Path) -> dict[str, CaseMeasure]:
    out: dict[str, CaseMeasure] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                d = json.loads(line)
                out[d["case"]] = CaseMeasure(**d)
    return out


def _append(path: Path, m: CaseMeasure) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(m.__dict__, allow_nan=True) + "\n")


def calibration_cases(
    card: ModelCard,
    segmenter: Segmenter,
    qm: QualityModel,
    settings: QualitySettings,
    spec: ShiftSpec,
    n: int,
    seed: int,
    cache: Path,
    step: Step | None = None,
) -> list[CaseMeasure]:
    """Measure ``n`` generated calibration subjects (cached per subject in ``cache``, JSON lines)."""
    kind = card.training.cohort.kind
    done = _cached(cache)
    out = []
    for i in range(n):
        subject = draw_subject(kind, i, seed, spec)
        case = f"{kind}-{seed}-{i}"
        if case not in done:
            image = _generate(kind, subject)
            m = measure(
                case,
                image.pixels,
                tuple(image.spacing),
                image.labels,
                image.modality,
                segmenter,
                qm,
                settings,
                _demographics(subject),
                subject.group,
            )
            _append(cache, m)
            done[case] = m
        out.append(done[case])
        if step:
            step(f"{case}: {done[case].timings.get('total', 0):.1f} s")
    return out


# -------------------------------------------------------------------------------------------- calibrate
def _split(case_index: int) -> str:
    """Deterministic split of calibration subjects: 3 of 5 fit the regressor, 2 of 5 calibrate intervals."""
    return "conformal" if case_index % 5 in (1, 3) else "fit"


def calibrate(
    folder: Path,
    card: ModelCard,
    *,
    shift_name: str,
    spec: ShiftSpec,
    n_bank: int = 20,
    n_calibration: int = 60,
    coverage: float = 0.9,
    settings: QualitySettings | None = None,
    work: Path,
    step: Step | None = None,
) -> ModelCard:
    """Build the bank, measure the calibration cohort, fit the predictor and the gate; write the card."""
    settings = settings or QualitySettings(method="mc-dropout", samples=card.quality.samples if card.quality else 6)
    kind = card.training.cohort.kind
    names = tuple(lab.name for lab in card.labels)
    build = build_bank(card, n_bank, step=step)
    bank_path = folder / "rca-bank.npz"
    build.bank.save(bank_path)
    limits = input_limits(card, build)
    segmenter = Segmenter(folder, prefer_gpu=False)
    qm = QualityModel(
        card=card,
        bank=build.bank,
        limits=limits,
        expected_volume=reference_volumes(build.bank, card.input.spatial_dims),
    )
    cases = calibration_cases(
        card, segmenter, qm, settings, spec, n_calibration, CALIBRATION_SEED, work / f"calibration-{kind}.jsonl", step
    )
    rows = [
        CalibrationRow(
            subject=c.case,
            label=int(s["label"]),  # type: ignore[call-overload]
            name=str(s["name"]),
            split=_split(i),
            true_dice=float(s["true_dice"]),  # type: ignore[arg-type]
            features={f: float(s["features"][f]) for f in FEATURES},  # type: ignore[index]
        )
        for i, c in enumerate(cases)
        for s in c.structures
    ]
    table = folder / "quality-calibration.csv"
    write_table(rows, table)
    rows = read_table(table)  # fit exactly what the node will refit at load
    predictor = DicePredictor.fit(rows, names, coverage)
    held = [r for r in rows if r.split == "conformal"]
    preds = predictor.predict([r.features for r in held], [r.label for r in held])
    other = {c.case: c.other_flag for c in cases}
    g = gate.calibrate(
        [r.subject for r in held],
        np.array([r.true_dice for r in held]),
        np.array([p.low for p in preds]),
        np.array([r.features["rca_max_dice"] for r in held]),
        np.array([other[r.subject] for r in held]),
    )
    cal_demo = [c.demographics for c in cases]
    cohort = CohortSpec(kind=kind, n=n_calibration, seed=CALIBRATION_SEED, shift=shift_name)
    quality = QualitySpec(
        sampling="tta-flip" if settings.method == "tta-flip" else "mc-dropout",
        samples=settings.samples or 6,
        rca=RcaBankSpec(
            sha256=sha256_of(bank_path),
            spacing_mm=build.bank.spacing,
            k=5,
            cohort=CohortSpec(kind=kind, n=n_bank, seed=BANK_SEED, shift="balanced"),
            composition=_composition(build.demographics),
        ),
        predictor=PredictorSpec(
            sha256=sha256_of(table),
            regressor="sklearn GradientBoostingRegressor(n_estimators=300, max_depth=3, learning_rate=0.03, "
            "subsample=0.8, min_samples_leaf=4, random_state=0)",
            features=FEATURES,
            coverage=coverage,
            half_width=round(predictor.half_width, 5),
            n_fit=len(rows) - len(held),
            n_conformal=len(held),
            cohort=cohort,
            composition=_composition(cal_demo),
        ),
        gate=GateSpec(
            predicted_low_min=round(g.predicted_low_min, 4),
            rca_min=round(g.rca_min, 4),
            volume_range=limits.volume_range,
            volume_unit=limits.unit,
            spacing_range=limits.spacing_range,
            image_mean_range=limits.image_mean_range,
            image_std_range=limits.image_std_range,
            saturated_max=limits.saturated_max,
            calibration_caught=round(g.caught, 4),
            calibration_review_rate=round(g.review_rate, 4),
            calibration_failures=g.failures,
            calibration_cases=g.cases,
        ),
        validation=card.quality.validation if card.quality else None,
    )
    command = (
        f"fairnode quality calibrate --model {card.name} --shift {shift_name} --n-bank {n_bank} "
        f"--n {n_calibration} --samples {quality.samples} --coverage {coverage}"
    )
    reproduce = (*(c for c in card.reproduce if not c.startswith("fairnode quality calibrate")), command)
    updated = card.model_copy(update={"quality": quality, "reproduce": reproduce})
    save_card(updated, folder)
    return updated


# --------------------------------------------------------------------------------------------- validate
def cohort_cases(cohort: Path) -> Iterator[tuple[dict[str, str], Path, Path]]:
    """(manifest row, image folder, ground-truth SEG) of each subject of a cohort folder."""
    manifest = cohort / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(
            f"{cohort} is not a cohort folder: it has no manifest.csv (make one with 'fairnode cohort make')"
        )
    for row in read_manifest(manifest):
        yield row, cohort / row["image_dir"], cohort / row["seg_path"]


def read_case(image_dir: Path, seg_path: Path) -> tuple[np.ndarray, tuple[float, ...], np.ndarray, str]:
    """Pixels, spacing, ground-truth label map (same slice order) and modality of one cohort subject."""
    volume = load_volume(read_series(sorted(image_dir.glob("*.dcm"))))
    seg = hd.seg.segread(seg_path)
    uids = [str(ds.SOPInstanceUID) for ds in volume.datasets]
    truth = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, assert_missing_frames_are_empty=True
    )
    truth = np.asarray(truth).reshape(volume.pixels.shape).astype(np.uint8)
    modality = str(pydicom.dcmread(next(iter(sorted(image_dir.glob("*.dcm")))), stop_before_pixels=True).Modality)
    return volume.pixels, tuple(volume.spacing), truth, modality


def validate(
    cohort: Path, folder: Path, work: Path, settings: QualitySettings | None = None, step: Step | None = None
) -> tuple[dict[str, object], list[CaseMeasure]]:
    """Run the pipeline's analysis on every subject of a cohort folder and report the quality figures."""
    segmenter = Segmenter(folder, prefer_gpu=True)
    card = segmenter.card
    qm = QualityModel.open(folder, card)
    settings = settings or QualitySettings()
    cache = work / f"validate-{card.name}-{cohort.resolve().name}.jsonl"
    done = _cached(cache)
    cases = []
    for row, image_dir, seg_path in cohort_cases(cohort):
        case = f"{cohort.name}-{row['index']}"
        if case not in done:
            pixels, spacing, truth, modality = read_case(image_dir, seg_path)
            demo = {g: row[g] for g in GROUPS}
            m = measure(case, pixels, spacing, truth, modality, segmenter, qm, settings, demo, row.get("group", ""))
            _append(cache, m)
            done[case] = m
        cases.append(done[case])
        if step:
            step(f"{case}: {done[case].timings.get('total', 0):.1f} s, {done[case].route}")
    rows = [
        ValidationRow(
            case=c.case,
            structure=str(s["name"]),
            true_dice=float(s["true_dice"]),  # type: ignore[arg-type]
            rca_dice=s["rca_max_dice"],  # type: ignore[arg-type]
            predicted_dice=s["predicted_dice"],  # type: ignore[arg-type]
            predicted_low=s["predicted_low"],  # type: ignore[arg-type]
            predicted_high=s["predicted_high"],  # type: ignore[arg-type]
            route=c.route,
            groups={**c.demographics, "scenario_group": c.group},
        )
        for c in cases
        for s in c.structures
    ]
    figures = report(rows, failure_dice=card.quality.gate.failure_dice if card.quality and card.quality.gate else 0.8)
    stages = sorted({k for c in cases for k in c.timings})
    figures["seconds_per_case"] = {
        k: round(statistics.median([c.timings[k] for c in cases if k in c.timings]), 3) for k in stages
    }
    figures["model"] = {"name": card.name, "version": card.version}
    figures["cohort"] = str(cohort)
    figures["settings"] = {"method": settings.method, "samples": settings.samples, "rca": settings.rca}
    return figures, cases
