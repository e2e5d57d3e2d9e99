"""The output grid of an mr-brain image and the template sampled on it (trilinear, through the subject's
pose and elastic warp)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cohorts.mr_brain.anatomy import _WARP_CENTRES, _Anatomy, _basis, _tensor_field
from cohorts.mr_brain.template import _Template, _upsample2

_HEAD_MM = 30.0  # template voxels farther than this from the ICV are air (the skin lies within ~29 mm)
_CHUNK = 1 << 18  # points per chunk of trilinear interpolation


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
