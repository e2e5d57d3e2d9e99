"""Calibrating a model's quality estimates: bank, measured calibration cases, RCA calibration, predictor,
per-structure gate thresholds and review budget, all written into the model card.

Seeds: training uses 1 (train) and 2000 (validation); the RCA bank 3000; calibration 4000; held-out quality
validation cohorts 5000 and up. None of these subjects is used twice. A labelled cohort folder can stand in
for the generated cohorts (``cohort``): its first ``n_bank`` subjects become the references (unless the bank
is kept) and the rest the calibration cases.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cohorts.make import composition
from cohorts.shift import ShiftSpec
from fairnode.calibration.bank import BANK_SEED, BankBuild, bank_from_cohort, build_bank, input_limits
from fairnode.calibration.measure import (
    GROUPS,
    CaseMeasure,
    Step,
    fingerprint,
    folder_cases,
    generated_cases,
)
from fairnode.calibration.score import gate_rows, score
from fairnode.pipeline import QualitySettings
from inference.backends import InferenceSettings
from inference.model_card import (
    CohortSpec,
    GateSpec,
    ModelCard,
    PredictorSpec,
    QualitySpec,
    RcaBankSpec,
    RcaCalibrationSpec,
    StructureGateSpec,
    save_card,
    sha256_of,
)
from inference.model_store import open_segmenter
from quality.assess import QualityModel, reference_volumes
from quality.gate_calibration import StructureGate, calibrate_structures
from quality.predictor import FEATURES, CalibrationRow, DicePredictor, read_table, write_table
from quality.rca import RcaSettings, ReferenceBank
from quality.rca_calibration import Method, RcaCalibration

logger = logging.getLogger(__name__)

CALIBRATION_SEED = 4000


def _composition(rows: Sequence[dict[str, str]]) -> dict[str, dict[str, int]]:
    """Counts by sex, age band, ethnic group and BMI band, as the card's training composition."""
    counted = composition([{"group": "", **r} for r in rows])
    return {k: v for k, v in counted.items() if k in GROUPS}


def split_of(case_index: int) -> str:
    """Deterministic split of calibration subjects: 3 of 5 fit the RCA calibration, 2 of 5 check that it helps
    (the Dice predictor and the gate use every subject, the predictor's estimates out of fold)."""
    return "conformal" if case_index % 5 in (1, 3) else "fit"


@dataclass(frozen=True)
class CalibrationOptions:
    """What ``fairnode quality calibrate`` was asked for."""

    shift_name: str
    spec: ShiftSpec | None
    n_bank: int = 40
    n_calibration: int = 100
    coverage: float = 0.9
    keep_bank: bool = False
    cohort: Path | None = None
    review_budget: float | None = None
    expected_prevalence: float | None = None
    rca_method: Method = "isotonic"
    min_failures: int = 5
    failure_dice: float = 0.8
    target_catch: float = 0.95


def _rows(cases: Sequence[CaseMeasure]) -> list[CalibrationRow]:
    return [
        CalibrationRow(
            subject=c.case,
            label=int(s["label"]),  # type: ignore[call-overload]
            name=str(s["name"]),
            split=split_of(i),
            true_dice=float(s["true_dice"]),  # type: ignore[arg-type]
            features={f: float(s["features"][f]) for f in FEATURES},  # type: ignore[index]
        )
        for i, c in enumerate(cases)
        for s in c.structures
    ]


def _gate_spec(g: StructureGate, limits_spec: dict[str, object], failure_dice: float, target: float) -> GateSpec:
    return GateSpec(
        failure_dice=failure_dice,
        target_catch=target,
        predicted_low_min=g.pooled[0],
        rca_min=g.pooled[1],
        calibration_caught=g.caught,
        calibration_review_rate=g.review_rate,
        calibration_failures=g.failures,
        calibration_cases=g.cases,
        structures={
            n: StructureGateSpec(
                predicted_low_min=t.predicted_low_min,
                rca_min=t.rca_min,
                cases=t.cases,
                failures=t.failures,
                caught=t.caught,
                caught_low95=t.caught_low95,
                flagged=t.flagged,
                pooled=t.pooled,
            )
            for n, t in g.structures.items()
        },
        review_budget=g.budget,
        budget_shift=g.shift,
        expected_prevalence=g.prevalence,
        calibration_structure_caught=g.structure_caught,
        calibration_structure_review_rate=g.structure_review_rate,
        **limits_spec,
    )


def calibrate(
    folder: Path,
    card: ModelCard,
    options: CalibrationOptions,
    *,
    settings: QualitySettings | None = None,
    work: Path,
    step: Step | None = None,
    inference: InferenceSettings | None = None,
) -> tuple[ModelCard, StructureGate]:
    """Build (or keep) the bank, measure the calibration cases, fit RCA calibration, predictor and gate; write
    the card. Returns the card written and the gate chosen. ``inference``: how the model runs (the node's
    ``inference`` settings: backend, threads)."""
    sampling = card.quality.sampling if card.quality else (card.source.sampling if card.source else "mc-dropout")
    settings = settings or QualitySettings(method=sampling, samples=card.quality.samples if card.quality else 6)
    kind = card.training.cohort.kind
    names = tuple(lab.name for lab in card.labels)
    bank_path = folder / "rca-bank.npz"
    old = card.quality
    if options.keep_bank:
        if old is None or old.rca is None or old.gate is None:
            raise ValueError(f"model {card.name} has no reference bank to keep; calibrate without keeping it")
        kept = QualityModel.open(folder, card)
        assert kept.bank is not None and kept.limits is not None
        bank, limits, rca_settings = kept.bank, kept.limits, kept.rca_settings or RcaSettings.for_bank(kept.bank.ndim)
        bank_cohort, bank_composition = old.rca.cohort, old.rca.composition
    else:
        rca_settings = RcaSettings.for_bank(card.input.spatial_dims)
        build: BankBuild = (
            bank_from_cohort(card, options.cohort, options.n_bank, rca_settings, step)
            if options.cohort is not None
            else build_bank(card, options.n_bank, rca_settings, step=step)
        )
        build.bank.save(bank_path)
        bank = ReferenceBank.load(bank_path)
        limits = input_limits(card, build)
        bank_cohort = CohortSpec(
            kind=kind,
            n=options.n_bank,
            seed=BANK_SEED if options.cohort is None else 0,
            shift="bank-sex-by-bmi" if options.cohort is None else f"cohort {options.cohort.name}",
        )
        bank_composition = _composition(build.demographics)
    rca_spec = RcaBankSpec(
        sha256=sha256_of(bank_path),
        spacing_mm=bank.spacing,
        k=old.rca.k if old and old.rca else 5,
        cohort=bank_cohort,
        composition=bank_composition,
        settings=rca_settings.changes_from_default(bank.ndim),
    )
    measuring = card.model_copy(
        update={
            "quality": QualitySpec(
                sampling="tta-flip" if settings.method == "tta-flip" else "mc-dropout",
                samples=settings.samples or 6,
                rca=rca_spec,
            )
        }
    )
    qm = QualityModel(
        card=measuring,
        bank=bank,
        limits=limits,
        expected_volume=reference_volumes(bank, card.input.spatial_dims),
        rca_settings=rca_settings,
    )
    segmenter = open_segmenter(folder, prefer_gpu=False, inference=inference)
    tag = fingerprint(measuring, qm, settings)
    if options.cohort is not None:
        cache = work / f"calibration-{card.name}-{options.cohort.resolve().name}-{tag}.jsonl"
        skip = 0 if options.keep_bank else options.n_bank
        cases = folder_cases(options.cohort, segmenter, qm, settings, cache, skip=skip, step=step)
        cohort_spec = CohortSpec(kind=kind, n=len(cases), seed=0, shift=f"cohort {options.cohort.name}")
    else:
        assert options.spec is not None
        cache = work / f"calibration-{card.name}-{options.shift_name}-{CALIBRATION_SEED}-{tag}.jsonl"
        cases = generated_cases(
            measuring,
            segmenter,
            qm,
            settings,
            options.spec,
            range(options.n_calibration),
            CALIBRATION_SEED,
            cache,
            step,
        )
        cohort_spec = CohortSpec(kind=kind, n=len(cases), seed=CALIBRATION_SEED, shift=options.shift_name)
    logger.info("calibration measurements cached in %s", cache)
    table = folder / "quality-calibration.csv"
    write_table(_rows(cases), table)
    rows = read_table(table)  # fit exactly what the node will refit at load
    rca_cal = RcaCalibration.fit(rows, options.rca_method, split="fit")
    predictor = DicePredictor.fit(rows, names, options.coverage)
    qm.predictor, qm.rca_calibration = predictor, rca_cal
    # The gate is chosen on every calibration case: the predictor's estimates of each are out of fold, and a
    # threshold on calibrated RCA is one on raw RCA (the map is monotone), so the fit split's in-sample
    # RCA calibration does not flatter it.
    failure_dice, target = options.failure_dice, options.target_catch
    g = calibrate_structures(
        gate_rows(score(cases, qm, predictor.out_of_fold)),
        failure_dice=failure_dice,
        target_catch=target,
        min_failures=options.min_failures,
        budget=options.review_budget,
        prevalence=options.expected_prevalence,
    )
    limits_spec: dict[str, object] = {
        "volume_range": limits.volume_range,
        "volume_unit": limits.unit,
        "spacing_range": limits.spacing_range,
        "image_mean_range": limits.image_mean_range,
        "image_std_range": limits.image_std_range,
        "saturated_max": limits.saturated_max,
    }
    quality = QualitySpec(
        sampling="tta-flip" if settings.method == "tta-flip" else "mc-dropout",
        samples=settings.samples or 6,
        rca=rca_spec.model_copy(
            update={
                "calibration": RcaCalibrationSpec(
                    method=options.rca_method, split="fit", n_by_structure=rca_cal.n_by_structure
                )
            }
        ),
        predictor=PredictorSpec(
            sha256=sha256_of(table),
            regressor=predictor.description,
            features=FEATURES,
            coverage=options.coverage,
            half_width=predictor.half_width,  # not rounded: the node reads it back as the interval's q
            n_fit=len(rows),  # every calibration subject fits the regressor
            n_conformal=len(rows),  # and sets the interval through its out-of-fold score
            cohort=cohort_spec,
            composition=_composition([c.demographics for c in cases]),
        ),
        gate=_gate_spec(g, limits_spec, failure_dice, target),
        validation=None,  # figures of an earlier calibration no longer apply: validate again
    )
    command = f"fairnode quality calibrate --model {card.name} " + (
        f"--cohort {options.cohort}" if options.cohort is not None else f"--shift {options.shift_name}"
    )
    command += (
        f" --n-bank {options.n_bank} --n {options.n_calibration} --samples {quality.samples} "
        f"--coverage {options.coverage}"
        + (" --keep-bank" if options.keep_bank else "")
        + (f" --review-budget {options.review_budget}" if options.review_budget is not None else "")
    )
    reproduce = (*(c for c in card.reproduce if not c.startswith("fairnode quality calibrate")), command)
    updated = card.model_copy(update={"quality": quality, "reproduce": reproduce})
    save_card(updated, folder)
    return updated, g
