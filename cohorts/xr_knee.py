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
from dataclasses import dataclass

import numpy as np
from pydicom.sr.codedict import codes
from scipy import ndimage

from cohorts.image import Label, SyntheticImage
from cohorts.subjects import Subject

logger = logging.getLogger(__name__)

KIND = "xr-knee"


LABELS: tuple[Label, ...] = (
    Label.from_code(1, "femur", codes.SCT.Femur, (241, 196, 15)),
    Label.from_code(2, "tibia", codes.SCT.Tibia, (52, 152, 219)),
    Label.from_code(3, "fibula", codes.SCT.Fibula, (46, 204, 113)),
    Label.from_code(4, "patella", codes.SCT.Patella, (231, 76, 60)),
)

#: Linear attenuation coefficients (1/mm) at the effective energy of a ~65 kVp beam (illustrative).
MU_MUSCLE = 0.022
MU_FAT = 0.017
MU_MARROW = 0.019
MU_TRABECULAR = 0.045
MU_CORTEX = 0.120
MU_METAL = 0.6

#: Detector pixel pitch (mm) by manufacturer; an unknown manufacturer gets 0.35 mm.
_PITCH = {"Aurora Imaging": 0.32, "Borealis Medical": 0.35, "Cygnus Systems": 0.38}

#: An organ_scale at or below this removes the bone.
MIN_SCALE = 0.05

_ARTEFACTS = ("metal_screw", "motion_blur", "grid_lines")


@dataclass(frozen=True)
class _Anatomy:
    """Geometry of one knee in mm, in the knee frame: ``u`` lateral (+) / medial (-) from the joint
    centre, ``v`` distal (+) from the medial femoral joint line."""

    k: float  # overall size factor
    femur_tilt: float  # radians; the shaft runs proximally and medially
    f_shaft: float  # femoral shaft half-width
    cond_sep: float  # condyle centres at u = -/+ cond_sep
    cond_rx_m: float
    cond_ry_m: float
    cond_rx_l: float
    cond_ry_l: float
    lat_raise: float  # lateral condyle bottom above the medial one
    notch_rx: float
    notch_ry: float
    gap_m: float  # joint space, medial
    gap_l: float  # joint space, lateral
    t_half_m: float  # tibial plateau half-widths
    t_half_l: float
    t_shaft: float
    spine_m: float
    spine_l: float
    osteophyte: float  # radius of marginal osteophytes (0 = none)
    fib_head_rx: float
    fib_head_ry: float
    fib_shaft: float
    pat_rx: float
    pat_ry: float
    pat_low: float  # inferior pole of the patella above the joint line
    pat_u: float
    density: float
    cortex_shaft: float
    thigh: float  # soft-tissue half-widths
    distal_thigh: float
    knee: float
    calf: float
    ankle: float
    fat: float  # subcutaneous fat thickness


def _draw_anatomy(subject: Subject) -> _Anatomy:
    """Draw the knee of ``subject`` (every draw happens whatever the demographics, in a fixed order)."""
    rng = subject.rng("anatomy")
    male = subject.sex == "M"
    age = subject.age_years
    bmi = subject.bmi
    k = subject.height_m / 1.70 * (1.04 if male else 0.96) * float(np.clip(rng.normal(1.0, 0.03), 0.9, 1.1))
    jitter = rng.normal(1.0, 0.04, size=16).clip(0.88, 1.12)
    gap_noise = float(np.clip(rng.normal(0.0, 0.4), -1.0, 1.0))
    oa = max(0.0, age - 40) * 0.045 + max(0.0, bmi - 27) * 0.05
    gap_m = max(1.0, (5.5 + gap_noise) * k - oa)
    gap_l = max(1.2, gap_m + (1.0 + float(rng.uniform(0.0, 0.8))) * k - 0.3 * oa)
    osteo = max(0.0, (age - 55) / 12.0) * float(rng.uniform(0.5, 1.2))
    loss = (0.009 if not male else 0.003) * max(0, age - 50)
    density = (1.0 - loss) * (1.05 if subject.ethnic_group == "Black" else 1.0) * float(rng.normal(1.0, 0.04))
    cortex = 5.0 * k * (1.0 - (0.004 if not male else 0.0015) * max(0, age - 50)) * jitter[0]
    d = bmi - 22.0
    sex_fat = 0.0 if male else 3.0
    soft = rng.uniform(0.94, 1.06, size=5)
    return _Anatomy(
        k=k,
        femur_tilt=float(np.deg2rad(rng.uniform(4.0, 8.0))),
        f_shaft=13.5 * k * jitter[1],
        cond_sep=19.5 * k * jitter[2],
        cond_rx_m=19.0 * k * jitter[3],
        cond_ry_m=21.0 * k * jitter[4],
        cond_rx_l=18.0 * k * jitter[5],
        cond_ry_l=19.0 * k * jitter[6],
        lat_raise=float(rng.uniform(0.5, 2.5)) * k,
        notch_rx=9.0 * k * jitter[7],
        notch_ry=13.0 * k * jitter[8],
        gap_m=gap_m,
        gap_l=gap_l,
        t_half_m=38.5 * k * jitter[9],
        t_half_l=36.0 * k * jitter[10],
        t_shaft=13.0 * k * jitter[11],
        spine_m=7.0 * k * jitter[12],
        spine_l=6.0 * k * jitter[13],
        osteophyte=min(osteo, 4.0),
        fib_head_rx=12.5 * k * jitter[14],
        fib_head_ry=11.5 * k * jitter[15],
        fib_shaft=6.2 * k,
        pat_rx=21.0 * k * float(rng.uniform(0.92, 1.08)),
        pat_ry=22.0 * k * float(rng.uniform(0.92, 1.08)),
        pat_low=float(rng.uniform(6.0, 14.0)) * k,
        pat_u=float(rng.uniform(1.0, 5.0)) * k,
        density=density,
        cortex_shaft=cortex,
        thigh=(66.0 + 3.0 * d + sex_fat + 1.0) * k * soft[0],
        distal_thigh=(57.0 + 2.4 * d + sex_fat) * k * soft[1],
        knee=(51.0 + 1.6 * d) * k * soft[2],
        calf=(52.0 + 2.0 * d) * k * soft[3],
        ankle=(40.0 + 1.2 * d) * k * soft[4],
        fat=float(np.clip(3.0 + 0.9 * (bmi - 20.0) + sex_fat, 2.0, 30.0)) * float(rng.uniform(0.85, 1.15)),
    )


@dataclass(frozen=True)
class _Frame:
    """The knee frame on the detector grid: ``u`` (lateral +), ``v`` (distal +), both mm, (rows, cols)."""

    u: np.ndarray
    v: np.ndarray
    spacing: float


def _smoothstep(x: np.ndarray | float) -> np.ndarray:
    t = np.clip(x, 0.0, 1.0)
    return np.asarray(t * t * (3.0 - 2.0 * t))


def _chord(t: np.ndarray, a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """Chord length (mm) through an elliptical cross-section (half-width ``a``, half-depth ``b``) at
    depth ``t`` (mm) from its edge; 0 outside, ``2 b`` from depth ``a`` on."""
    a_ = np.maximum(a, 0.5)
    tc = np.clip(t, 0.0, a_)
    return np.asarray(2.0 * (b / a_) * np.sqrt(tc * (2.0 * a_ - tc)), dtype=np.float32)


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float) -> np.ndarray:
    return np.asarray(((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 < 1.0)


def _capsule(u: np.ndarray, v: np.ndarray, p0: tuple[float, float], p1: tuple[float, float], r: float) -> np.ndarray:
    du, dv = p1[0] - p0[0], p1[1] - p0[1]
    h = np.clip(((u - p0[0]) * du + (v - p0[1]) * dv) / (du * du + dv * dv), 0.0, 1.0)
    return np.asarray(np.hypot(u - p0[0] - h * du, v - p0[1] - h * dv) < r)


# --- bone outlines in the knee frame ------------------------------------------------------------------


def _femur_outline(u: np.ndarray, v: np.ndarray, a: _Anatomy) -> np.ndarray:
    above = np.maximum(-v - 35.0 * a.k, 0.0)
    centre = -np.tan(a.femur_tilt) * above
    full = a.cond_sep + 0.5 * (a.cond_rx_m + a.cond_rx_l)
    top, bottom = -95.0 * a.k, -28.0 * a.k
    half = a.f_shaft + (full - a.f_shaft) * _smoothstep((v - top) / (bottom - top))
    body = (np.abs(u - centre) < half) & (v < -0.85 * a.cond_ry_m)
    medial = _ellipse(u, v, -a.cond_sep, -a.cond_ry_m, a.cond_rx_m, a.cond_ry_m)
    lateral = _ellipse(u, v, a.cond_sep, -a.cond_ry_l - a.lat_raise, a.cond_rx_l, a.cond_ry_l)
    notch = _ellipse(u, v, 1.0 * a.k, 0.0, a.notch_rx, a.notch_ry)
    return np.asarray((body | medial | lateral) & ~notch)


def _condyle_bottom(u: np.ndarray, a: _Anatomy) -> np.ndarray:
    """Lower contour v(u) of the femoral condyles (mm), for a plateau that partly follows it."""
    med = -a.cond_ry_m * (1 - np.sqrt(np.clip(1 - ((u + a.cond_sep) / a.cond_rx_m) ** 2, 0, 1)))
    lat = -a.lat_raise - a.cond_ry_l * (1 - np.sqrt(np.clip(1 - ((u - a.cond_sep) / a.cond_rx_l) ** 2, 0, 1)))
    return np.where(u < 0, med, lat)


def _tibia_outline(u: np.ndarray, v: np.ndarray, a: _Anatomy) -> np.ndarray:
    side = _smoothstep(u / (12.0 * a.k) + 0.5)
    gap = a.gap_m + (a.gap_l - a.lat_raise - a.gap_m) * side
    spines = a.spine_m * np.exp(-(((u + 4.0 * a.k) / (3.0 * a.k)) ** 2)) + a.spine_l * np.exp(
        -(((u - 5.0 * a.k) / (3.0 * a.k)) ** 2)
    )
    top = gap + 0.3 * (_condyle_bottom(u, a) + a.lat_raise * side) - spines
    start, end = 12.0 * a.k, 75.0 * a.k
    taper = _smoothstep((v - start) / (end - start))
    half_m = a.t_half_m + (a.t_shaft - a.t_half_m) * taper
    half_l = a.t_half_l + (a.t_shaft - a.t_half_l) * taper
    inside = np.where(u < 0, -u < half_m, u < half_l)
    outline = (v > top) & inside
    if a.osteophyte > 0.3:
        r = a.osteophyte
        for cu, g in ((-a.t_half_m, a.gap_m), (a.t_half_l, a.gap_l - a.lat_raise)):
            outline |= _ellipse(u, v, cu + np.sign(cu) * 0.4 * r, g + 1.2 * r, 1.2 * r, 0.8 * r)
    return np.asarray(outline)


def _fibula_centre(a: _Anatomy) -> tuple[float, float]:
    return a.t_half_l + 1.5 * a.k, a.gap_l - a.lat_raise + 25.0 * a.k


def _fibula_outline(u: np.ndarray, v: np.ndarray, a: _Anatomy) -> np.ndarray:
    cu, cv = _fibula_centre(a)
    head = _ellipse(u, v, cu, cv, a.fib_head_rx, a.fib_head_ry)
    styloid = _ellipse(u, v, cu + 6.5 * a.k, cv - 11.0 * a.k, 3.5 * a.k, 6.0 * a.k)
    shaft = _capsule(u, v, (cu - 0.5 * a.k, cv + 6.0 * a.k), (cu - 1.0 * a.k, cv + 600.0), a.fib_shaft)
    return np.asarray(head | styloid | shaft)


def _patella_centre(a: _Anatomy) -> tuple[float, float]:
    return a.pat_u, -(a.pat_ry + a.pat_low)


def _patella_outline(u: np.ndarray, v: np.ndarray, a: _Anatomy) -> np.ndarray:
    cu, cv = _patella_centre(a)
    rx = a.pat_rx * (1.0 - 0.22 * np.clip((v - cv) / a.pat_ry, -1, 1))
    return np.asarray(((u - cu) / rx) ** 2 + ((v - cv) / a.pat_ry) ** 2 < 1.0)


@dataclass(frozen=True)
class _Profile:
    """Depth profile of a bone along ``v``: in-plane half-width ``a``, half-depth ``b``, cortical
    thickness ``c`` (mm) and the attenuation ``mu_in`` (1/mm) of what the cortex encloses."""

    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    mu_in: np.ndarray


def _profile(v: np.ndarray, knots: tuple[float, ...], **columns: tuple[float, ...]) -> _Profile:
    vals = {name: np.interp(v, knots, col).astype(np.float32) for name, col in columns.items()}
    return _Profile(a=vals["a"], b=vals["b"], c=vals["c"], mu_in=vals["mu_in"])


def _bone_profile(name: str, v: np.ndarray, a: _Anatomy) -> _Profile:
    """Depth profile of bone ``name`` on the grid ``v`` (mm, knee frame)."""
    k, cs = a.k, a.cortex_shaft
    if name == "femur":
        return _profile(
            v,
            (-130 * k, -70 * k, -25 * k, 0.0),
            a=(a.f_shaft, a.f_shaft * 1.2, 20 * k, 19 * k),
            b=(a.f_shaft, a.f_shaft * 1.4, 29 * k, 27 * k),
            c=(cs, 0.45 * cs + 0.6, 1.2, 1.2),
            mu_in=(MU_MARROW, 0.5 * (MU_MARROW + MU_TRABECULAR), MU_TRABECULAR, MU_TRABECULAR),
        )
    if name == "tibia":
        return _profile(
            v,
            (0.0, 25 * k, 80 * k, 140 * k),
            a=(20 * k, 18 * k, a.t_shaft, a.t_shaft),
            b=(24 * k, 21 * k, 14 * k, 13 * k),
            c=(1.2, 1.3, 0.8 * cs, 0.9 * cs),
            mu_in=(MU_TRABECULAR, MU_TRABECULAR, MU_MARROW, MU_MARROW),
        )
    if name == "fibula":
        fv = _fibula_centre(a)[1]
        return _profile(
            v,
            (fv, fv + 20 * k, fv + 60 * k),
            a=(a.fib_head_rx, a.fib_shaft, a.fib_shaft),
            b=(a.fib_head_rx, a.fib_shaft, a.fib_shaft),
            c=(1.0, 1.8, 2.4),
            mu_in=(MU_TRABECULAR, 0.5 * (MU_TRABECULAR + MU_MARROW), MU_MARROW),
        )
    return _profile(
        v, (-200.0, 200.0), a=(a.pat_rx, a.pat_rx), b=(9 * k, 9 * k), c=(0.8, 0.8), mu_in=(MU_TRABECULAR,) * 2
    )


def _bone_anchor(name: str, a: _Anatomy) -> tuple[float, float]:
    if name == "fibula":
        return _fibula_centre(a)
    if name == "patella":
        return _patella_centre(a)
    return 0.0, 0.0


_OUTLINES = {
    "femur": _femur_outline,
    "tibia": _tibia_outline,
    "fibula": _fibula_outline,
    "patella": _patella_outline,
}


def _bbox(mask: np.ndarray, pad: int) -> tuple[slice, slice] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1 = max(int(rows[0]) - pad, 0), min(int(rows[-1]) + pad + 1, mask.shape[0])
    c0, c1 = max(int(cols[0]) - pad, 0), min(int(cols[-1]) + pad + 1, mask.shape[1])
    return slice(r0, r1), slice(c0, c1)


def _fix_outline(raw: np.ndarray, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Round the corners of ``raw`` (Gaussian of 2.5 mm) and move its edge by a smooth random field
    (standard deviation ~1 px, correlation ~7 px); returns the final boolean outline."""
    sigma = 2.5 / spacing
    box = _bbox(raw, int(3 * sigma) + 4)
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


def _depth_mm(mask: np.ndarray, spacing: float) -> np.ndarray:
    """Distance (mm) of each pixel of ``mask`` to its edge (0 outside); the image border is not an edge."""
    depth = np.zeros(mask.shape, np.float32)
    box = _bbox(mask, 1)
    if box is not None:
        # distance to the pixel edge rather than to the nearest outside pixel centre
        depth[box] = ndimage.distance_transform_edt(mask[box], sampling=spacing) - 0.5 * spacing
    return depth


def _soft_tissue(frame: _Frame, a: _Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Projected muscle and fat thickness (mm), each (rows, cols)."""
    u, v, k = frame.u, frame.v, a.k
    knots = (-200 * k, -100 * k, -40 * k, 0.0, 40 * k, 110 * k, 220 * k)
    table_v = np.arange(-700.0, 701.0, 1.0)
    table = np.interp(table_v, knots, (a.thigh, a.thigh, a.distal_thigh, a.knee, a.knee * 1.02, a.calf, a.ankle))
    table = ndimage.gaussian_filter1d(np.maximum(table, 58.0 * k), 25.0, mode="nearest")
    half = np.interp(v, table_v, table).astype(np.float32)
    centre = np.where(v < 0, -0.3 * np.tan(a.femur_tilt) * np.maximum(-v, 0), 0.0)
    depth = half - np.abs(u - centre)
    total = _chord(depth, half, 0.92 * half)
    inner = np.maximum(half - a.fat, 10.0)
    muscle = _chord(depth - (half - inner), inner, 0.92 * half - (half - inner))
    return muscle, total - muscle


def _noise_field(rng: np.random.Generator, shape: tuple[int, int], sigma: tuple[float, float]) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    field /= max(float(field.std()), 1e-6)
    return field


def _lowpass(image: np.ndarray, sigma_mm: float, spacing: float) -> np.ndarray:
    """A broad Gaussian low-pass (sigma in mm) computed on an 8x coarser grid (shape must divide by 8)."""
    rows, cols = image.shape
    small = image.reshape(rows // 8, 8, cols // 8, 8).mean(axis=(1, 3))
    small = ndimage.gaussian_filter(small, sigma_mm / (8 * spacing), mode="nearest")
    return np.asarray(ndimage.zoom(small, 8, order=1, mode="nearest", grid_mode=True), dtype=np.float32)


def _screw(frame: _Frame, a: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Projected metal thickness (mm) of a cannulated screw in the tibial plateau."""
    cu = float(rng.uniform(-20.0, 20.0)) * a.k
    cv = a.gap_m + float(rng.uniform(15.0, 30.0)) * a.k
    ang = np.deg2rad(rng.uniform(-35.0, 35.0))
    length, radius = float(rng.uniform(35.0, 55.0)), float(rng.uniform(2.8, 3.5))
    along = (frame.u - cu) * np.sin(ang) + (frame.v - cv) * np.cos(ang)
    across = (frame.u - cu) * np.cos(ang) - (frame.v - cv) * np.sin(ang)
    thread = radius * (0.85 + 0.15 * np.sin(2 * np.pi * along / 2.5))
    shaft = np.where(np.abs(along) < length / 2, _chord(thread - np.abs(across), thread, thread), 0.0)
    head_r = radius * 1.8
    head_dist = np.hypot(across, along + length / 2 + 2.0)
    head = _chord(head_r - head_dist, head_r, 0.6 * head_r)
    cannula = np.where(np.abs(along) < length / 2, _chord(0.8 - np.abs(across), 0.8, 0.8), 0.0)
    return np.asarray(shaft + head - cannula, dtype=np.float32)


@dataclass(frozen=True)
class _Lesion:
    """A lytic lesion (bone cyst, giant-cell tumour) in ``bone``: an ellipsoid centred at ``(cu, cv)`` in the
    bone's frame (mm), in-plane semi-axes ``ru``, ``rv`` turned by ``angle`` (radians), antero-posterior
    semi-axis the mean of the two. Trabecular or medullary bone inside it is replaced by soft tissue."""

    bone: str
    cu: float
    cv: float
    ru: float
    rv: float
    angle: float

    def chord(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Antero-posterior path length (mm) through the lesion at each (u, v); 0 outside it."""
        du, dv = u - self.cu, v - self.cv
        c, s = np.cos(self.angle), np.sin(self.angle)
        rho2 = ((c * du + s * dv) / self.ru) ** 2 + ((-s * du + c * dv) / self.rv) ** 2
        return np.asarray((self.ru + self.rv) * np.sqrt(np.clip(1.0 - rho2, 0.0, 1.0)), dtype=np.float32)


def _draw_lesion(a: _Anatomy, radius_mm: float, rng: np.random.Generator) -> _Lesion:
    """A lytic lesion of mean radius about ``radius_mm`` in the distal femur (half of subjects: in a condyle)
    or the proximal tibia (below the plateau), medial or lateral; all draws from ``rng`` in a fixed order."""
    femur = bool(rng.random() < 0.5)
    side = 1.0 if rng.random() < 0.5 else -1.0
    radius = radius_mm * float(rng.uniform(0.85, 1.15))
    ru, rv = (radius * rng.uniform(0.8, 1.2, size=2)).tolist()
    angle = float(rng.uniform(-0.5, 0.5))
    if femur:
        cu = side * a.cond_sep * float(rng.uniform(0.4, 0.9))
        cv = -a.cond_ry_m * float(rng.uniform(0.8, 1.6))
    else:
        cu = side * 0.5 * (a.t_half_m + a.t_half_l) * float(rng.uniform(0.15, 0.5))
        cv = a.gap_m + float(rng.uniform(15.0, 30.0)) * a.k
    return _Lesion("femur" if femur else "tibia", cu, cv, ru, rv, angle)


def _exposed_field(
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
    return _smoothstep((half - np.abs(x - centre)) / 1.5 + 0.5).astype(np.float32), 2.0 * half


def _bone_extent(name: str, a: _Anatomy, v_min: float, v_max: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """A (u, v) rectangle (mm, knee frame) that holds the bone ``name``; the image spans ``v_min..v_max``."""
    if name == "femur":
        tilt = np.tan(a.femur_tilt) * max(0.0, -v_min - 35.0 * a.k)
        return (-(a.cond_sep + a.cond_rx_m) - tilt, a.cond_sep + a.cond_rx_l), (v_min, 2.0)
    if name == "tibia":
        spur = 2.5 * a.osteophyte
        return (-a.t_half_m - spur, a.t_half_l + spur), (a.gap_m - a.spine_m - 2.0, v_max)
    if name == "fibula":
        cu, cv = _fibula_centre(a)
        return (cu - a.fib_head_rx - 5.0 * a.k, cu + a.fib_head_rx + 10.0 * a.k), (cv - 20.0 * a.k, v_max)
    cu, cv = _patella_centre(a)
    return (cu - 1.25 * a.pat_rx, cu + 1.25 * a.pat_rx), (cv - a.pat_ry, cv + a.pat_ry)


def _window(
    frame: _Frame,
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
    anat = _draw_anatomy(subject)
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
    frame = _Frame(u=u, v=v, spacing=spacing)
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
    lesions: list[_Lesion] = []
    if shift.lesion_mm > 0:
        lesion_rng = subject.rng("lesion")
        lesions = [_draw_lesion(anat, shift.lesion_mm, lesion_rng) for _ in range(shift.lesion_count)]
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
        au, av = _bone_anchor(name, anat)
        (u0, u1), (v0, v1) = _bone_extent(name, anat, float(v.min()), float(v.max()))
        box = _window(
            frame,
            (au + (u0 - au) * scale, au + (u1 - au) * scale),
            (av + (v0 - av) * scale, av + (v1 - av) * scale),
            x_c,
            y_j,
            theta,
            lateral_sign,
        )
        su, sv = (u[box] - au) / scale + au, (v[box] - av) / scale + av
        local = _fix_outline(_OUTLINES[name](su, sv, anat), spacing, subject.rng(f"edges/{name}"))
        mask = np.zeros((rows, cols), bool)
        mask[box] = local
        masks[name] = mask
        prof = _bone_profile(name, sv, anat)
        pa, pb, pc = prof.a * scale, prof.b * scale, prof.c * scale
        depth = _depth_mm(local, spacing)
        outer = _chord(depth, pa, pb)
        inner = _chord(depth - pc, pa - pc, pb - pc)
        texture = 1.0 + 0.2 * _noise_field(subject.rng(f"texture/{name}"), local.shape, (3.0, 1.2))
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
    muscle, fat = _soft_tissue(frame, anat)
    attenuation = shift.contrast * (MU_MUSCLE * muscle + MU_FAT * fat + bone_attenuation)

    # --- artefact choice (drawn for every subject so that the other draws never move) ---------------
    art_rng = subject.rng("artefact")
    artefact = "none"
    if art_rng.random() < shift.artefact_probability:
        artefact = _ARTEFACTS[int(art_rng.integers(len(_ARTEFACTS)))]
    if artefact == "metal_screw":
        attenuation += MU_METAL * _screw(frame, anat, art_rng)

    # --- transmission, blur, scatter, noise, log, display -------------------------------------------
    primary = np.exp(-attenuation)
    blur_px = float(np.hypot(0.6, shift.blur_mm / spacing))
    primary = ndimage.gaussian_filter(primary, blur_px)
    if artefact == "motion_blur":
        length = max(5, round(float(art_rng.uniform(4.0, 8.0)) / spacing))
        primary = ndimage.uniform_filter1d(primary, length, axis=int(art_rng.integers(2)))
    fluence = (1.0 + heel * ((np.arange(rows, dtype=np.float32) + 0.5) / rows - 0.5))[:, None]
    n0 = 6000.0 * mas
    counts = n0 * fluence * (primary + spr * _lowpass(primary, 30.0, spacing))
    noise = subject.rng("noise").standard_normal((rows, cols), dtype=np.float32)
    counts = np.maximum(counts + np.sqrt(counts) * noise * shift.noise, 1.0)
    log_attenuation = np.log(n0 / counts) + np.log1p(spr)  # air ~ 0 at the centre row
    # the vendor's processing in the log domain: unsharp masking, and compression of large thick areas
    # (the thigh of a heavy patient) above the level of the soft tissue at the knee
    knee_level = 2.0 * 0.92 * anat.knee * MU_MUSCLE
    log_attenuation += unsharp * (log_attenuation - _lowpass(log_attenuation, 12.0, spacing))
    log_attenuation -= 0.6 * np.maximum(_lowpass(log_attenuation, 40.0, spacing) - knee_level, 0.0)
    if collimate:  # lateral blades, never over a bone
        bone_cols = np.flatnonzero(np.any(labels > 0, axis=0))
        half = float(np.abs(x[0, [bone_cols[0], bone_cols[-1]]]).max()) + collimation_margin
        inside = _smoothstep((half - np.abs(np.broadcast_to(x, (rows, cols)))) / 1.5 + 0.5)
        log_attenuation = inside * log_attenuation + (1 - inside) * (3.8 + 0.15 * log_attenuation)
    if shift.fov_fraction < 1.0:  # blades over the bones: what they hide is neither imaged nor labelled
        field, width = _exposed_field(labels, x, shift.fov_fraction, subject.rng("fov"))
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
