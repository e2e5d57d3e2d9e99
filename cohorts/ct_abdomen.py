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
        boxes = [p.bbox(6.0) for p in parts]
        bbox = (
            (min(b[0][0] for b in boxes), max(b[0][1] for b in boxes)),
            (min(b[1][0] for b in boxes), max(b[1][1] for b in boxes)),
            (min(b[2][0] for b in boxes), max(b[2][1] for b in boxes)),
        )
        win = self._window(bbox)
        if win is None:
            return
        z = self.z[win[0]][:, None, None]
        y = self.y[win[1]][None, :, None]
        x = self.x[win[2]][None, None, :]
        d = parts[0].distance(z, y, x)
        for p in parts[1:]:
            d = np.minimum(d, p.distance(z, y, x))
        if rough:
            # the boundary field only matters near the surface: evaluate it there alone
            near = np.nonzero(np.abs(d) < 3.0 * self.boundary.reach * rough + self.h)
            d[near] += rough * self.boundary(self.z[win[0]][near[0]], self.y[win[1]][near[1]], self.x[win[2]][near[2]])
        occ = np.clip(0.5 - d / self.h, 0.0, 1.0)
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
    y_centre = acq.uniform(-10, 10)
    grid = Grid(
        shape=(n_slices, matrix, matrix),
        spacing=(thickness, px, px),
        x0=-fov / 2 + px / 2 + acq.uniform(-8, 8),
        y0=-fov / 2 + px / 2 + y_centre,
        z0=z_top,
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
    canvas.paint(liver, liver_hu, label=1)
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
    canvas.paint(spleen, enh(118.0 + anat.uniform(-6, 6)), label=2)

    for value, side, zk in ((3, -1.0, -8.0), (4, 1.0, 10.0)):
        name = "right_kidney" if value == 3 else "left_kidney"
        s = kid_s * scale_of(name)
        if s <= 0.05:
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
    canvas.paint(aorta, enh(170.0 + anat.uniform(-20, 20)), label=5, rough=0.4)
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
