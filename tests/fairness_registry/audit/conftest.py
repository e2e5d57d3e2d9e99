"""Audit fixtures: synthetic audit input frames with planted group effects (no database needed)."""

from __future__ import annotations

import pandas as pd
import pytest

from fairness_registry.audit import AuditSettings
from fairness_registry.audit.synthetic import synthetic_frame

#: Settings of the audit tests: a smaller bootstrap than the default, for speed.
SETTINGS = AuditSettings(bootstrap=300, seed=7)
#: Names planted in groups too small to be reported; no report may contain them.
TINY_SITE = "Tinyville"
TINY_ETHNIC_GROUP = "Other"


@pytest.fixture(scope="session")
def planted_frame() -> pd.DataFrame:
    """600 patients; Black patients' true Dice is 0.08 lower on every structure. Also a site with 6
    patients and an ethnic group with 3, both below ``min_cell``."""
    frame = synthetic_frame(600, seed=11, effects={("ethnic_group", "Black"): -0.08})
    patients = sorted(frame["pseudonym"].unique())
    frame.loc[frame["pseudonym"].isin(patients[:6]), "site"] = TINY_SITE
    frame.loc[frame["pseudonym"].isin(patients[10:13]), "ethnic_group"] = TINY_ETHNIC_GROUP
    return frame


@pytest.fixture(scope="session")
def null_frame() -> pd.DataFrame:
    """600 patients, no group effect."""
    return synthetic_frame(600, seed=12)
