"""Checks of a case or reference against the bank, and resampling onto the bank's grid."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk  # noqa: N813 - the name SimpleITK's own documentation uses

from quality.rca.settings import RcaError

if TYPE_CHECKING:
    from quality.rca.bank import ReferenceBank


def checked_pair(
    image: np.ndarray, labels: np.ndarray, spacing: tuple[float, ...], bank: ReferenceBank, what: str
) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.ndim != bank.ndim:
        raise RcaError(f"{what}: image has {image.ndim} dimensions {image.shape}, the bank holds {bank.ndim}D images")
    if labels.shape != image.shape:
        raise RcaError(f"{what}: labels {labels.shape} and image {image.shape} must have the same shape")
    if len(spacing) != image.ndim or not all(math.isfinite(float(s)) and float(s) > 0 for s in spacing):
        raise RcaError(f"{what}: spacing {tuple(spacing)} must be {image.ndim} positive numbers (mm)")
    if min(image.shape) < 2:
        raise RcaError(f"{what}: image shape {image.shape} is degenerate (every axis needs >= 2 voxels)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise RcaError(f"{what}: labels must be an integer label map, got dtype {labels.dtype}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi > len(bank.label_names):
        raise RcaError(f"{what}: labels span {lo}..{hi}; allowed are 0..{len(bank.label_names)}")
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise RcaError(f"{what}: image holds NaN or infinite values")
    if float(image.max()) - float(image.min()) < 1e-6:
        raise RcaError(f"{what}: image is constant ({float(image.min()):.3g}); there is nothing to register")
    if float(image.min()) < -1e-3 or float(image.max()) > 1 + 1e-3:
        raise RcaError(
            f"{what}: image spans {float(image.min()):.3g}..{float(image.max()):.3g}; it must be normalised "
            "to [0, 1] as the model input"
        )
    return np.clip(image, 0.0, 1.0), labels.astype(np.uint8)


def quantise(image: np.ndarray) -> np.ndarray:
    """The image as :meth:`ReferenceBank.save` stores it (steps of 1/255), so that a round trip is exact."""
    return np.round(image * 255.0).astype(np.uint8).astype(np.float32) / np.float32(255.0)


def to_sitk(array: np.ndarray, spacing: tuple[float, ...]) -> sitk.Image:
    """A SimpleITK image of ``array`` (numpy axis order) with origin 0 and ``spacing`` (numpy order, mm)."""
    out = sitk.GetImageFromArray(array)
    out.SetSpacing(tuple(reversed(spacing)))
    return out


def to_grid(
    image: np.ndarray, labels: np.ndarray, spacing: tuple[float, ...], target: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Resample image (linear) and labels (nearest) onto ``target`` spacing, keeping the field of view centred."""
    if np.allclose(spacing, target, rtol=1e-4, atol=0):
        return image, labels
    shape = tuple(max(2, round(n * s / t)) for n, s, t in zip(image.shape, spacing, target, strict=True))
    # voxel centres at i * spacing; centre the new grid on the old field of view
    origin = tuple(
        ((n - 1) * s - (m - 1) * t) / 2 for n, s, m, t in zip(image.shape, spacing, shape, target, strict=True)
    )
    src = to_sitk(image, spacing)
    coarser = [max(t * t - s * s, 0.0) for s, t in zip(spacing, target, strict=True)]
    if any(c > 0 for c in coarser):
        # anti-aliasing: a Gaussian whose FWHM makes up the difference between the two voxel sizes
        sigmas = [math.sqrt(c) / 2.3548 for c in coarser]
        src = sitk.SmoothingRecursiveGaussian(src, [max(sg, 1e-3) for sg in reversed(sigmas)])
    ref = sitk.Image([int(m) for m in reversed(shape)], sitk.sitkFloat32)
    ref.SetSpacing(tuple(reversed(target)))
    ref.SetOrigin(tuple(reversed(origin)))
    identity = sitk.Transform(len(shape), sitk.sitkIdentity)
    out_img = sitk.Resample(src, ref, identity, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    out_lab = sitk.Resample(to_sitk(labels, spacing), ref, identity, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    img = np.clip(sitk.GetArrayFromImage(out_img), 0.0, 1.0).astype(np.float32)
    return img, sitk.GetArrayFromImage(out_lab).astype(np.uint8)
