"""What the case page and its API show and take: the case with its structures, the presets, a
rejection, a note, and a correction's outcome (pydantic models; see :mod:`review.routes.cases`).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from fairness_registry.accounts import ReviewActionPublic
from fairness_registry.models import ReviewState


class CaseStructureView(BaseModel):
    """One structure on the case page: display, the estimates, and the truth once a correction came."""

    name: str
    label: int | None = None
    color: str | None = Field(None, description="#rrggbb of the overlay")
    largest_slice: int | None = Field(None, description="0-based slice where the SEG holds most of it")
    route: str | None = None
    predicted_dice: float | None = None
    predicted_low: float | None = None
    predicted_high: float | None = None
    coverage: float | None = None
    rca_max_dice: float | None = None
    rca_hd95_mm: float | None = None
    reasons: list[str] = Field(default_factory=list)
    true_dice: float | None = None
    true_nsd: float | None = None
    true_hd95_mm: float | None = None
    truth_source: str | None = None


class PresetView(BaseModel):
    name: str
    title: str


class CaseView(BaseModel):
    """What the case page shows (no patient identifier)."""

    case_id: int
    study_uid: str
    series_uid: str
    modality: str
    model: str
    model_version: str
    run: int
    route: str
    review_state: ReviewState
    reasons: list[str]
    n_slices: int
    start_slice: int = Field(description="the largest slice of the most doubtful structure")
    presets: list[PresetView]
    has_heatmap: bool
    structures: list[CaseStructureView]
    actions: list[ReviewActionPublic]


class Rejection(BaseModel):
    """Body of ``POST /api/cases/{case_id}/reject``."""

    reason: str = Field(max_length=200, description="one of REJECT_REASONS")
    text: str = Field("", max_length=2000, description="free text for the trail")


class Note(BaseModel):
    """Body of ``POST /api/cases/{case_id}/accept`` (optional)."""

    text: str = Field("", max_length=2000)


class TruthView(BaseModel):
    structure: str
    dice: float
    nsd: float | None
    hd95_mm: float | None


class CorrectionOutcome(BaseModel):
    """What a correction gave."""

    case_id: int
    review_state: ReviewState
    structures: list[TruthView]
