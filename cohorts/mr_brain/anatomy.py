"""Per-subject anatomy of the mr-brain cohort: head size, shape and pose, elastic warp, ageing and
``organ_scale`` transfers, skull and scalp thickness; and the smooth Gaussian-basis fields they use."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from cohorts.mr_brain.template import _FRACTIONS, _conversion, _Template, _Transfer
from cohorts.mr_brain.tissue import _CSF, _GM, _T1, _WM, KIND, LABELS
from cohorts.subjects import Subject

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Anatomy:
    """The subject's head: ``forward`` maps template LPS (mm) to subject LPS (rotation times scaling),
    ``warp`` holds the coefficients of the elastic displacement (mm, template LPS) on the basis
    ``_WARP_CENTRES``,
    ``scale`` the mean linear scale, ``transfers`` the fractions of each interface transfer to apply."""

    forward: np.ndarray
    scale: float
    warp: np.ndarray  # (3, z, y, x centres) coefficients, N(0, 2 mm)
    diploe_mm: float
    fat_mm: float
    scalp: np.ndarray  # (3, 3, 3) log-thickness coefficients of skull and scalp on _BIAS_CENTRES
    transfers: dict[str, float]
    gamma: float


def _rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return np.asarray(mz @ my @ mx)


def _fraction_for(transfer: _Transfer, ml: float) -> float:
    """The fraction of ``transfer`` that moves ``ml`` (template space), limited to what it can move."""
    if ml <= 0:
        return 0.0
    if ml > transfer.moved_ml[-1]:
        logger.warning("asked to move %.0f ml, the interface allows %.0f ml", ml, transfer.moved_ml[-1])
    return float(np.interp(ml, transfer.moved_ml, _FRACTIONS))


def _draw_anatomy(subject: Subject, template: _Template) -> _Anatomy:
    """Draw the head of ``subject`` (all draws happen whatever the demographics, in a fixed order)."""
    rng = subject.rng("anatomy")
    male = subject.sex == "M"
    age = subject.age_years
    individual = float(np.clip(rng.normal(1.0, 0.02), 0.94, 1.06))
    axis_jitter = rng.normal(1.0, 0.015, size=3).clip(0.955, 1.045)
    angles = np.deg2rad(rng.normal(0.0, [1.5, 1.0, 1.0]).clip(-3.0, 3.0))  # pitch (about x), roll, yaw
    warp = rng.normal(0.0, 2.0, size=(3, *(c.size for c in _WARP_CENTRES)))
    cortical_indiv, ventricle_indiv = rng.uniform(0.7, 1.3, size=2)
    diploe = float(rng.uniform(2.0, 4.0))
    fat_indiv = float(rng.uniform(0.8, 1.2))
    gamma = float(rng.uniform(0.8, 1.25))
    scalp = rng.normal(0.0, 0.2, size=(3, 3, 3))

    scale = (0.89 if male else 0.86) * (subject.height_m / (1.77 if male else 1.64)) ** 0.25 * individual
    shape = {"Asian": (1.03, 0.98), "Black": (0.98, 1.02)}.get(subject.ethnic_group, (1.0, 1.0))
    axes = scale * np.array([shape[0], shape[1], 1.0]) * axis_jitter  # x (width), y (length), z
    forward = _rotation(*angles) @ np.diag(axes)

    # ageing, then organ_scale, as volumes (ml, template space) per interface
    want = dict.fromkeys(template.transfers, 0.0)
    want["gm_to_csf"] += 0.0025 * template.volume_ml[_GM] * max(0, age - 30) * cortical_indiv
    want["wm_to_csf"] += (0.6 * max(0, age - 35) + 0.03 * max(0, age - 60) ** 2) * ventricle_indiv
    organ = subject.shift.organ_scale
    unknown = sorted(set(organ) - {lab.name for lab in LABELS})
    if unknown:
        logger.warning(
            "organ_scale names %s are not structures of %s (%s); ignored",
            unknown,
            KIND,
            ", ".join(lab.name for lab in LABELS),
        )
    # (structure, channel, transfers and shares when it shrinks, when it grows)
    for name, channel, shrink, grow in (
        ("grey_matter", _GM, (("gm_to_csf", 1.0),), (("wm_to_gm", 1.0),)),
        ("white_matter", _WM, (("wm_to_csf", 0.65), ("wm_to_gm", 0.35)), (("gm_to_wm", 1.0),)),
        ("csf", _CSF, (("csf_to_gm", 1.0),), (("gm_to_csf", 0.5), ("wm_to_csf", 0.5))),
    ):
        change = float(organ.get(name, 1.0)) - 1.0
        for target, share in grow if change > 0 else shrink:
            want[target] += abs(change) * template.volume_ml[channel] * share
    fractions = {name: _fraction_for(template.transfers[name], ml) for name, ml in want.items()}
    fat = (3.0 + 0.25 * (subject.bmi - 22.0)) * (1.0 if male else 1.15) * fat_indiv
    fat = float(np.clip(fat, 2.0, 9.0))
    return _Anatomy(
        forward=forward,
        scale=float(np.cbrt(abs(np.linalg.det(forward)))),
        warp=warp,
        diploe_mm=diploe,
        fat_mm=fat,
        scalp=scalp,
        transfers=fractions,
        gamma=gamma * (1.0 - 0.002 * max(0, age - 40)),
    )


def _subject_stack(template: _Template, fractions: dict[str, float]) -> np.ndarray:
    """The template stack with the interface transfers applied (a copy; intensities follow)."""
    stack = template.stack
    if not any(f > 0 for f in fractions.values()):
        return stack
    stack = stack.copy()
    for name, fraction in fractions.items():
        if fraction <= 0:
            continue
        tr = template.transfers[name]
        conv = _conversion(tr.rank, fraction)
        live = conv > 0
        index, conv = tr.index[live], conv[live]
        rows = stack[index]
        csf = np.clip(tr.icv[live] - rows[:, _GM] - rows[:, _WM], 0.0, None)
        source = csf if tr.source == _CSF else rows[:, tr.source]
        moved = source * conv
        if tr.source != _CSF:
            rows[:, tr.source] -= moved
        if tr.sink != _CSF:
            rows[:, tr.sink] += moved
        rows[:, _T1] += moved * (template.intensity[tr.sink] - template.intensity[tr.source])
        stack[index] = rows
    return stack


#: Centres (subject LPS mm; z, y, x) of the Gaussian bumps of the elastic displacement (sigma 18 mm)
#: and of the bias field (sigma 70 mm); they cover any head.
_WARP_CENTRES = (
    np.arange(-120.0, 151.0, 30.0),
    np.arange(-150.0, 151.0, 30.0),
    np.arange(-120.0, 121.0, 30.0),
)
_BIAS_CENTRES = (np.array([-90.0, 0.0, 90.0]),) * 3


def _basis(coords: np.ndarray, centres: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian bumps (sigma mm) at ``centres`` evaluated at ``coords`` (mm): (coords, centres) float32."""
    return np.exp(-0.5 * ((coords[:, None] - centres[None, :]) / sigma) ** 2).astype(np.float32)


def _tensor_field(coef: np.ndarray, bz: np.ndarray, by: np.ndarray, bx: np.ndarray) -> np.ndarray:
    """Sum of ``coef[l, m, n] * bz[:, l] * by[:, m] * bx[:, n]``: a smooth (nz, ny, nx) float32 field."""
    t = np.tensordot(coef.astype(np.float32), bx, axes=([2], [1]))  # (L, M, nx)
    t = np.tensordot(by, t, axes=([1], [1]))  # (ny, L, nx)
    return np.asarray(np.tensordot(bz, t, axes=([1], [1])), dtype=np.float32)  # (nz, ny, nx)
