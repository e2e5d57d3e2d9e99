"""Audit settings, the audit's error and the names the audit input frame is built from."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from quality.spatial import REGION_KEYS

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_LABELS",
    "ESTIMATORS",
    "ESTIMATOR_LABELS",
    "FRAME_COLUMNS",
    "INTERSECTIONS",
    "MISSING",
    "REGION_KEYS",
    "AuditError",
    "AuditSettings",
]

#: The patient attributes groups are formed from (the frame's columns), in report order.
ATTRIBUTES: tuple[str, ...] = ("sex", "age_band", "ethnic_group", "bmi_band", "site")
#: Intersections whose counts are reported (pairs of :data:`ATTRIBUTES`).
INTERSECTIONS: tuple[tuple[str, str], ...] = (
    ("sex", "age_band"),
    ("sex", "ethnic_group"),
    ("ethnic_group", "bmi_band"),
)
#: Estimators of Dice without ground truth: name -> frame column.
ESTIMATORS: dict[str, str] = {"rca": "rca_dice", "predictor": "predicted_dice"}
#: The category value of a demographic that was not recorded (NaN/None in the frame means the same).
MISSING = "unknown"
#: Columns of the audit input frame, one row per (case, structure) of finished cases.
FRAME_COLUMNS: tuple[str, ...] = (
    "pseudonym",
    "case_id",
    "study_date",
    "received_at",
    "site",
    "manufacturer",
    "scanner_model",
    "model",
    "model_version",
    "structure",
    "sex",
    "age_years",
    "age_band",
    "ethnic_group",
    "bmi",
    "bmi_band",
    "slice_thickness_mm",
    "kvp",
    "contrast",
    "case_route",
    "route",
    "review_state",
    "volume",
    "rca_dice",
    "predicted_dice",
    "predicted_low",
    "predicted_high",
    "true_dice",
    "true_nsd",
    "true_hd95_mm",
    *(f"region_{key}" for key in REGION_KEYS),
)


class AuditError(ValueError):
    """An audit that cannot be made from what was asked (empty period, unknown model, too few cases).

    The message says what was wrong and what would be accepted; the command line prints it as one line.
    """


class AuditSettings(BaseModel):
    """How the fairness audit counts, tests and alerts.

    Dice values and margins are in Dice units ([0, 1]).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_cell: int = Field(10, ge=1, description="smallest number of patients a reported group or cell may have")
    min_cases: int = Field(20, ge=1, description="fewest patients an audit is made from")
    gap_alert: float = Field(
        0.03, gt=0, le=1, description="disparity alert: a group's estimate this far below the best group's"
    )
    p_alert: float = Field(0.05, gt=0, lt=1, description="Holm-corrected p-value a disparity alert also needs")
    trend_drop_margin: float = Field(
        0.03, gt=0, le=1, description="trend-drop alert: a group's estimate fell by more than this since last time"
    )
    trend_gap_margin: float = Field(
        0.02, gt=0, le=1, description="trend-gap alert: a disparity gap grew by more than this since last time"
    )
    failure_dice: float = Field(0.7, gt=0, lt=1, description="estimated Dice below which a structure is flagged")
    bootstrap: int = Field(1000, ge=100, le=100_000, description="patient-level bootstrap resamples for the CIs")
    seed: int = Field(0, ge=0, description="seed of the bootstrap")
    previous_quarters: int = Field(4, ge=0, le=40, description="earlier audits shown in the trend")


#: How the report names each attribute.
ATTRIBUTE_LABELS: dict[str, str] = {
    "sex": "sex",
    "age_band": "age band",
    "ethnic_group": "ethnic group",
    "bmi_band": "BMI band",
    "site": "site",
}
#: How the report names each estimator.
ESTIMATOR_LABELS: dict[str, str] = {"rca": "RCA", "predictor": "quality predictor"}
