"""How ``fairnode model benchmark`` measures and reports (the ``benchmark:`` part of the node's settings)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BenchmarkSettings"]


class BenchmarkSettings(BaseModel):
    """Benchmark of a model on a labelled cohort. Distances are in mm."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_cell: int = Field(5, ge=1, description="fewest subjects a reported group or intersection cell has")
    bootstrap: int = Field(1000, ge=100, le=100_000, description="subject-level bootstrap resamples for the CIs")
    seed: int = Field(0, ge=0, description="seed of the bootstrap")
    nsd_tolerance_mm: float = Field(2.0, gt=0, description="NSD tolerance; also the half-width of the boundary band")
    error_margin_mm: float = Field(20.0, gt=0, description="errors this far from the true structure are located")
    frame_shape: tuple[int, int] = Field(
        (96, 64), description="rows x columns of the common frame the 2D error maps are averaged in"
    )
