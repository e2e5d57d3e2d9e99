"""Synthetic AP radiographs of the knee (DX) with femur, tibia, fibula and patella as ground truth.

How an image is made
--------------------
Every bone is a 2D outline in the detector plane (unions and differences of ellipses, capsules and
profiled bands: femoral shaft flaring into two rounded condyles with the intercondylar notch, tibial
plateau with its two spines tapering into the shaft, fibular head and styloid with the shaft, a
patella narrowing towards its inferior pole). Outlines are rounded and their edges displaced by a
smooth random field (about 1 px, up to 2 px) before they are fixed. The projected thickness of a bone
at a pixel follows from the pixel's depth inside the outline (Euclidean distance transform): an
elliptical cross-section of in-plane half-width ``a`` and antero-posterior half-depth ``b`` gives a
chord ``2 b / a * sqrt(t (2a - t))`` at depth ``t``. A nested inner outline (depth minus cortical
thickness) gives the medullary/trabecular part, so the cortex projects as a bright rim along shafts.
Soft tissue (muscle core, subcutaneous fat) is projected the same way from a silhouette whose width
grows with BMI.

Attenuation (line integrals, 1/mm) becomes a radiograph through: a heel-effect gradient of the incident
fluence along the rows, a detector blur, scatter (a broad low-pass copy of the primary, larger for larger
patients), quantum noise (Gaussian approximation of Poisson counts, so it grows where fewer photons
arrive: through bone and in patients with higher BMI), a log transform and a compressive display curve
onto 0..4095. Half of the subjects have a lateral collimation border (unexposed, bright).

Demographic effects (documented so that audits can be read against them)
------------------------------------------------------------------------
- size: all bone dimensions scale with height (``height / 1.70 m``) and are 4% larger in men and 4%
  smaller in women (condylar width about 80 mm in men, 70 mm in women), with 3% individual variation;
- joint space: about 5.5 mm medially (lateral ~1 mm wider) narrowing by 0.045 mm/year after 40 and
  0.05 mm per BMI unit above 27 (osteoarthritis), never below 1 mm; marginal osteophytes after 55;
- bone density: trabecular and cortical attenuation fall 0.9%/year after 50 in women and 0.3%/year in
  men; cortices thin 0.4%/year after 50 in women; +5% density in the ``Black`` ethnic group
  (higher average bone mineral density), other groups unchanged;
- soft tissue: silhouette half-width and subcutaneous fat grow with BMI (women: +4 mm thigh, +3 mm fat);
  exposure (mAs, kVp) rises with BMI but does not fully compensate, so noise grows with BMI.

Imaging shift (``subject.shift``)
---------------------------------
- ``contrast``: multiplies every attenuation line integral (bone and soft tissue) before transmission,
  like a lower kVp: bone/soft-tissue and tissue/air differences scale;
- ``noise``: multiplies the quantum-noise standard deviation;
- ``intensity_offset``: added (a.u.) to every pixel covered by the patient (weighted by the soft-tissue
  silhouette, partial at the skin line), after the display curve;
- ``artefact_probability``: chance of one artefact, drawn from ``subject.rng("artefact")``: a metal
  screw in the tibial plateau (very bright, not part of the labels), motion blur along rows or columns,
  or a stationary-grid line pattern; its name is ``acquisition["artefact"]`` (``"none"`` otherwise);
- ``organ_scale``: ``femur``, ``tibia``, ``fibula``, ``patella`` scale that bone's in-plane outline and
  depth about its anchor (femur and tibia: the joint centre; fibula and patella: their centre); 0 (up to
  0.05) removes the bone (e.g. a patellectomy); other names are ignored with a warning;
- ``blur_mm``: extra Gaussian blur (sigma, mm) of the primary image before scatter and noise;
- ``lesion_mm``, ``lesion_count``: lytic lesions (bone cyst, giant-cell tumour) of about that radius, each in
  a femoral condyle or below the tibial plateau (``subject.rng("lesion")``): the trabecular bone inside is
  replaced by soft tissue, the labels do not change (``acquisition["lesions"]``);
- ``fov_fraction``: the lateral collimator blades close to that fraction of the bones' left-right extent,
  off-centre (``subject.rng("fov")``); under them the detector is unexposed (bright) and the labels are
  removed (``acquisition["field_width_mm"]``);
- ``z_coverage`` and ``metal_mm`` apply to CT only and are ignored with a warning.

Modules
-------
This module draws one image (:func:`generate`); the knee's anatomy, outlines and lesions are in
:mod:`cohorts.xr_knee_anatomy`, the detector frame and the image-forming helpers in
:mod:`cohorts.xr_knee_imaging`.

Conventions a caller must know
------------------------------
- Pixels: float32 ``(rows, columns)``, arbitrary units 0..4095, higher = more attenuation (displayed
  bright with MONOCHROME2); air is near 0. Spacing ``(row, column)`` in mm, square pixels.
- Display is in the anatomical position, as radiographs of either knee are read: image left = patient's
  right, image top = proximal. ``orientation`` is ``(1, 0, 0, 0, 0, -1)`` (rows run towards the patient's
  left, columns towards the feet) and ``acquisition["patient_orientation"]`` is ``["L", "F"]``.
  Hence the fibula (lateral) is on the image's **left** for a right knee and on its **right** for a left
  knee (``acquisition["laterality"]``).
- Labels (uint8): femur 1, tibia 2, fibula 3, patella 4 are the full projected bone outlines; where two
  overlap the patella wins over the femur and the fibula over the tibia. The femoral shaft leaves the
  image at the top and the tibia and fibula at the bottom.
"""

from __future__ import annotations

import logging

import numpy as np
from pydicom.sr.codedict import codes
from scipy import ndimage

from cohorts.image import Label, SyntheticImage
from cohorts.subjects import Subject
from cohorts.xr_knee_anatomy import (
    MU_CORTEX,
    MU_FAT,
    MU_MARROW,
    MU_METAL,
    MU_MUSCLE,
    MU_TRABECULAR,
    OUTLINES,
    Lesion,
    bone_anchor,
    bone_extent,
    bone_profile,
    chord,
    draw_anatomy,
    draw_lesion,
    smoothstep,
)
from cohorts.xr_knee_imaging import (
    Frame,
    depth_mm,
    exposed_field,
    fix_outline,
    lowpass,
    noise_field,
    screw,
    soft_tissue,
    window,
)

logger = logging.getLogger(__name__)

KIND = "xr-knee"


LABELS: tuple[Label, ...] = (
    Label.from_code(1, "femur", codes.SCT.Femur, (241, 196, 15)),
    Label.from_code(2, "tibia", codes.SCT.Tibia, (52, 152, 219)),
    Label.from_code(3, "fibula", codes.SCT.Fibula, (46, 204, 113)),
    Label.from_code(4, "patella", codes.SCT.Patella, (231, 76, 60)),
)

__all__ = [
    "KIND",
    "LABELS",
    "MIN_SCALE",
    "MU_CORTEX",
    "MU_FAT",
    "MU_MARROW",
    "MU_METAL",
    "MU_MUSCLE",
    "MU_TRABECULAR",
    "generate",
]

#: Detector pixel pitch (mm) by manufacturer; an unknown manufacturer gets 0.35 mm.
_PITCH = {"Aurora Imaging": 0.32, "Borealis Medical": 0.35, "Cygnus Systems": 0.38}

#: An organ_scale at or below this removes the bone.
MIN_SCALE = 0.05

_ARTEFACTS = ("metal_screw", "motion_blur", "grid_lines")


def generate(subject: Subject) -> SyntheticImage:
    """Generate the AP knee radiograph of ``subject``.

    Deterministic for a subject: every random number comes from ``subject.rng(purpose)`` with the
    purposes ``anatomy``, ``acquisition``, ``edges/<bone>``, ``texture/<bone>``, ``noise``,
    ``artefact``, and ``lesion`` and ``fov`` when those shift fields are in use.

    Parameters
    ----------
    subject
        The patient; its sex, age, height, BMI and ethnic group shape the knee (see the module
        docstring) and its ``shift`` alters the acquisition.

    Returns
    -------
    SyntheticImage
        ``DX``: float32 pixels ``(rows, columns)`` in arbitrary units 0..4095 (higher = more
        attenuation), about 1024 x 832 pixels at 0.31-0.39 mm; uint8 labels of :data:`LABELS`.
    """
    anat = draw_anatomy(subject)
    acq = subject.rng("acquisition")
    shift = subject.shift
    bmi = subject.bmi

    # --- detector grid and positioning ---------------------------------------------------------------
    rows = 8 * int(acq.integers(124, 133))
    cols = 8 * int(acq.integers(100, 109))
    spacing = round(_PITCH.get(subject.manufacturer, 0.35) * float(acq.uniform(0.97, 1.03)), 4)
    laterality = "R" if acq.random() < 0.5 else "L"
    x_c = cols * spacing * float(acq.uniform(0.46, 0.54))
    y_j = rows * spacing * float(acq.uniform(0.45, 0.55))
    theta = np.deg2rad(float(np.clip(acq.normal(0.0, 1.5), -4.0, 4.0)))
    y = ((np.arange(rows, dtype=np.float32) + 0.5) * spacing - y_j)[:, None]
    x = ((np.arange(cols, dtype=np.float32) + 0.5) * spacing - x_c)[None, :]
    lateral_sign = -1.0 if laterality == "R" else 1.0  # right knee: lateral is towards the image's left
    u = (lateral_sign * (np.cos(theta) * x + np.sin(theta) * y)).astype(np.float32)
    v = (-np.sin(theta) * x + np.cos(theta) * y).astype(np.float32)
    frame = Frame(u=u, v=v, spacing=spacing)
    kvp = round(float(np.clip(60.0 + 0.4 * (bmi - 20.0) + acq.uniform(-2.0, 2.0), 58.0, 72.0)), 1)
    mas = round(3.0 * float(np.exp(0.035 * (bmi - 22.0))) * float(acq.uniform(0.9, 1.1)), 2)
    heel = float(acq.uniform(0.12, 0.25)) * (1.0 if acq.random() < 0.5 else -1.0)
    spr = 0.25 + 0.015 * max(0.0, bmi - 20.0)
    display_l0 = float(acq.uniform(1.9, 2.4))
    tone_gamma = float(acq.uniform(1.3, 1.7))
    unsharp = float(acq.uniform(0.4, 0.8))
    collimate = acq.random() < 0.5
    collimation_margin = float(acq.uniform(8.0, 35.0))  # beyond the outermost bone, mm
    sdd = round(float(acq.uniform(1000.0, 1150.0)), 0)

    # --- bones (each computed in its own window of the image) ----------------------------------------
    extra: dict[str, object] = {}
    lesions: list[Lesion] = []
    if shift.lesion_mm > 0:
        lesion_rng = subject.rng("lesion")
        lesions = [draw_lesion(anat, shift.lesion_mm, lesion_rng) for _ in range(shift.lesion_count)]
        extra["lesions"] = "; ".join(f"lytic {les.bone} {0.5 * (les.ru + les.rv):.1f} mm" for les in lesions)
    ignored = [
        name for name, value in (("z_coverage", shift.z_coverage != 1.0), ("metal_mm", shift.metal_mm > 0)) if value
    ]
    if ignored:
        logger.warning("shift fields %s apply to CT only; ignored for %s", ignored, KIND)
    masks: dict[str, np.ndarray] = {}
    bone_attenuation = np.zeros((rows, cols), np.float32)
    for label in LABELS:
        name = label.name
        scale = float(shift.organ_scale.get(name, 1.0))
        if scale <= MIN_SCALE:  # a bone removed (e.g. patellectomy): nothing to project or label
            masks[name] = np.zeros((rows, cols), bool)
            continue
        au, av = bone_anchor(name, anat)
        (u0, u1), (v0, v1) = bone_extent(name, anat, float(v.min()), float(v.max()))
        box = window(
            frame,
            (au + (u0 - au) * scale, au + (u1 - au) * scale),
            (av + (v0 - av) * scale, av + (v1 - av) * scale),
            x_c,
            y_j,
            theta,
            lateral_sign,
        )
        su, sv = (u[box] - au) / scale + au, (v[box] - av) / scale + av
        local = fix_outline(OUTLINES[name](su, sv, anat), spacing, subject.rng(f"edges/{name}"))
        mask = np.zeros((rows, cols), bool)
        mask[box] = local
        masks[name] = mask
        prof = bone_profile(name, sv, anat)
        pa, pb, pc = prof.a * scale, prof.b * scale, prof.c * scale
        depth = depth_mm(local, spacing)
        outer = chord(depth, pa, pb)
        inner = chord(depth - pc, pa - pc, pb - pc)
        texture = 1.0 + 0.2 * noise_field(subject.rng(f"texture/{name}"), local.shape, (3.0, 1.2))
        bone_attenuation[box] += (MU_CORTEX * anat.density - MU_MUSCLE) * (outer - inner)
        bone_attenuation[box] += (prof.mu_in * anat.density - MU_MUSCLE) * inner * texture
        here = [les for les in lesions if les.bone == name]
        if here:  # soft tissue instead of trabecular bone
            lytic = np.minimum(sum(les.chord(su, sv) for les in here), inner)
            bone_attenuation[box] -= (prof.mu_in * anat.density - MU_MUSCLE) * lytic * texture
    unknown = sorted(set(shift.organ_scale) - {lab.name for lab in LABELS})
    if unknown:
        logger.warning(
            "organ_scale names %s are not structures of %s (%s); ignored",
            unknown,
            KIND,
            ", ".join(lab.name for lab in LABELS),
        )

    labels = np.zeros((rows, cols), np.uint8)
    for label in LABELS:  # later labels win: fibula over tibia, patella over femur
        labels[masks[label.name]] = label.value

    # anti-aliasing: the outlines are binary, the projected bone is not
    bone_attenuation = ndimage.gaussian_filter(bone_attenuation, 0.8)
    muscle, fat = soft_tissue(frame, anat)
    attenuation = shift.contrast * (MU_MUSCLE * muscle + MU_FAT * fat + bone_attenuation)

    # --- artefact choice (drawn for every subject so that the other draws never move) ---------------
    art_rng = subject.rng("artefact")
    artefact = "none"
    if art_rng.random() < shift.artefact_probability:
        artefact = _ARTEFACTS[int(art_rng.integers(len(_ARTEFACTS)))]
    if artefact == "metal_screw":
        attenuation += MU_METAL * screw(frame, anat, art_rng)

    # --- transmission, blur, scatter, noise, log, display -------------------------------------------
    primary = np.exp(-attenuation)
    blur_px = float(np.hypot(0.6, shift.blur_mm / spacing))
    primary = ndimage.gaussian_filter(primary, blur_px)
    if artefact == "motion_blur":
        length = max(5, round(float(art_rng.uniform(4.0, 8.0)) / spacing))
        primary = ndimage.uniform_filter1d(primary, length, axis=int(art_rng.integers(2)))
    fluence = (1.0 + heel * ((np.arange(rows, dtype=np.float32) + 0.5) / rows - 0.5))[:, None]
    n0 = 6000.0 * mas
    counts = n0 * fluence * (primary + spr * lowpass(primary, 30.0, spacing))
    noise = subject.rng("noise").standard_normal((rows, cols), dtype=np.float32)
    counts = np.maximum(counts + np.sqrt(counts) * noise * shift.noise, 1.0)
    log_attenuation = np.log(n0 / counts) + np.log1p(spr)  # air ~ 0 at the centre row
    # the vendor's processing in the log domain: unsharp masking, and compression of large thick areas
    # (the thigh of a heavy patient) above the level of the soft tissue at the knee
    knee_level = 2.0 * 0.92 * anat.knee * MU_MUSCLE
    log_attenuation += unsharp * (log_attenuation - lowpass(log_attenuation, 12.0, spacing))
    log_attenuation -= 0.6 * np.maximum(lowpass(log_attenuation, 40.0, spacing) - knee_level, 0.0)
    if collimate:  # lateral blades, never over a bone
        bone_cols = np.flatnonzero(np.any(labels > 0, axis=0))
        half = float(np.abs(x[0, [bone_cols[0], bone_cols[-1]]]).max()) + collimation_margin
        inside = smoothstep((half - np.abs(np.broadcast_to(x, (rows, cols)))) / 1.5 + 0.5)
        log_attenuation = inside * log_attenuation + (1 - inside) * (3.8 + 0.15 * log_attenuation)
    if shift.fov_fraction < 1.0:  # blades over the bones: what they hide is neither imaged nor labelled
        field, width = exposed_field(labels, x, shift.fov_fraction, subject.rng("fov"))
        log_attenuation = field * log_attenuation + (1 - field) * (3.8 + 0.15 * log_attenuation)
        labels[:, field[0] < 0.5] = 0
        extra["field_width_mm"] = round(width, 1)
    # tone curve: a power law of the log attenuation relative to what the leg's centre should reach
    # (from the anatomy, not from the image, so that a contrast shift is not normalised away)
    reference = knee_level + display_l0
    pixels = 4095.0 * (np.maximum(log_attenuation, 0.0) / reference) ** tone_gamma
    tissue = np.clip((muscle + fat) / 15.0, 0.0, 1.0)
    pixels += shift.intensity_offset * tissue
    if artefact == "grid_lines":  # a stationary grid's lines, vertical or horizontal
        period = float(art_rng.uniform(2.6, 4.0))
        vertical = art_rng.random() < 0.5
        amplitude = float(art_rng.uniform(60.0, 120.0))
        stripes = amplitude * np.sin(2 * np.pi * np.arange(cols if vertical else rows, dtype=np.float32) / period)
        pixels += stripes[None, :] if vertical else stripes[:, None]
    pixels = np.clip(pixels, 0.0, 4095.0).astype(np.float32)

    logger.debug(
        "xr-knee subject %d: %dx%d px at %.3f mm, laterality %s, artefact %s",
        subject.index,
        rows,
        cols,
        spacing,
        laterality,
        artefact,
    )
    return SyntheticImage(
        modality="DX",
        pixels=pixels,
        labels=labels,
        spacing=(spacing, spacing),
        label_info=LABELS,
        origin=(0.0, 0.0, 0.0),
        orientation=(1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
        acquisition={
            "laterality": laterality,
            "view_position": "AP",
            "patient_orientation": ["L", "F"],
            "body_part": "KNEE",
            "kvp": kvp,
            "exposure_mas": mas,
            "source_detector_distance_mm": sdd,
            "study_description": "XR KNEE",
            "series_description": "KNEE AP",
            "artefact": artefact,
            **extra,
        },
    )
