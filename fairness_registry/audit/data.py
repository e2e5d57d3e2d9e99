"""The audit input frame, read from the registry, and the audit periods.

:func:`load_frame` returns one row per (case, structure) of the finished cases whose study was received in
the period, with the columns :data:`~fairness_registry.audit.settings.FRAME_COLUMNS`. Missing values stay
missing (``None``/NaN); the audit counts them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlmodel import Session, col, select

from fairness_registry.audit.settings import FRAME_COLUMNS, REGION_KEYS, AuditError
from fairness_registry.models import Case, CaseStatus, CaseStructure, Series, Study

__all__ = ["load_frame", "parse_period", "period_label"]

logger = logging.getLogger(__name__)

_QUARTER = re.compile(r"^(\d{4})-?Q([1-4])$", re.IGNORECASE)
_YEAR = re.compile(r"^(\d{4})$")
_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def _month_end(year: int, month: int) -> date:
    first_next = date(year + (month == 12), month % 12 + 1, 1)
    return first_next - timedelta(days=1)


def parse_period(period: str) -> tuple[date, date]:
    """First and last day of a period: ``2026Q3`` (quarter), ``2026-07`` (month) or ``2026`` (year).

    Raises
    ------
    AuditError
        Any other text.
    """
    text = period.strip()
    if match := _QUARTER.match(text):
        year, quarter = int(match[1]), int(match[2])
        return date(year, 3 * quarter - 2, 1), _month_end(year, 3 * quarter)
    if match := _MONTH.match(text):
        year, month = int(match[1]), int(match[2])
        return date(year, month, 1), _month_end(year, month)
    if match := _YEAR.match(text):
        return date(int(match[1]), 1, 1), date(int(match[1]), 12, 31)
    raise AuditError(f"period {period!r} is not understood; use a quarter (2026Q3), a month (2026-07) or a year (2026)")


def period_label(start: date, end: date) -> str:
    """The label of a period: ``2026Q3`` when it is exactly a quarter, else ``2026-07-01_2026-08-15``."""
    quarter = (start.month - 1) // 3 + 1
    if start.day == 1 and start.month % 3 == 1 and end == _month_end(start.year, 3 * quarter):
        return f"{start.year}Q{quarter}"
    return f"{start.isoformat()}_{end.isoformat()}"


def _value(value: object) -> object:
    """Enum members as their plain value (routes, review states)."""
    return getattr(value, "value", value)


def _rows(session: Session, statement: sa.Select[Any]) -> Iterator[dict[str, Any]]:
    for row in session.execute(statement):
        (
            pseudonym, case_id, study_date, received_at, site, institution, manufacturer, scanner_model,
            model, model_version, sex, age_years, age_band, ethnic_group, bmi, bmi_band, slice_thickness_mm,
            kvp, contrast, case_route, review_state, structure,
        ) = row  # fmt: skip
        regions = structure.regions or {}
        yield {
            "pseudonym": pseudonym,
            "case_id": case_id,
            "study_date": study_date,
            "received_at": received_at,
            "site": site or (institution or None),
            "manufacturer": manufacturer or None,
            "scanner_model": scanner_model,
            "model": model,
            "model_version": model_version,
            "structure": structure.name,
            "sex": sex,
            "age_years": age_years,
            "age_band": age_band,
            "ethnic_group": ethnic_group,
            "bmi": bmi,
            "bmi_band": bmi_band,
            "slice_thickness_mm": slice_thickness_mm,
            "kvp": kvp,
            "contrast": contrast,
            "case_route": _value(case_route),
            "route": _value(structure.route),
            "review_state": _value(review_state),
            "volume": structure.volume,
            "rca_dice": structure.rca_max_dice,
            "predicted_dice": structure.predicted_dice,
            "predicted_low": structure.predicted_low,
            "predicted_high": structure.predicted_high,
            "true_dice": structure.true_dice,
            "true_nsd": structure.true_nsd,
            "true_hd95_mm": structure.true_hd95_mm,
            **{f"region_{key}": regions.get(key) for key in REGION_KEYS},
        }


def load_frame(
    session: Session, *, start: date, end: date, model: str | None = None, site: str | None = None
) -> pd.DataFrame:
    """The audit input frame of the finished cases whose study was received from ``start`` to ``end``.

    Parameters
    ----------
    session
        A registry session (SQLite or PostgreSQL).
    start, end
        First and last day (inclusive, UTC) of the period, compared with ``study.received_at``.
    model
        Only this model's cases (``case.model``); ``None``: every model.
    site
        Only this site's studies (``study.site``, else ``study.institution``); ``None``: every site.

    Returns
    -------
    pandas.DataFrame
        One row per (case, structure), columns :data:`~fairness_registry.audit.settings.FRAME_COLUMNS`;
        empty (with those columns) when nothing matches.

    Raises
    ------
    AuditError
        ``end`` before ``start``, or a ``model`` or ``site`` the registry has never seen (the message lists
        the known ones).
    """
    if end < start:
        raise AuditError(f"the period ends ({end}) before it starts ({start})")
    if model is not None:
        known = sorted(set(session.exec(select(Case.model).distinct())))
        if model not in known:
            raise AuditError(f"unknown model {model!r}; the registry holds cases of: {', '.join(known) or 'none'}")
    site_column = sa.func.coalesce(Study.site, sa.func.nullif(Study.institution, ""))
    if site is not None:
        known_sites = sorted(s for s in session.exec(select(site_column).distinct()) if s)
        if site not in known_sites:
            raise AuditError(
                f"unknown site {site!r}; the registry holds studies of: {', '.join(known_sites) or 'none'}"
            )
    since = datetime.combine(start, time.min, tzinfo=UTC)
    until = datetime.combine(end + timedelta(days=1), time.min, tzinfo=UTC)
    columns: list[Any] = [
        col(Study.pseudonym),
        col(Case.id),
        col(Study.study_date),
        col(Study.received_at),
        col(Study.site),
        col(Study.institution),
        col(Study.manufacturer),
        col(Study.scanner_model),
        col(Case.model),
        col(Case.model_version),
        col(Study.sex),
        col(Study.age_years),
        col(Study.age_band),
        col(Study.ethnic_group),
        col(Study.bmi),
        col(Study.bmi_band),
        col(Study.slice_thickness_mm),
        col(Study.kvp),
        col(Study.contrast),
        col(Case.route),
        col(Case.review_state),
    ]
    statement = (
        sa.select(*columns, CaseStructure)
        .join(Series, col(Series.id) == col(Case.series_id))
        .join(Study, col(Study.id) == col(Series.study_id))
        .join(CaseStructure, col(CaseStructure.case_id) == col(Case.id))
        .where(col(Case.status) == CaseStatus.DONE)
        .where(col(Study.received_at) >= since, col(Study.received_at) < until)
        .order_by(col(Case.id), col(CaseStructure.name))
    )
    if model is not None:
        statement = statement.where(col(Case.model) == model)
    if site is not None:
        statement = statement.where(site_column == site)
    frame = pd.DataFrame(list(_rows(session, statement)), columns=list(FRAME_COLUMNS))
    for column in ("age_years",):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    numeric = ["bmi", "slice_thickness_mm", "kvp", "volume", "rca_dice", "predicted_dice", "predicted_low"]
    numeric += ["predicted_high", "true_dice", "true_nsd", "true_hd95_mm", *(f"region_{k}" for k in REGION_KEYS)]
    frame[numeric] = frame[numeric].apply(pd.to_numeric, errors="coerce")
    logger.info("audit frame: %d rows of %d cases", len(frame), frame["case_id"].nunique())
    return frame
