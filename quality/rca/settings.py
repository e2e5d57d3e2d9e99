"""RCA settings and errors: how references are chosen and the case registered onto them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

import SimpleITK as sitk  # noqa: N813 - the name SimpleITK's own documentation uses

Level = tuple[int, float]
"""One resolution level: (shrink factor, Gaussian sigma in voxels of the bank grid before shrinking)."""
Pyramid = dict[Level, tuple[sitk.Image, sitk.Image | None]]
"""An image at each level: (smoothed and shrunk image, mask of its valid voxels or None)."""


class RcaError(ValueError):
    """An RCA input, setting or bank file is unusable; the message says what and why."""


Metric = Literal["correlation", "mean_squares", "mattes"]


@dataclass(frozen=True)
class RcaSettings:
    """How RCA chooses references and registers the case onto them.

    The defaults suit 3D CT on a 3 mm grid and meet the target of <= 15 s per abdomen case with ``k = 5`` on
    two CPU cores; :meth:`radiograph` gives settings for 2D radiographs on a 1 mm grid.

    Attributes
    ----------
    k
        Number of most similar references registered per case.
    thumbnail_factor
        Block size (voxels of the bank grid per axis) of the thumbnails compared to choose references.
    affine_iterations
        Maximum iterations per resolution level of the affine stage (regular-step gradient descent).
    affine_step_mm
        First step of the affine optimiser, about mm of voxel motion (parameter scales from physical shift);
        it halves whenever the direction reverses, down to 1/64 of this.
    affine_shrink_factors, affine_smoothing_sigmas
        Per level, from coarse to fine: shrink factor of the images (block averages) and Gaussian sigma in
        voxels of the bank grid, applied before shrinking.
    bspline_iterations
        Maximum iterations (L-BFGS-B) per resolution level of the cubic B-spline stage; 0 skips the stage.
    bspline_shrink_factors, bspline_smoothing_sigmas
        As for the affine stage.
    bspline_grid_spacing_mm
        Distance between B-spline control points in mm (the mesh size of a reference is its extent divided by
        this, at least 1 per axis); in mm so that one value means the same on any grid. Coarse on purpose:
        ITK's v4 metrics evaluate a B-spline with a dense Jacobian, so each sample costs in proportion to
        the number of control points.
    sampling_percentage, bspline_sampling_percentage
        Fraction (0, 1] of the reference's voxels (at each level) sampled at random, with ``seed``, to
        evaluate the metric in the affine and the B-spline stage.
    metric
        ``correlation`` (default: same modality and normalisation, insensitive to a global contrast or
        brightness change between scanners), ``mean_squares``, or ``mattes`` (mutual information).
    local_contrast_mm
        When set, images are compared and registered after local contrast normalisation: minus the local mean,
        divided by the local standard deviation (Gaussian windows of this sigma, mm). For modalities whose
        intensities are not calibrated (radiographs, percentile-normalised): soft tissue then weighs no more
        than bone edges. ``None`` (default, CT in Hounsfield units) uses the intensities as they are.
    mirror_axis
        Array axis along which the case may be mirrored to match a reference: radiographs of either side
        against a bank of both (knee: 1, columns). Each reference is then compared with both the case and its
        mirror image (thumbnails, then the coarsest affine level) and the better one is registered.
        Only for label sets without left/right structures; ``None`` (default) never mirrors.
    threads
        Threads SimpleITK uses per registration. Results are identical run to run for a given value; another
        value may change the last digits.
    seed
        Seed of the metric's random sampling.
    """

    k: int = 5
    thumbnail_factor: int = 4
    affine_iterations: int = 40
    affine_step_mm: float = 1.0
    affine_shrink_factors: tuple[int, ...] = (8, 4)
    affine_smoothing_sigmas: tuple[float, ...] = (4.0, 2.0)
    bspline_iterations: int = 15
    bspline_shrink_factors: tuple[int, ...] = (4,)
    bspline_smoothing_sigmas: tuple[float, ...] = (2.0,)
    bspline_grid_spacing_mm: float = 120.0
    sampling_percentage: float = 0.1
    bspline_sampling_percentage: float = 0.1
    metric: Metric = "correlation"
    local_contrast_mm: float | None = None
    mirror_axis: int | None = None
    threads: int = 2
    seed: int = 20170801

    @classmethod
    def radiograph(cls, **changes: Any) -> RcaSettings:
        """Settings for 2D radiographs on a 1 mm grid (knee: about 0.6 s per case with ``k = 5`` on 2 cores).

        Finer than the CT defaults, which 2D affords: affine at shrink 4 and 2, B-spline with control points
        50 mm apart at shrink 2, denser sampling; local contrast normalisation over 10 mm (exposure, body habitus
        and percentile normalisation make soft tissue anything from dark to as bright as bone); and the case
        mirrored along columns when that fits a reference better (left and right knees). ``changes`` override
        single fields.
        """
        base = cls(
            affine_shrink_factors=(4, 2),
            affine_smoothing_sigmas=(2.0, 1.0),
            bspline_shrink_factors=(2,),
            bspline_smoothing_sigmas=(1.0,),
            bspline_grid_spacing_mm=50.0,
            sampling_percentage=0.25,
            bspline_sampling_percentage=0.1,
            local_contrast_mm=10.0,
            mirror_axis=1,
        )
        return replace(base, **changes)

    def __post_init__(self) -> None:
        positive = {
            "k": self.k,
            "thumbnail_factor": self.thumbnail_factor,
            "affine_iterations": self.affine_iterations,
            "threads": self.threads,
        }
        for name, value in positive.items():
            if value < 1:
                raise RcaError(f"{name} must be >= 1, got {value}")
        if self.bspline_iterations < 0:
            raise RcaError(f"bspline_iterations must be >= 0, got {self.bspline_iterations}")
        for stage in ("affine", "bspline"):
            shrink: tuple[int, ...] = getattr(self, f"{stage}_shrink_factors")
            sigmas: tuple[float, ...] = getattr(self, f"{stage}_smoothing_sigmas")
            if not shrink or len(shrink) != len(sigmas) or min(shrink) < 1 or min(sigmas) < 0:
                raise RcaError(
                    f"{stage}_shrink_factors {shrink} and {stage}_smoothing_sigmas {sigmas} must be non-empty, "
                    "of equal length, with shrink factors >= 1 and sigmas >= 0"
                )
        for name in ("affine_step_mm", "bspline_grid_spacing_mm", "local_contrast_mm"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise RcaError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("sampling_percentage", "bspline_sampling_percentage"):
            if not 0 < getattr(self, name) <= 1:
                raise RcaError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.metric not in get_args(Metric):
            raise RcaError(f"metric {self.metric!r} is not one of {get_args(Metric)}")
