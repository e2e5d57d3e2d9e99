"""The RCA reference bank of a model, and the gate's input and plausibility limits derived from it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cohorts.kinds import get_kind
from cohorts.shift import Group, GroupMatch, ShiftSpec
from cohorts.subjects import draw_subject
from fairnode.calibration.measure import GROUPS, cohort_cases, read_case
from inference.model_card import ModelCard
from inference.preprocess import labels_to_model_grid, to_model_grid
from quality import gate
from quality.predictor import ImageStats, image_stats
from quality.rca import RcaSettings, ReferenceBank

BANK_SEED = 3000
#: The RCA grid is this many times coarser than the model grid (6 mm for the CT model, 2 mm for the knee).
RCA_SPACING_FACTOR = 2.0

#: Who the references are: each sex with each BMI band in equal shares, so that every body size of either
#: sex has references to be compared with (a bank drawn from the population holds few underweight or obese).
BANK_SPEC = ShiftSpec(
    name="bank-sex-by-bmi",
    description="Each sex with each BMI band, in equal shares; images as in training.",
    groups=[
        Group(match=GroupMatch(sex=sex, bmi_band=bmi), share=0.125)
        for sex in ("F", "M")
        for bmi in ("underweight", "normal", "overweight", "obese")
    ],
)

Step = Callable[[str], None]


@dataclass
class BankBuild:
    bank: ReferenceBank
    stats: list[ImageStats]
    spacings: list[tuple[float, ...]]
    demographics: list[dict[str, str]]


def _add(
    build: BankBuild,
    card: ModelCard,
    ref_id: str,
    pixels: np.ndarray,
    spacing: tuple[float, ...],
    labels: np.ndarray,
    demo: dict[str, str],
    settings: RcaSettings,
) -> None:
    x = to_model_grid(pixels, spacing, card.input)[0]
    y = labels_to_model_grid(labels, spacing, card.input)[0]
    build.bank.add(ref_id, x, y, card.input.spacing_mm, demo)
    if settings.mirror_axis is None:  # RCA that does not mirror the case gets both sides as references
        for axis in card.input.mirror_axes:
            build.bank.add(
                f"{ref_id}-mirror{axis}", np.flip(x, axis).copy(), np.flip(y, axis).copy(), card.input.spacing_mm, demo
            )
    build.stats.append(image_stats(x, y))
    build.spacings.append(tuple(spacing))
    build.demographics.append(demo)


def _empty(card: ModelCard) -> BankBuild:
    rca_spacing = tuple(RCA_SPACING_FACTOR * s for s in card.input.spacing_mm)
    return BankBuild(ReferenceBank.build(rca_spacing, tuple(lab.name for lab in card.labels)), [], [], [])


def build_bank(
    card: ModelCard, n: int, settings: RcaSettings, seed: int = BANK_SEED, step: Step | None = None
) -> BankBuild:
    """Reference bank of ``n`` generated held-out subjects (:data:`BANK_SPEC`) on the RCA grid."""
    kind = card.training.cohort.kind
    build = _empty(card)
    for i in range(n):
        subject = draw_subject(kind, i, seed, BANK_SPEC)
        image = get_kind(kind).generate(subject)
        demo = {g: str(getattr(subject, g)) for g in GROUPS}
        _add(build, card, f"{kind}-{seed}-{i}", image.pixels, tuple(image.spacing), image.labels, demo, settings)
        if step:
            step(f"reference {i + 1}/{n}")
    return build


def bank_from_cohort(
    card: ModelCard, cohort: Path, n: int, settings: RcaSettings, step: Step | None = None
) -> BankBuild:
    """Reference bank of the first ``n`` subjects of a labelled cohort folder (the rest calibrate)."""
    build = _empty(card)
    for k, (row, image_dir, seg_path) in enumerate(cohort_cases(cohort)):
        if k >= n:
            break
        pixels, spacing, truth, _ = read_case(image_dir, seg_path)
        demo = {g: row.get(g, "") or "unknown" for g in GROUPS}
        _add(build, card, f"{cohort.name}-{row['index']}", pixels, spacing, truth, demo, settings)
        if step:
            step(f"reference {k + 1}/{n}")
    if len(build.bank.references) == 0:
        raise ValueError(f"cohort {cohort} holds no subjects for the reference bank")
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
