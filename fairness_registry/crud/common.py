"""What every crud module shares: the errors, the argument checks, the page size."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from fairness_registry.models import LO_LENGTH, UID_LENGTH, ReviewState

__all__ = ["MAX_PAGE", "NotFoundError", "ReviewTransitionError"]

#: Largest page :func:`list_cases` and :func:`list_worklist` return.
MAX_PAGE = 1000

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class NotFoundError(LookupError):
    """A row named by its id is not in the registry."""


class ReviewTransitionError(ValueError):
    """A review state change the case's current state does not allow (an API answers 409 Conflict).

    Attributes
    ----------
    case_id : int
    current : ReviewState or None
        The case's state; ``None`` when its quality is not recorded yet.
    requested : ReviewState
    allowed : frozenset of ReviewState
        What ``current`` may change to.
    """

    def __init__(
        self,
        message: str,
        *,
        case_id: int,
        current: ReviewState | None,
        requested: ReviewState,
        allowed: frozenset[ReviewState],
    ) -> None:
        super().__init__(message)
        self.case_id = case_id
        self.current = current
        self.requested = requested
        self.allowed = allowed


def _check_uid(name: str, value: str) -> str:
    """A DICOM UID argument, checked (digits and dots, at most 64 characters)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str, got {type(value).__name__}")
    uid = value.strip()
    if not _UID_RE.match(uid) or len(uid) > UID_LENGTH:
        raise ValueError(f"{name} {value!r} is not a DICOM UID (digits separated by dots, at most {UID_LENGTH})")
    return uid


def _check_name(name: str, value: str, max_length: int) -> str:
    """A non-empty identifier of ours (model name, version), at most ``max_length`` characters."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str, got {type(value).__name__}")
    if not value.strip() or len(value) > max_length:
        raise ValueError(f"{name} {value!r} must be non-empty text of at most {max_length} characters")
    return value


def _header_text(value: object, max_length: int = LO_LENGTH) -> str:
    """A descriptive header value (institution, modality, ...) as stripped text cut to the column length.

    Vendors do exceed the DICOM length limits; a long value is cut rather than refused.
    """
    if value is None:
        return ""
    text = value.decode("ascii", errors="replace") if isinstance(value, bytes) else str(value)
    return text.strip()[:max_length]


def _check_timings(timings: Mapping[str, float]) -> dict[str, float]:
    """Stage -> seconds, each a finite number >= 0."""
    checked: dict[str, float] = {}
    for stage, seconds in timings.items():
        if not isinstance(stage, str) or not stage:
            raise ValueError(f"timing stage {stage!r} must be a non-empty str")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
            raise ValueError(f"timing for stage {stage!r} is {seconds!r}; expected a finite number of seconds")
        if seconds < 0:
            raise ValueError(f"timing for stage {stage!r} is {seconds!r} s; expected >= 0")
        checked[stage] = float(seconds)
    return checked


def _score(structure: str, field: str, value: object) -> float | None:
    """A score as a plain float, ``None`` when missing or not finite (JSON has no NaN or infinity)."""
    if value is None:
        return None
    if isinstance(value, bool | str | bytes):
        raise TypeError(f"structure {structure!r}: {field} must be a number, got {type(value).__name__} {value!r}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(
            f"structure {structure!r}: {field} must be a number, got {type(value).__name__} {value!r}"
        ) from None
    return number if math.isfinite(number) else None


def _reasons(where: str, reasons: object) -> list[str]:
    """A sequence of reason texts as a list of str."""
    if isinstance(reasons, str) or not isinstance(reasons, tuple | list):
        raise TypeError(f"{where} reasons must be a tuple of str, got {type(reasons).__name__}")
    for reason in reasons:
        if not isinstance(reason, str):
            raise TypeError(f"{where} reasons must be str, got {type(reason).__name__} {reason!r}")
    return list(reasons)
