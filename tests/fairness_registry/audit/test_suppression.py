"""Small cells never leak: not in the JSON, the HTML, the figures' labels, nor by subtraction from totals."""

from __future__ import annotations

import json
import re

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from fairness_registry.audit.compute import compute_audit
from fairness_registry.audit.plots import report_figures
from fairness_registry.audit.suppression import hidden_cells, hidden_line
from tests.fairness_registry.audit.conftest import SETTINGS, TINY_ETHNIC_GROUP, TINY_SITE

MIN_CELL = 10


def _leaks(text: str) -> list[str]:
    return [name for name in (TINY_SITE, TINY_ETHNIC_GROUP) if re.search(rf"\b{name}\b", text)]


def test_tiny_groups_appear_nowhere(planted_frame: pd.DataFrame) -> None:
    assert (planted_frame["site"] == TINY_SITE).any()  # the frame holds them
    result = compute_audit(planted_frame, settings=SETTINGS)
    document = json.dumps(result)
    assert _leaks(document) == []
    figures = report_figures(result, planted_frame)
    labels = [label for kind in figures.values() for figure in kind for label in figure.labels]
    assert "Black" in labels  # the scan sees group labels
    assert _leaks(" ".join(labels)) == []
    # the site line had one small cell: a second one is hidden with it, so the total cannot reveal it
    site = result["counts"]["site"]
    assert site["suppressed"] == 2
    shown = sum(c["patients"] for c in site["cells"])
    assert site["total"] - shown >= 2 * 1  # two cells hidden together
    assert all(c["patients"] >= MIN_CELL for table in result["counts"].values() for c in table["cells"])
    for table in result["intersections"].values():
        assert all(c["patients"] >= MIN_CELL for c in table["cells"])
    assert all(r["patients"] >= MIN_CELL for r in result["metrics"])
    for model in result["regression"]:
        assert _leaks(" ".join(t["term"] for t in model["terms"])) == []


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from("abcdefg"), st.integers(0, 40), min_size=1))
def test_a_line_never_hides_exactly_one_cell(counts: dict[str, int]) -> None:
    hidden = hidden_line(counts, MIN_CELL)
    assert {k for k, n in counts.items() if 0 < n < MIN_CELL} <= hidden
    non_empty = [k for k, n in counts.items() if n > 0]
    assert len(hidden) != 1 or len(non_empty) == 1


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.tuples(st.sampled_from("abcd"), st.sampled_from("wxyz")), st.integers(0, 30), min_size=1))
def test_no_row_or_column_hides_exactly_one_cell(counts: dict[tuple[str, str], int]) -> None:
    hidden = hidden_cells(counts, MIN_CELL)
    assert {k for k, n in counts.items() if 0 < n < MIN_CELL} <= hidden
    for axis in (0, 1):
        for value in {k[axis] for k in counts}:
            line = [k for k, n in counts.items() if k[axis] == value and n > 0]
            assert len([k for k in line if k in hidden]) != 1 or len(line) == 1
