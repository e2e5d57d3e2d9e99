"""RCA settings and errors: how references are chosen and the case registered onto them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, get_args

import SimpleITK as sitk  # noqa: N813 - the name SimpleITK's own documentation uses

Level = float
"""One resolution level, in mm: images Gaussian-smoothed (sigma half the level) and shrunk to about it."""
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
    thumbnail_mm
        Size of the thumbnail voxels (block means of the bank grid, about this size per axis) compared to
        choose references.
    affine_iterations
        Maximum iterations per resolution level of the affine stage (regular-step gradient descent).
    affine_step_mm
        First step of the affine optimiser, about mm of voxel motion (parameter scales from physical shift);
        it halves whenever the direction reverses, down to 1/64 of this.
    affine_levels_mm
        Resolution levels of the affine stage, coarse to fine, in mm: at level ``L`` the images are smoothed
        with a Gaussian of sigma ``L / 2`` mm and shrunk by block averages to voxels of about ``L`` mm (shrink
        factor ``round(L / spacing)`` per axis, at least 1). In mm rather than shrink factors so that the same
        settings fit banks of any spacing.
    bspline_iterations
        Maximum iterations (L-BFGS-B) per resolution level of the cubic B-spline stage; 0 skips the stage.
    bspline_levels_mm
        Resolution levels of the B-spline stage, as for the affine stage. The finest one is also the grid on
        which the final transform is sampled as a displacement field to propagate the labels.
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
        Threads SimpleITK uses per registration (2: ~30% faster than 1 on an idle 2-core machine). Results
        are identical run to run; in our checks they did not change with 1, 2 or 4 threads either.
    seed
        Seed of the metric's random sampling.
    """

    k: int = 5
    thumbnail_mm: float = 12.0
    affine_iterations: int = 40
    affine_step_mm: float = 1.0
    affine_levels_mm: tuple[float, ...] = (24.0, 12.0)
    bspline_iterations: int = 15
    bspline_levels_mm: tuple[float, ...] = (12.0,)
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
        """Settings for 2D radiographs (knee on a 1 mm grid: ~2.5 s per case with ``k = 5`` on 2 shared cores).

        Finer than the CT defaults, which 2D affords: thumbnails of 4 mm, affine at 4 and 2 mm, B-spline with
        control points 50 mm apart at 2 mm, denser sampling; local contrast normalisation over 10 mm (exposure,
        body habitus and percentile normalisation make soft tissue anything from dark to as bright as bone); and
        the case mirrored along columns when that fits a reference better (left and right knees). ``changes``
        override single fields.
        """
        base = cls(
            thumbnail_mm=4.0,
            affine_levels_mm=(4.0, 2.0),
            bspline_levels_mm=(2.0,),
            bspline_grid_spacing_mm=50.0,
            sampling_percentage=0.25,
            bspline_sampling_percentage=0.1,
            local_contrast_mm=10.0,
            mirror_axis=1,
        )
        return replace(base, **changes)

    @classmethod
    def for_bank(cls, ndim: int, changes: Mapping[str, object] | None = None) -> RcaSettings:
        """The defaults for a bank of ``ndim`` dimensions (3: CT, 2: :meth:`radiograph`) with ``changes``, e.g.
        what a model card's ``quality.rca.settings`` names.

        Raises
        ------
        RcaError
            For a field that :class:`RcaSettings` does not have, or a value it refuses.
        """
        changes = dict(changes or {})
        unknown = sorted(set(changes) - {f.name for f in fields(cls)})
        if unknown:
            raise RcaError(f"unknown RCA settings {unknown}; known are {[f.name for f in fields(cls)]}")
        typed: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}
        base = cls() if ndim == 3 else cls.radiograph()
        return replace(base, **typed)

    def changes_from_default(self, ndim: int) -> dict[str, object]:
        """The fields that differ from :meth:`for_bank` defaults for ``ndim`` (what a model card records)."""
        base = asdict(RcaSettings.for_bank(ndim))
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if base[k] != v}

    def __post_init__(self) -> None:
        positive = {
            "k": self.k,
            "affine_iterations": self.affine_iterations,
            "threads": self.threads,
        }
        for name, value in positive.items():
            if value < 1:
                raise RcaError(f"{name} must be >= 1, got {value}")
        if self.bspline_iterations < 0:
            raise RcaError(f"bspline_iterations must be >= 0, got {self.bspline_iterations}")
        for name in ("affine_levels_mm", "bspline_levels_mm"):
            levels: tuple[float, ...] = getattr(self, name)
            if not levels or not all(math.isfinite(v) and v > 0 for v in levels):
                raise RcaError(f"{name} must be a non-empty sequence of positive mm, got {levels}")
        for name in ("thumbnail_mm", "affine_step_mm", "bspline_grid_spacing_mm", "local_contrast_mm"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise RcaError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("sampling_percentage", "bspline_sampling_percentage"):
            if not 0 < getattr(self, name) <= 1:
                raise RcaError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.metric not in get_args(Metric):
            raise RcaError(f"metric {self.metric!r} is not one of {get_args(Metric)}")
