"""Held-out validation of a model's quality estimates on a labelled cohort folder, and the card's summary."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from cohorts.shift import ShiftSpec
from fairnode.calibration.measure import CaseMeasure, Step, fingerprint, folder_cases, generated_cases
from fairnode.calibration.score import Scored, gate_rows, score
from fairnode.pipeline import QualitySettings
from inference.backends import InferenceSettings
from inference.model_card import ModelCard, load_card, save_card
from inference.model_store import open_segmenter
from quality.assess import QualityModel
from quality.gate_calibration import risk_coverage
from quality.validation import ValidationRow, report


def validation_rows(scored: Sequence[Scored]) -> list[ValidationRow]:
    case_review: dict[str, bool] = {}
    for s in scored:
        case_review[s.case] = case_review.get(s.case, False) or s.structure_route == "REVIEW" or s.case_flag
    return [
        ValidationRow(
            case=s.case,
            structure=s.name,
            true_dice=s.true_dice,
            rca_dice=s.rca_raw,
            predicted_dice=s.predicted.dice if s.predicted else None,
            predicted_low=s.predicted.low if s.predicted else None,
            predicted_high=s.predicted.high if s.predicted else None,
            route="REVIEW" if case_review[s.case] else "PASS",
            groups=s.groups,
            rca_calibrated=s.rca_calibrated if s.rca_calibrated is not None else s.rca_raw,  # as the gate used it
            structure_route=s.structure_route,
        )
        for s in scored
    ]


def figures_of(
    cases: Sequence[CaseMeasure], qm: QualityModel, card: ModelCard
) -> tuple[dict[str, object], list[Scored]]:
    """The validation figures of measured ``cases`` under ``qm``'s current calibration, with the risk-coverage
    curve (every threshold moved by one shift) and the scored structures."""
    scored = score(cases, qm)
    gate_spec = card.quality.gate if card.quality else None
    failure_dice = gate_spec.failure_dice if gate_spec else 0.8
    figures = report(validation_rows(scored), failure_dice=failure_dice)
    if qm.limits is not None:
        curve = risk_coverage(
            gate_rows(scored),
            {n: qm.limits.thresholds(n) for n in qm.label_names},
            (qm.limits.predicted_low_min, qm.limits.rca_min),
            failure_dice,
        )
        figures["risk_coverage"] = curve
    figures["review_budget"] = gate_spec.review_budget if gate_spec else None
    stages = sorted({k for c in cases for k in c.timings})
    figures["seconds_per_case"] = {
        k: round(statistics.median([c.timings[k] for c in cases if k in c.timings]), 3) for k in stages
    }
    figures["model"] = {"name": card.name, "version": card.version}
    return figures, scored


def validate(
    cohort: Path,
    folder: Path,
    work: Path,
    settings: QualitySettings | None = None,
    step: Step | None = None,
    inference: InferenceSettings | None = None,
) -> tuple[dict[str, object], list[Scored]]:
    """Run the node's analysis on every subject of a cohort folder (cached) and report the quality figures
    under the model's current calibration."""
    segmenter = open_segmenter(folder, prefer_gpu=True, inference=inference)
    card = segmenter.card
    qm = QualityModel.open(folder, card)
    settings = settings or QualitySettings()
    cache = work / f"validate-{card.name}-{cohort.resolve().name}-{fingerprint(card, qm, settings)}.jsonl"
    cases = folder_cases(cohort, segmenter, qm, settings, cache, step=step)
    figures, scored = figures_of(cases, qm, card)
    figures["cohort"] = str(cohort)
    figures["settings"] = {"method": settings.method, "samples": settings.samples, "rca": settings.rca}
    return figures, scored


def validate_generated(
    folder: Path,
    spec: ShiftSpec,
    shift_name: str,
    n: int,
    seed: int,
    work: Path,
    settings: QualitySettings | None = None,
    step: Step | None = None,
    inference: InferenceSettings | None = None,
) -> tuple[dict[str, object], list[Scored]]:
    """As :func:`validate`, on ``n`` subjects generated in memory (seed ``seed``, scenario ``spec``), as the
    calibration cohort is: no DICOM written or read, CT made at a 256 matrix (the model runs at 3 mm)."""
    segmenter = open_segmenter(folder, prefer_gpu=True, inference=inference)
    card = segmenter.card
    qm = QualityModel.open(folder, card)
    settings = settings or QualitySettings()
    cache = work / f"validate-{card.name}-{shift_name}-{seed}-{fingerprint(card, qm, settings)}.jsonl"
    cases = generated_cases(card, segmenter, qm, settings, spec, range(n), seed, cache, step)
    figures, scored = figures_of(cases, qm, card)
    figures["cohort"] = {"kind": card.training.cohort.kind, "n": n, "seed": seed, "shift": shift_name}
    figures["settings"] = {"method": settings.method, "samples": settings.samples, "rca": settings.rca}
    return figures, scored


def _short(f: dict[str, object]) -> dict[str, object]:
    keys = (
        "cases",
        "structures",
        "failures",
        "failing_cases",
        "prevalence",
        "review_rate",
        "failures_caught",
        "failing_cases_caught",
        "structure_review_rate",
        "structures_caught",
        "coverage",
    )
    out = {k: f.get(k) for k in keys}
    for est in ("rca", "rca_calibrated", "predictor"):
        a = f.get(est)
        if isinstance(a, dict):
            out[est] = {k: a.get(k) for k in ("pearson", "mae")}
    return out


def card_summary(figures: dict[str, object], label: str, json_name: str, command: str) -> dict[str, object]:
    """What the card's ``quality.validation`` records of one validation: overall, per structure, and the
    lowest caught share of any demographic group (sex, age band, ethnic group, BMI band) holding at least 10
    failing structures."""
    by_structure = figures["by_structure"]
    by_group = figures["by_group"]
    assert isinstance(by_structure, dict) and isinstance(by_group, dict)
    worst: dict[str, object] | None = None
    for attr, groups in by_group.items():
        if attr == "scenario_group":  # the cohort's own groups, not a demographic attribute
            continue
        for value, f in groups.items():
            enough = f.get("failures", 0) >= 10 and f.get("failures_caught") is not None
            if enough and (worst is None or f["failures_caught"] < worst["caught"]):
                worst = {
                    "attribute": attr,
                    "group": value,
                    "caught": f["failures_caught"],
                    "failures": f["failures"],
                }
    overall = figures["overall"]
    assert isinstance(overall, dict)
    return {
        "label": label,
        "figures": json_name,
        "command": command,
        "overall": _short(overall),
        "by_structure": {n: _short(f) for n, f in by_structure.items()},
        "lowest_group_caught": worst,
        "review_budget": figures.get("review_budget"),
    }


def write_card_validation(folder: Path, label: str, summary: dict[str, object]) -> ModelCard:
    """Record one validation summary under ``label`` in the card's ``quality.validation`` (others kept)."""
    card = load_card(folder)
    if card.quality is None:
        raise ValueError(f"model {card.name} has no quality calibration to validate")
    existing = dict(card.quality.validation or {})
    existing[label] = summary
    updated = card.model_copy(update={"quality": card.quality.model_copy(update={"validation": existing})})
    save_card(updated, folder)
    return updated
