"""Synthetic 3D T1-weighted brain MR (MPRAGE) from the MNI152 2009 template, with tissue ground truth.

Source anatomy
--------------
nilearn's bundled MNI152 2009 (ICBM 152 nonlinear symmetric 09a, 1 mm, skull-stripped) T1, grey-matter
and white-matter probability maps and brain mask, as ``nilearn.datasets.load_mni152_template``,
``load_mni152_gm_template``, ``load_mni152_wm_template`` and ``load_mni152_brain_mask`` (``resolution=1``)
give them (no download; the files are read with nibabel, as importing nilearn takes seconds). They are
prepared once per process (about 3-5 s on two cores; ~165 MB kept in memory) and cached:

- the intracranial volume (ICV): the brain mask (T1 > 0.2), smoothed (2.5 mm) and closed, described by
  a signed distance to its surface (mm, negative inside; computed on a 2 mm grid and interpolated);
- tissue probabilities inside the ICV: ``gm`` and ``wm`` from the templates (times the ICV occupancy),
  ``csf = icv - gm - wm`` (everything intracranial that is neither grey nor white matter: sulcal and
  ventricular CSF), background ``1 - icv``;
- the T1 intensities (white matter = 1), with the skull-stripped margin inside the ICV filled with CSF
  signal; outside the ICV a synthetic skull and scalp are painted from the distance to the ICV surface
  (inner table, diploe, outer table, galea, subcutaneous fat, skin).

**Labels** are the argmax of (background, gm, wm, csf) per output voxel: grey matter 1, white matter 2,
CSF 3. Including background in the argmax is the threshold: a voxel is labelled only where the ICV
occupancy exceeds the background's.

Per subject
-----------
- head size: linear scale 0.89 (men) or 0.86 (women) of MNI space (MNI brains are larger than native
  ones), times ``(height / mean height of the sex) ** 0.25`` and 2% individual variation; head shape
  (cephalic index): width +3% and length -2% in the ``Asian`` group, width -2% and length +2% in the
  ``Black`` group, with 1.5% individual variation per axis;
- pose: rotation up to ~3 degrees about each axis;
- a smooth random elastic deformation (Gaussian basis every 30 mm, ~2 mm RMS) applied identically to
  intensities and tissue maps (trilinear interpolation, labels by argmax afterwards);
- ageing: after 30 years grey matter thins from the CSF side (0.25% of GM volume per year) and after 35
  the ventricles widen into the surrounding white matter (0.6 ml/year, accelerating after 60), each with
  +-30% individual variation; T1 grey/white contrast falls 0.2%/year after 40;
- skull and scalp: diploe 2-4 mm, subcutaneous fat ``3 + 0.25 (BMI - 22)`` mm (15% more in women,
  +-20% individual, 2-9 mm), the whole layer thickness varying smoothly (x 0.75-1.3) over the head.

Acquisition: field strength by manufacturer (1.5 T for Borealis Medical, 3 T otherwise), voxels
1.0-1.1 mm in plane and 1.0-1.2 mm between slices, a gamma (0.8-1.25) on tissue intensities, a smooth
multiplicative bias field (stronger at 3 T), Rician noise (magnitude of complex Gaussian noise; more at
1.5 T). The volume is cropped to the head (3-12 mm beyond 18 mm from the ICV surface, so a thick scalp
may touch an edge); its inferior face lies 2-6 mm above the template's lowest slice, through cerebellum
and brain stem as in a real scan.

Imaging shift (``subject.shift``)
---------------------------------
- ``contrast``: scales intensity differences from the grey/white mid level inside the head (GM/WM, CSF
  and scalp contrast), before gain and noise;
- ``noise``: multiplies the Rician noise standard deviation;
- ``intensity_offset``: added (a.u.) to every voxel of the head (weighted by the head occupancy), after
  gain and bias field;
- ``artefact_probability``: chance of one artefact, drawn from ``subject.rng("artefact")``: ``ghosting``
  (periodic k-space line modulation: faint copies of the head shifted by N/2..N/4 along the phase-encode
  direction, anterior-posterior) or ``motion`` (phase errors on a block of k-space lines from a 3-7 mm
  translation: ringing and ghosts along the phase-encode direction); named in
  ``acquisition["artefact"]`` (``"none"`` otherwise);
- ``organ_scale``: ``grey_matter``, ``white_matter``, ``csf`` change that tissue's volume by moving
  probability to or from a neighbour at their interface (GM < 1: cortex thins into CSF; GM > 1: GM
  grows into WM; WM < 1: ventricles widen (65%) and GM grows into WM (35%); WM > 1: WM grows into GM;
  CSF > 1: cortex thins and ventricles widen; CSF < 1: sulci fill with GM). The label volume follows
  approximately (a factor of 0.8 gives 0.75-0.9) and is limited to what the interface allows (a
  warning says so); other names are ignored with a warning;
- ``blur_mm``: extra Gaussian blur (sigma, mm) before noise.

Conventions a caller must know
------------------------------
Arrays are ``(slices, rows, columns)``: slices axial from superior to inferior (``slice_direction``
``(0, 0, -1)``), rows anterior -> posterior (+y LPS), columns patient right -> left (+x LPS),
``orientation`` ``(1, 0, 0, 0, 1, 0)``. ``origin`` is the LPS position of voxel (0, 0, 0). Subject space
is MNI space (RAS -> LPS: x and y negated) scaled about the anterior commissure, so LPS (0, 0, 0) is near
the AC. Pixels are float32 arbitrary units >= 0 (white matter ~ 600-1100).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft
from pydicom.sr.codedict import codes
from scipy import ndimage

from cohorts.image import Label, SyntheticImage
from cohorts.subjects import Subject

logger = logging.getLogger(__name__)

KIND = "mr-brain"

LABELS: tuple[Label, ...] = (
    Label.from_code(1, "grey_matter", codes.SCT.GrayMatter, (236, 142, 60), codes.cid7150.Tissue),
    Label.from_code(2, "white_matter", codes.SCT.WhiteMatter, (100, 180, 240), codes.cid7150.Tissue),
    Label.from_code(3, "csf", codes.SCT.CerebrospinalFluid, (90, 220, 120), codes.cid7150.Tissue),
)

# stack channels
_T1, _GM, _WM = 0, 1, 2
_CSF = -1  # implicit channel: icv - gm - wm
_FAR = 60.0  # distance (mm) given to points outside the head
_HEAD_MM = 30.0  # template voxels farther than this from the ICV are air (the skin lies within ~29 mm)
_RAMP = 0.1  # width of the conversion front of a transfer, in rank units
_FRACTIONS = np.linspace(0.0, 1.0, 41)
_CHUNK = 1 << 18  # points per chunk of trilinear interpolation

#: Field strength (T) by manufacturer; others get 3 T.
_FIELD = {"Aurora Imaging": 3.0, "Borealis Medical": 1.5, "Cygnus Systems": 3.0}


@dataclass(frozen=True)
class _Transfer:
    """Probability moved from ``source`` to ``sink`` (channels, or ``_CSF``) at an interface.

    ``index`` are flat template voxels of the interface band and ``rank`` (0..1] their order of
    conversion (1 = first). A fraction ``f`` converts the voxels with ``rank > 1 - f`` (soft front).
    """

    index: np.ndarray
    rank: np.ndarray
    icv: np.ndarray  # ICV occupancy of the band voxels (for CSF, which the stack does not hold)
    source: int
    sink: int
    moved_ml: np.ndarray  # ml moved in template space for each of _FRACTIONS


@dataclass(frozen=True)
class _Template:
    """The template, prepared once; see the module docstring. Arrays are in template voxel order
    ``(i, j, k)`` = (RAS x, y, z), flattened in C order."""

    stack: np.ndarray  # (voxels, 3) float32: t1 (WM = 1), gm, wm
    shape: tuple[int, int, int]
    distance: np.ndarray  # signed distance (mm) to the ICV surface on the 2 mm grid (voxel 2I + 0.5)
    vox_from_lps: np.ndarray  # (3, 4): template voxel index from template LPS (mm)
    head_lo: np.ndarray  # LPS bounding box of the head (mm), template space
    head_hi: np.ndarray
    bottom_z: float  # LPS z of the lowest template slice (mm)
    intensity: dict[int, float]  # T1 of pure GM, WM, CSF by channel
    volume_ml: dict[int, float]  # argmax label volumes in template space by channel
    transfers: dict[str, _Transfer]


_MNI_FILES = (
    "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
)


def _load_mni152() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """nilearn's bundled MNI152 2009 T1, grey- and white-matter maps, each float32 ``(i, j, k)`` scaled
    to a maximum of 1 (as ``nilearn.datasets.load_mni152_template``, ``load_mni152_gm_template`` and
    ``load_mni152_wm_template`` with ``resolution=1`` give them), and the voxel -> RAS affine.

    The files are read with nibabel from nilearn's package data, because importing nilearn takes
    seconds; where they are not there (another nilearn layout), nilearn's loaders are used.
    """
    spec = importlib.util.find_spec("nilearn")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    folder = Path(roots[0]) / "datasets" / "data" if roots else None
    if folder is not None and all((folder / name).is_file() for name in _MNI_FILES):
        from nibabel.nifti1 import Nifti1Image

        images = [Nifti1Image.from_filename(folder / name) for name in _MNI_FILES]
    else:
        from nilearn import datasets

        images = [
            datasets.load_mni152_template(resolution=1),
            datasets.load_mni152_gm_template(resolution=1),
            datasets.load_mni152_wm_template(resolution=1),
        ]
    maps = []
    for image in images:
        data = np.ascontiguousarray(image.get_fdata(dtype=np.float32))  # NIfTI data come in F order
        maps.append(data / data.max())
    return maps[0], maps[1], maps[2], np.asarray(images[0].affine, dtype=np.float64)


def _upsample2(a: np.ndarray) -> np.ndarray:
    """Linear 2x upsampling along every axis; coarse voxel I is centred between fine voxels 2I and
    2I + 1 (edges replicated)."""
    for axis in range(a.ndim):
        a = np.moveaxis(a, axis, 0)
        out = np.empty((2 * a.shape[0], *a.shape[1:]), a.dtype)
        out[0::2] = 0.75 * a
        out[0::2][1:] += 0.25 * a[:-1]
        out[0] += 0.25 * a[0]
        out[1::2] = 0.75 * a
        out[1::2][:-1] += 0.25 * a[1:]
        out[-1] += 0.25 * a[-1]
        a = np.moveaxis(out, 0, axis)
    return np.ascontiguousarray(a)


def _signed_distance(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance (mm, negative inside) to the surface of the smoothed, closed ``mask`` (1 mm
    voxels), computed on a 2 mm grid (returned second, clipped to -30..``_FAR``; its voxel I is centred
    on voxel 2I + 0.5) and interpolated back to the 1 mm grid (returned first)."""
    shape = mask.shape
    m = np.pad(mask.astype(np.float32), [(0, s % 2) for s in shape])
    half = m.reshape(m.shape[0] // 2, 2, m.shape[1] // 2, 2, m.shape[2] // 2, 2).mean(axis=(1, 3, 5))
    env = ndimage.binary_fill_holes(ndimage.gaussian_filter(half, 1.25) > 0.3)
    outside = ndimage.distance_transform_edt(~env, sampling=2.0)
    inside = ndimage.distance_transform_edt(env, sampling=2.0)
    sd = np.where(env, 1.0 - inside, outside - 1.0).astype(np.float32)  # surface midway between centres
    sd = np.clip(sd, -30.0, _FAR)
    return np.ascontiguousarray(_upsample2(sd)[: shape[0], : shape[1], : shape[2]]), sd


def _conversion(rank: np.ndarray, fraction: float) -> np.ndarray:
    return np.clip((rank - 1.0 + fraction * (1.0 + _RAMP)) / _RAMP, 0.0, 1.0)


def _make_transfer(
    band: np.ndarray, key: np.ndarray, source: int, sink: int, amounts: np.ndarray, icv: np.ndarray
) -> _Transfer:
    """The transfer over the voxels of ``band``, converting those with the largest ``key`` first;
    ``amounts`` is the source probability (to tabulate the volume moved)."""
    index = np.flatnonzero(band.ravel()).astype(np.int32)
    order = np.argsort(key.ravel()[index])
    n = index.size
    rank = np.empty(n, np.float32)
    rank[order] = (np.arange(n, dtype=np.float32) + 1) / n
    # volume moved for each fraction: the front's midpoint splits converted from kept voxels
    cumulative = np.concatenate([[0.0], np.cumsum(amounts.ravel()[index][order][::-1], dtype=np.float64)])
    converted = np.clip(np.round(n * (_FRACTIONS * (1.0 + _RAMP) - 0.5 * _RAMP)), 0, n).astype(int)
    return _Transfer(
        index=index,
        rank=rank,
        icv=icv.ravel()[index],
        source=source,
        sink=sink,
        moved_ml=cumulative[converted] / 1000.0,
    )


@functools.cache
def _template() -> _Template:
    """Load nilearn's bundled MNI152 2009 maps and prepare them (a few seconds, once per process)."""
    t1, gm, wm, affine = _load_mni152()
    if not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3]))):
        raise ValueError(f"expected an axis-aligned MNI152 template, got affine {affine.tolist()}")
    if not (t1.shape == gm.shape == wm.shape):
        raise ValueError(f"MNI152 maps differ in shape: {t1.shape}, {gm.shape}, {wm.shape}")
    brain = t1 > 0.2  # nilearn's load_mni152_brain_mask(resolution=1)

    dist, distance = _signed_distance(brain)
    icv = np.clip(0.5 - dist, 0.0, 1.0)
    gm *= icv
    wm *= icv
    over = np.maximum(gm + wm, 1.0)
    gm /= over
    wm /= over
    del over
    csf = np.clip(icv - gm - wm, 0.0, 1.0)

    t1 /= float(np.median(t1[wm > 0.9]))
    csf_level = float(np.median(t1[brain & (gm + wm < 0.1)]))
    t1 += (1.0 - np.clip(t1 / csf_level, 0.0, 1.0)) * csf_level  # fill the stripped margin with CSF
    intensity = {_GM: float(np.median(t1[gm > 0.8])), _WM: 1.0, _CSF: csf_level}
    del brain

    background = 1.0 - icv
    volume_ml = {
        _GM: float(((gm > background) & (gm >= wm) & (gm >= csf)).sum()) / 1000.0,
        _WM: float(((wm > background) & (wm > gm) & (wm >= csf)).sum()) / 1000.0,
        _CSF: float(((csf > background) & (csf > gm) & (csf > wm)).sum()) / 1000.0,
    }
    del background

    # interfaces along which tissue volume can move (ageing, organ_scale), one at a time for memory
    x_ras = affine[0, 0] * np.arange(t1.shape[0]) + affine[0, 3]
    z_ras = affine[2, 2] * np.arange(t1.shape[2]) + affine[2, 3]
    central = (np.abs(x_ras)[:, None, None] < 35.0) & (z_ras[None, None, :] > -5.0)  # lateral ventricles
    ventricles = (csf > 0.5) & (dist < -15.0) & central
    vent_dist = np.full(t1.shape, 99.0, np.float32)
    box = tuple(slice(max(int(ix.min()) - 14, 0), int(ix.max()) + 15) for ix in np.nonzero(ventricles))
    vent_dist[box] = ndimage.distance_transform_edt(~ventricles[box])
    del ventricles, central
    transfers = {"wm_to_csf": _make_transfer((wm > 0.05) & (vent_dist < 12.0), -vent_dist, _WM, _CSF, wm, icv)}
    near = ndimage.gaussian_filter(1.0 - gm - wm, 1.2, truncate=3.0)
    transfers["gm_to_csf"] = _make_transfer((gm > 0.05) & (near > 0.02), near, _GM, _CSF, gm, icv)
    near = ndimage.gaussian_filter(wm, 1.2, truncate=3.0)
    transfers["gm_to_wm"] = _make_transfer((gm > 0.05) & (near > 0.02), near, _GM, _WM, gm, icv)
    near = ndimage.gaussian_filter(gm, 1.2, truncate=3.0)
    transfers["wm_to_gm"] = _make_transfer((wm > 0.05) & (near > 0.02), near, _WM, _GM, wm, icv)
    sulcal = (csf > 0.35) & (icv > 0.5) & (near > 0.05) & (vent_dist > 3.0)  # CSF-labelled, next to GM
    transfers["csf_to_gm"] = _make_transfer(sulcal, near, _CSF, _GM, csf, icv)
    del near, sulcal, vent_dist, csf

    stack = np.stack([t1, gm, wm], axis=-1).reshape(-1, 3)
    del gm, wm

    lps_from_vox = np.diag([-1.0, -1.0, 1.0]) @ affine[:3]  # (3, 4)
    inside = np.nonzero(dist < 18.0)  # the skin lies 12-20 mm out
    corners = np.array([[ix.min(), ix.max()] for ix in inside], dtype=np.float64)  # (3, 2) voxel bounds
    grid = np.array(np.meshgrid(*corners, indexing="ij")).reshape(3, -1)
    lps = lps_from_vox[:, :3] @ grid + lps_from_vox[:, 3:4]
    vox_from_lps = np.linalg.inv(affine)[:3] @ np.diag([-1.0, -1.0, 1.0, 1.0])
    bottom = lps_from_vox @ np.array([0.0, 0.0, 0.0, 1.0])
    logger.info(
        "MNI152 template ready: ICV %.0f ml, GM %.0f ml, WM %.0f ml, CSF %.0f ml (template space)",
        float(icv.sum()) / 1000.0,
        volume_ml[_GM],
        volume_ml[_WM],
        volume_ml[_CSF],
    )
    return _Template(
        stack=stack,
        distance=distance,
        shape=(int(t1.shape[0]), int(t1.shape[1]), int(t1.shape[2])),
        vox_from_lps=vox_from_lps,
        head_lo=lps.min(axis=1),
        head_hi=lps.max(axis=1),
        bottom_z=float(bottom[2]),
        intensity=intensity,
        volume_ml=volume_ml,
        transfers=transfers,
    )


# --- per-subject anatomy -------------------------------------------------------------------------------


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


# --- sampling -------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class _Grid:
    """The output grid: ``shape`` (slices, rows, cols), ``spacing`` (dz, dy, dx) mm, LPS ``origin`` of
    voxel (0, 0, 0); slice s lies at ``origin z - s * dz``."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel-centre LPS coordinates (z, y, x) in mm, each 1-D float32."""
        (ns, nr, nc), (dz, dy, dx), (x0, y0, z0) = self.shape, self.spacing, self.origin
        z = (z0 - dz * np.arange(ns)).astype(np.float32)
        y = (y0 + dy * np.arange(nr)).astype(np.float32)
        x = (x0 + dx * np.arange(nc)).astype(np.float32)
        return z, y, x


def _template_coordinates(
    template: _Template,
    grid: _Grid,
    forward: np.ndarray,
    warp: np.ndarray | None,
    at: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Template voxel coordinates (i, j, k) of the output voxels: each (slices, rows, cols) float32, or
    1-D at the flat voxel indices ``at``.

    Subject LPS ``p`` comes from template LPS ``q`` by ``p = forward @ q``; the template point sampled is
    ``q = inverse(forward) @ p + d(p)`` with ``d`` the elastic displacement (``warp`` coefficients on the
    Gaussian basis ``_WARP_CENTRES``, mm), then converted to voxel indices with the template affine.
    """
    z, y, x = grid.axes()
    k = (template.vox_from_lps[:, :3] @ np.linalg.inv(forward)).astype(np.float32)  # voxel per LPS mm
    offset = template.vox_from_lps[:, 3].astype(np.float32)
    vox_coef = None
    if warp is not None:
        bz, by, bx = (_basis(c, centres, 18.0) for c, centres in zip((z, y, x), _WARP_CENTRES, strict=True))
        vox_coef = np.tensordot(template.vox_from_lps[:, :3], warp, axes=([1], [0]))  # (3, L, M, N)
    if at is not None:
        s_idx, r_idx, c_idx = np.unravel_index(at, grid.shape)
    out = []
    for a in range(3):
        field = None if vox_coef is None else _tensor_field(vox_coef[a], bz, by, bx)
        if at is None:
            c = np.zeros(grid.shape, np.float32) if field is None else field
            c += (k[a, 0] * x)[None, None, :]
            c += (k[a, 1] * y)[None, :, None]
            c += (k[a, 2] * z + offset[a])[:, None, None]
        else:
            c = (k[a, 0] * x)[c_idx] + (k[a, 1] * y)[r_idx] + (k[a, 2] * z + offset[a])[s_idx]
            if field is not None:
                c += field.ravel()[at]
        out.append(c)
    return out[0], out[1], out[2]


def _trilinear(array: np.ndarray, shape: tuple[int, ...], ci: np.ndarray, cj: np.ndarray, ck: np.ndarray) -> np.ndarray:
    """Trilinear samples of ``array`` (the voxels of ``shape`` flattened in C order, optionally times
    channels) at the voxel coordinates ``ci, cj, ck`` (1-D); beyond the edges the edge value holds.
    Works through the points in chunks to keep temporaries small."""
    ni, nj, nk = shape
    out = np.empty((ci.size, *array.shape[1:]), np.float32)
    for start in range(0, ci.size, _CHUNK):
        part = slice(start, start + _CHUNK)
        qi = np.clip(ci[part], 0.0, ni - 1.001)
        qj = np.clip(cj[part], 0.0, nj - 1.001)
        qk = np.clip(ck[part], 0.0, nk - 1.001)
        fi, fj, fk = qi.astype(np.int32), qj.astype(np.int32), qk.astype(np.int32)
        wi, wj, wk = qi - fi, qj - fj, qk - fk
        base = (fi * nj + fj) * nk + fk
        acc = out[part]
        acc[...] = 0.0
        for di in (0, 1):
            w_i = wi if di else 1.0 - wi
            for dj in (0, 1):
                w_ij = w_i * (wj if dj else 1.0 - wj)
                for dk in (0, 1):
                    w = w_ij * (wk if dk else 1.0 - wk)
                    corner = np.take(array, base + (di * nj * nk + dj * nk + dk), axis=0)
                    corner *= w if array.ndim == 1 else w[:, None]
                    acc += corner
    return out


@dataclass(frozen=True)
class _Samples:
    """What the output voxels see: ``head`` are the flat indices of the voxels in the head (the others
    are air), ``dist`` their signed distance (template mm) to the ICV surface, ``inside`` the positions
    in ``head`` of the voxels in or at the ICV and ``tissue`` (t1, gm, wm; points x 3) there."""

    head: np.ndarray
    dist: np.ndarray
    inside: np.ndarray
    tissue: np.ndarray


def _sample(stack: np.ndarray, template: _Template, grid: _Grid, anat: _Anatomy) -> _Samples:
    """Sample the template on ``grid`` for the head ``anat``: the distance to the ICV surface (on a
    grid twice as coarse, interpolated), then the tissue ``stack`` only where the ICV reaches."""
    (dz, dy, dx), (x0, y0, z0) = grid.spacing, grid.origin
    coarse = _Grid(
        shape=((grid.shape[0] + 1) // 2, (grid.shape[1] + 1) // 2, (grid.shape[2] + 1) // 2),
        spacing=(2 * dz, 2 * dy, 2 * dx),
        origin=(x0 + 0.5 * dx, y0 + 0.5 * dy, z0 - 0.5 * dz),  # coarse voxel I midway fine 2I, 2I + 1
    )
    ci, cj, ck = (c.ravel() for c in _template_coordinates(template, coarse, anat.forward, anat.warp))
    half = template.distance
    dist = _trilinear(half.ravel(), half.shape, (ci - 0.5) / 2, (cj - 0.5) / 2, (ck - 0.5) / 2)
    ns, nr, nc = grid.shape
    dist = _upsample2(dist.reshape(coarse.shape))[:ns, :nr, :nc].ravel()
    head = np.flatnonzero(dist < _HEAD_MM)
    dist = dist[head]
    inside = np.flatnonzero(dist < 0.6)
    ci, cj, ck = _template_coordinates(template, grid, anat.forward, anat.warp, at=head[inside])
    tissue = _trilinear(stack, template.shape, ci, cj, ck)
    return _Samples(head=head, dist=dist, inside=inside, tissue=tissue)


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
