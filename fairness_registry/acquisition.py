"""Acquisition confounders from a DICOM header: scanner model, site, slice thickness, pixel spacing, kVp, contrast.

Pure and total like :mod:`fairness_registry.demographics`: a missing or implausible value gives ``None``,
never an exception. Values are read from the top level of the dataset and, for enhanced multi-frame
objects, from the first item of the Shared Functional Groups (Pixel Measures, CT X-Ray Details).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

__all__ = ["Acquisition", "header_number", "header_text"]

#: Longest text kept (DICOM LO).
_LO_LENGTH = 64
# Where an enhanced multi-frame object keeps a value: (functional group sequence, attribute).
_SHARED_GROUPS = {
    "PixelSpacing": "PixelMeasuresSequence",
    "SliceThickness": "PixelMeasuresSequence",
    "KVP": "CTXRayDetailsSequence",
}


def header_text(value: object, max_length: int = _LO_LENGTH) -> str | None:
    """A descriptive header value as stripped text cut to ``max_length``; ``None`` when missing or empty."""
    if value is None:
        return None
    text = value.decode("ascii", errors="replace") if isinstance(value, bytes) else str(value)
    text = text.strip()[:max_length]
    return text or None


def header_number(value: object) -> float | None:
    """A header value (DS, IS, number) as a finite float > 0, else ``None``."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value) if isinstance(value, int | float) else float(Decimal(str(value).strip()))
    except (InvalidOperation, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _first(dataset: object, keyword: str) -> object:
    """``keyword`` from the dataset, else from the first item of its shared functional groups."""
    value = getattr(dataset, keyword, None)
    if value is not None or keyword not in _SHARED_GROUPS:
        return value
    shared = getattr(dataset, "SharedFunctionalGroupsSequence", None)
    try:
        group = getattr(shared[0], _SHARED_GROUPS[keyword], None) if shared else None
        return getattr(group[0], keyword, None) if group else None
    except (IndexError, TypeError):
        return None


def _spacing(value: object) -> float | None:
    """The mean of the two PixelSpacing values (row, column) in mm; ``None`` unless both are > 0."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != 2:
        return None
    row, column = header_number(value[0]), header_number(value[1])
    return None if row is None or column is None else (row + column) / 2.0


@dataclass(frozen=True, slots=True)
class Acquisition:
    """How a study was acquired, as far as the audit adjusts for it.

    Attributes
    ----------
    scanner_model : str or None
        ManufacturerModelName.
    site : str or None
        The configured site name, else InstitutionName.
    slice_thickness_mm : float or None
        SliceThickness in mm.
    pixel_spacing_mm : float or None
        Mean of the two PixelSpacing values in mm (ImagerPixelSpacing for a radiograph without PixelSpacing).
    kvp : float or None
        KVP in kV.
    contrast : bool or None
        ``True`` when ContrastBolusAgent is present and non-empty. ``False`` otherwise: the Contrast/Bolus
        module is required whenever contrast was used, so its absence says none was. ``None`` only when
        there is no header at all.
    """

    scanner_model: str | None = None
    site: str | None = None
    slice_thickness_mm: float | None = None
    pixel_spacing_mm: float | None = None
    kvp: float | None = None
    contrast: bool | None = None

    @classmethod
    def from_dataset(cls, dataset: object, *, site: str | None = None) -> Acquisition:
        """Read the acquisition attributes of a dataset (e.g. ``pydicom.Dataset``); ``None`` gives all ``None``.

        Parameters
        ----------
        dataset : object
            A header; attributes are read by DICOM keyword.
        site : str, optional
            A configured site name, stored instead of InstitutionName.
        """
        if dataset is None:
            return cls(site=header_text(site))
        spacing = _spacing(_first(dataset, "PixelSpacing"))
        if spacing is None:
            spacing = _spacing(getattr(dataset, "ImagerPixelSpacing", None))
        return cls(
            scanner_model=header_text(getattr(dataset, "ManufacturerModelName", None)),
            site=header_text(site) or header_text(getattr(dataset, "InstitutionName", None)),
            slice_thickness_mm=header_number(_first(dataset, "SliceThickness")),
            pixel_spacing_mm=spacing,
            kvp=header_number(_first(dataset, "KVP")),
            contrast=header_text(getattr(dataset, "ContrastBolusAgent", None)) is not None,
        )
