"""Settings of quality calibration: what the gate is calibrated for and the review budget it must keep.

``fairnode quality calibrate`` takes its defaults from here (the node's settings file, section
``quality_calibration``, or ``FAIRNODE_QUALITY_CALIBRATION__REVIEW_BUDGET`` and the like); what it chose is
written into the model card, which is what the node applies.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class QualityCalibrationSettings(BaseModel):
    """Targets and budget of the gate's calibration."""

    model_config = ConfigDict(extra="forbid")

    failure_dice: float = Field(0.8, gt=0, lt=1, description="a structure under this true Dice is failing")
    target_catch: float = Field(0.95, gt=0, le=1, description="share of failing structures to flag")
    review_budget: float | None = Field(
        None,
        gt=0,
        le=1,
        description="at most this share of cases to review on a day's mix, e.g. 0.25 (None: no budget, the "
        "thresholds stay where they catch the target share of failures)",
    )
    expected_prevalence: float | None = Field(
        0.15, gt=0, lt=1, description="share of a day's cases with a failing structure, for the budget"
    )
    min_failures: int = Field(5, ge=1, description="failing calibration structures for thresholds of its own")
    rca_calibration: Literal["isotonic", "linear"] = "isotonic"
