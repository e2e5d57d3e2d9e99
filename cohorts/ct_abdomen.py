"""Parametric CT phantoms of the upper abdomen, with liver, spleen, both kidneys and aorta as ground truth.

Each structure is an implicit shape (rotated ellipsoids, tubes, unions of them) whose boundary is
displaced by a smooth random field of 0.5-2 mm and whose overall shape varies with low-frequency
harmonics, so that no two subjects are alike and boundaries are not trivially separable. Occupancy
is computed from an approximate signed distance, which gives partial-volume values at every edge on any
grid. Unlabelled neighbours (stomach, bowel with air, gallbladder, pancreas, IVC, psoas, spine, ribs,
subcutaneous and visceral fat) are painted too, so the model has to learn anatomy, not thresholds.

Demographic effects (all smooth, documented here so that audits can be read against them):

- body size: body half-width and depth grow with BMI; subcutaneous fat with BMI, more in women,
  visceral fat with BMI, more in men;
- organ size: +8% in men; liver +1% per BMI unit above 25 and lower attenuation (steatosis, -1.5 HU per
  BMI unit above 25); kidneys and spleen shrink 0.5%/year after 50; aortic radius grows 0.06 mm/year after
  40 (more in men); craniocaudal extent scales with height;
- noise: grows with body cross-section (larger patients attenuate more).

Ethnic group has no anatomical effect here; group-specific differences come only from shift files.

Imaging shift (``subject.shift``); every field at its default leaves the image as it is without a shift:

- ``contrast`` scales enhancement above water and ``intensity_offset`` is added to every tissue (HU);
- ``noise`` scales the noise standard deviation and ``blur_mm`` widens the point-spread function;
- ``artefact_probability``: chance of a metal clip with radial streaks over 3-12 slices;
- ``organ_scale``: size factor of ``liver``, ``spleen``, ``right_kidney``, ``left_kidney``, ``aorta``;
  0 (up to 0.05) removes the structure (nephrectomy, splenectomy);
- ``lesion_mm``, ``lesion_count``: large focal liver lesions (hypo- or hyperdense, partly exophytic) that
  stay labelled liver, drawn from ``subject.rng("lesion")`` (see :func:`_liver_lesion`);
- ``fov_fraction``: the reconstruction circle is narrower than the body (``fraction`` of its width, off
  centre, from ``subject.rng("fov")``): bright truncation rim inside, padding (-1024 HU) and no labels
  outside; the grid and its geometry are unchanged;
- ``z_coverage``: only this fraction of the craniocaudal range is scanned, the top cut away (the scan starts
  below the liver dome); the anatomy and the remaining slices' positions are those of the full scan;
- ``metal_mm``: posterior spinal fusion hardware over this length, with dark bands and streaks, from
  ``subject.rng("metal")``.

Lesions, the scan field and the hardware draw from generators of their own, so they never move a
subject's anatomy, acquisition or noise draws (a short scan range changes the noise, whose shape changes
with it); the keys ``lesions``, ``scan_field_diameter_mm``, ``spinal_hardware_mm`` and
``pedicle_screw_levels`` appear in ``acquisition`` only when the field is in use.

Axes: arrays are ``(slices, rows, columns)``; rows run anterior->posterior (+y), columns patient right->
left (+x), slices superior->inferior (slice direction -z). Units: mm and HU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from pydicom.sr.codedict import codes
from scipy import ndimage

from cohorts.image import Label, SyntheticImage
from cohorts.subjects import Subject

logger = logging.getLogger(__name__)

KIND = "ct-abdomen"


LABELS: tuple[Label, ...] = (
    Label.from_code(1, "liver", codes.SCT.Liver, (221, 130, 101)),
    Label.from_code(2, "spleen", codes.SCT.Spleen, (157, 108, 162)),
    Label(3, "right_kidney", "9846003", "Right kidney", (185, 102, 83)),
    Label(4, "left_kidney", "18639004", "Left kidney", (185, 142, 83)),
    Label.from_code(5, "aorta", codes.SCT.Aorta, (224, 97, 76)),
)

#: An organ_scale at or below this removes the structure.
MIN_SCALE = 0.05

#: HU written outside the reconstruction circle of a truncated scan (``fov_fraction`` < 1).
PADDING_HU = -1024.0

#: Slice thicknesses (mm) and how often each occurs.
SLICE_THICKNESSES: tuple[float, ...] = (1.25, 2.0, 2.5, 3.0, 5.0)
SLICE_THICKNESS_WEIGHTS: tuple[float, ...] = (0.15, 0.25, 0.35, 0.15, 0.10)


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


class _Waves:
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
class _Ellipsoid:
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
class _Tube:
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


class _Canvas:
    """Paints structures onto a grid: image values by partial-volume mixing, labels by majority."""

    def __init__(self, grid: Grid, background: float, boundary: _Waves, blur_h: float):
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

    def _occupancy(
        self, parts: tuple[_Ellipsoid | _Tube, ...], rough: float, boundary: _Waves
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
        shape: _Ellipsoid | _Tube | tuple[_Ellipsoid | _Tube, ...],
        value: float,
        label: int = 0,
        rough: float = 1.0,
        texture: _Waves | None = None,
    ) -> None:
        """Paint a structure (a union when ``shape`` is a tuple) with HU ``value``.

        ``label`` 0 carves any label it covers; ``rough`` scales the boundary displacement field.
        """
        parts = shape if isinstance(shape, tuple) else (shape,)
        found = self._occupancy(parts, rough, self.boundary)
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


def _rng_choice(rng: np.random.Generator, values: tuple[float, ...], weights: tuple[float, ...]) -> float:
    return float(rng.choice(values, p=np.array(weights) / sum(weights)))


def generate(subject: Subject, matrix: int = 512, slice_thickness: float | None = None) -> SyntheticImage:
    """Generate one subject's abdominal CT and its ground truth.

    Parameters
    ----------
    subject
        who is scanned; demographics and ``subject.shift`` shape the image.
    matrix
        rows and columns of each slice (the field of view adapts to the body, 320-500 mm).
    slice_thickness
        slice thickness = spacing in mm; drawn from :data:`SLICE_THICKNESSES` when ``None``.

    Returns
    -------
    SyntheticImage
        HU as float32 ``(slices, rows, columns)`` with labels :data:`LABELS`.
    """
    if matrix < 64:
        raise ValueError(f"matrix must be at least 64, got {matrix}")
    anat = subject.rng("anatomy")
    acq = subject.rng("acquisition")
    noise_rng = subject.rng("noise")
    shift = subject.shift
    male = subject.sex == "M"
    bmi = subject.bmi
    age = subject.age_years
    hs = subject.height_m / 1.70  # craniocaudal scale

    def scale_of(name: str) -> float:
        return float(shift.organ_scale.get(name, 1.0))

    # --- body habitus -------------------------------------------------------------------------------
    half_w = (150 + 4.2 * (bmi - 24) + (12 if male else 0)) * anat.uniform(0.95, 1.05)
    half_d = (105 + 3.6 * (bmi - 24) + (6 if male else 0)) * anat.uniform(0.95, 1.05)
    half_w, half_d = max(half_w, 110), max(half_d, 80)
    subq = max(6.0, (8 + 1.6 * (bmi - 20)) * (1.35 if not male else 1.0) * anat.uniform(0.8, 1.2))
    muscle = (12 if male else 9) * anat.uniform(0.85, 1.15)
    visceral_hu = -95 + anat.uniform(-5, 5)

    fov = float(np.clip(2 * half_w + 70, 320, 500))
    px = fov / matrix
    thickness = slice_thickness or _rng_choice(acq, SLICE_THICKNESSES, SLICE_THICKNESS_WEIGHTS)
    z_top = 125 * hs + acq.uniform(-10, 10)
    z_bot = -95 * hs + acq.uniform(-10, 10)
    n_slices = round((z_top - z_bot) / thickness) + 1
    # a short scan range (z_coverage < 1) starts lower; the anatomy keeps the full range's extent
    z_first = z_top
    if shift.z_coverage < 1.0:
        kept = max(2, round((n_slices - 1) * shift.z_coverage) + 1)
        z_first = z_top - (n_slices - kept) * thickness
        n_slices = kept
    y_centre = acq.uniform(-10, 10)
    grid = Grid(
        shape=(n_slices, matrix, matrix),
        spacing=(thickness, px, px),
        x0=-fov / 2 + px / 2 + acq.uniform(-8, 8),
        y0=-fov / 2 + px / 2 + y_centre,
        z0=z_first,
    )

    boundary = _Waves(anat, 10, (12.0, 45.0), anat.uniform(0.5, 2.0))
    h = float(np.sqrt(px * thickness))
    canvas = _Canvas(grid, background=-1000.0, boundary=boundary, blur_h=max(h, 0.5))
    contrast = shift.contrast
    off = shift.intensity_offset

    def enh(hu: float) -> float:
        """Contrast-enhanced tissue value under the group's contrast shift and offset (water = 0 HU)."""
        return hu * contrast + off

    zc = (z_top + z_bot) / 2
    zr = (z_top - z_bot) / 2 + 30
    # table under the patient
    canvas.paint(_Tube((0.0, half_d + 22), (260.0, 8.0), (zc - zr, zc + zr), (0, 0, 100, 0)), 150.0, rough=0)
    # body: subcutaneous fat, muscle wall, visceral fat
    body_wander = (0.0, 0.0, 400.0, 0.0)
    canvas.paint(_Tube((0.0, 0.0), (half_w, half_d), (zc - zr, zc + zr), body_wander), -105.0 + off, rough=1.5)
    canvas.paint(
        _Tube((0.0, 0.0), (half_w - subq, half_d - subq * 0.8), (zc - zr, zc + zr), body_wander),
        enh(55.0),
        rough=1.5,
    )
    inner_w, inner_d = half_w - subq - muscle, half_d - subq * 0.8 - muscle
    canvas.paint(_Tube((0.0, 0.0), (inner_w, inner_d), (zc - zr, zc + zr), body_wander), visceral_hu + off, rough=1.5)
    # ribs: bone arcs in the upper half, lateral and posterior
    spine_y = inner_d - 38
    rib_tex = _Waves(anat, 4, (10.0, 30.0), 30.0)
    for k in range(6):
        rz = 120 * hs - k * 24 * hs + anat.uniform(-4, 4)
        for side in (-1.0, 1.0):
            canvas.paint(
                _Ellipsoid((side * (inner_w - 4), spine_y * 0.3, rz), (7.0, inner_d * 0.55, 5.0), rot_z=side * 18),
                450.0 + off,
                rough=0.5,
                texture=rib_tex,
            )
    # bowel loops (fluid with air pockets) in the lower, anterior abdomen
    for _ in range(9):
        c = (
            anat.uniform(-0.6, 0.6) * inner_w,
            anat.uniform(-0.8, -0.1) * inner_d,
            anat.uniform(-90, 10) * hs,
        )
        r = anat.uniform(12, 24)
        canvas.paint(_Ellipsoid(c, (r, r * anat.uniform(0.7, 1.2), r * 1.3)), enh(35.0), rough=2.0)
        if anat.random() < 0.5:
            canvas.paint(_Ellipsoid((c[0], c[1] - r * 0.5, c[2]), (r * 0.6, r * 0.4, r * 0.7)), -900.0, rough=0.5)

    # --- organs -----------------------------------------------------------------------------------------
    size = (1.08 if male else 1.0) * anat.uniform(0.94, 1.06)
    age_shrink = 1.0 - 0.005 * max(0, age - 50)
    liver_s = size * (1 + 0.01 * max(0.0, bmi - 25)) * anat.uniform(0.93, 1.07) * scale_of("liver")
    liver_hu = enh(108.0 - 1.5 * max(0.0, bmi - 25) + anat.uniform(-8, 8))
    spleen_s = size * age_shrink * anat.uniform(0.85, 1.15) * scale_of("spleen")
    kid_s = size * age_shrink * anat.uniform(0.9, 1.1)

    # stomach, left upper quadrant, anterior to the spleen, with an air cap anteriorly (supine)
    st = _Ellipsoid((55 * size, -0.45 * inner_d, 70 * hs), (45 * size, 30, 50 * hs), rot_z=-25)
    canvas.paint(st, enh(25.0), rough=2.0)
    canvas.paint(_Ellipsoid((50 * size, -0.45 * inner_d - 18, 80 * hs), (30 * size, 12, 30 * hs), rot_z=-25), -950.0)
    # pancreas across the midline at the level of the upper kidneys
    canvas.paint(
        _Ellipsoid((15.0, spine_y - 55, 35 * hs), (65 * size, 11, 14), rot_z=-12, rot_y=8),
        enh(95.0),
        rough=1.5,
    )

    liver = (
        _Ellipsoid(
            (-0.42 * inner_w, 0.02 * inner_d, 60 * hs),
            (66 * liver_s, min(0.9 * inner_d, 74 * liver_s), 70 * hs * liver_s),
            rot_z=anat.uniform(-12, 12),
            rot_y=anat.uniform(-10, 10),
        ),
        _Ellipsoid(
            (5 * liver_s, -0.42 * inner_d, 78 * hs),
            (55 * liver_s, 28 * liver_s, 38 * hs * liver_s),
            rot_z=anat.uniform(-20, 5),
        ),
    )
    if liver_s > MIN_SCALE:  # organ_scale 0 removes an organ; its random draws happen all the same
        canvas.paint(liver, liver_hu, label=1)
    extra: dict[str, object] = {}
    if shift.lesion_mm > 0:  # before the liver's neighbours are painted, so that they bound it
        cavity = (inner_w - 12.0, inner_d - 8.0)
        lesion_rng = subject.rng("lesion")
        lesions = [
            _liver_lesion(canvas, lesion_rng, shift.lesion_mm, liver_hu, contrast, cavity)
            for _ in range(shift.lesion_count)
        ]
        extra["lesions"] = "; ".join(lesion for lesion in lesions if lesion)
    # gallbladder under the liver (not liver)
    canvas.paint(
        _Ellipsoid((-0.3 * inner_w, -0.35 * inner_d, 10 * hs + 40 * (liver_s - 1)), (16, 14, 32), rot_y=20),
        8.0 + off,
        rough=1.0,
    )
    spleen = _Ellipsoid(
        (0.55 * inner_w, 0.35 * inner_d, 70 * hs),
        (24 * spleen_s, 52 * spleen_s, 44 * hs * spleen_s),
        rot_z=-35 + anat.uniform(-10, 10),
    )
    spleen_hu = enh(118.0 + anat.uniform(-6, 6))
    if spleen_s > MIN_SCALE:
        canvas.paint(spleen, spleen_hu, label=2)

    for value, side, zk in ((3, -1.0, -8.0), (4, 1.0, 10.0)):
        name = "right_kidney" if value == 3 else "left_kidney"
        s = kid_s * scale_of(name)
        if s <= MIN_SCALE:
            continue
        centre = (side * (60 + 8 * size + anat.uniform(-5, 5)), spine_y - 5, zk * hs + anat.uniform(-12, 12))
        axes = (28 * s, 25 * s, 56 * hs * s)
        rz, ry = side * (35 + anat.uniform(-10, 10)), side * anat.uniform(5, 18)
        canvas.paint(_Ellipsoid(centre, axes, rz, ry), enh(165.0), label=value)
        canvas.paint(
            _Ellipsoid(centre, (axes[0] * 0.6, axes[1] * 0.6, axes[2] * 0.75), rz, ry),
            enh(115.0),
            label=value,
        )
        # renal sinus fat opening medially (not kidney)
        sinus = (centre[0] - side * 16 * s, centre[1] - 4, centre[2])
        canvas.paint(_Ellipsoid(sinus, (13 * s, 9 * s, 22 * hs * s), rz, ry), -60.0 + off, rough=0.7)

    # psoas muscles beside the spine, below the kidneys' upper poles
    for side in (-1.0, 1.0):
        canvas.paint(
            _Ellipsoid((side * 32, spine_y + 5, -60 * hs), (18 * size, 20, 80 * hs), rot_z=side * 10),
            enh(52.0),
        )
    # IVC (right, anterior to the spine; carves the liver where it passes through it)
    canvas.paint(
        _Tube((-22.0, spine_y - 32), (13.0, 9.0), (z_bot - 40, 100 * hs), (3.0, 2.0, 220.0, anat.uniform(0, 6))),
        enh(125.0),
        rough=0.6,
    )
    # aorta: radius grows with age, more in men
    ao_r = (9.5 + (1.2 if male else 0) + (0.06 if male else 0.045) * max(0, age - 40)) * anat.uniform(0.9, 1.1)
    ao_r *= scale_of("aorta")
    aorta = _Tube(
        (8.0 + anat.uniform(-4, 4), spine_y - 30 - ao_r * 0.3),
        (ao_r, ao_r * anat.uniform(0.92, 1.0)),
        (z_bot - 40, z_top + 40),
        (anat.uniform(1, 5), anat.uniform(1, 4), anat.uniform(150, 300), anat.uniform(0, 6)),
    )
    aorta_hu = enh(170.0 + anat.uniform(-20, 20))
    if scale_of("aorta") > MIN_SCALE:
        canvas.paint(aorta, aorta_hu, label=5, rough=0.4)
    # spine: vertebral body, canal, posterior elements
    spine_zr = (zc - zr, zc + zr)
    canvas.paint(_Tube((0.0, spine_y + 12), (22.0, 17.0), spine_zr, (0, 0, 100, 0)), 300.0 + off, rough=0.3)
    canvas.paint(_Tube((0.0, spine_y + 38), (10.0, 9.0), spine_zr, (0, 0, 100, 0)), 15.0 + off, rough=0.3)
    canvas.paint(_Tube((0.0, spine_y + 56), (18.0, 8.0), spine_zr, (0, 0, 100, 0)), 500.0 + off, rough=0.3)

    image = canvas.image
    labels = canvas.labels
    dz, dy, dx = grid.spacing
    if acq.random() < shift.artefact_probability:
        _metal_streaks(image, grid, acq)
    if shift.metal_mm > 0:
        extra.update(_spinal_hardware(image, grid, spine_y, shift.metal_mm, subject.rng("metal")))
    scan_field: np.ndarray | None = None
    if shift.fov_fraction < 1.0:
        scan_field, rim, diameter = _scan_field(image, grid, half_w, half_d, shift.fov_fraction, subject.rng("fov"))
        image += rim[None]
        extra["scan_field_diameter_mm"] = round(diameter, 1)
    # Quantum noise (larger bodies attenuate more; small voxels are noisier), added before the scanner's
    # point-spread function (~0.7 mm in-plane, half a slice along z) so that it comes out correlated.
    sigma = 11.0 * (half_w * half_d / (150 * 105)) ** 0.5 * acq.uniform(0.85, 1.15)
    sigma *= (2.5 / thickness) ** 0.5 * (0.78 / px)  # noise std goes with 1/sqrt(voxel volume)
    sigma *= shift.noise
    psf = np.array([0.45 * dz, 0.7, 0.7]) + shift.blur_mm
    psf_vox = psf / np.array([dz, dy, dx])
    image += noise_rng.standard_normal(image.shape, dtype=np.float32) * (sigma / _white_noise_gain(psf_vox))
    image = ndimage.gaussian_filter(image, sigma=tuple(psf_vox))
    np.clip(image, -1024, 3071, out=image)
    if scan_field is not None:  # outside the reconstruction circle: padding, and nothing to segment
        image[:, ~scan_field] = PADDING_HU
        labels[:, ~scan_field] = 0

    return SyntheticImage(
        modality="CT",
        pixels=image.astype(np.float32),
        labels=labels,
        spacing=(dz, dy, dx),
        label_info=LABELS,
        origin=(grid.x0, grid.y0, grid.z0),
        orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        slice_direction=(0.0, 0.0, -1.0),
        acquisition={
            "body_part": "ABDOMEN",
            "study_description": "CT ABDOMEN",
            "series_description": "ABD PV 5mm" if thickness >= 5 else f"ABD PV {thickness:g}mm",
            "slice_thickness": thickness,
            "kvp": float(acq.choice([100.0, 120.0])),
            "tube_current": int(acq.integers(150, 400)),
            "convolution_kernel": str(acq.choice(["STANDARD", "B30f", "FC08"])),
            "contrast_bolus_agent": "IV contrast" if contrast > 0.6 else "",
            "noise_sigma_hu": round(float(sigma), 2),
            **extra,
        },
    )


def _white_noise_gain(sigma_vox: np.ndarray) -> float:
    """Factor by which a separable Gaussian filter (sigma in voxels per axis) scales white noise's std."""
    gain = 1.0
    for s in sigma_vox:
        radius = int(4 * s + 0.5)
        x = np.arange(-radius, radius + 1)
        w = np.exp(-0.5 * (x / max(s, 1e-3)) ** 2)
        w /= w.sum()
        gain *= float(np.sqrt((w**2).sum()))
    return gain


def _metal_streaks(image: np.ndarray, grid: Grid, rng: np.random.Generator) -> None:
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


def _liver_lesion(
    canvas: _Canvas,
    rng: np.random.Generator,
    radius_mm: float,
    liver_hu: float,
    contrast: float,
    cavity: tuple[float, float],
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
    Every number comes from ``rng`` (the subject's ``lesion`` generator), drawn in a fixed order.
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
    shape = _Ellipsoid(centre, (ax, ay, az), rot_z=rng.uniform(-90, 90), rot_y=rng.uniform(-30, 30))
    hypodense = bool(rng.random() < 0.65)
    delta = -rng.uniform(70, 100) if hypodense else rng.uniform(60, 100)
    lobules = _Waves(rng, 8, (10.0, 30.0), 0.12 * radius)
    texture = _Waves(rng, 6, (6.0, 20.0), 15.0)
    found = canvas._occupancy((shape,), 1.0, lobules)
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
    return f"{'hypodense' if hypodense else 'hyperdense'} {radius:.1f} mm"


def _scan_field(
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


def _spinal_hardware(
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
