"""load_frame on a real registry (SQLite and PostgreSQL): the contract's columns, the period, model and site."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest
from sqlmodel import Session

from fairness_registry.audit import AuditError
from fairness_registry.audit.compute import compute_audit
from fairness_registry.audit.data import load_frame, parse_period, period_label
from fairness_registry.audit.settings import FRAME_COLUMNS
from fairness_registry.audit.synthetic import synthetic_frame
from tests.fairness_registry.audit.conftest import SETTINGS
from tests.fairness_registry.audit.registry_cases import record_frame, shifted

Q3 = (date(2026, 7, 1), date(2026, 9, 30))


def test_periods() -> None:
    assert parse_period("2026Q3") == Q3
    assert parse_period("2026-q1") == (date(2026, 1, 1), date(2026, 3, 31))
    assert parse_period("2024-02") == (date(2024, 2, 1), date(2024, 2, 29))
    assert parse_period("2026") == (date(2026, 1, 1), date(2026, 12, 31))
    assert period_label(*Q3) == "2026Q3"
    assert period_label(date(2026, 7, 1), date(2026, 7, 31)) == "2026-07-01_2026-07-31"
    with pytest.raises(AuditError, match=r"2026Q5.*quarter"):
        parse_period("2026Q5")


def test_load_frame(session: Session) -> None:
    frame = synthetic_frame(24, seed=3, structures={"liver": 0.92, "spleen": 0.88}, sites=("North", "South"))
    record_frame(session, frame)
    record_frame(session, shifted(frame.iloc[:2], 120))  # received in the next quarter
    record_frame(session, shifted(frame.iloc[2:4], 1), status="failed")  # not finished
    loaded = load_frame(session, start=Q3[0], end=Q3[1], model="ct-abdomen")
    assert list(loaded.columns) == list(FRAME_COLUMNS)
    assert len(loaded) == len(frame)
    assert loaded["case_id"].nunique() == frame["case_id"].nunique()
    assert loaded["pseudonym"].nunique() == 24
    assert loaded["pseudonym"].str.len().min() >= 16  # pseudonyms, not the frame's placeholders
    ordered = frame.sort_values(["received_at", "structure"]).reset_index(drop=True)
    got = loaded.sort_values(["received_at", "structure"]).reset_index(drop=True)
    np.testing.assert_allclose(got["rca_dice"], ordered["rca_dice"])
    np.testing.assert_allclose(got["predicted_dice"], ordered["predicted_dice"])
    np.testing.assert_allclose(got["region_boundary"], ordered["region_boundary"])
    np.testing.assert_allclose(got["true_dice"], ordered["true_dice"])  # NaN where no correction
    assert got["true_dice"].notna().any()
    assert (got["sex"] == ordered["sex"]).all()
    assert (got["age_band"] == ordered["age_band"]).all()
    assert (got["site"] == ordered["site"]).all()
    assert (got["scanner_model"] == ordered["scanner_model"]).all()
    known = ordered["ethnic_group"] != "unknown"
    assert (got.loc[known, "ethnic_group"] == ordered.loc[known, "ethnic_group"]).all()
    assert got.loc[~known, "ethnic_group"].isna().all()  # missing stays missing
    assert set(got["route"]) <= {"PASS", "REVIEW"}
    assert set(got["case_route"]) <= {"PASS", "REVIEW"}
    np.testing.assert_allclose(got["bmi"], ordered["bmi"], atol=0.05)
    assert (got["contrast"] == ordered["contrast"]).all()

    north = load_frame(session, start=Q3[0], end=Q3[1], site="North")
    assert set(north["site"]) == {"North"} and 0 < len(north) < len(loaded)
    assert len(load_frame(session, start=date(2026, 10, 1), end=date(2026, 12, 31))) == 2  # one case, two structures
    assert load_frame(session, start=date(2025, 1, 1), end=date(2025, 3, 31)).empty
    with pytest.raises(AuditError, match=r"unknown model 'xr-knee'; the registry holds cases of: ct-abdomen"):
        load_frame(session, start=Q3[0], end=Q3[1], model="xr-knee")
    with pytest.raises(AuditError, match="unknown site 'West'"):
        load_frame(session, start=Q3[0], end=Q3[1], site="West")
    with pytest.raises(AuditError, match="ends"):
        load_frame(session, start=Q3[1], end=Q3[0])
    result = compute_audit(loaded, settings=SETTINGS.model_copy(update={"min_cell": 5}))
    assert result["summary"]["patients"] == 24
