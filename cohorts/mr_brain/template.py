"""nilearn's MNI152 2009 template, loaded and prepared once per process (see :mod:`cohorts.mr_brain`):
intracranial volume and its signed distance, tissue probabilities, T1 intensities and the interfaces
along which tissue volume can move."""

from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from cohorts.mr_brain.tissue import _CSF, _GM, _WM

logger = logging.getLogger(__name__)

_FAR = 60.0  # distance (mm) given to points outside the head
_RAMP = 0.1  # width of the conversion front of a transfer, in rank units
_FRACTIONS = np.linspace(0.0, 1.0, 41)


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
