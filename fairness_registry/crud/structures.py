"""Per-structure rows (``case_structure``): the estimates written with a case's quality, then the true Dice.

:func:`write_structures` is called by :func:`fairness_registry.crud.record_quality` inside its transaction;
:func:`record_truth` stores the true Dice, NSD and HD95 of one structure once a corrected segmentation
exists (an upload in the review app, a corrected SEG sent by C-STORE, a cohort with ground truth).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

from sqlmodel import Session, col, select

from fairness_registry.crud.common import NotFoundError, _score
from fairness_registry.models import TRUTH_SOURCE_LENGTH, Case, CaseStructure, utcnow
from quality.types import CaseQuality, Route

__all__ = ["record_truth", "write_structures"]

logger = logging.getLogger(__name__)

#: ``case_structure`` columns copied from a structure's entry of ``Case.quality``.
ESTIMATE_COLUMNS: tuple[str, ...] = (
    "volume",
    "mean_entropy",
    "sample_dice",
    "volume_cv",
    "rca_max_dice",
    "rca_mean_dice",
    "rca_hd95_mm",
    "predicted_dice",
    "predicted_low",
    "predicted_high",
    "coverage",
)


def _regions(structure: str, regions: object) -> dict[str, float | None]:
    """The spatial summary as a JSON-ready dict (non-finite shares stored as ``None``)."""
    if not isinstance(regions, Mapping):
        raise TypeError(
            f"structure {structure!r}: regions must be a mapping of str to float, got {type(regions).__name__}"
        )
    checked: dict[str, float | None] = {}
    for key, value in regions.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"structure {structure!r}: region key {key!r} must be a non-empty str")
        checked[key] = _score(structure, f"regions[{key!r}]", value)
    return checked


def write_structures(
    session: Session, *, case_id: int, quality: CaseQuality, scores: Mapping[str, Mapping[str, object]]
) -> list[CaseStructure]:
    """Add or update one ``case_structure`` row per structure of ``quality`` (no commit: the caller's).

    Rows of structures no longer in the quality are deleted; the truth columns of the others are kept.

    Parameters
    ----------
    session : sqlmodel.Session
    case_id : int
        A case in the registry.
    quality : quality.types.CaseQuality
        Gives each structure's ``regions``.
    scores : mapping
        Structure name -> its entry of ``Case.quality``, already checked (``record_quality`` builds it).

    Returns
    -------
    list of CaseStructure
        In the order of ``scores``.
    """
    regions = {s.name: _regions(s.name, s.regions) for s in quality.structures}
    existing = {
        row.name: row for row in session.exec(select(CaseStructure).where(col(CaseStructure.case_id) == case_id)).all()
    }
    rows: list[CaseStructure] = []
    for name, entry in scores.items():
        row = existing.pop(name, None) or CaseStructure(case_id=case_id, name=name, label=0)
        label = entry["label"]
        row.label = label if isinstance(label, int) else 0
        for column in ESTIMATE_COLUMNS:
            value = entry.get(column)
            setattr(row, column, float(value) if isinstance(value, int | float) else None)
        route = entry.get("route")
        row.route = None if route is None else Route(str(route))
        reasons = entry.get("reasons")
        row.reasons = [str(r) for r in reasons] if isinstance(reasons, list) else []
        row.regions = regions.get(name, {})
        session.add(row)
        rows.append(row)
    for stale in existing.values():
        session.delete(stale)
    return rows


def _fraction(name: str, value: object, *, required: bool) -> float | None:
    """A Dice or NSD argument: a finite number in [0, 1] (``None`` or NaN allowed, as ``None``, unless ``required``)."""
    if not required and (value is None or (isinstance(value, float) and math.isnan(value))):
        return None  # not measured (MONAI gives NaN when a mask is empty)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} {value!r} must be a finite number in [0, 1]")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} {value!r} is outside [0, 1]")
    return float(value)


def _distance(name: str, value: object) -> float | None:
    """A distance argument in mm: a number >= 0; ``None``, NaN and infinity (an empty mask) are stored as ``None``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None  # not measured (MONAI gives NaN when a mask is empty)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} {value!r} must be a number of mm >= 0 (or None)")
    if value < 0:
        raise ValueError(f"{name} {value!r} mm is negative; expected >= 0")
    return float(value) if math.isfinite(value) else None


def record_truth(
    session: Session,
    *,
    case_id: int,
    structure: str,
    dice: float,
    nsd: float | None,
    hd95_mm: float | None,
    source: str,
) -> CaseStructure:
    """Store the true Dice, NSD and HD95 of one structure of a case, measured against a corrected segmentation.

    Recording again replaces the values (a second correction wins) and the time.

    Parameters
    ----------
    session : sqlmodel.Session
    case_id : int
        A case whose quality is recorded (its structures have ``case_structure`` rows).
    structure : str
        The structure's name, as in the model card (``"liver"``).
    dice : float
        In [0, 1].
    nsd : float or None
        Normalised surface Dice in [0, 1] at the tolerance of the model card; NaN is stored as ``None``.
    hd95_mm : float or None
        95th percentile Hausdorff distance in mm, >= 0; NaN or infinite (a mask empty) is stored as ``None``.
    source : str
        Where the correction came from: ``"upload"``, ``"c-store"``, ``"cohort"`` (at most 32 characters).

    Returns
    -------
    CaseStructure

    Raises
    ------
    NotFoundError
        When the case is not in the registry, or has no row for ``structure`` (the message lists the
        structures it has).
    ValueError
        For a value out of range or an empty or too long source.
    """
    true_dice = _fraction("dice", dice, required=True)
    true_nsd = _fraction("nsd", nsd, required=False)
    true_hd95 = _distance("hd95_mm", hd95_mm)
    if not isinstance(source, str) or not source.strip() or len(source) > TRUTH_SOURCE_LENGTH:
        raise ValueError(
            f"source {source!r} must be non-empty text of at most {TRUTH_SOURCE_LENGTH} characters, "
            "e.g. 'upload', 'c-store' or 'cohort'"
        )
    if session.get(Case, case_id) is None:
        raise NotFoundError(f"case_id {case_id} is not in the registry")
    rows = session.exec(select(CaseStructure).where(col(CaseStructure.case_id) == case_id)).all()
    row = next((r for r in rows if r.name == structure), None)
    if row is None:
        known = ", ".join(sorted(r.name for r in rows)) or "none (its quality is not recorded)"
        raise NotFoundError(f"case {case_id} has no structure {structure!r}; its structures: {known}")
    row.true_dice = true_dice
    row.true_nsd = true_nsd
    row.true_hd95_mm = true_hd95
    row.truth_source = source.strip()
    row.truth_at = utcnow()
    session.add(row)
    session.commit()
    session.refresh(row)
    logger.info("case %d structure %s: true Dice %.3f recorded (%s)", case_id, structure, true_dice, row.truth_source)
    return row
