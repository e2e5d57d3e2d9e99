"""The knee of :mod:`cohorts.xr_knee`: its anatomy drawn from the subject, the bone outlines and profiles.

Geometry in mm in the knee frame (``u`` lateral + / medial -, ``v`` distal + from the medial femoral joint
line); see :mod:`cohorts.xr_knee` for how the outlines become a radiograph and what demographics do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cohorts.subjects import Subject

#: Linear attenuation coefficients (1/mm) at the effective energy of a ~65 kVp beam (illustrative).
MU_MUSCLE = 0.022
MU_FAT = 0.017
MU_MARROW = 0.019
MU_TRABECULAR = 0.045
MU_CORTEX = 0.120
MU_METAL = 0.6


@dataclass(frozen=True)
class Anatomy:
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


def draw_anatomy(subject: Subject) -> Anatomy:
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
    return Anatomy(
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


def smoothstep(x: np.ndarray | float) -> np.ndarray:
    t = np.clip(x, 0.0, 1.0)
    return np.asarray(t * t * (3.0 - 2.0 * t))


def chord(t: np.ndarray, a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
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


def _femur_outline(u: np.ndarray, v: np.ndarray, a: Anatomy) -> np.ndarray:
    above = np.maximum(-v - 35.0 * a.k, 0.0)
    centre = -np.tan(a.femur_tilt) * above
    full = a.cond_sep + 0.5 * (a.cond_rx_m + a.cond_rx_l)
    top, bottom = -95.0 * a.k, -28.0 * a.k
    half = a.f_shaft + (full - a.f_shaft) * smoothstep((v - top) / (bottom - top))
    body = (np.abs(u - centre) < half) & (v < -0.85 * a.cond_ry_m)
    medial = _ellipse(u, v, -a.cond_sep, -a.cond_ry_m, a.cond_rx_m, a.cond_ry_m)
    lateral = _ellipse(u, v, a.cond_sep, -a.cond_ry_l - a.lat_raise, a.cond_rx_l, a.cond_ry_l)
    notch = _ellipse(u, v, 1.0 * a.k, 0.0, a.notch_rx, a.notch_ry)
    return np.asarray((body | medial | lateral) & ~notch)


def _condyle_bottom(u: np.ndarray, a: Anatomy) -> np.ndarray:
    """Lower contour v(u) of the femoral condyles (mm), for a plateau that partly follows it."""
    med = -a.cond_ry_m * (1 - np.sqrt(np.clip(1 - ((u + a.cond_sep) / a.cond_rx_m) ** 2, 0, 1)))
    lat = -a.lat_raise - a.cond_ry_l * (1 - np.sqrt(np.clip(1 - ((u - a.cond_sep) / a.cond_rx_l) ** 2, 0, 1)))
    return np.where(u < 0, med, lat)


def _tibia_outline(u: np.ndarray, v: np.ndarray, a: Anatomy) -> np.ndarray:
    side = smoothstep(u / (12.0 * a.k) + 0.5)
    gap = a.gap_m + (a.gap_l - a.lat_raise - a.gap_m) * side
    spines = a.spine_m * np.exp(-(((u + 4.0 * a.k) / (3.0 * a.k)) ** 2)) + a.spine_l * np.exp(
        -(((u - 5.0 * a.k) / (3.0 * a.k)) ** 2)
    )
    top = gap + 0.3 * (_condyle_bottom(u, a) + a.lat_raise * side) - spines
    start, end = 12.0 * a.k, 75.0 * a.k
    taper = smoothstep((v - start) / (end - start))
    half_m = a.t_half_m + (a.t_shaft - a.t_half_m) * taper
    half_l = a.t_half_l + (a.t_shaft - a.t_half_l) * taper
    inside = np.where(u < 0, -u < half_m, u < half_l)
    outline = (v > top) & inside
    if a.osteophyte > 0.3:
        r = a.osteophyte
        for cu, g in ((-a.t_half_m, a.gap_m), (a.t_half_l, a.gap_l - a.lat_raise)):
            outline |= _ellipse(u, v, cu + np.sign(cu) * 0.4 * r, g + 1.2 * r, 1.2 * r, 0.8 * r)
    return np.asarray(outline)


def _fibula_centre(a: Anatomy) -> tuple[float, float]:
    return a.t_half_l + 1.5 * a.k, a.gap_l - a.lat_raise + 25.0 * a.k


def _fibula_outline(u: np.ndarray, v: np.ndarray, a: Anatomy) -> np.ndarray:
    cu, cv = _fibula_centre(a)
    head = _ellipse(u, v, cu, cv, a.fib_head_rx, a.fib_head_ry)
    styloid = _ellipse(u, v, cu + 6.5 * a.k, cv - 11.0 * a.k, 3.5 * a.k, 6.0 * a.k)
    shaft = _capsule(u, v, (cu - 0.5 * a.k, cv + 6.0 * a.k), (cu - 1.0 * a.k, cv + 600.0), a.fib_shaft)
    return np.asarray(head | styloid | shaft)


def _patella_centre(a: Anatomy) -> tuple[float, float]:
    return a.pat_u, -(a.pat_ry + a.pat_low)


def _patella_outline(u: np.ndarray, v: np.ndarray, a: Anatomy) -> np.ndarray:
    cu, cv = _patella_centre(a)
    rx = a.pat_rx * (1.0 - 0.22 * np.clip((v - cv) / a.pat_ry, -1, 1))
    return np.asarray(((u - cu) / rx) ** 2 + ((v - cv) / a.pat_ry) ** 2 < 1.0)


@dataclass(frozen=True)
class Profile:
    """Depth profile of a bone along ``v``: in-plane half-width ``a``, half-depth ``b``, cortical
    thickness ``c`` (mm) and the attenuation ``mu_in`` (1/mm) of what the cortex encloses."""

    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    mu_in: np.ndarray


def _profile(v: np.ndarray, knots: tuple[float, ...], **columns: tuple[float, ...]) -> Profile:
    vals = {name: np.interp(v, knots, col).astype(np.float32) for name, col in columns.items()}
    return Profile(a=vals["a"], b=vals["b"], c=vals["c"], mu_in=vals["mu_in"])


def bone_profile(name: str, v: np.ndarray, a: Anatomy) -> Profile:
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


def bone_anchor(name: str, a: Anatomy) -> tuple[float, float]:
    if name == "fibula":
        return _fibula_centre(a)
    if name == "patella":
        return _patella_centre(a)
    return 0.0, 0.0


OUTLINES = {
    "femur": _femur_outline,
    "tibia": _tibia_outline,
    "fibula": _fibula_outline,
    "patella": _patella_outline,
}


@dataclass(frozen=True)
class Lesion:
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


def draw_lesion(a: Anatomy, radius_mm: float, rng: np.random.Generator) -> Lesion:
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
    return Lesion("femur" if femur else "tibia", cu, cv, ru, rv, angle)


def bone_extent(name: str, a: Anatomy, v_min: float, v_max: float) -> tuple[tuple[float, float], tuple[float, float]]:
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
