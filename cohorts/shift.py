"""Shift files: who is in a cohort, and how each group's images differ.

A shift file (YAML) lists demographic groups. Each group matches subjects by any of ``sex``,
``age_band``, ``ethnic_group``, ``bmi_band`` and ``manufacturer``, takes a ``share`` of the cohort,
and may carry an :class:`ImagingShift` applied to its images. Subjects are drawn group by group, so
a cohort can reproduce bias scenarios: an under-represented group (a small share), or a group whose
images differ (lower contrast, more noise, artefacts, different organ size).

Example::

    name: under-represented-women
    description: Women make up 15% of the cohort; images are otherwise alike.
    groups:
      - match: {sex: F}
        share: 0.15
      - match: {sex: M}
        share: 0.85

The scenarios shipped with fairnode live in ``cohorts/scenarios/`` and are documented in
``cohorts/README.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SCENARIO_DIR = Path(__file__).parent / "scenarios"

Sex = Literal["F", "M"]
AgeBand = Literal["18-39", "40-59", "60-74", "75+"]
BmiBand = Literal["underweight", "normal", "overweight", "obese"]
EthnicGroup = Literal["White", "Black", "Asian", "Hispanic", "Other"]


class ShiftFileError(ValueError):
    """A shift file that cannot be read or does not follow the schema."""


class ImagingShift(BaseModel):
    """How one group's images differ from the reference acquisition.

    Every factor is relative: 1.0 (or 0.0 for probabilities, offsets, ``lesion_mm`` and ``metal_mm``) means
    no change, and a subject whose shift is at these defaults gets exactly the image it would get without a
    shift. Each generator documents how it applies each field and which it ignores.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    contrast: float = Field(1.0, gt=0, le=5, description="multiplier of tissue contrast against fat/background")
    noise: float = Field(1.0, gt=0, le=10, description="multiplier of the image noise standard deviation")
    intensity_offset: float = Field(0.0, ge=-500, le=500, description="added to every tissue value (HU or a.u.)")
    artefact_probability: float = Field(
        0.0, ge=0, le=1, description="chance that a subject's images carry an artefact (streaks, ghosting)"
    )
    organ_scale: dict[str, float] = Field(
        default_factory=dict, description="per-structure size multiplier, e.g. {liver: 1.3}"
    )
    blur_mm: float = Field(0.0, ge=0, le=10, description="extra Gaussian blur (sigma, mm)")
    lesion_mm: float = Field(
        0.0,
        ge=0,
        le=60,
        description="mean radius (mm) of large focal lesions that stay part of their organ in the ground truth "
        "(CT: liver lesions; DX: lytic lesions in the distal femur or proximal tibia); 0 = none",
    )
    lesion_count: int = Field(
        1, ge=1, le=6, description="how many lesions of radius about lesion_mm (when lesion_mm > 0), e.g. metastases"
    )
    fov_fraction: float = Field(
        1.0,
        ge=0.3,
        le=1,
        description="fraction of the body's width (CT: reconstruction circle) or of the bones' left-right extent "
        "(DX: collimated strip) that is imaged; the rest has no ground truth; 1 = all of it",
    )
    metal_mm: float = Field(
        0.0,
        ge=0,
        le=250,
        description="craniocaudal length (mm) of posterior spinal fusion hardware (rods and pedicle screws) with "
        "its streak artefacts (CT only); 0 = none",
    )
    z_coverage: float = Field(
        1.0,
        ge=0.3,
        le=1,
        description="fraction of the craniocaudal scan range kept, the rest cut from the top (CT only: the scan "
        "starts below the liver dome); 1 = the full range",
    )


class GroupMatch(BaseModel):
    """Which subjects a group holds; an attribute left out matches everyone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sex: Sex | None = None
    age_band: AgeBand | None = None
    ethnic_group: EthnicGroup | None = None
    bmi_band: BmiBand | None = None
    manufacturer: str | None = None

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.model_dump(exclude_none=True).items()]
        return ", ".join(parts) or "everyone"


class Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    match: GroupMatch = Field(default_factory=GroupMatch)
    share: float = Field(gt=0, le=1)
    shift: ImagingShift = Field(default_factory=lambda: ImagingShift())


class ShiftSpec(BaseModel):
    """A whole shift file: a name, what it reproduces, and its groups (shares sum to 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    groups: list[Group] = Field(min_length=1)

    @model_validator(mode="after")
    def _shares_sum_to_one(self) -> ShiftSpec:
        total = sum(g.share for g in self.groups)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"group shares must sum to 1, they sum to {total:.4g}")
        return self


BALANCED = ShiftSpec(
    name="balanced",
    description="The base population: no group is favoured and images are alike.",
    groups=[Group(share=1.0)],
)


def load_shift(path: Path) -> ShiftSpec:
    """Read and validate a shift file.

    Raises
    ------
    ShiftFileError
        When the file is missing, unreadable, not YAML, or does not follow the schema; the message names
        the file and the first problem.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ShiftFileError(f"cannot read shift file {path}: {exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ShiftFileError(f"shift file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ShiftFileError(f"shift file {path} must hold a mapping with 'name' and 'groups'")
    try:
        return ShiftSpec.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ShiftFileError(f"shift file {path}: {where}: {first['msg']}") from exc


def shipped_scenarios() -> dict[str, Path]:
    """The scenario files shipped with fairnode, by name."""
    return {p.stem: p for p in sorted(SCENARIO_DIR.glob("*.yaml"))}
