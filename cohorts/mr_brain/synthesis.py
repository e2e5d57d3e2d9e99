"""One mr-brain image: acquisition parameters, geometry, tissue labels, T1 intensities with skull and
scalp, bias field, artefacts and Rician noise (see :mod:`cohorts.mr_brain`)."""

from __future__ import annotations

import logging

import numpy as np
import scipy.fft
from scipy import ndimage

from cohorts.image import SyntheticImage
from cohorts.mr_brain.anatomy import _BIAS_CENTRES, _basis, _draw_anatomy, _subject_stack, _tensor_field
from cohorts.mr_brain.sampling import _Grid, _sample
from cohorts.mr_brain.template import _template
from cohorts.mr_brain.tissue import _GM, LABELS
from cohorts.subjects import Subject

logger = logging.getLogger(__name__)

#: Field strength (T) by manufacturer; others get 3 T.
_FIELD = {"Aurora Imaging": 3.0, "Borealis Medical": 1.5, "Cygnus Systems": 3.0}


def _scalp_profile(diploe: float, fat: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """Knots (distance beyond the ICV surface in subject mm, T1 intensity with WM = 1) of the skull and
    scalp, with 0.6 mm partial-volume ramps, and the distance of the skin surface."""
    layers = (
        (1.5, 0.05),  # inner table
        (diploe, float(rng.uniform(0.45, 0.6))),  # diploe (marrow)
        (1.5, 0.05),  # outer table
        (1.0, 0.35),  # galea, muscle
        (fat, float(rng.uniform(0.9, 1.05))),  # subcutaneous fat
        (1.2, 0.55),  # skin
    )
    xp, fp = [-1.0], [0.05]
    edge = 0.0
    previous = 0.05
    for thickness, value in layers:
        xp += [edge - 0.3, edge + 0.3]
        fp += [previous, value]
        edge += thickness
        previous = value
    xp += [edge - 0.3, edge + 0.3, edge + 1.0]
    fp += [previous, 0.0, 0.0]
    return np.asarray(xp, np.float32), np.asarray(fp, np.float32), edge


def _kspace_artefact(image: np.ndarray, kind: str, rng: np.random.Generator, dy: float) -> np.ndarray:
    """Complex image with a phase-encode (rows, axis 1) artefact: ``ghosting`` or ``motion``."""
    n = image.shape[1]
    kspace = scipy.fft.fft(image, axis=1)
    freq = scipy.fft.fftfreq(n).astype(np.float32)  # cycles per row
    if kind == "ghosting":
        period = int(rng.integers(2, 5))
        depth = float(rng.uniform(0.2, 0.35))
        lines = np.arange(n)
        modulation = (1.0 + depth * np.cos(2 * np.pi * lines / period)).astype(np.float32)
        kspace *= modulation[None, :, None]
    else:
        shift_rows = float(rng.uniform(3.0, 7.0)) / dy * (1.0 if rng.random() < 0.5 else -1.0)
        order = np.argsort(np.abs(freq))  # centre-out: a late motion hits the outer lines
        start = int(rng.uniform(0.15, 0.5) * n)
        moved = order[start:][rng.random(n - start) < 0.7]
        phase = np.ones(n, np.complex64)
        phase[moved] = np.exp(-2j * np.pi * freq[moved] * shift_rows)
        kspace *= phase[None, :, None]
    return np.asarray(scipy.fft.ifft(kspace, axis=1), dtype=np.complex64)


def generate(subject: Subject) -> SyntheticImage:
    """Generate the T1-weighted brain MR of ``subject``.

    Deterministic for a subject: every random number comes from ``subject.rng(purpose)`` with the
    purposes ``anatomy``, ``acquisition``, ``noise`` and ``artefact``. The first call in a process also
    prepares the template (a few seconds).

    Parameters
    ----------
    subject
        The patient; sex, height, age, BMI and ethnic group shape the head (see the module docstring)
        and its ``shift`` alters the acquisition.

    Returns
    -------
    SyntheticImage
        ``MR``: float32 ``(slices, rows, columns)`` arbitrary units >= 0, axial slices superior ->
        inferior, rows anterior -> posterior, columns right -> left, about 1.0-1.2 mm voxels; uint8
        labels of :data:`LABELS`.
    """
    template = _template()
    shift = subject.shift
    acq = subject.rng("acquisition")

    # --- acquisition parameters --------------------------------------------------------------------
    field = _FIELD.get(subject.manufacturer, 3.0)
    dz = round(float(acq.uniform(1.0, 1.2)), 2)
    dxy = round(float(acq.uniform(1.0, 1.1)), 3)
    margins = acq.uniform(3.0, 12.0, size=5)  # anterior, posterior, right, left, superior (mm)
    bottom_lift = float(acq.uniform(2.0, 6.0))
    gain = float(acq.uniform(600.0, 1100.0))
    rel_sigma = float(acq.uniform(0.022, 0.03) if field >= 3 else acq.uniform(0.035, 0.045))
    bias_sd = 0.12 if field >= 3 else 0.07
    if field >= 3:
        tr, te, ti, fa = 2300.0, round(float(acq.uniform(2.2, 3.0)), 2), 900.0, 9.0
    else:
        tr, te, ti, fa = (
            round(float(acq.uniform(2000.0, 2200.0)), 0),
            round(float(acq.uniform(2.8, 3.0)), 2),
            900.0,
            8.0,
        )

    # --- geometry ----------------------------------------------------------------------------------
    anat = _draw_anatomy(subject, template)
    corners = np.array(np.meshgrid(*zip(template.head_lo, template.head_hi, strict=True), indexing="ij"))
    head = anat.forward @ corners.reshape(3, -1)
    lo, hi = head.min(axis=1), head.max(axis=1)
    bottom = float((anat.forward @ np.array([0.0, 0.0, template.bottom_z]))[2]) + bottom_lift
    x0, x1 = lo[0] - margins[2], hi[0] + margins[3]
    y0, y1 = lo[1] - margins[0], hi[1] + margins[1]
    z1 = hi[2] + margins[4]
    shape = (
        int(np.ceil((z1 - bottom) / dz)) + 1,
        int(np.ceil((y1 - y0) / dxy)) + 1,
        int(np.ceil((x1 - x0) / dxy)) + 1,
    )
    grid = _Grid(
        shape=shape,
        spacing=(dz, dxy, dxy),
        origin=(round(float(x0), 3), round(float(y0), 3), round(float(z1), 3)),
    )

    # --- anatomy on the grid (computed for the voxels of the head only) -------------------------------
    stack = _subject_stack(template, anat.transfers)
    samples = _sample(stack, template, grid, anat)
    del stack
    head, dist, inside = samples.head, samples.dist, samples.inside
    t1, gm, wm = samples.tissue.T
    icv = np.clip(0.5 - dist[inside], 0.0, 1.0)
    csf = np.clip(icv - gm - wm, 0.0, None)
    labels = np.zeros(int(np.prod(shape)), np.uint8)
    labels[head[inside]] = np.argmax(np.stack([1.0 - icv, gm, wm, csf], axis=1), axis=1)
    labels = labels.reshape(shape)

    # --- intensities -------------------------------------------------------------------------------
    xp, fp, skin = _scalp_profile(anat.diploe_mm, anat.fat_mm, acq)
    z, y, x = grid.axes()
    bz, by, bx = (_basis(c, centres, 60.0) for c, centres in zip((z, y, x), _BIAS_CENTRES, strict=True))
    # skull and scalp thickness vary smoothly over the head (x 0.75-1.3)
    thickness = np.exp(np.clip(_tensor_field(anat.scalp, bz, by, bx).ravel()[head], -0.29, 0.26))
    dist_mm = dist * anat.scale
    np.divide(dist_mm, thickness, out=dist_mm, where=dist_mm > 0)
    values = np.interp(dist_mm, xp, fp).astype(np.float32)
    head_w = np.clip(skin + 0.5 - dist_mm, 0.0, 1.0)
    values[inside] += icv * (np.power(np.maximum(t1, 0.0), anat.gamma) - values[inside])
    if shift.contrast != 1.0:
        mid = 0.5 * (template.intensity[_GM] ** anat.gamma + 1.0)
        values += head_w * (shift.contrast - 1.0) * (values - mid)
        np.maximum(values, 0.0, out=values)
    bias_coef = acq.normal(0.0, bias_sd, size=(3, 3, 3))
    bz, by, bx = (_basis(c, centres, 70.0) for c, centres in zip((z, y, x), _BIAS_CENTRES, strict=True))
    values *= gain * np.exp(_tensor_field(bias_coef, bz, by, bx).ravel()[head])
    values += shift.intensity_offset * head_w
    np.maximum(values, 0.0, out=values)
    image = np.zeros(int(np.prod(shape)), np.float32)
    image[head] = values
    image = image.reshape(shape)
    if shift.blur_mm > 0:
        image = ndimage.gaussian_filter(image, [shift.blur_mm / s for s in grid.spacing])

    # --- artefact and noise ------------------------------------------------------------------------
    art = subject.rng("artefact")
    artefact = "none"
    if art.random() < shift.artefact_probability:
        artefact = "ghosting" if art.random() < 0.5 else "motion"
    noise = subject.rng("noise")
    sigma = rel_sigma * gain * shift.noise
    real = noise.standard_normal(shape, dtype=np.float32) * sigma
    imag = noise.standard_normal(shape, dtype=np.float32) * sigma
    if artefact != "none":
        complex_image = _kspace_artefact(image, artefact, art, dxy)
        real += complex_image.real
        imag += complex_image.imag
    else:
        real += image
    pixels = np.sqrt(real * real + imag * imag).astype(np.float32)

    logger.debug(
        "mr-brain subject %d: %s voxels %s mm, %.1f T, artefact %s",
        subject.index,
        shape,
        grid.spacing,
        field,
        artefact,
    )
    return SyntheticImage(
        modality="MR",
        pixels=pixels,
        labels=labels,
        spacing=grid.spacing,
        label_info=LABELS,
        origin=grid.origin,
        orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        slice_direction=(0.0, 0.0, -1.0),
        acquisition={
            "body_part": "BRAIN",
            "study_description": "MR BRAIN",
            "series_description": "T1 MPRAGE",
            "scanning_sequence": ["GR", "IR"],
            "sequence_variant": ["SP", "MP"],
            "mr_acquisition_type": "3D",
            "repetition_time": tr,
            "echo_time": te,
            "inversion_time": ti,
            "flip_angle": fa,
            "magnetic_field_strength": field,
            "slice_thickness": dz,
            "phase_encoding_direction": "COL",
            "artefact": artefact,
        },
    )
