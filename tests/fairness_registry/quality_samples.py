"""``quality.types`` objects for the registry and review tests, built the way the quality estimators return them."""

from __future__ import annotations

from quality.types import (
    CaseQuality,
    DicePrediction,
    Route,
    SamplingMethod,
    StructureQuality,
    StructureRca,
    StructureUncertainty,
)

LIVER_REASON = "liver: predicted Dice 0.62 below 0.75"


def structure(
    name: str,
    label: int,
    *,
    predicted: tuple[float, float, float] | None = (0.91, 0.85, 0.96),
    rca: tuple[float, float, float] | None = (0.89, 0.84, 3.5),
    route: Route = Route.PASS,
    reasons: tuple[str, ...] = (),
    volume: float = 1500.0,
    regions: dict[str, float] | None = None,
) -> StructureQuality:
    """One structure's quality; ``predicted`` is (dice, low, high), ``rca`` is (max Dice, mean Dice, HD95 mm)."""
    return StructureQuality(
        label=label,
        name=name,
        uncertainty=StructureUncertainty(
            label=label,
            name=name,
            volume=volume,
            mean_entropy=0.12,
            mean_mutual_information=0.03,
            sample_dice=0.94,
            volume_cv=0.02,
        ),
        rca=None
        if rca is None
        else StructureRca(label=label, name=name, max_dice=rca[0], mean_dice=rca[1], hd95_mm=rca[2]),
        prediction=None
        if predicted is None
        else DicePrediction(
            label=label, name=name, dice=predicted[0], low=predicted[1], high=predicted[2], coverage=0.9
        ),
        route=route,
        reasons=reasons,
        regions=regions or {},
    )


#: A spatial summary as ``quality.spatial`` gives it (shares of the structure's entropy mass).
LIVER_REGIONS = {
    "boundary": 0.7,
    "superior": 0.5,
    "middle": 0.3,
    "inferior": 0.2,
    "left": 0.1,
    "centre": 0.3,
    "right": 0.6,
    "field_edge": 0.05,
}


def review_quality(*, hd95_mm: float = float("nan")) -> CaseQuality:
    """A REVIEW case: the liver's predicted Dice is low and its RCA HD95 is ``hd95_mm`` (NaN by default, as
    when the best reference has an empty structure); the spleen passes but has no RCA or prediction."""
    liver = structure(
        "liver",
        1,
        predicted=(0.62, 0.51, 0.73),
        rca=(0.66, 0.58, hd95_mm),
        route=Route.REVIEW,
        reasons=(LIVER_REASON,),
        regions=LIVER_REGIONS,
    )
    spleen = structure("spleen", 2, predicted=None, rca=None, volume=210.0)
    return CaseQuality(
        route=Route.REVIEW,
        reasons=(LIVER_REASON,),
        structures=(spleen, liver),  # not in label order: stored in label order
        method=SamplingMethod.MC_DROPOUT,
        samples=8,
    )


def pass_quality() -> CaseQuality:
    """A PASS case with one well-predicted structure."""
    return CaseQuality(
        route=Route.PASS,
        reasons=(),
        structures=(structure("liver", 1),),
        method=SamplingMethod.TTA_FLIP,
        samples=4,
    )
