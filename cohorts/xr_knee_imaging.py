"""The radiograph of :mod:`cohorts.xr_knee`: the detector frame, outline finishing, projected depths,
soft tissue, noise fields, metal, collimation and the window each bone is computed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cohorts.xr_knee_anatomy import Anatomy, chord, smoothstep


@dataclass(frozen=True)
class Frame:
    """The knee frame on the detector grid: ``u`` (lateral +), ``v`` (distal +), both mm, (rows, cols)."""

    u: np.ndarray
    v: np.ndarray
    spacing: float


def bbox(mask: np.ndarray, pad: int) -> tuple[slice, slice] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1 = max(int(rows[0]) - pad, 0), min(int(rows[-1]) + pad + 1, mask.shape[0])
    c0, c1 = max(int(cols[0]) - pad, 0), min(int(cols[-1]) + pad + 1, mask.shape[1])
    return slice(r0, r1), slice(c0, c1)


def fix_outline(raw: np.ndarray, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Round the corners of ``raw`` (Gaussian of 2.5 mm) and move its edge by a smooth random field
    (standard deviation ~1 px, correlation ~7 px); returns the final boolean outline."""
    sigma = 2.5 / spacing
    box = bbox(raw, int(3 * sigma) + 4)
    field = rng.standard_normal(raw.shape, dtype=np.float32)  # drawn whole-size so the draw is stable
    out = np.zeros_like(raw)
    if box is None:
        return out
    soft = ndimage.gaussian_filter(raw[box].astype(np.float32), sigma)
    wobble = ndimage.gaussian_filter(field[box], 7.0)
    wobble /= max(float(wobble.std()), 1e-6)
    edge_gradient = 1.0 / (sigma * np.sqrt(2 * np.pi))  # of the blurred step, per px
    out[box] = soft + wobble * edge_gradient * 1.0 > 0.5
    return out


def depth_mm(mask: np.ndarray, spacing: float) -> np.ndarray:
    """Distance (mm) of each pixel of ``mask`` to its edge (0 outside); the image border is not an edge."""
    depth = np.zeros(mask.shape, np.float32)
    box = bbox(mask, 1)
    if box is not None:
        # distance to the pixel edge rather than to the nearest outside pixel centre
        depth[box] = ndimage.distance_transform_edt(mask[box], sampling=spacing) - 0.5 * spacing
    return depth


def soft_tissue(frame: Frame, a: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Projected muscle and fat thickness (mm), each (rows, cols)."""
    u, v, k = frame.u, frame.v, a.k
    knots = (-200 * k, -100 * k, -40 * k, 0.0, 40 * k, 110 * k, 220 * k)
    table_v = np.arange(-700.0, 701.0, 1.0)
    table = np.interp(table_v, knots, (a.thigh, a.thigh, a.distal_thigh, a.knee, a.knee * 1.02, a.calf, a.ankle))
    table = ndimage.gaussian_filter1d(np.maximum(table, 58.0 * k), 25.0, mode="nearest")
    half = np.interp(v, table_v, table).astype(np.float32)
    centre = np.where(v < 0, -0.3 * np.tan(a.femur_tilt) * np.maximum(-v, 0), 0.0)
    depth = half - np.abs(u - centre)
    total = chord(depth, half, 0.92 * half)
    inner = np.maximum(half - a.fat, 10.0)
    muscle = chord(depth - (half - inner), inner, 0.92 * half - (half - inner))
    return muscle, total - muscle


def noise_field(rng: np.random.Generator, shape: tuple[int, int], sigma: tuple[float, float]) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    field /= max(float(field.std()), 1e-6)
    return field


def lowpass(image: np.ndarray, sigma_mm: float, spacing: float) -> np.ndarray:
    """A broad Gaussian low-pass (sigma in mm) computed on an 8x coarser grid (shape must divide by 8)."""
    rows, cols = image.shape
    small = image.reshape(rows // 8, 8, cols // 8, 8).mean(axis=(1, 3))
    small = ndimage.gaussian_filter(small, sigma_mm / (8 * spacing), mode="nearest")
    return np.asarray(ndimage.zoom(small, 8, order=1, mode="nearest", grid_mode=True), dtype=np.float32)


def screw(frame: Frame, a: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Projected metal thickness (mm) of a cannulated screw in the tibial plateau."""
    cu = float(rng.uniform(-20.0, 20.0)) * a.k
    cv = a.gap_m + float(rng.uniform(15.0, 30.0)) * a.k
    ang = np.deg2rad(rng.uniform(-35.0, 35.0))
    length, radius = float(rng.uniform(35.0, 55.0)), float(rng.uniform(2.8, 3.5))
    along = (frame.u - cu) * np.sin(ang) + (frame.v - cv) * np.cos(ang)
    across = (frame.u - cu) * np.cos(ang) - (frame.v - cv) * np.sin(ang)
    thread = radius * (0.85 + 0.15 * np.sin(2 * np.pi * along / 2.5))
    shaft = np.where(np.abs(along) < length / 2, chord(thread - np.abs(across), thread, thread), 0.0)
    head_r = radius * 1.8
    head_dist = np.hypot(across, along + length / 2 + 2.0)
    head = chord(head_r - head_dist, head_r, 0.6 * head_r)
    cannula = np.where(np.abs(along) < length / 2, chord(0.8 - np.abs(across), 0.8, 0.8), 0.0)
    return np.asarray(shaft + head - cannula, dtype=np.float32)


def exposed_field(
    labels: np.ndarray, x: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """Lateral collimator blades closed too far: the exposed strip is ``fraction`` of the bones' left-right
    extent wide, off the bones' centre by up to all of the slack, with a 1.5 mm penumbra; it runs the
    image's full height, as every field of this generator does.

    Parameters
    ----------
    labels
        ``(rows, columns)`` bone labels, before collimation.
    x
        column positions ``(1, columns)``, mm.

    Returns
    -------
    field, width
        ``(1, columns)`` float32 exposure weight (1 inside, 0 under the blades) and the strip's width in mm.
    """
    bone_x = x[0, np.flatnonzero(labels.any(axis=0))]
    if bone_x.size == 0:  # every bone removed: the strip is a fraction of the image
        bone_x = x[0, [0, -1]]
    left, right = float(bone_x.min()), float(bone_x.max())
    half = 0.5 * fraction * (right - left)
    centre = 0.5 * (left + right) + float(rng.uniform(-1.0, 1.0)) * (0.5 * (right - left) - half)
    return smoothstep((half - np.abs(x - centre)) / 1.5 + 0.5).astype(np.float32), 2.0 * half


def window(
    frame: Frame,
    u_range: tuple[float, float],
    v_range: tuple[float, float],
    x_c: float,
    y_j: float,
    theta: float,
    lateral_sign: float,
    margin_mm: float = 10.0,
) -> tuple[slice, slice]:
    """The image window (row and column slices) around a (u, v) rectangle, with a margin."""
    corners = np.array([(uu, vv) for uu in u_range for vv in v_range])
    up = corners[:, 0] * lateral_sign
    x = np.cos(theta) * up - np.sin(theta) * corners[:, 1] + x_c
    y = np.sin(theta) * up + np.cos(theta) * corners[:, 1] + y_j
    rows, cols = frame.u.shape
    r0 = int(np.clip(np.floor((y.min() - margin_mm) / frame.spacing), 0, rows - 1))
    r1 = int(np.clip(np.ceil((y.max() + margin_mm) / frame.spacing) + 1, r0 + 1, rows))
    c0 = int(np.clip(np.floor((x.min() - margin_mm) / frame.spacing), 0, cols - 1))
    c1 = int(np.clip(np.ceil((x.max() + margin_mm) / frame.spacing) + 1, c0 + 1, cols))
    return slice(r0, r1), slice(c0, c1)
