"""The reference bank: references with ground truth on one grid, and its ``.npz`` file."""

from __future__ import annotations

import json
import math
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813 - the name SimpleITK's own documentation uses

from quality.rca.grids import checked_pair, quantise, to_grid
from quality.rca.registration import pyramid_level, registration_image, shrink_factors
from quality.rca.settings import Level, Pyramid, RcaError
from quality.rca.similarity import block_mean

DEMOGRAPHIC_KEYS: tuple[str, ...] = ("sex", "age_band", "ethnic_group", "bmi_band")

_FORMAT = "fairnode-rca-bank"
_VERSION = 1


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
    _thumbnails: dict[tuple[str, float | None, float], np.ndarray] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _pyramids: dict[tuple[str, float | None, float], tuple[sitk.Image, sitk.Image | None]] = field(
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
        img, lab = checked_pair(image, labels, image_spacing, self, what=f"reference {id!r}")
        img, lab = to_grid(img, lab, tuple(float(s) for s in image_spacing), self.spacing)
        ref = Reference(
            id=str(id),
            image=quantise(img),
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
            self._prepared[key] = registration_image(ref.image, self.spacing, contrast_mm)
        return self._prepared[key]

    def _thumbnail(self, ref: Reference, contrast_mm: float | None, thumbnail_mm: float) -> np.ndarray:
        key = (ref.id, contrast_mm, thumbnail_mm)
        if key not in self._thumbnails:
            factors = shrink_factors(thumbnail_mm, self.spacing)
            self._thumbnails[key] = block_mean(self._registration_image(ref, contrast_mm)[0], factors)
        return self._thumbnails[key]

    def _pyramid(self, ref: Reference, contrast_mm: float | None, levels: list[Level]) -> Pyramid:
        out = {}
        for level in levels:
            key = (ref.id, contrast_mm, level)
            if key not in self._pyramids:
                image, valid = self._registration_image(ref, contrast_mm)
                self._pyramids[key] = pyramid_level(image, valid, self.spacing, level)
            out[level] = self._pyramids[key]
        return out
