"""Registration of the case onto a reference: shutters, pyramids, affine then B-spline (SimpleITK)."""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk  # noqa: N813 - the name SimpleITK's own documentation uses
from scipy import ndimage

from quality.rca.grids import to_sitk
from quality.rca.settings import Level, Pyramid, RcaSettings


def pyramid_levels(settings: RcaSettings) -> list[Level]:
    """Every resolution level (mm) either stage uses, finest first."""
    return sorted(set(settings.affine_levels_mm + settings.bspline_levels_mm))


def shrink_factors(level: Level, spacing: tuple[float, ...]) -> tuple[int, ...]:
    """Per array axis, how many voxels of ``spacing`` make about ``level`` mm (at least 1)."""
    return tuple(max(1, round(level / s)) for s in spacing)


def _valid(image: np.ndarray) -> np.ndarray | None:
    """Voxels that show the patient: ``None`` when all do; otherwise a mask without the shutters, widened by
    three voxels.

    A shutter (radiograph collimation, unexposed detector) is a run of whole rows, columns or slices from the
    border of the image that are bright and flat (mean > 0.5, standard deviation < 0.02). Shutters are not
    anatomy, sit anywhere across the field of view, and their edges would dominate the similarity and the
    registration metric.
    """
    invalid = np.zeros(image.shape, dtype=bool)
    for axis in range(image.ndim):
        others = tuple(a for a in range(image.ndim) if a != axis)
        flat = (image.std(axis=others) < 0.02) & (image.mean(axis=others) > 0.5)
        n = flat.size
        start = n if flat.all() else int(np.argmin(flat))  # flat slabs at the low border
        stop = n - (n if flat.all() else int(np.argmin(flat[::-1])))  # and at the high border
        index = np.arange(n)
        cut = (index < start + 3 * (start > 0)) | (index >= stop - 3 * (stop < n))
        invalid |= np.expand_dims(cut, others)
    return None if not invalid.any() else ~invalid


def registration_image(
    image: np.ndarray, spacing: tuple[float, ...], contrast_mm: float | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The image as similarity and registration see it, with its valid mask (``None``: all valid).

    Shutters are set to 0, like air. With ``contrast_mm``, valid voxels are contrast-normalised locally:
    ``(x - mean) / (std + 0.02)`` with Gaussian-weighted (sigma ``contrast_mm``) mean and standard deviation over
    the valid voxels, mapped to ``0.5 + 0.15 *`` that and clipped to [0, 1].
    """
    valid = _valid(image)
    shown = image if valid is None else np.where(valid, image, np.float32(0.0))
    if contrast_mm is None:
        return shown, valid
    sigma = [contrast_mm / s for s in spacing]
    weight = np.ones_like(shown) if valid is None else valid.astype(np.float32)
    total = ndimage.gaussian_filter(weight, sigma) + np.float32(1e-6)
    centred = (shown - ndimage.gaussian_filter(shown * weight, sigma) / total) * weight
    spread = np.sqrt(ndimage.gaussian_filter(centred * centred, sigma) / total)
    normalised = np.clip(0.5 + 0.15 * centred / (spread + 0.02), 0.0, 1.0) * weight
    return normalised.astype(np.float32), valid


def pyramid_level(
    image: np.ndarray, valid: np.ndarray | None, spacing: tuple[float, ...], level: Level
) -> tuple[sitk.Image, sitk.Image | None]:
    """``image`` at ``level`` mm: smoothed with sigma ``level / 2`` mm along axes whose spacing is finer than
    the level, then shrunk by block averages (physical space kept); with the mask of coarse voxels untouched by
    invalid ones (``None`` when all are valid)."""
    factors = shrink_factors(level, spacing)
    sigmas = [level / 2 if level > s else 0.0 for s in spacing]  # mm, numpy axis order
    if all(sg > 0 for sg in sigmas) and min(image.shape) >= 4:  # ITK's recursive filter needs 4 voxels per axis
        out = sitk.SmoothingRecursiveGaussian(to_sitk(image, spacing), list(reversed(sigmas)))
    elif any(sg > 0 for sg in sigmas):  # coarser than the level along some axis, or only a few slices
        voxels = [sg / s for sg, s in zip(sigmas, spacing, strict=True)]
        out = to_sitk(ndimage.gaussian_filter(image, voxels).astype(np.float32), spacing)
    else:
        out = to_sitk(image, spacing)
    shrink = [min(f, n) for f, n in zip(reversed(factors), out.GetSize(), strict=True)]
    if max(shrink) > 1:
        out = sitk.BinShrink(out, shrink)
    if valid is None:
        return out, None
    # invalid voxels leak into their neighbours through the smoothing: keep two sigmas away from them
    reach = max(1, math.ceil(max(2 * sg / s for sg, s in zip(sigmas, spacing, strict=True))))
    mask = to_sitk(ndimage.binary_erosion(valid, iterations=reach).astype(np.float32), spacing)
    if max(shrink) > 1:
        mask = sitk.BinShrink(mask, shrink)
    return out, sitk.Cast(mask > 0.999, sitk.sitkUInt8)


def _method(settings: RcaSettings, sampling: float) -> sitk.ImageRegistrationMethod:
    """A single-level registration; the pyramid is built outside, once per image (ITK would smooth the
    full-resolution moving image again for every level of every registration)."""
    reg = sitk.ImageRegistrationMethod()
    if settings.metric == "correlation":
        reg.SetMetricAsCorrelation()
    elif settings.metric == "mattes":
        reg.SetMetricAsMattesMutualInformation(32)
    elif settings.metric == "mean_squares":
        reg.SetMetricAsMeanSquares()
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(sampling, settings.seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetShrinkFactorsPerLevel([1])
    reg.SetSmoothingSigmasPerLevel([0.0])
    reg.SetNumberOfThreads(settings.threads)
    return reg


def _execute(
    reg: sitk.ImageRegistrationMethod,
    fixed: tuple[sitk.Image, sitk.Image | None],
    moving: tuple[sitk.Image, sitk.Image | None],
) -> sitk.Transform:
    if min(fixed[0].GetSize() + moving[0].GetSize()) < 4:
        # ITK's metrics take gradients with a recursive Gaussian, which needs 4 voxels per axis (a short scan
        # range at a coarse level has fewer): central differences there, the same filter everywhere else
        reg.SetMetricUseFixedImageGradientFilter(False)
        reg.SetMetricUseMovingImageGradientFilter(False)
    if fixed[1] is not None:
        reg.SetMetricFixedMask(fixed[1])
    if moving[1] is not None:
        reg.SetMetricMovingMask(moving[1])
    return reg.Execute(fixed[0], moving[0])


def _affine_level(
    fixed: Pyramid, moving: Pyramid, level: Level, start: sitk.Transform, settings: RcaSettings
) -> tuple[sitk.Transform, float]:
    """One level of the affine stage: the transform found from ``start`` and its metric value (lower is better)."""
    reg = _method(settings, settings.sampling_percentage)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=settings.affine_step_mm,
        minStep=settings.affine_step_mm / 64,
        numberOfIterations=settings.affine_iterations,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-6,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(start, inPlace=False)
    transform = _execute(reg, fixed[level], moving[level])
    return transform, reg.GetMetricValue()


def affine_registration(
    fixed: Pyramid, views: dict[bool, Pyramid], settings: RcaSettings
) -> tuple[sitk.Transform, bool]:
    """Affine transform mapping points of the reference (fixed) into the case (moving), centres of mass aligned
    to start with; with the case view it belongs to (mirrored or not: the one that fits better at the coarsest
    level, when both are offered)."""
    levels = list(settings.affine_levels_mm)
    coarse = levels[0]
    found = {}
    for mirrored, moving in views.items():
        start = sitk.CenteredTransformInitializer(
            fixed[coarse][0],
            moving[coarse][0],
            sitk.AffineTransform(fixed[coarse][0].GetDimension()),
            sitk.CenteredTransformInitializerFilter.MOMENTS,
        )
        found[mirrored] = _affine_level(fixed, moving, coarse, start, settings)
    mirrored = min(found, key=lambda m: found[m][1])
    transform = found[mirrored][0]
    for level in levels[1:]:
        transform = _affine_level(fixed, views[mirrored], level, transform, settings)[0]
    return transform, mirrored


def bspline_registration(
    fixed: Pyramid, moving: Pyramid, affine: sitk.Transform, settings: RcaSettings
) -> sitk.Transform:
    """``affine`` refined by a cubic B-spline (control points ``bspline_grid_spacing_mm`` apart)."""
    if settings.bspline_iterations == 0:
        return affine
    levels = list(settings.bspline_levels_mm)
    domain = fixed[levels[0]][0]
    mesh = [
        max(1, round(size * sp / settings.bspline_grid_spacing_mm))
        for size, sp in zip(domain.GetSize(), domain.GetSpacing(), strict=True)
    ]
    bspline = sitk.BSplineTransformInitializer(domain, mesh, 3)
    for level in levels:
        reg = _method(settings, settings.bspline_sampling_percentage)
        reg.SetOptimizerAsLBFGSB(
            gradientConvergenceTolerance=1e-5,
            numberOfIterations=settings.bspline_iterations,
            maximumNumberOfCorrections=5,
            maximumNumberOfFunctionEvaluations=2 * settings.bspline_iterations,
            costFunctionConvergenceFactor=1e7,
        )
        reg.SetMovingInitialTransform(affine)
        reg.SetInitialTransform(bspline, inPlace=True)
        _execute(reg, fixed[level], moving[level])
    # a CompositeTransform applies its last transform first: x -> affine(bspline(x))
    return sitk.CompositeTransform([affine, bspline])


def dense_transform(transform: sitk.Transform, fixed: Pyramid, settings: RcaSettings) -> sitk.Transform:
    """``transform`` sampled as a displacement field on the reference's grid of the finest B-spline level,
    widened by two voxels on every side so that it covers the whole full-resolution grid.

    Resampling through a composite affine + B-spline transform evaluates the B-spline at every voxel, which
    costs more than the registration; a displacement field interpolates linearly instead. The B-spline's
    control points are several coarse voxels apart, so the error of the interpolation is far below a voxel.
    """
    coarse = fixed[min(settings.bspline_levels_mm)][0]
    spacing = np.array(coarse.GetSpacing())
    size = [n + 4 for n in coarse.GetSize()]
    origin = np.array(coarse.GetOrigin()) - 2 * spacing
    field = sitk.TransformToDisplacementField(
        transform, sitk.sitkVectorFloat64, size, origin.tolist(), spacing.tolist(), coarse.GetDirection()
    )
    return sitk.DisplacementFieldTransform(field)


def case_view(
    shown: np.ndarray,
    valid: np.ndarray | None,
    labels: np.ndarray,
    spacing: tuple[float, ...],
    levels: list[Level],
    mirror_axis: int | None,
) -> tuple[Pyramid, sitk.Image]:
    """The case's pyramid and its labels plus one (0 marks outside the case), mirrored along ``mirror_axis``
    unless that is ``None``."""
    if mirror_axis is not None:
        shown, labels = np.flip(shown, mirror_axis), np.flip(labels, mirror_axis)
        valid = None if valid is None else np.flip(valid, mirror_axis)
    shown, labels = np.ascontiguousarray(shown), np.ascontiguousarray(labels)
    valid = None if valid is None else np.ascontiguousarray(valid)
    pyramid = {level: pyramid_level(shown, valid, spacing, level) for level in levels}
    return pyramid, to_sitk(labels + np.uint8(1), spacing)
