"""From a source image to network input, and from network output back to the source grid.

Pure functions on numpy arrays in fairnode's axis order: ``(slices, rows, columns)`` for volumes,
``(rows, columns)`` for radiographs. Resampling uses MONAI's ``Resize`` (area-preserving edges,
``align_corners=False``), so going to the model grid and back maps voxel edges onto voxel edges.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import Resize, ScaleIntensityRange, ScaleIntensityRangePercentiles

from inference.model_card import InputSpec


def model_grid_shape(shape: tuple[int, ...], spacing: tuple[float, ...], target: tuple[float, ...]) -> tuple[int, ...]:
    """Shape of an image of ``shape`` and ``spacing`` (mm) once resampled to ``target`` spacing."""
    if len(shape) != len(spacing) or len(shape) != len(target):
        raise ValueError(f"shape {shape}, spacing {spacing} and target {target} must have the same length")
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target, strict=True))


def normalise(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Map raw values to [0, 1] as the model card says (window or per-image percentiles)."""
    x = image[None].astype(np.float32)
    t: ScaleIntensityRange | ScaleIntensityRangePercentiles
    if spec.intensity.mode == "window":
        t = ScaleIntensityRange(spec.intensity.low, spec.intensity.high, 0.0, 1.0, clip=True)
    else:
        t = ScaleIntensityRangePercentiles(spec.intensity.low, spec.intensity.high, 0.0, 1.0, clip=True)
    return np.asarray(t(x))[0].astype(np.float32)


def to_model_grid(image: np.ndarray, spacing: tuple[float, ...], spec: InputSpec) -> np.ndarray:
    """Normalised image resampled to the model's spacing; returns ``(1, *spatial)`` float32."""
    shape = model_grid_shape(image.shape, spacing, spec.spacing_mm)
    x = torch.from_numpy(normalise(image, spec))[None]
    mode = "trilinear" if spec.spatial_dims == 3 else "bilinear"
    return np.asarray(Resize(shape, mode=mode, anti_aliasing=True)(x)).astype(np.float32)


def labels_to_model_grid(labels: np.ndarray, spacing: tuple[float, ...], spec: InputSpec) -> np.ndarray:
    """Label map resampled (nearest) to the model's spacing; returns ``(1, *spatial)`` uint8."""
    shape = model_grid_shape(labels.shape, spacing, spec.spacing_mm)
    x = torch.from_numpy(labels.astype(np.float32))[None]
    return np.asarray(Resize(shape, mode="nearest-exact")(x)).astype(np.uint8)


def probabilities_to_source(probs: np.ndarray, source_shape: tuple[int, ...]) -> np.ndarray:
    """Class probabilities ``(classes, *model_grid)`` resampled (linear) onto the source grid."""
    mode = "trilinear" if probs.ndim == 4 else "bilinear"
    out = Resize(source_shape, mode=mode)(torch.from_numpy(probs.astype(np.float32)))
    return np.asarray(out).astype(np.float32)
