"""From a source image to network input, and from network output back to the source grid.

Pure functions on numpy arrays in fairnode's axis order: ``(slices, rows, columns)`` for volumes,
``(rows, columns)`` for radiographs. Resampling uses MONAI's ``Resize`` (area-preserving edges,
``align_corners=False``), so going to the model grid and back maps voxel edges onto voxel edges.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.networks.layers.convutils import gaussian_1d
from monai.transforms import Resize, ScaleIntensityRange, ScaleIntensityRangePercentiles
from scipy import ndimage

from inference.model_card import InputSpec


def model_grid_shape(shape: tuple[int, ...], spacing: tuple[float, ...], target: tuple[float, ...]) -> tuple[int, ...]:
    """Shape of an image of ``shape`` and ``spacing`` (mm) once resampled to ``target`` spacing."""
    if len(shape) != len(spacing) or len(shape) != len(target):
        raise ValueError(f"shape {shape}, spacing {spacing} and target {target} must have the same length")
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target, strict=True))


def normalise(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Map raw values to [0, 1] as the model card says (window or per-image percentiles); a new float32 array.

    A window is applied in place on one float32 copy of the image: MONAI's ``ScaleIntensityRange`` steps
    (subtract, divide, scale, shift, clip) as the same torch operations, so the same values, without the new
    array each of them makes (on a 128-slice 512 x 512 CT five of 130 MB, whose first touch costs time).
    """
    low, high = spec.intensity.low, spec.intensity.high
    if spec.intensity.mode == "window" and high != low:  # MONAI's own path warns about and handles low == high
        x = image.astype(np.float32, copy=True)
        torch.from_numpy(x).sub_(low).div_(high - low).mul_(1.0 - 0.0).add_(0.0).clamp_(0.0, 1.0)
        return x
    x = image[None].astype(np.float32, copy=False)  # MONAI's transforms return a new array: no copy needed
    t: ScaleIntensityRange | ScaleIntensityRangePercentiles
    if spec.intensity.mode == "window":
        t = ScaleIntensityRange(spec.intensity.low, spec.intensity.high, 0.0, 1.0, clip=True)
    else:
        t = ScaleIntensityRangePercentiles(spec.intensity.low, spec.intensity.high, 0.0, 1.0, clip=True)
    return np.asarray(t(x))[0].astype(np.float32, copy=False)


def resize_anti_aliased(channels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``(channels, *spatial)`` resampled (linear) to ``shape``, Gaussian-smoothed first along the axes that
    shrink: MONAI's ``Resize(shape, anti_aliasing=True)`` to float rounding (the same sigma, (factor - 1) / 2,
    the same ``erf`` kernel truncated at 4 sigma, zero padding, and torch's linear interpolation weights).

    Smoothing and interpolation are both linear and separable, so each axis is one matrix (``_axis_matrix``)
    and the image is three matrix products, the axis that shrinks most first. Only the values at the output
    points are computed: on a 128-slice 512 x 512 CT to a 3 mm grid 0.07 s against 0.76 s for smoothing the
    whole image with 1-D correlations and then interpolating.
    """
    x = channels.astype(np.float32, copy=False)
    spatial = x.shape[1:]
    if len(spatial) != len(shape):
        raise ValueError(f"cannot resample {len(spatial)}-D images {x.shape} to the {len(shape)}-D shape {shape}")
    if tuple(spatial) == tuple(shape):
        return x.copy()
    for axis in sorted(range(len(shape)), key=lambda a: shape[a] / spatial[a]):
        n_in, n_out = x.shape[axis + 1], shape[axis]
        if n_in == n_out:  # no smoothing, and linear interpolation onto the same points is the identity
            continue
        m = _axis_matrix(n_in, n_out)
        before, after = int(np.prod(x.shape[: axis + 1])), int(np.prod(x.shape[axis + 2 :]))
        y = x.reshape(before, n_in) @ m.T if after == 1 else np.matmul(m, x.reshape(before, n_in, after))
        x = y.reshape(*x.shape[: axis + 1], n_out, *x.shape[axis + 2 :])
    return np.ascontiguousarray(x, dtype=np.float32)


def _axis_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` float32: one axis of :func:`resize_anti_aliased`, the Gaussian correlation when the axis
    shrinks (MONAI's anti-aliasing kernel, zero outside the image) followed by linear interpolation with the
    weights torch's ``interpolate`` uses (``align_corners=False``), taken from torch itself."""
    smooth = np.eye(n_in)
    if n_in > n_out:
        sigma = (torch.tensor(float(n_in)) / torch.tensor(float(n_out)) - 1) / 2  # float32, as MONAI computes it
        kernel = gaussian_1d(sigma, truncated=4.0, approx="erf").numpy().astype(np.float32)
        if not (kernel.size == 1 and kernel[0] == 1):
            # row i of the correlation holds the kernel centred on column i
            smooth = ndimage.correlate1d(smooth, kernel.astype(np.float64), axis=0, mode="constant", cval=0.0)
    identity = torch.eye(n_in, dtype=torch.float32)[None]  # n_in channels, each a unit impulse
    weights = torch.nn.functional.interpolate(identity, size=n_out, mode="linear")[0].numpy().astype(np.float64)
    return (weights.T @ smooth).astype(np.float32)


def to_model_grid(image: np.ndarray, spacing: tuple[float, ...], spec: InputSpec) -> np.ndarray:
    """Normalised image resampled to the model's spacing; returns ``(1, *spatial)`` float32."""
    shape = model_grid_shape(image.shape, spacing, spec.spacing_mm)
    return resize_anti_aliased(normalise(image, spec)[None], shape)


def labels_to_model_grid(labels: np.ndarray, spacing: tuple[float, ...], spec: InputSpec) -> np.ndarray:
    """Label map resampled (nearest) to the model's spacing; returns ``(1, *spatial)`` uint8."""
    shape = model_grid_shape(labels.shape, spacing, spec.spacing_mm)
    x = torch.from_numpy(labels.astype(np.float32))[None]
    return np.asarray(Resize(shape, mode="nearest-exact")(x)).astype(np.uint8)


def probabilities_to_source(probs: np.ndarray, source_shape: tuple[int, ...]) -> np.ndarray:
    """Class probabilities ``(classes, *model_grid)`` resampled (linear) onto the source grid."""
    mode = "trilinear" if probs.ndim == 4 else "bilinear"
    out = Resize(source_shape, mode=mode)(torch.from_numpy(probs.astype(np.float32, copy=False)))
    return np.asarray(out).astype(np.float32, copy=False)


def _class_to_source(probs: np.ndarray, out: np.ndarray) -> None:
    """One class ``(1, *model_grid)`` resampled (linear) into ``out`` (float32, the source shape): the values of
    :func:`probabilities_to_source` (the same torch kernel, called with its output given), without a new
    source-grid array per call."""
    if tuple(probs.shape[1:]) == tuple(out.shape):  # MONAI's Resize hands back the input: the values themselves
        out[...] = probs[0]
        return
    source = torch.from_numpy(probs.astype(np.float32, copy=False))[None]
    target = torch.from_numpy(out)[None, None]
    if out.ndim == 3:
        torch.ops.aten.upsample_trilinear3d.out(source, list(out.shape), False, None, None, None, out=target)
    else:
        torch.ops.aten.upsample_bilinear2d.out(source, list(out.shape), False, None, None, out=target)


def labels_to_source(probs: np.ndarray, source_shape: tuple[int, ...]) -> np.ndarray:
    """The label map (uint8) on the source grid of class probabilities ``(classes, *model_grid)``:
    ``argmax(probabilities_to_source(probs, source_shape), axis=0)``, the same labels (ties to the lower
    class; for finite probabilities: a NaN never wins here), computed one class at a time as a running
    maximum. ``probs`` is not modified.

    Each class is resampled alone (linear interpolation treats the classes independently, so its values are
    those of the joint resampling) into one array reused for every class, and compared with the largest so
    far: no source-grid copy of all classes, no new source-grid array per class (first touching that memory,
    130 MB per class of a 128-slice 512 x 512 CT, cost more than the resampling in a node's process), and no
    reordering of a ``(classes, ...)`` array for ``np.argmax`` along its first axis.
    """
    if probs.shape[0] > np.iinfo(np.uint8).max + 1:
        raise ValueError(f"at most 256 classes fit a uint8 label map, got probabilities of shape {probs.shape}")
    labels = np.zeros(source_shape, dtype=np.uint8)
    best = np.empty(source_shape, dtype=np.float32)
    _class_to_source(probs[:1], best)
    values = np.empty(source_shape, dtype=np.float32)
    above = np.empty(source_shape, dtype=bool)
    for c in range(1, probs.shape[0]):
        _class_to_source(probs[c : c + 1], values)
        np.greater(values, best, out=above)
        np.copyto(labels, np.uint8(c), where=above)
        np.maximum(best, values, out=best)
    return labels


def label_fractions_to_model_grid(
    labels: np.ndarray, spacing: tuple[float, ...], spec: InputSpec, n_classes: int
) -> np.ndarray:
    """Partial-volume fraction of every class on the model grid: the one-hot label map resampled as the image
    is (:func:`to_model_grid`: linear with anti-aliasing), so the fractions of a voxel sum to 1.

    Returns ``(n_classes, *spatial)`` float32 in [0, 1] (class 0 is background). A training target that
    agrees with the resampled image where nearest labels alias: on a 1.5 mm grid from 1.0-1.2 mm MR, nearest
    labels brought back to the source grid reach only Dice 0.89 for CSF, fractions 0.98
    (``benchmarks/mr_brain_ceiling.py``).
    """
    shape = model_grid_shape(labels.shape, spacing, spec.spacing_mm)
    onehot = np.stack([labels == c for c in range(n_classes)]).astype(np.float32)
    out = np.clip(resize_anti_aliased(onehot, shape), 0.0, 1.0)
    # the anti-aliasing filter pads with zeros: at the array's faces the fractions sum to a little less than 1
    return (out / np.maximum(out.sum(axis=0, keepdims=True), 1e-6)).astype(np.float32)
