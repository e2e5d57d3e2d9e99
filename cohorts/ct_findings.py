"""Findings and artefacts added to the CT abdomen phantom: focal liver lesions, metal clips with streaks,
a truncated reconstruction circle and posterior spinal fusion hardware.

Each draws from the generator it is given (the subject's ``lesion``, ``acquisition``, ``fov`` or ``metal``
stream), so that none of them moves a subject's anatomy draws.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cohorts.ct_shapes import Canvas, Ellipsoid, Grid, Waves


def metal_streaks(image: np.ndarray, grid: Grid, rng: np.random.Generator) -> None:
    """Add a metal clip with radial streaks across a few slices (in place)."""
    nz, ny, nx = image.shape
    k0 = int(rng.integers(0, max(1, nz - 6)))
    nk = min(nz - k0, int(rng.integers(3, 12)))
    cy, cx = rng.uniform(0.35, 0.65) * ny, rng.uniform(0.3, 0.7) * nx
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    ang = np.arctan2(yy - cy, xx - cx)
    rad = np.hypot(yy - cy, xx - cx) * grid.spacing[1]
    streak = np.cos(ang * rng.integers(8, 16)) * 350.0 * np.exp(-rad / 90.0)
    clip = np.where(rad < 3.0, 2500.0, 0.0)
    image[k0 : k0 + nk] += (streak + clip).astype(np.float32)


def liver_lesion(
    canvas: Canvas,
    rng: np.random.Generator,
    radius_mm: float,
    liver_hu: float,
    contrast: float,
    cavity: tuple[float, float],
    mask: np.ndarray | None = None,
) -> str:
    """Grow one large focal lesion from the surface of the liver painted on ``canvas``; say what it is
    (``"hypodense 47.2 mm"``: its kind and mean radius), or ``""`` when there is no liver.

    The lesion is a lobulated ellipsoid of mean radius about ``radius_mm`` (each semi-axis 0.72-1.32 x),
    centred 0.2-0.6 radius beneath the liver's surface (where possible at least 0.8 radius from the wall of
    the abdominal cavity, the ellipse of semi-axes ``cavity`` in mm), so that part of it bulges out of the
    liver's outline, exophytic as large tumours and cysts often are; it stays within the cavity. It is
    hypodense (65%: 70-100 HU below the liver, like a metastasis or a cyst) or hyperdense (35%: 60-100 HU
    above it, like a hypervascular tumour); the differences scale with the contrast shift. All of it is
    labelled liver, as clinical liver segmentations include lesions. Paint it before the liver's neighbours
    (gallbladder, IVC, kidneys), which then carve it.
    Every number comes from ``rng`` (the subject's ``lesion`` generator), drawn in a fixed order. When
    ``mask`` (boolean, the canvas's shape) is given, the lesion's voxels are set in it too.
    """
    liver = canvas.labels == 1
    zs, ys, xs = (np.flatnonzero(liver.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1)))
    if zs.size == 0:
        return ""
    box = (slice(zs[0], zs[-1] + 1), slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
    dz, dy, dx = canvas.grid.spacing
    step = max(1, round(1.5 / dy))  # the depth map needs no more than ~1.5 mm in-plane
    padded = np.pad(liver[box][:, ::step, ::step], 1)  # the box's faces are not the liver's surface
    depth = ndimage.distance_transform_edt(padded, sampling=(dz, dy * step, dx * step))[1:-1, 1:-1, 1:-1]
    radius = radius_mm * rng.uniform(0.85, 1.15)
    want = rng.uniform(0.2, 0.6) * radius
    band = np.abs(depth - want)
    candidates = np.argwhere(band <= max(float(band[depth > 0].min()), 0.5 * dz))
    # prefer centres with room to bulge: at least 0.8 radius from the wall of the abdominal cavity
    cy_, cx_ = canvas.y[box[1].start + candidates[:, 1] * step], canvas.x[box[2].start + candidates[:, 2] * step]
    q = np.hypot(cx_ / cavity[0], cy_ / cavity[1]) + 1e-6
    to_wall = (1.0 - q) * q / (np.hypot(cx_ / cavity[0] ** 2, cy_ / cavity[1] ** 2) + 1e-6)
    if np.any(to_wall >= 0.8 * radius):
        candidates = candidates[to_wall >= 0.8 * radius]
    k, j, i = candidates[int(rng.integers(len(candidates)))]
    centre = (
        float(canvas.x[box[2].start + i * step]),
        float(canvas.y[box[1].start + j * step]),
        float(canvas.z[box[0].start + k]),
    )
    ax, ay, az = (radius * rng.uniform(0.85, 1.15, size=3)).tolist()
    shape = Ellipsoid(centre, (ax, ay, az), rot_z=rng.uniform(-90, 90), rot_y=rng.uniform(-30, 30))
    hypodense = bool(rng.random() < 0.65)
    delta = -rng.uniform(70, 100) if hypodense else rng.uniform(60, 100)
    lobules = Waves(rng, 8, (10.0, 30.0), 0.12 * radius)
    texture = Waves(rng, 6, (6.0, 20.0), 15.0)
    found = canvas.occupancy((shape,), 1.0, lobules)
    if found is None:
        return ""
    win, occ = found
    y, x = canvas.y[win[1]][None, :, None], canvas.x[win[2]][None, None, :]
    inside_cavity = np.clip((1.0 - np.hypot(x / cavity[0], y / cavity[1])) * 20.0 + 0.5, 0.0, 1.0)
    occ = occ * inside_cavity
    where = np.nonzero(occ)
    tex = texture(canvas.z[win[0]][where[0]], canvas.y[win[1]][where[1]], canvas.x[win[2]][where[2]])
    region = canvas.image[win]
    region[where] += occ[where] * (liver_hu + delta * contrast + tex - region[where])
    canvas.labels[win][occ >= 0.5] = 1
    if mask is not None:  # the lesion's own ground truth, beside the labels (which it does not change)
        mask[win][occ >= 0.5] = True
    return f"{'hypodense' if hypodense else 'hyperdense'} {radius:.1f} mm"


def scan_field(
    image: np.ndarray, grid: Grid, half_w: float, half_d: float, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, float]:
    """The reconstruction circle of a scan whose field of view is narrower than the body.

    The circle's diameter is ``fraction`` of the body's width (``2 half_w``, mm); its centre is off the
    body's by up to 60% (left-right) and 30% (front-back) of what the body overhangs, as when a large patient
    lies off-centre. Projections truncated by the scan field make the reconstruction brighter towards the
    circle's edge where body lies beyond it: the returned rim (HU, 150-300 at the edge, fading inward over
    12-20 mm) is meant to be added before noise and blur.

    Returns
    -------
    inside, rim, diameter
        ``(rows, columns)`` boolean mask of the circle, ``(rows, columns)`` float32 rim in HU, and the
        circle's diameter in mm.
    """
    _, y, x = grid.axes()
    radius = fraction * half_w
    cx = rng.uniform(-0.6, 0.6) * (1.0 - fraction) * half_w
    cy = rng.uniform(-0.3, 0.3) * (1.0 - fraction) * half_d
    amplitude = rng.uniform(150.0, 300.0)
    reach = rng.uniform(12.0, 20.0)
    inside = (x[None, :] - cx) ** 2 + (y[:, None] - cy) ** 2 <= radius**2
    body_beyond = (image[image.shape[0] // 2] > -500.0) & ~inside
    near = ndimage.gaussian_filter(body_beyond.astype(np.float32), reach / grid.spacing[1])
    rim = np.where(inside, 2.0 * amplitude * np.minimum(near, 0.5), 0.0).astype(np.float32)
    return inside, rim, 2.0 * radius


def spinal_hardware(
    image: np.ndarray, grid: Grid, spine_y: float, length_mm: float, rng: np.random.Generator
) -> dict[str, object]:
    """Add posterior spinal fusion hardware and its artefacts to ``image`` (HU, in place) and describe it.

    Two rods (radius 3 mm) run beside the spinous processes over ``length_mm`` (clipped to the scan),
    placed at random within the scanned range; every 27-33 mm a pair of pedicle screws (radius 3.2 mm,
    7 mm high) converges into the vertebral body. Each slice through metal gets a dark band (6-12 mm wide)
    along the line joining the pair (photon starvation; 300-600 HU deep through the screws' anterior thirds,
    40% of it beside rods alone) and radial streaks from each piece (250-450 HU, fading over ~100 mm).
    The hardware is not a labelled structure.
    """
    z, y, x = grid.axes()
    lo, hi = float(z[-1]), float(z[0])
    length = min(length_mm, hi - lo)
    top = rng.uniform(lo + length, hi)
    rod_x = rng.uniform(18.0, 23.0)
    rod_y = spine_y + 58.0
    levels = top - np.cumsum(rng.uniform(27.0, 33.0, size=int(length // 27.0) + 1))
    levels = levels[levels >= top - length]
    depth = rng.uniform(300.0, 600.0)
    width = rng.uniform(6.0, 12.0)
    radial = rng.uniform(250.0, 450.0)
    spokes = int(rng.integers(9, 16))
    phase = rng.uniform(0.0, 2.0 * np.pi)
    yy, xx = y[:, None], x[None, :]
    entry, tip = (rod_x + 1.0, spine_y + 52.0), (9.0, spine_y + 2.0)
    for k in np.flatnonzero((z <= top) & (z >= top - length)):
        screws = bool(np.any(np.abs(levels - z[k]) < 3.5))
        metal = np.zeros(image.shape[1:], bool)
        centres = []
        for side in (-1.0, 1.0):
            metal |= np.hypot(xx - side * rod_x, yy - rod_y) < 3.0
            centres.append((side * rod_x, rod_y))
            if screws:
                p0, p1 = np.array((side * entry[0], entry[1])), np.array((side * tip[0], tip[1]))
                d = p1 - p0
                h = np.clip(((xx - p0[0]) * d[0] + (yy - p0[1]) * d[1]) / float(d @ d), 0.0, 1.0)
                metal |= np.hypot(xx - p0[0] - h * d[0], yy - p0[1] - h * d[1]) < 3.2
                centres[-1] = (float(p0[0] + 2 * p1[0]) / 3, float(p0[1] + 2 * p1[1]) / 3)
        strength = 1.0 if screws else 0.4
        (ax_, ay_), (bx_, by_) = centres
        normal = np.array((by_ - ay_, ax_ - bx_)) / max(float(np.hypot(bx_ - ax_, by_ - ay_)), 1e-6)
        band = np.abs((xx - ax_) * normal[0] + (yy - ay_) * normal[1])
        streaks = -strength * depth * np.exp(-((band / width) ** 2))
        for cx, cy in centres:
            r = np.hypot(xx - cx, yy - cy)
            streaks += strength * radial * np.cos(spokes * np.arctan2(yy - cy, xx - cx) + phase) * np.exp(-r / 100.0)
        image[k] += streaks.astype(np.float32)
        image[k][metal] = 3000.0
    return {"spinal_hardware_mm": round(float(length), 1), "pedicle_screw_levels": int(levels.size)}
