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
  stay labelled liver, drawn from ``subject.rng("lesion")`` (see :func:`cohorts.ct_findings.liver_lesion`);
  :func:`generate_with_lesions` also returns their own mask;
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

import numpy as np
from pydicom.sr.codedict import codes
from scipy import ndimage

from cohorts.ct_findings import liver_lesion, metal_streaks, scan_field, spinal_hardware
from cohorts.ct_shapes import Canvas, Ellipsoid, Grid, Tube, Waves
from cohorts.image import Label, SyntheticImage
from cohorts.subjects import Subject

logger = logging.getLogger(__name__)


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


def _rng_choice(rng: np.random.Generator, values: tuple[float, ...], weights: tuple[float, ...]) -> float:
    return float(rng.choice(values, p=np.array(weights) / sum(weights)))


def generate(subject: Subject, matrix: int = 512, slice_thickness: float | None = None) -> SyntheticImage:
    """Generate one subject's abdominal CT and its ground truth (organ labels; lesions are part of the liver).

    Parameters, returns: as :func:`generate_with_lesions`, without the lesion mask.
    """
    return generate_with_lesions(subject, matrix, slice_thickness)[0]


def generate_with_lesions(
    subject: Subject, matrix: int = 512, slice_thickness: float | None = None
) -> tuple[SyntheticImage, np.ndarray]:
    """Generate one subject's abdominal CT, its organ ground truth and its liver-lesion ground truth.

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
    image, lesions
        HU as float32 ``(slices, rows, columns)`` with labels :data:`LABELS` (lesions labelled liver, as
        clinical liver segmentations include them), and a boolean mask of the same shape: the voxels of the
        liver label that belong to a focal lesion (all ``False`` without ``lesion_mm``). The mask is an
        extra output; the image and labels are those of :func:`generate`.
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

    boundary = Waves(anat, 10, (12.0, 45.0), anat.uniform(0.5, 2.0))
    h = float(np.sqrt(px * thickness))
    canvas = Canvas(grid, background=-1000.0, boundary=boundary, blur_h=max(h, 0.5))
    contrast = shift.contrast
    off = shift.intensity_offset

    def enh(hu: float) -> float:
        """Contrast-enhanced tissue value under the group's contrast shift and offset (water = 0 HU)."""
        return hu * contrast + off

    zc = (z_top + z_bot) / 2
    zr = (z_top - z_bot) / 2 + 30
    # table under the patient
    canvas.paint(Tube((0.0, half_d + 22), (260.0, 8.0), (zc - zr, zc + zr), (0, 0, 100, 0)), 150.0, rough=0)
    # body: subcutaneous fat, muscle wall, visceral fat
    body_wander = (0.0, 0.0, 400.0, 0.0)
    canvas.paint(Tube((0.0, 0.0), (half_w, half_d), (zc - zr, zc + zr), body_wander), -105.0 + off, rough=1.5)
    canvas.paint(
        Tube((0.0, 0.0), (half_w - subq, half_d - subq * 0.8), (zc - zr, zc + zr), body_wander),
        enh(55.0),
        rough=1.5,
    )
    inner_w, inner_d = half_w - subq - muscle, half_d - subq * 0.8 - muscle
    canvas.paint(Tube((0.0, 0.0), (inner_w, inner_d), (zc - zr, zc + zr), body_wander), visceral_hu + off, rough=1.5)
    # ribs: bone arcs in the upper half, lateral and posterior
    spine_y = inner_d - 38
    rib_tex = Waves(anat, 4, (10.0, 30.0), 30.0)
    for k in range(6):
        rz = 120 * hs - k * 24 * hs + anat.uniform(-4, 4)
        for side in (-1.0, 1.0):
            canvas.paint(
                Ellipsoid((side * (inner_w - 4), spine_y * 0.3, rz), (7.0, inner_d * 0.55, 5.0), rot_z=side * 18),
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
        canvas.paint(Ellipsoid(c, (r, r * anat.uniform(0.7, 1.2), r * 1.3)), enh(35.0), rough=2.0)
        if anat.random() < 0.5:
            canvas.paint(Ellipsoid((c[0], c[1] - r * 0.5, c[2]), (r * 0.6, r * 0.4, r * 0.7)), -900.0, rough=0.5)

    # --- organs -----------------------------------------------------------------------------------------
    size = (1.08 if male else 1.0) * anat.uniform(0.94, 1.06)
    age_shrink = 1.0 - 0.005 * max(0, age - 50)
    liver_s = size * (1 + 0.01 * max(0.0, bmi - 25)) * anat.uniform(0.93, 1.07) * scale_of("liver")
    liver_hu = enh(108.0 - 1.5 * max(0.0, bmi - 25) + anat.uniform(-8, 8))
    spleen_s = size * age_shrink * anat.uniform(0.85, 1.15) * scale_of("spleen")
    kid_s = size * age_shrink * anat.uniform(0.9, 1.1)

    # stomach, left upper quadrant, anterior to the spleen, with an air cap anteriorly (supine)
    st = Ellipsoid((55 * size, -0.45 * inner_d, 70 * hs), (45 * size, 30, 50 * hs), rot_z=-25)
    canvas.paint(st, enh(25.0), rough=2.0)
    canvas.paint(Ellipsoid((50 * size, -0.45 * inner_d - 18, 80 * hs), (30 * size, 12, 30 * hs), rot_z=-25), -950.0)
    # pancreas across the midline at the level of the upper kidneys
    canvas.paint(
        Ellipsoid((15.0, spine_y - 55, 35 * hs), (65 * size, 11, 14), rot_z=-12, rot_y=8),
        enh(95.0),
        rough=1.5,
    )

    liver = (
        Ellipsoid(
            (-0.42 * inner_w, 0.02 * inner_d, 60 * hs),
            (66 * liver_s, min(0.9 * inner_d, 74 * liver_s), 70 * hs * liver_s),
            rot_z=anat.uniform(-12, 12),
            rot_y=anat.uniform(-10, 10),
        ),
        Ellipsoid(
            (5 * liver_s, -0.42 * inner_d, 78 * hs),
            (55 * liver_s, 28 * liver_s, 38 * hs * liver_s),
            rot_z=anat.uniform(-20, 5),
        ),
    )
    if liver_s > MIN_SCALE:  # organ_scale 0 removes an organ; its random draws happen all the same
        canvas.paint(liver, liver_hu, label=1)
    extra: dict[str, object] = {}
    lesion_mask = np.zeros(grid.shape, bool)
    if shift.lesion_mm > 0:  # before the liver's neighbours are painted, so that they bound it
        cavity = (inner_w - 12.0, inner_d - 8.0)
        lesion_rng = subject.rng("lesion")
        lesions = [
            liver_lesion(canvas, lesion_rng, shift.lesion_mm, liver_hu, contrast, cavity, lesion_mask)
            for _ in range(shift.lesion_count)
        ]
        extra["lesions"] = "; ".join(lesion for lesion in lesions if lesion)
    # gallbladder under the liver (not liver)
    canvas.paint(
        Ellipsoid((-0.3 * inner_w, -0.35 * inner_d, 10 * hs + 40 * (liver_s - 1)), (16, 14, 32), rot_y=20),
        8.0 + off,
        rough=1.0,
    )
    spleen = Ellipsoid(
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
        canvas.paint(Ellipsoid(centre, axes, rz, ry), enh(165.0), label=value)
        canvas.paint(
            Ellipsoid(centre, (axes[0] * 0.6, axes[1] * 0.6, axes[2] * 0.75), rz, ry),
            enh(115.0),
            label=value,
        )
        # renal sinus fat opening medially (not kidney)
        sinus = (centre[0] - side * 16 * s, centre[1] - 4, centre[2])
        canvas.paint(Ellipsoid(sinus, (13 * s, 9 * s, 22 * hs * s), rz, ry), -60.0 + off, rough=0.7)

    # psoas muscles beside the spine, below the kidneys' upper poles
    for side in (-1.0, 1.0):
        canvas.paint(
            Ellipsoid((side * 32, spine_y + 5, -60 * hs), (18 * size, 20, 80 * hs), rot_z=side * 10),
            enh(52.0),
        )
    # IVC (right, anterior to the spine; carves the liver where it passes through it)
    canvas.paint(
        Tube((-22.0, spine_y - 32), (13.0, 9.0), (z_bot - 40, 100 * hs), (3.0, 2.0, 220.0, anat.uniform(0, 6))),
        enh(125.0),
        rough=0.6,
    )
    # aorta: radius grows with age, more in men
    ao_r = (9.5 + (1.2 if male else 0) + (0.06 if male else 0.045) * max(0, age - 40)) * anat.uniform(0.9, 1.1)
    ao_r *= scale_of("aorta")
    aorta = Tube(
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
    canvas.paint(Tube((0.0, spine_y + 12), (22.0, 17.0), spine_zr, (0, 0, 100, 0)), 300.0 + off, rough=0.3)
    canvas.paint(Tube((0.0, spine_y + 38), (10.0, 9.0), spine_zr, (0, 0, 100, 0)), 15.0 + off, rough=0.3)
    canvas.paint(Tube((0.0, spine_y + 56), (18.0, 8.0), spine_zr, (0, 0, 100, 0)), 500.0 + off, rough=0.3)

    image = canvas.image
    labels = canvas.labels
    dz, dy, dx = grid.spacing
    if acq.random() < shift.artefact_probability:
        metal_streaks(image, grid, acq)
    if shift.metal_mm > 0:
        extra.update(spinal_hardware(image, grid, spine_y, shift.metal_mm, subject.rng("metal")))
    field: np.ndarray | None = None
    if shift.fov_fraction < 1.0:
        field, rim, diameter = scan_field(image, grid, half_w, half_d, shift.fov_fraction, subject.rng("fov"))
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
    if field is not None:  # outside the reconstruction circle: padding, and nothing to segment
        image[:, ~field] = PADDING_HU
        labels[:, ~field] = 0
    lesion_mask &= labels == 1  # the lesions' part of the final liver label (neighbours and the field carve it)

    generated = SyntheticImage(
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
    return generated, lesion_mask


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
