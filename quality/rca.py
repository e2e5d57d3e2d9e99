"""Reverse classification accuracy (RCA): how good is a segmentation, judged against references with truth.

Method (Valindria et al., "Reverse classification accuracy: predicting segmentation performance in the
absence of ground truth", IEEE TMI 36(8), 2017)
------------------------------------------------------------------------------------------------------
The predicted label map of a new case is taken as pseudo ground truth and used as an atlas. The case image
is registered (moving) onto each of ``k`` reference images (fixed) that have real ground truth, the
predicted labels are propagated through the transform (nearest neighbour) onto the reference, and scored
against the reference's truth. A good segmentation propagates onto a good segmentation of at least one
similar reference, a bad one onto none; so, per structure, the maximum Dice over the ``k`` references
estimates the Dice of the prediction. We also report the mean Dice over the ``k`` references and the 95th
percentile Hausdorff distance (mm) against the reference that gave the maximum Dice.

Only the part of a reference that the case's field of view maps onto is scored: a structure the case does not
show (a liver cut by the last slice, a femoral shaft leaving the radiograph) cannot have been segmented
there, and counting it would bias RCA low for reasons that have nothing to do with the segmentation.

How it is made cheap (the original took ~660 s per case)
-------------------------------------------------------
1. Everything runs on the bank's grid (3 mm isotropic for the CT abdomen model, the model's own grid; 1 mm
   for knee radiographs); a case is resampled onto it once.
2. Only the ``k`` (default 5) most similar references are registered. Similarity is the normalised
   cross-correlation of thumbnails (block means of 4 voxels per axis: 12 mm for CT) placed in a common box
   centred on each image's intensity centre of mass, so that where the patient lies in the field of view
   does not count, only body shape, size and anatomy. Milliseconds per reference.
3. Registration (SimpleITK) is affine (regular-step gradient descent, centres of mass aligned first) then
   cubic B-spline (L-BFGS-B), each over a pyramid of shrink factors with Gaussian smoothing, with a
   correlation metric evaluated on a fixed-seed random sample of voxels. The pyramids are built once per
   image (references: once per bank, cached), not by ITK once per level of every registration: ITK would
   smooth the full-resolution moving image again each time, which costs more than the optimisation.
   Defaults for CT: affine at shrink 8 and 4, B-spline with control points 120 mm apart at shrink 4.
4. The transform is resampled into a displacement field on the coarse grid before labels are propagated:
   evaluating the B-spline at every full-resolution voxel would again cost more than the registration.
5. Dice for all ``k`` references comes from one joint histogram each; HD95 only for the best reference of
   each structure, on surfaces within the structures' common bounding box (exact Euclidean distance
   transforms in mm).

Per CT case (``k = 5``, 20 references) this takes ~4-7 s on two shared CPU cores, ~100x faster than the
original; a knee radiograph ~1-2 s (``benchmarks/rca.py`` measures it).

Radiographs
-----------
Whole rows or columns at the border that are bright and flat (collimation shutters) are not anatomy: they
are set to 0 and masked out of the metric. :meth:`RcaSettings.radiograph` adds local contrast
normalisation (uncalibrated intensities: soft tissue ranges from dark to as bright as bone) and lets each
reference be matched by the case or its mirror image (left and right knees).

Conventions
-----------
Arrays are ``(slices, rows, columns)`` for volumes and ``(rows, columns)`` for radiographs; spacings are
millimetres in the same order. Images are float32 in [0, 1], normalised as the model's input; label maps
are uint8 with 0 as background and ``1..L`` the structures named by ``ReferenceBank.label_names``.

A structure absent from both the propagated mask and the reference truth has Dice 1.0, absent from only one
of them Dice 0.0. HD95 is ``float('nan')`` when either mask is empty (undefined, not infinite).
``json.dumps`` writes NaN as the non-standard token ``NaN``, which strict JSON parsers (and PostgreSQL's
``json``) refuse: consumers map it to ``null`` (``math.isnan``) before serialising.

If the bank holds fewer references than ``k``, ``k`` is clamped to the bank size with a warning in the log
(RCA against fewer references still says something, and ``RcaResult.references`` shows how many were used);
an empty bank is an error. Results are deterministic run to run (fixed sampling seed) for a given
``RcaSettings.threads``.
"""

from __future__ import annotations

import json
import logging
import math
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import SimpleITK as sitk  # noqa: N813 - the name SimpleITK's own documentation uses
from scipy import ndimage

from quality.types import RcaResult, StructureRca

logger = logging.getLogger(__name__)

#: Demographic attributes every reference carries (the registry's audit dimensions).
DEMOGRAPHIC_KEYS: tuple[str, ...] = ("sex", "age_band", "ethnic_group", "bmi_band")

_FORMAT = "fairnode-rca-bank"
_VERSION = 1


Level = tuple[int, float]
"""One resolution level: (shrink factor, Gaussian sigma in voxels of the bank grid before shrinking)."""
Pyramid = dict[Level, tuple[sitk.Image, sitk.Image | None]]
"""An image at each level: (smoothed and shrunk image, mask of its valid voxels or None)."""


class RcaError(ValueError):
    """An RCA input, setting or bank file is unusable; the message says what and why."""


Metric = Literal["correlation", "mean_squares", "mattes"]


@dataclass(frozen=True)
class RcaSettings:
    """How RCA chooses references and registers the case onto them.

    The defaults suit 3D CT on a 3 mm grid and meet the target of <= 15 s per abdomen case with ``k = 5`` on
    two CPU cores; :meth:`radiograph` gives settings for 2D radiographs on a 1 mm grid.

    Attributes
    ----------
    k
        Number of most similar references registered per case.
    thumbnail_factor
        Block size (voxels of the bank grid per axis) of the thumbnails compared to choose references.
    affine_iterations
        Maximum iterations per resolution level of the affine stage (regular-step gradient descent).
    affine_step_mm
        First step of the affine optimiser, about mm of voxel motion (parameter scales from physical shift);
        it halves whenever the direction reverses, down to 1/64 of this.
    affine_shrink_factors, affine_smoothing_sigmas
        Per level, from coarse to fine: shrink factor of the images (block averages) and Gaussian sigma in
        voxels of the bank grid, applied before shrinking.
    bspline_iterations
        Maximum iterations (L-BFGS-B) per resolution level of the cubic B-spline stage; 0 skips the stage.
    bspline_shrink_factors, bspline_smoothing_sigmas
        As for the affine stage.
    bspline_grid_spacing_mm
        Distance between B-spline control points in mm (the mesh size of a reference is its extent divided by
        this, at least 1 per axis); in mm so that one value means the same on any grid. Coarse on purpose:
        ITK's v4 metrics evaluate a B-spline with a dense Jacobian, so each sample costs in proportion to
        the number of control points.
    sampling_percentage, bspline_sampling_percentage
        Fraction (0, 1] of the reference's voxels (at each level) sampled at random, with ``seed``, to
        evaluate the metric in the affine and the B-spline stage.
    metric
        ``correlation`` (default: same modality and normalisation, insensitive to a global contrast or
        brightness change between scanners), ``mean_squares``, or ``mattes`` (mutual information).
    local_contrast_mm
        When set, images are compared and registered after local contrast normalisation: minus the local mean,
        divided by the local standard deviation (Gaussian windows of this sigma, mm). For modalities whose
        intensities are not calibrated (radiographs, percentile-normalised): soft tissue then weighs no more
        than bone edges. ``None`` (default, CT in Hounsfield units) uses the intensities as they are.
    mirror_axis
        Array axis along which the case may be mirrored to match a reference: radiographs of either side
        against a bank of both (knee: 1, columns). Each reference is then compared with both the case and its
        mirror image (thumbnails, then the coarsest affine level) and the better one is registered.
        Only for label sets without left/right structures; ``None`` (default) never mirrors.
    threads
        Threads SimpleITK uses per registration. Results are identical run to run for a given value; another
        value may change the last digits.
    seed
        Seed of the metric's random sampling.
    """

    k: int = 5
    thumbnail_factor: int = 4
    affine_iterations: int = 40
    affine_step_mm: float = 1.0
    affine_shrink_factors: tuple[int, ...] = (8, 4)
    affine_smoothing_sigmas: tuple[float, ...] = (4.0, 2.0)
    bspline_iterations: int = 15
    bspline_shrink_factors: tuple[int, ...] = (4,)
    bspline_smoothing_sigmas: tuple[float, ...] = (2.0,)
    bspline_grid_spacing_mm: float = 120.0
    sampling_percentage: float = 0.1
    bspline_sampling_percentage: float = 0.1
    metric: Metric = "correlation"
    local_contrast_mm: float | None = None
    mirror_axis: int | None = None
    threads: int = 2
    seed: int = 20170801

    @classmethod
    def radiograph(cls, **changes: Any) -> RcaSettings:
        """Settings for 2D radiographs on a 1 mm grid (knee: about 0.6 s per case with ``k = 5`` on 2 cores).

        Finer than the CT defaults, which 2D affords: affine at shrink 4 and 2, B-spline with control points
        50 mm apart at shrink 2, denser sampling; local contrast normalisation over 10 mm (exposure, body habitus
        and percentile normalisation make soft tissue anything from dark to as bright as bone); and the case
        mirrored along columns when that fits a reference better (left and right knees). ``changes`` override
        single fields.
        """
        base = cls(
            affine_shrink_factors=(4, 2),
            affine_smoothing_sigmas=(2.0, 1.0),
            bspline_shrink_factors=(2,),
            bspline_smoothing_sigmas=(1.0,),
            bspline_grid_spacing_mm=50.0,
            sampling_percentage=0.25,
            bspline_sampling_percentage=0.1,
            local_contrast_mm=10.0,
            mirror_axis=1,
        )
        return replace(base, **changes)

    def __post_init__(self) -> None:
        positive = {
            "k": self.k,
            "thumbnail_factor": self.thumbnail_factor,
            "affine_iterations": self.affine_iterations,
            "threads": self.threads,
        }
        for name, value in positive.items():
            if value < 1:
                raise RcaError(f"{name} must be >= 1, got {value}")
        if self.bspline_iterations < 0:
            raise RcaError(f"bspline_iterations must be >= 0, got {self.bspline_iterations}")
        for stage in ("affine", "bspline"):
            shrink: tuple[int, ...] = getattr(self, f"{stage}_shrink_factors")
            sigmas: tuple[float, ...] = getattr(self, f"{stage}_smoothing_sigmas")
            if not shrink or len(shrink) != len(sigmas) or min(shrink) < 1 or min(sigmas) < 0:
                raise RcaError(
                    f"{stage}_shrink_factors {shrink} and {stage}_smoothing_sigmas {sigmas} must be non-empty, "
                    "of equal length, with shrink factors >= 1 and sigmas >= 0"
                )
        for name in ("affine_step_mm", "bspline_grid_spacing_mm", "local_contrast_mm"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise RcaError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("sampling_percentage", "bspline_sampling_percentage"):
            if not 0 < getattr(self, name) <= 1:
                raise RcaError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.metric not in get_args(Metric):
            raise RcaError(f"metric {self.metric!r} is not one of {get_args(Metric)}")


@dataclass
class Reference:
    """One reference image with its ground truth, on the bank's grid.

    Attributes
    ----------
    id
        Unique name of the reference within its bank.
    image
        float32 in [0, 1], normalised as the model input; ``(slices, rows, columns)`` or ``(rows, columns)``.
    labels
        uint8 of the same shape; 0 background, ``1..L`` the bank's structures.
    demographics
        ``sex``, ``age_band``, ``ethnic_group`` and ``bmi_band`` of the subject (other keys are kept).
    """

    id: str
    image: np.ndarray
    labels: np.ndarray
    demographics: dict[str, str]


@dataclass
class ReferenceBank:
    """References with ground truth on one grid, against which RCA scores a case.

    Attributes
    ----------
    spacing
        mm per array axis: ``(slice, row, column)`` for 3D, ``(row, column)`` for 2D.
    label_names
        Name of each structure; index ``i`` is label value ``i + 1``.
    references
        The references, in the order they were added.
    """

    spacing: tuple[float, ...]
    label_names: tuple[str, ...]
    references: list[Reference] = field(default_factory=list)
    # derived data of each reference, computed on first use and keyed by (reference id, local contrast sigma,
    # ...): references are not to be changed once added
    _prepared: dict[tuple[str, float | None], tuple[np.ndarray, np.ndarray | None]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _thumbnails: dict[tuple[str, float | None, int], np.ndarray] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _pyramids: dict[tuple[str, float | None, int, float], tuple[sitk.Image, sitk.Image | None]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)
        self.label_names = tuple(self.label_names)
        if len(self.spacing) not in (2, 3) or not all(math.isfinite(s) and s > 0 for s in self.spacing):
            raise RcaError(f"bank spacing must be 2 or 3 positive numbers (mm), got {self.spacing}")
        if not self.label_names or len(self.label_names) > 254:
            raise RcaError(f"a bank needs 1 to 254 label names, got {len(self.label_names)}")
        if len(set(self.label_names)) != len(self.label_names):
            raise RcaError(f"label names must be unique, got {self.label_names}")

    @property
    def ndim(self) -> int:
        """2 for radiograph banks, 3 for volume banks."""
        return len(self.spacing)

    @classmethod
    def build(cls, spacing: tuple[float, ...], label_names: tuple[str, ...]) -> ReferenceBank:
        """An empty bank on a grid of ``spacing`` (mm per array axis) for the structures ``label_names``."""
        return cls(spacing=tuple(spacing), label_names=tuple(label_names))

    def add(
        self,
        id: str,
        image: np.ndarray,
        labels: np.ndarray,
        image_spacing: tuple[float, ...],
        demographics: dict[str, str],
    ) -> Reference:
        """Resample a reference onto the bank's grid and store it.

        Parameters
        ----------
        id
            Unique identifier of the reference within the bank.
        image
            float32 in [0, 1] (normalised as the model input), ``(slices, rows, columns)`` or
            ``(rows, columns)``; resampled with linear interpolation (Gaussian anti-aliasing when
            coarsened). Stored quantised to 1/255, as :meth:`save` writes it.
        labels
            Ground truth of the same shape, 0 background and ``1..L``; resampled with nearest neighbour.
        image_spacing
            mm per array axis of ``image`` and ``labels``.
        demographics
            Must hold ``sex``, ``age_band``, ``ethnic_group`` and ``bmi_band``.

        Returns
        -------
        Reference
            The stored reference, on the bank's grid.

        Raises
        ------
        RcaError
            For a duplicate id, missing demographics, shapes or spacing that do not fit the bank, an image
            outside [0, 1] or labels outside ``0..L``.
        """
        if any(r.id == id for r in self.references):
            raise RcaError(f"reference id {id!r} is already in the bank")
        missing = [key for key in DEMOGRAPHIC_KEYS if key not in demographics]
        if missing:
            raise RcaError(f"reference {id!r}: demographics lack {missing}; required are {list(DEMOGRAPHIC_KEYS)}")
        img, lab = _checked_pair(image, labels, image_spacing, self, what=f"reference {id!r}")
        img, lab = _to_grid(img, lab, tuple(float(s) for s in image_spacing), self.spacing)
        ref = Reference(
            id=str(id),
            image=_quantise(img),
            labels=lab,
            demographics={str(k): str(v) for k, v in demographics.items()},
        )
        self.references.append(ref)
        return ref

    def composition(self) -> dict[str, dict[str, int]]:
        """Counts of references per value of ``sex``, ``age_band``, ``ethnic_group`` and ``bmi_band``."""
        return {
            key: dict(sorted(Counter(r.demographics.get(key, "unknown") for r in self.references).items()))
            for key in DEMOGRAPHIC_KEYS
        }

    def save(self, path: Path | str) -> Path:
        """Write the bank to one compressed ``.npz`` file: images as uint8 0..255, labels as uint8, metadata as a
        JSON string; bzip2-compressed members, written to a temporary file first and then renamed.

        About 0.35 MB per CT reference on the 3 mm grid (image noise is what does not compress).

        Returns
        -------
        Path
            The file written (``.npz`` is appended when ``path`` lacks it).
        """
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "spacing": list(self.spacing),
            "label_names": list(self.label_names),
            "references": [
                {"id": r.id, "shape": list(r.image.shape), "demographics": r.demographics} for r in self.references
            ],
        }
        arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta))}
        for i, r in enumerate(self.references):
            arrays[f"image_{i}"] = np.round(r.image * 255.0).astype(np.uint8)
            arrays[f"labels_{i}"] = r.labels.astype(np.uint8)
        # an .npz is a zip of .npy files; bzip2 instead of numpy's deflate makes the noisy images ~25% smaller
        partial = path.with_name(path.name + ".partial")
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_BZIP2) as archive:
            for name, array in arrays.items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)
        partial.replace(path)
        return path

    @classmethod
    def load(cls, path: Path | str) -> ReferenceBank:
        """Read a bank written by :meth:`save`.

        Raises
        ------
        RcaError
            Naming the file, when it cannot be read, is not a bank, or its arrays disagree with its metadata.
        """
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except FileNotFoundError as exc:
            raise RcaError(f"RCA bank {path}: no such file") from exc
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise RcaError(f"RCA bank {path}: not a readable .npz file ({exc})") from exc
        try:
            return cls._from_arrays(arrays)
        except RcaError as exc:
            raise RcaError(f"RCA bank {path}: {exc}") from exc

    @classmethod
    def _from_arrays(cls, arrays: dict[str, np.ndarray]) -> ReferenceBank:
        if "meta" not in arrays:
            raise RcaError("no 'meta' entry; not written by ReferenceBank.save")
        try:
            meta = json.loads(str(arrays["meta"]))
        except json.JSONDecodeError as exc:
            raise RcaError(f"metadata is not valid JSON ({exc})") from exc
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise RcaError(f"metadata format is not {_FORMAT!r}")
        if meta.get("version") != _VERSION:
            raise RcaError(f"bank version {meta.get('version')!r} is not supported (this code reads {_VERSION})")
        try:
            bank = cls(spacing=tuple(meta["spacing"]), label_names=tuple(str(n) for n in meta["label_names"]))
            entries = list(meta["references"])
        except RcaError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise RcaError(f"metadata lacks or mangles spacing, label_names or references ({exc!r})") from exc
        for i, entry in enumerate(entries):
            image, labels = arrays.get(f"image_{i}"), arrays.get(f"labels_{i}")
            if image is None or labels is None:
                raise RcaError(f"reference {i} has no image_{i}/labels_{i} arrays")
            if not isinstance(entry, dict) or not isinstance(entry.get("demographics"), dict) or "id" not in entry:
                raise RcaError(f"reference {i}: metadata lacks its id or demographics")
            if any(r.id == str(entry["id"]) for r in bank.references):
                raise RcaError(f"reference {i}: id {entry['id']!r} appears twice")
            shape = tuple(entry.get("shape", ()))
            if image.dtype != np.uint8 or labels.dtype != np.uint8:
                raise RcaError(f"reference {i}: arrays must be uint8, got {image.dtype} and {labels.dtype}")
            if image.shape != shape or labels.shape != shape or len(shape) != bank.ndim:
                raise RcaError(
                    f"reference {i}: image {image.shape} and labels {labels.shape} disagree with the recorded "
                    f"shape {shape} or the bank's {bank.ndim} dimensions"
                )
            if labels.size and int(labels.max()) > len(bank.label_names):
                raise RcaError(f"reference {i}: label {int(labels.max())} beyond the {len(bank.label_names)} names")
            demographics = entry["demographics"]
            bank.references.append(
                Reference(
                    id=str(entry["id"]),
                    image=image.astype(np.float32) / np.float32(255.0),
                    labels=labels,
                    demographics={str(k): str(v) for k, v in demographics.items()},
                )
            )
        if len(entries) != sum(1 for name in arrays if name.startswith("image_")):
            raise RcaError(f"metadata lists {len(entries)} references but the file holds a different number")
        return bank

    def _registration_image(self, ref: Reference, contrast_mm: float | None) -> tuple[np.ndarray, np.ndarray | None]:
        key = (ref.id, contrast_mm)
        if key not in self._prepared:
            self._prepared[key] = _registration_image(ref.image, self.spacing, contrast_mm)
        return self._prepared[key]

    def _thumbnail(self, ref: Reference, contrast_mm: float | None, factor: int) -> np.ndarray:
        key = (ref.id, contrast_mm, factor)
        if key not in self._thumbnails:
            self._thumbnails[key] = _block_mean(self._registration_image(ref, contrast_mm)[0], factor)
        return self._thumbnails[key]

    def _pyramid(self, ref: Reference, contrast_mm: float | None, levels: list[Level]) -> Pyramid:
        out = {}
        for level in levels:
            key = (ref.id, contrast_mm, *level)
            if key not in self._pyramids:
                image, valid = self._registration_image(ref, contrast_mm)
                self._pyramids[key] = _pyramid_level(image, valid, self.spacing, level)
            out[level] = self._pyramids[key]
        return out


def estimate(
    image: np.ndarray,
    labels: np.ndarray,
    spacing: tuple[float, ...],
    bank: ReferenceBank,
    k: int | None = None,
    settings: RcaSettings | None = None,
) -> RcaResult:
    """Estimate each structure's Dice of a predicted label map by reverse classification accuracy.

    Parameters
    ----------
    image
        The case's network input: float32 in [0, 1], normalised as the bank's images;
        ``(slices, rows, columns)`` or ``(rows, columns)``.
    labels
        The predicted label map, uint8 of the same shape (0 background, ``1..L`` as the bank's names).
    spacing
        mm per array axis of ``image`` and ``labels`` (the model grid).
    bank
        The references; the case is resampled onto the bank's spacing.
    k
        Number of references to register; ``None`` takes ``settings.k`` (5 by default). Clamped, with a
        warning in the log, to the bank size.
    settings
        Selection and registration parameters; ``None`` uses :class:`RcaSettings` defaults (3D CT); pass
        :meth:`RcaSettings.radiograph` for radiographs.

    Returns
    -------
    RcaResult
        Per structure (label ``1..L``, in order): max and mean Dice over the ``k`` references and HD95 (mm)
        against the reference with the max Dice (``nan`` when either mask is empty), each scored where the
        case's field of view lands on the reference; the reference ids, most similar first; the wall-clock
        seconds.

    Raises
    ------
    RcaError
        For an empty bank, a dimensionality, shape or spacing that does not fit, an image outside [0, 1] or
        labels beyond the bank's structures.
    """
    started = time.perf_counter()
    settings = settings or RcaSettings()
    k = settings.k if k is None else k
    if k < 1:
        raise RcaError(f"k must be >= 1, got {k}")
    if not bank.references:
        raise RcaError("the RCA bank is empty; add references before estimating")
    if k > len(bank.references):
        logger.warning("RCA: k=%d but the bank holds %d references; using all of them", k, len(bank.references))
        k = len(bank.references)
    img, lab = _checked_pair(image, labels, spacing, bank, what="case")
    if settings.mirror_axis is not None and not -bank.ndim <= settings.mirror_axis < bank.ndim:
        raise RcaError(f"mirror_axis {settings.mirror_axis} is not an axis of the bank's {bank.ndim}D images")
    img, lab = _to_grid(img, lab, tuple(float(s) for s in spacing), bank.spacing)

    shown, valid = _registration_image(img, bank.spacing, settings.local_contrast_mm)
    chosen = _most_similar(shown, bank, k, settings)
    selected = time.perf_counter()

    n_labels = len(bank.label_names)
    levels = _levels(settings)
    views = {
        mirrored: _case_view(shown, valid, lab, bank.spacing, levels, settings.mirror_axis if mirrored else None)
        for mirrored in ((False, True) if settings.mirror_axis is not None else (False,))
    }
    dice = np.zeros((k, n_labels), dtype=np.float64)
    propagated: list[np.ndarray] = []
    truths: list[np.ndarray] = []
    for j, ref in enumerate(chosen):
        fixed = bank._pyramid(ref, settings.local_contrast_mm, levels)
        affine, mirrored = _affine(fixed, {m: view[0] for m, view in views.items()}, settings)
        moving, moving_labels = views[mirrored]
        transform = _bspline(fixed, moving, affine, settings)
        # labels + 1 with default 0: one resampling gives the propagated labels and where the case's field of
        # view lands (what the case does not show, it cannot have segmented: not scored)
        grid = _to_sitk(ref.labels, bank.spacing)
        warped = sitk.GetArrayFromImage(
            sitk.Resample(moving_labels, grid, _dense(transform, fixed, settings), sitk.sitkNearestNeighbor, 0)
        )
        propagated.append(np.where(warped > 0, warped - 1, 0).astype(np.uint8))
        truths.append(np.where(warped > 0, ref.labels, 0).astype(np.uint8))
        dice[j] = _dice_per_label(propagated[j], truths[j], n_labels)
    structures = []
    for i, name in enumerate(bank.label_names):
        best = int(np.argmax(dice[:, i]))  # ties: the more similar reference
        structures.append(
            StructureRca(
                label=i + 1,
                name=name,
                max_dice=float(dice[best, i]),
                mean_dice=float(dice[:, i].mean()),
                hd95_mm=_hd95(propagated[best] == i + 1, truths[best] == i + 1, bank.spacing),
            )
        )
    finished = time.perf_counter()
    logger.debug(
        "RCA: chose %d of %d references in %.2f s, registered and scored them in %.2f s",
        k,
        len(bank.references),
        selected - started,
        finished - selected,
        extra={"rca_selection_s": selected - started, "rca_registration_s": finished - selected},
    )
    return RcaResult(
        structures=tuple(structures),
        references=tuple(ref.id for ref in chosen),
        seconds=finished - started,
    )


def _dense(transform: sitk.Transform, fixed: Pyramid, settings: RcaSettings) -> sitk.Transform:
    """``transform`` sampled as a displacement field on the reference's grid of the finest B-spline level,
    widened by two voxels on every side so that it covers the whole full-resolution grid.

    Resampling through a composite affine + B-spline transform evaluates the B-spline at every voxel, which
    costs more than the registration; a displacement field interpolates linearly instead. The B-spline's
    control points are several coarse voxels apart, so the error of the interpolation is far below a voxel.
    """
    finest_bspline = min(zip(settings.bspline_shrink_factors, settings.bspline_smoothing_sigmas, strict=True))
    coarse = fixed[finest_bspline][0]
    spacing = np.array(coarse.GetSpacing())
    size = [n + 4 for n in coarse.GetSize()]
    origin = np.array(coarse.GetOrigin()) - 2 * spacing
    field = sitk.TransformToDisplacementField(
        transform, sitk.sitkVectorFloat64, size, origin.tolist(), spacing.tolist(), coarse.GetDirection()
    )
    return sitk.DisplacementFieldTransform(field)


def _case_view(
    shown: np.ndarray,
    valid: np.ndarray | None,
    labels: np.ndarray,
    spacing: tuple[float, ...],
    levels: list[Level],
    mirror_axis: int | None,
) -> tuple[Pyramid, sitk.Image]:
    """The case's pyramid and its labels plus one (0 marks outside the case), mirrored along ``mirror_axis``
    unless that is ``None``."""
    if mirror_axis is not None:
        shown, labels = np.flip(shown, mirror_axis), np.flip(labels, mirror_axis)
        valid = None if valid is None else np.flip(valid, mirror_axis)
    shown, labels = np.ascontiguousarray(shown), np.ascontiguousarray(labels)
    valid = None if valid is None else np.ascontiguousarray(valid)
    pyramid = {level: _pyramid_level(shown, valid, spacing, level) for level in levels}
    return pyramid, _to_sitk(labels + np.uint8(1), spacing)


# --- checks and grids -------------------------------------------------------------------------------------


def _checked_pair(
    image: np.ndarray, labels: np.ndarray, spacing: tuple[float, ...], bank: ReferenceBank, what: str
) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.ndim != bank.ndim:
        raise RcaError(f"{what}: image has {image.ndim} dimensions {image.shape}, the bank holds {bank.ndim}D images")
    if labels.shape != image.shape:
        raise RcaError(f"{what}: labels {labels.shape} and image {image.shape} must have the same shape")
    if len(spacing) != image.ndim or not all(math.isfinite(float(s)) and float(s) > 0 for s in spacing):
        raise RcaError(f"{what}: spacing {tuple(spacing)} must be {image.ndim} positive numbers (mm)")
    if min(image.shape) < 2:
        raise RcaError(f"{what}: image shape {image.shape} is degenerate (every axis needs >= 2 voxels)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise RcaError(f"{what}: labels must be an integer label map, got dtype {labels.dtype}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi > len(bank.label_names):
        raise RcaError(f"{what}: labels span {lo}..{hi}; allowed are 0..{len(bank.label_names)}")
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise RcaError(f"{what}: image holds NaN or infinite values")
    if float(image.min()) < -1e-3 or float(image.max()) > 1 + 1e-3:
        raise RcaError(
            f"{what}: image spans {float(image.min()):.3g}..{float(image.max()):.3g}; it must be normalised "
            "to [0, 1] as the model input"
        )
    return np.clip(image, 0.0, 1.0), labels.astype(np.uint8)


def _quantise(image: np.ndarray) -> np.ndarray:
    """The image as :meth:`ReferenceBank.save` stores it (steps of 1/255), so that a round trip is exact."""
    return np.round(image * 255.0).astype(np.uint8).astype(np.float32) / np.float32(255.0)


def _to_sitk(array: np.ndarray, spacing: tuple[float, ...]) -> sitk.Image:
    """A SimpleITK image of ``array`` (numpy axis order) with origin 0 and ``spacing`` (numpy order, mm)."""
    out = sitk.GetImageFromArray(array)
    out.SetSpacing(tuple(reversed(spacing)))
    return out


def _to_grid(
    image: np.ndarray, labels: np.ndarray, spacing: tuple[float, ...], target: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Resample image (linear) and labels (nearest) onto ``target`` spacing, keeping the field of view centred."""
    if np.allclose(spacing, target, rtol=1e-4, atol=0):
        return image, labels
    shape = tuple(max(2, round(n * s / t)) for n, s, t in zip(image.shape, spacing, target, strict=True))
    # voxel centres at i * spacing; centre the new grid on the old field of view
    origin = tuple(
        ((n - 1) * s - (m - 1) * t) / 2 for n, s, m, t in zip(image.shape, spacing, shape, target, strict=True)
    )
    src = _to_sitk(image, spacing)
    coarser = [max(t * t - s * s, 0.0) for s, t in zip(spacing, target, strict=True)]
    if any(c > 0 for c in coarser):
        # anti-aliasing: a Gaussian whose FWHM makes up the difference between the two voxel sizes
        sigmas = [math.sqrt(c) / 2.3548 for c in coarser]
        src = sitk.SmoothingRecursiveGaussian(src, [max(sg, 1e-3) for sg in reversed(sigmas)])
    ref = sitk.Image([int(m) for m in reversed(shape)], sitk.sitkFloat32)
    ref.SetSpacing(tuple(reversed(target)))
    ref.SetOrigin(tuple(reversed(origin)))
    identity = sitk.Transform(len(shape), sitk.sitkIdentity)
    out_img = sitk.Resample(src, ref, identity, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    out_lab = sitk.Resample(_to_sitk(labels, spacing), ref, identity, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    img = np.clip(sitk.GetArrayFromImage(out_img), 0.0, 1.0).astype(np.float32)
    return img, sitk.GetArrayFromImage(out_lab).astype(np.uint8)


# --- choosing references ------------------------------------------------------------------------------------


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over blocks of ``factor`` voxels per axis (the image zero-padded to a multiple of it)."""
    if factor == 1:
        return image.astype(np.float32)
    pad = [(0, (-n) % factor) for n in image.shape]
    padded = np.pad(image.astype(np.float32), pad)
    shape: list[int] = []
    for n in padded.shape:
        shape += [n // factor, factor]
    return padded.reshape(shape).mean(axis=tuple(range(1, 2 * image.ndim, 2)))


def _centred(thumb: np.ndarray, box: tuple[int, ...]) -> np.ndarray:
    """``thumb`` placed in a zero box of shape ``box`` with its intensity centre of mass at the box centre."""
    total = float(thumb.sum())
    com = np.array(ndimage.center_of_mass(thumb)) if total > 0 else (np.array(thumb.shape) - 1) / 2
    # output index o samples thumb at o + shift, so the box centre lands on the centre of mass
    shift = com - (np.array(box) - 1) / 2
    return ndimage.affine_transform(thumb, np.ones(thumb.ndim), offset=shift, output_shape=box, order=1, cval=0.0)


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / denom if denom > 0 else 0.0


def _most_similar(image: np.ndarray, bank: ReferenceBank, k: int, settings: RcaSettings) -> list[Reference]:
    """The ``k`` references whose centred thumbnails correlate best with the case's (or, when
    ``settings.mirror_axis`` is set, with the case's mirror image), most similar first."""
    factor, axis = settings.thumbnail_factor, settings.mirror_axis
    case = _block_mean(image, factor)
    thumbs = [bank._thumbnail(r, settings.local_contrast_mm, factor) for r in bank.references]
    box = tuple(max(t.shape[d] for t in [case, *thumbs]) for d in range(image.ndim))
    views = [_centred(case, box)] + ([] if axis is None else [_centred(np.flip(case, axis), box)])
    scores = [max(_ncc(view, _centred(t, box)) for view in views) for t in thumbs]
    order = np.argsort(-np.array(scores), kind="stable")[:k]
    return [bank.references[int(i)] for i in order]


# --- registration -------------------------------------------------------------------------------------------


def _levels(settings: RcaSettings) -> list[Level]:
    pairs = zip(
        settings.affine_shrink_factors + settings.bspline_shrink_factors,
        settings.affine_smoothing_sigmas + settings.bspline_smoothing_sigmas,
        strict=True,
    )
    return sorted(set(pairs))


def _valid(image: np.ndarray) -> np.ndarray | None:
    """Voxels that show the patient: ``None`` when all do; otherwise a mask without the shutters, widened by
    three voxels.

    A shutter (radiograph collimation, unexposed detector) is a run of whole rows, columns or slices from the
    border of the image that are bright and flat (mean > 0.5, standard deviation < 0.02). Shutters are not
    anatomy, sit anywhere across the field of view, and their edges would dominate the similarity and the
    registration metric.
    """
    invalid = np.zeros(image.shape, dtype=bool)
    for axis in range(image.ndim):
        others = tuple(a for a in range(image.ndim) if a != axis)
        flat = (image.std(axis=others) < 0.02) & (image.mean(axis=others) > 0.5)
        n = flat.size
        start = n if flat.all() else int(np.argmin(flat))  # flat slabs at the low border
        stop = n - (n if flat.all() else int(np.argmin(flat[::-1])))  # and at the high border
        index = np.arange(n)
        cut = (index < start + 3 * (start > 0)) | (index >= stop - 3 * (stop < n))
        invalid |= np.expand_dims(cut, others)
    return None if not invalid.any() else ~invalid


def _registration_image(
    image: np.ndarray, spacing: tuple[float, ...], contrast_mm: float | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The image as similarity and registration see it, with its valid mask (``None``: all valid).

    Shutters are set to 0, like air. With ``contrast_mm``, valid voxels are contrast-normalised locally:
    ``(x - mean) / (std + 0.02)`` with Gaussian-weighted (sigma ``contrast_mm``) mean and standard deviation over
    the valid voxels, mapped to ``0.5 + 0.15 *`` that and clipped to [0, 1].
    """
    valid = _valid(image)
    shown = image if valid is None else np.where(valid, image, np.float32(0.0))
    if contrast_mm is None:
        return shown, valid
    sigma = [contrast_mm / s for s in spacing]
    weight = np.ones_like(shown) if valid is None else valid.astype(np.float32)
    total = ndimage.gaussian_filter(weight, sigma) + np.float32(1e-6)
    centred = (shown - ndimage.gaussian_filter(shown * weight, sigma) / total) * weight
    spread = np.sqrt(ndimage.gaussian_filter(centred * centred, sigma) / total)
    normalised = np.clip(0.5 + 0.15 * centred / (spread + 0.02), 0.0, 1.0) * weight
    return normalised.astype(np.float32), valid


def _pyramid_level(
    image: np.ndarray, valid: np.ndarray | None, spacing: tuple[float, ...], level: Level
) -> tuple[sitk.Image, sitk.Image | None]:
    """``image`` smoothed (sigma in voxels) and shrunk by averaging blocks, physical space kept; with the mask
    of coarse voxels untouched by invalid ones (``None`` when all are valid)."""
    shrink, sigma = level
    out = _to_sitk(image, spacing)
    if sigma > 0:
        out = sitk.SmoothingRecursiveGaussian(out, [sigma * s for s in reversed(spacing)])
    factors = [min(shrink, n) for n in reversed(image.shape)]
    if shrink > 1:
        out = sitk.BinShrink(out, factors)
    if valid is None:
        return out, None
    reach = max(1, math.ceil(2 * sigma))
    mask = _to_sitk(ndimage.binary_erosion(valid, iterations=reach).astype(np.float32), spacing)
    if shrink > 1:
        mask = sitk.BinShrink(mask, factors)
    return out, sitk.Cast(mask > 0.999, sitk.sitkUInt8)


def _method(settings: RcaSettings, sampling: float) -> sitk.ImageRegistrationMethod:
    """A single-level registration; the pyramid is built outside, once per image (ITK would smooth the
    full-resolution moving image again for every level of every registration)."""
    reg = sitk.ImageRegistrationMethod()
    if settings.metric == "correlation":
        reg.SetMetricAsCorrelation()
    elif settings.metric == "mattes":
        reg.SetMetricAsMattesMutualInformation(32)
    elif settings.metric == "mean_squares":
        reg.SetMetricAsMeanSquares()
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(sampling, settings.seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetShrinkFactorsPerLevel([1])
    reg.SetSmoothingSigmasPerLevel([0.0])
    reg.SetNumberOfThreads(settings.threads)
    return reg


def _execute(
    reg: sitk.ImageRegistrationMethod,
    fixed: tuple[sitk.Image, sitk.Image | None],
    moving: tuple[sitk.Image, sitk.Image | None],
) -> sitk.Transform:
    if fixed[1] is not None:
        reg.SetMetricFixedMask(fixed[1])
    if moving[1] is not None:
        reg.SetMetricMovingMask(moving[1])
    return reg.Execute(fixed[0], moving[0])


def _affine_level(
    fixed: Pyramid, moving: Pyramid, level: Level, start: sitk.Transform, settings: RcaSettings
) -> tuple[sitk.Transform, float]:
    """One level of the affine stage: the transform found from ``start`` and its metric value (lower is better)."""
    reg = _method(settings, settings.sampling_percentage)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=settings.affine_step_mm,
        minStep=settings.affine_step_mm / 64,
        numberOfIterations=settings.affine_iterations,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-6,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(start, inPlace=False)
    transform = _execute(reg, fixed[level], moving[level])
    return transform, reg.GetMetricValue()


def _affine(fixed: Pyramid, views: dict[bool, Pyramid], settings: RcaSettings) -> tuple[sitk.Transform, bool]:
    """Affine transform mapping points of the reference (fixed) into the case (moving), centres of mass aligned
    to start with; with the case view it belongs to (mirrored or not: the one that fits better at the coarsest
    level, when both are offered)."""
    levels = list(zip(settings.affine_shrink_factors, settings.affine_smoothing_sigmas, strict=True))
    coarse = levels[0]
    found = {}
    for mirrored, moving in views.items():
        start = sitk.CenteredTransformInitializer(
            fixed[coarse][0],
            moving[coarse][0],
            sitk.AffineTransform(fixed[coarse][0].GetDimension()),
            sitk.CenteredTransformInitializerFilter.MOMENTS,
        )
        found[mirrored] = _affine_level(fixed, moving, coarse, start, settings)
    mirrored = min(found, key=lambda m: found[m][1])
    transform = found[mirrored][0]
    for level in levels[1:]:
        transform = _affine_level(fixed, views[mirrored], level, transform, settings)[0]
    return transform, mirrored


def _bspline(fixed: Pyramid, moving: Pyramid, affine: sitk.Transform, settings: RcaSettings) -> sitk.Transform:
    """``affine`` refined by a cubic B-spline (control points ``bspline_grid_spacing_mm`` apart)."""
    if settings.bspline_iterations == 0:
        return affine
    levels = list(zip(settings.bspline_shrink_factors, settings.bspline_smoothing_sigmas, strict=True))
    domain = fixed[levels[0]][0]
    mesh = [
        max(1, round(size * sp / settings.bspline_grid_spacing_mm))
        for size, sp in zip(domain.GetSize(), domain.GetSpacing(), strict=True)
    ]
    bspline = sitk.BSplineTransformInitializer(domain, mesh, 3)
    for level in levels:
        reg = _method(settings, settings.bspline_sampling_percentage)
        reg.SetOptimizerAsLBFGSB(
            gradientConvergenceTolerance=1e-5,
            numberOfIterations=settings.bspline_iterations,
            maximumNumberOfCorrections=5,
            maximumNumberOfFunctionEvaluations=2 * settings.bspline_iterations,
            costFunctionConvergenceFactor=1e7,
        )
        reg.SetMovingInitialTransform(affine)
        reg.SetInitialTransform(bspline, inPlace=True)
        _execute(reg, fixed[level], moving[level])
    # a CompositeTransform applies its last transform first: x -> affine(bspline(x))
    return sitk.CompositeTransform([affine, bspline])


# --- scores -------------------------------------------------------------------------------------------------


def _dice_per_label(pred: np.ndarray, truth: np.ndarray, n_labels: int) -> np.ndarray:
    """Dice of labels ``1..n_labels``; 1.0 where a label is absent from both maps."""
    n = n_labels + 1
    joint = np.bincount(pred.ravel().astype(np.int64) * n + truth.ravel(), minlength=n * n).reshape(n, n)
    inter = np.diag(joint)[1:].astype(np.float64)
    sizes = joint.sum(axis=1)[1:] + joint.sum(axis=0)[1:]
    return np.where(sizes > 0, 2 * inter / np.maximum(sizes, 1), 1.0)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _hd95(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> float:
    """95th percentile symmetric surface distance (mm; max of the two directed ones); nan if a mask is empty."""
    if not a.any() or not b.any():
        return float("nan")
    both = np.argwhere(a | b)
    lo = np.maximum(both.min(axis=0) - 1, 0)
    hi = both.max(axis=0) + 2
    crop = tuple(slice(int(s), int(e)) for s, e in zip(lo, hi, strict=True))
    sa, sb = _surface(a[crop]), _surface(b[crop])
    to_b = ndimage.distance_transform_edt(~sb, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~sa, sampling=spacing)
    return float(max(np.percentile(to_b[sa], 95), np.percentile(to_a[sb], 95)))
