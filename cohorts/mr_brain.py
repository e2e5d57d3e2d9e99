"""Synthetic 3D T1-weighted brain MR (MPRAGE) from the MNI152 2009 template, with tissue ground truth.

Source anatomy
--------------
nilearn's bundled MNI152 2009 (ICBM 152 nonlinear symmetric 09a, 1 mm, skull-stripped) T1, grey-matter
and white-matter probability maps and brain mask, loaded once per process (no download). From them, in
template space and cached:

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
- scalp fat thickens with BMI (and is 15% thicker in women).

Acquisition: field strength by manufacturer (1.5 T for Borealis Medical, 3 T otherwise), voxels
1.0-1.1 mm in plane and 1.0-1.2 mm between slices, a gamma (0.8-1.25) on tissue intensities, a smooth
multiplicative bias field (stronger at 3 T), Rician noise (magnitude of complex Gaussian noise; more at
1.5 T). The volume is cropped to the head with 4-20 mm of air around it; its inferior face lies a few mm
above the template's lowest slice, through cerebellum and brain stem as in a real scan.

Imaging shift (``subject.shift``)
---------------------------------
- ``contrast``: scales intensity differences from the grey/white mid level inside the head (GM/WM, CSF
  and scalp contrast), before gain and noise;
- ``noise``: multiplies the Rician noise standard deviation;
- ``intensity_offset``: added (a.u.) to every voxel of the head (weighted by the head occupancy), after
  gain and bias field;
- ``artefact_probability``: chance of one artefact, drawn from ``subject.rng("artefact")``: ``ghosting``
  (periodic k-space line modulation: faint copies of the head shifted by N/2..N/4 along the phase-encode
  direction, anterior-posterior) or ``motion`` (phase errors on a block of k-space lines from a 2-5 mm
  translation: ringing and ghosts along the phase-encode direction); named in
  ``acquisition["artefact"]`` (``"none"`` otherwise);
- ``organ_scale``: ``grey_matter``, ``white_matter``, ``csf`` change that tissue's volume by moving
  probability to or from a neighbour at their interface (GM < 1: cortex thins into CSF; GM > 1: GM
  grows into WM; WM < 1: ventricles widen; WM > 1: WM grows into GM; CSF > 1: both; CSF < 1: sulci
  fill with GM); the label volume follows approximately and is limited to what the interface allows
  (about 0.75-1.25); other names are ignored with a warning;
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
import logging
from dataclasses import dataclass

import numpy as np
import scipy.fft
from pydicom.sr.codedict import codes
from scipy import ndimage

from cohorts.image import Label, SyntheticImage
from cohorts.subjects import Subject

logger = logging.getLogger(__name__)

KIND = "mr-brain"

_TISSUE = ("85756007", "Tissue")


def _tissue_label(value: int, name: str, code: object, color: tuple[int, int, int]) -> Label:
    return Label(value, name, code.value, code.meaning, color, *_TISSUE)  # type: ignore[attr-defined]


LABELS: tuple[Label, ...] = (
    _tissue_label(1, "grey_matter", codes.SCT.GrayMatter, (236, 142, 60)),
    _tissue_label(2, "white_matter", codes.SCT.WhiteMatter, (100, 180, 240)),
    _tissue_label(3, "csf", codes.SCT.CerebrospinalFluid, (90, 220, 120)),
)

# stack channels
_T1, _GM, _WM, _DIST = 0, 1, 2, 3
_CSF = -1  # implicit channel: icv - gm - wm
_COARSE = 4  # voxels per cell of the coarse head mask
_FAR = 60.0  # distance (mm) given to points outside the head
_RAMP = 0.1  # width of the conversion front of a transfer, in rank units
_FRACTIONS = np.linspace(0.0, 1.0, 41)

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
    source: int
    sink: int
    moved_ml: np.ndarray  # ml moved in template space for each of _FRACTIONS


@dataclass(frozen=True)
class _Template:
    """The template, prepared once; see the module docstring. Arrays are in template voxel order
    ``(i, j, k)`` = (RAS x, y, z), flattened in C order."""

    stack: np.ndarray  # (voxels, 4) float16: t1 (WM = 1), gm, wm, signed distance to ICV surface (mm)
    shape: tuple[int, int, int]
    vox_from_lps: np.ndarray  # (3, 4): template voxel index from template LPS (mm)
    coarse: np.ndarray  # bool head mask, one cell per _COARSE**3 voxels
    head_lo: np.ndarray  # LPS bounding box of the head (mm), template space
    head_hi: np.ndarray
    bottom_z: float  # LPS z of the lowest template slice (mm)
    intensity: dict[int, float]  # T1 of pure GM, WM, CSF by channel
    volume_ml: dict[int, float]  # argmax label volumes in template space by channel
    transfers: dict[str, _Transfer]


def _signed_distance(mask: np.ndarray) -> np.ndarray:
    """Signed distance (mm, negative inside) to the surface of the smoothed, closed ``mask``
    (1 mm voxels), computed on a 2 mm grid and interpolated back."""
    shape = mask.shape
    m = np.pad(mask.astype(np.float32), [(0, s % 2) for s in shape])
    half = m.reshape(m.shape[0] // 2, 2, m.shape[1] // 2, 2, m.shape[2] // 2, 2).mean(axis=(1, 3, 5))
    env = ndimage.binary_fill_holes(ndimage.gaussian_filter(half, 1.25) > 0.3)
    outside = ndimage.distance_transform_edt(~env, sampling=2.0)
    inside = ndimage.distance_transform_edt(env, sampling=2.0)
    sd = np.where(env, 1.0 - inside, outside - 1.0).astype(np.float32)  # surface midway between centres
    fine = ndimage.zoom(sd, 2, order=1, mode="nearest", grid_mode=True)
    return np.ascontiguousarray(fine[: shape[0], : shape[1], : shape[2]])




def _conversion(rank: np.ndarray, fraction: float) -> np.ndarray:
    return np.clip((rank - 1.0 + fraction * (1.0 + _RAMP)) / _RAMP, 0.0, 1.0)


def _make_transfer(band: np.ndarray, key: np.ndarray, source: int, sink: int, amounts: np.ndarray) -> _Transfer:
    """The transfer over the voxels of ``band``, converting those with the largest ``key`` first;
    ``amounts`` is the source probability (to tabulate the volume moved)."""
    index = np.flatnonzero(band)
    order = np.argsort(key.ravel()[index])
    n = index.size
    rank = np.empty(n, np.float32)
    rank[order] = (np.arange(n, dtype=np.float32) + 1) / n
    # volume moved for each fraction: the front's midpoint splits converted from kept voxels
    cumulative = np.concatenate([[0.0], np.cumsum(amounts.ravel()[index][order][::-1], dtype=np.float64)])
    converted = np.clip(np.round(n * (_FRACTIONS * (1.0 + _RAMP) - 0.5 * _RAMP)), 0, n).astype(int)
    return _Transfer(index=index, rank=rank, source=source, sink=sink, moved_ml=cumulative[converted] / 1000.0)


@functools.cache
def _template() -> _Template:
    """Load nilearn's bundled MNI152 2009 maps and prepare them (a few seconds, once per process)."""
    from nilearn import datasets  # imported here: nilearn takes seconds to import

    t1_img = datasets.load_mni152_template(resolution=1)
    t1 = np.asarray(t1_img.get_fdata(dtype=np.float32))
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32))
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32))
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=1).get_fdata(dtype=np.float32)) > 0.5
    affine = np.asarray(t1_img.affine, dtype=np.float64)
    if not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3]))):
        raise ValueError(f"expected an axis-aligned MNI152 template, got affine {affine.tolist()}")
    if not (t1.shape == gm.shape == wm.shape == brain.shape):
        raise ValueError(f"MNI152 maps differ in shape: {t1.shape}, {gm.shape}, {wm.shape}, {brain.shape}")

    dist = _signed_distance(brain)
    icv = np.clip(0.5 - dist, 0.0, 1.0)
    gm = np.clip(gm, 0.0, 1.0) * icv
    wm = np.clip(wm, 0.0, 1.0) * icv
    over = np.maximum(gm + wm, 1.0)
    gm, wm = gm / over, wm / over
    csf = np.clip(icv - gm - wm, 0.0, 1.0)

    t1 = t1 / float(np.median(t1[wm > 0.9]))
    csf_level = float(np.median(t1[brain & (gm + wm < 0.1)]))
    t1 = t1 + (1.0 - np.clip(t1 / csf_level, 0.0, 1.0)) * csf_level  # fill the stripped margin with CSF
    intensity = {_GM: float(np.median(t1[gm > 0.8])), _WM: 1.0, _CSF: csf_level}

    volume_ml = {
        _GM: float(((gm > 1.0 - icv) & (gm >= wm) & (gm >= csf)).sum()) / 1000.0,
        _WM: float(((wm > 1.0 - icv) & (wm > gm) & (wm >= csf)).sum()) / 1000.0,
        _CSF: float(((csf > 1.0 - icv) & (csf > gm) & (csf > wm)).sum()) / 1000.0,
    }

    # interfaces along which tissue volume can move (ageing, organ_scale)
    near_csf = ndimage.gaussian_filter(1.0 - gm - wm, 1.2, truncate=3.0)
    near_gm = ndimage.gaussian_filter(gm, 1.2, truncate=3.0)
    near_wm = ndimage.gaussian_filter(wm, 1.2, truncate=3.0)
    x_ras = affine[0, 0] * np.arange(t1.shape[0]) + affine[0, 3]
    z_ras = affine[2, 2] * np.arange(t1.shape[2]) + affine[2, 3]
    central = (np.abs(x_ras)[:, None, None] < 35.0) & (z_ras[None, None, :] > -5.0)  # lateral ventricles
    ventricles = (csf > 0.5) & (dist < -15.0) & central
    vent_dist = np.full(t1.shape, 99.0, np.float32)
    box = tuple(slice(max(int(ix.min()) - 14, 0), int(ix.max()) + 15) for ix in np.nonzero(ventricles))
    vent_dist[box] = ndimage.distance_transform_edt(~ventricles[box])
    transfers = {
        "gm_to_csf": _make_transfer((gm > 0.05) & (near_csf > 0.02), near_csf, _GM, _CSF, gm),
        "wm_to_csf": _make_transfer((wm > 0.05) & (vent_dist < 12.0), -vent_dist, _WM, _CSF, wm),
        "wm_to_gm": _make_transfer((wm > 0.05) & (near_gm > 0.02), near_gm, _WM, _GM, wm),
        "gm_to_wm": _make_transfer((gm > 0.05) & (near_wm > 0.02), near_wm, _GM, _WM, gm),
        "csf_to_gm": _make_transfer((csf > 0.05) & (icv > 0.5) & (near_gm > 0.05), near_gm, _CSF, _GM, csf),
    }

    stack = np.stack([t1, gm, wm, np.clip(dist, -30.0, _FAR)], axis=-1).reshape(-1, 4).astype(np.float16)

    head = dist < 22.0
    coarse = ndimage.binary_dilation(_cells(np.pad(head, [(0, (-n) % _COARSE) for n in head.shape])))

    lps_from_vox = np.diag([-1.0, -1.0, 1.0]) @ affine[:3]  # (3, 4)
    inside = np.nonzero(dist < 18.0)
    corners = np.array([[ix.min(), ix.max()] for ix in inside], dtype=np.float64)  # (3, 2) voxel bounds
    grid = np.array(np.meshgrid(*corners, indexing="ij")).reshape(3, -1)
    lps = lps_from_vox[:, :3] @ grid + lps_from_vox[:, 3:4]
    vox_from_lps = np.linalg.inv(affine)[:3] @ np.diag([-1.0, -1.0, 1.0, 1.0])
    bottom = lps_from_vox @ np.array([0.0, 0.0, 0.0, 1.0])
    logger.info(
        "MNI152 template ready: ICV %.0f ml, GM %.0f ml, WM %.0f ml, CSF %.0f ml (template space)",
        float(icv.sum()) / 1000.0, volume_ml[_GM], volume_ml[_WM], volume_ml[_CSF],
    )
    return _Template(
        stack=stack,
        shape=(int(t1.shape[0]), int(t1.shape[1]), int(t1.shape[2])),
        vox_from_lps=vox_from_lps,
        coarse=coarse,
        head_lo=lps.min(axis=1),
        head_hi=lps.max(axis=1),
        bottom_z=float(bottom[2]),
        intensity=intensity,
        volume_ml=volume_ml,
        transfers=transfers,
    )


def _cells(mask: np.ndarray) -> np.ndarray:
    """Any-reduction of ``mask`` (shape divisible by _COARSE) over _COARSE**3 blocks."""
    a, b, c = (n // _COARSE for n in mask.shape)
    return np.asarray(mask.reshape(a, _COARSE, b, _COARSE, c, _COARSE).any(axis=(1, 3, 5)))
