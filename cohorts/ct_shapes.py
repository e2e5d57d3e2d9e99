"""Implicit shapes and the canvas the CT abdomen phantom is painted on.

Each structure is an implicit shape (rotated ellipsoids, tubes, unions of them) with an approximate signed
distance; :class:`Canvas` turns it into partial-volume occupancy on a grid (its boundary displaced by a smooth
random field, :class:`Waves`) and paints image values and labels. Units: mm; arrays ``(slices, rows, columns)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """A CT sampling grid: ``shape`` (slices, rows, cols), ``spacing`` (dz, dy, dx) in mm, and the LPS
    position of voxel (0, 0, 0); slice k lies at ``z0 - k * dz``."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    x0: float
    y0: float
    z0: float

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel-centre coordinates (z, y, x) in mm, each 1-D."""
        nz, ny, nx = self.shape
        dz, dy, dx = self.spacing
        z = (self.z0 - dz * np.arange(nz)).astype(np.float32)
        y = (self.y0 + dy * np.arange(ny)).astype(np.float32)
        x = (self.x0 + dx * np.arange(nx)).astype(np.float32)
        return z, y, x


class Waves:
    """A smooth random scalar field: a sum of plane waves (mm in, mm out)."""

    def __init__(self, rng: np.random.Generator, n: int, wavelength: tuple[float, float], amplitude: float):
        dirs = rng.normal(size=(n, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        k = 2 * np.pi / rng.uniform(*wavelength, size=n)
        self.k = (dirs * k[:, None]).astype(np.float32)
        self.phase = rng.uniform(0, 2 * np.pi, size=n).astype(np.float32)
        self.amp = (amplitude / np.sqrt(n) * rng.uniform(0.5, 1.5, size=n)).astype(np.float32)
        self.reach = float(np.abs(self.amp).sum())

    def __call__(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        out = np.zeros(np.broadcast_shapes(z.shape, y.shape, x.shape), np.float32)
        for (kx, ky, kz), ph, a in zip(self.k, self.phase, self.amp, strict=True):
            out += a * np.sin(kx * x + ky * y + kz * z + ph)
        return out


@dataclass(frozen=True)
class Ellipsoid:
    """Centre (x, y, z) mm, semi-axes (ax, ay, az) mm, rotation about z then about y (degrees)."""

    centre: tuple[float, float, float]
    axes: tuple[float, float, float]
    rot_z: float = 0.0
    rot_y: float = 0.0

    def bbox(self, margin: float) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
        r = max(self.axes) + margin
        cx, cy, cz = self.centre
        return (cz - r, cz + r), (cy - r, cy + r), (cx - r, cx + r)

    def distance(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Approximate signed distance (mm, negative inside) by first-order correction of the level set."""
        cx, cy, cz = self.centre
        px, py, pz = x - cx, y - cy, z - cz
        cz_, sz_ = np.cos(np.radians(self.rot_z)), np.sin(np.radians(self.rot_z))
        cy_, sy_ = np.cos(np.radians(self.rot_y)), np.sin(np.radians(self.rot_y))
        u = cz_ * px + sz_ * py
        v = -sz_ * px + cz_ * py
        u, w = cy_ * u + sy_ * pz, -sy_ * u + cy_ * pz
        ax, ay, az = self.axes
        nu, nv, nw = u / ax, v / ay, w / az
        q = np.sqrt(nu * nu + nv * nv + nw * nw) + 1e-6
        grad = np.sqrt((nu / ax) ** 2 + (nv / ay) ** 2 + (nw / az) ** 2) / q + 1e-6
        return ((q - 1.0) / grad).astype(np.float32)


@dataclass(frozen=True)
class Tube:
    """A tube along z with elliptical section, its centre line wandering smoothly with z."""

    centre: tuple[float, float]
    radii: tuple[float, float]
    z_range: tuple[float, float]
    wander: tuple[float, float, float, float]  # amplitude x, amplitude y (mm), wavelength (mm), phase

    def bbox(self, margin: float) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
        r = max(self.radii) + abs(self.wander[0]) + abs(self.wander[1]) + margin
        return (
            (self.z_range[0] - margin, self.z_range[1] + margin),
            (
                self.centre[1] - r,
                self.centre[1] + r,
            ),
            (self.centre[0] - r, self.centre[0] + r),
        )

    def distance(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        axw, ayw, wl, ph = self.wander
        s = np.sin(2 * np.pi * z / wl + ph)
        px = x - (self.centre[0] + axw * s)
        py = y - (self.centre[1] + ayw * s)
        rx, ry = self.radii
        q = np.sqrt((px / rx) ** 2 + (py / ry) ** 2) + 1e-6
        grad = np.sqrt((px / rx**2) ** 2 + (py / ry**2) ** 2) / q + 1e-6
        radial = (q - 1.0) / grad
        ends = np.maximum(self.z_range[0] - z, z - self.z_range[1])
        return np.maximum(radial, ends).astype(np.float32)


class Canvas:
    """Paints structures onto a grid: image values by partial-volume mixing, labels by majority."""

    def __init__(self, grid: Grid, background: float, boundary: Waves, blur_h: float):
        self.grid = grid
        self.image = np.full(grid.shape, background, np.float32)
        self.labels = np.zeros(grid.shape, np.uint8)
        self.z, self.y, self.x = grid.axes()
        self.boundary = boundary
        self.h = blur_h

    def _window(
        self, bbox: tuple[tuple[float, float], tuple[float, float], tuple[float, float]]
    ) -> tuple[slice, slice, slice] | None:
        (z0, z1), (y0, y1), (x0, x1) = bbox
        kz = np.nonzero((self.z >= z0) & (self.z <= z1))[0]
        ky = np.nonzero((self.y >= y0) & (self.y <= y1))[0]
        kx = np.nonzero((self.x >= x0) & (self.x <= x1))[0]
        if len(kz) == 0 or len(ky) == 0 or len(kx) == 0:
            return None
        return slice(kz[0], kz[-1] + 1), slice(ky[0], ky[-1] + 1), slice(kx[0], kx[-1] + 1)

    def occupancy(
        self, parts: tuple[Ellipsoid | Tube, ...], rough: float, boundary: Waves
    ) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
        """The window holding the union of ``parts`` and its occupancy there (0-1, partial at the edge);
        ``None`` when it misses the grid."""
        boxes = [p.bbox(6.0) for p in parts]
        bbox = (
            (min(b[0][0] for b in boxes), max(b[0][1] for b in boxes)),
            (min(b[1][0] for b in boxes), max(b[1][1] for b in boxes)),
            (min(b[2][0] for b in boxes), max(b[2][1] for b in boxes)),
        )
        win = self._window(bbox)
        if win is None:
            return None
        z = self.z[win[0]][:, None, None]
        y = self.y[win[1]][None, :, None]
        x = self.x[win[2]][None, None, :]
        d = parts[0].distance(z, y, x)
        for p in parts[1:]:
            d = np.minimum(d, p.distance(z, y, x))
        if rough:
            # the boundary field only matters near the surface: evaluate it there alone
            near = np.nonzero(np.abs(d) < 3.0 * boundary.reach * rough + self.h)
            d[near] += rough * boundary(self.z[win[0]][near[0]], self.y[win[1]][near[1]], self.x[win[2]][near[2]])
        return win, np.clip(0.5 - d / self.h, 0.0, 1.0)

    def paint(
        self,
        shape: Ellipsoid | Tube | tuple[Ellipsoid | Tube, ...],
        value: float,
        label: int = 0,
        rough: float = 1.0,
        texture: Waves | None = None,
    ) -> None:
        """Paint a structure (a union when ``shape`` is a tuple) with HU ``value``.

        ``label`` 0 carves any label it covers; ``rough`` scales the boundary displacement field.
        """
        parts = shape if isinstance(shape, tuple) else (shape,)
        found = self.occupancy(parts, rough, self.boundary)
        if found is None:
            return
        win, occ = found
        region = self.image[win]
        if texture is None:
            region += occ * (value - region)
        else:
            inside = np.nonzero(occ)
            tex = texture(self.z[win[0]][inside[0]], self.y[win[1]][inside[1]], self.x[win[2]][inside[2]])
            region[inside] += occ[inside] * (value + tex - region[inside])
        lab = self.labels[win]
        lab[occ >= 0.5] = label
