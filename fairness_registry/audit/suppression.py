"""Small-cell suppression: which counts may be shown, so no group smaller than ``min_cell`` can be read off.

Primary suppression hides every non-empty cell with fewer than ``min_cell`` patients. Complementary
suppression then hides, in every line (a one-way table, or a row or column of a two-way table) that has
exactly one hidden cell, the smallest visible cell of that line too, so the hidden cell cannot be recovered
by subtracting the visible cells from the line's total. Empty cells (no patient) are not listed.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import TypeVar

__all__ = ["hidden_cells", "hidden_line"]

K = TypeVar("K", bound=Hashable)


def hidden_line(counts: Mapping[K, int], min_cell: int) -> set[K]:
    """The cells of one line to hide: those under ``min_cell`` (non-empty), plus one complement if needed.

    Parameters
    ----------
    counts
        Cell -> number of patients (the line's total is assumed public).
    min_cell
        Smallest number of patients a shown cell may have.
    """
    hidden = {key for key, n in counts.items() if 0 < n < min_cell}
    return _complement(counts, hidden)


def _complement(counts: Mapping[K, int], hidden: set[K]) -> set[K]:
    """Add the smallest visible non-empty cell when exactly one cell of the line is hidden."""
    if len(hidden) != 1:
        return hidden
    visible = sorted((n, str(key), key) for key, n in counts.items() if key not in hidden and n > 0)
    if visible:
        hidden = {*hidden, visible[0][2]}
    return hidden


def hidden_cells(counts: Mapping[tuple[str, str], int], min_cell: int) -> set[tuple[str, str]]:
    """The cells of a two-way table to hide (rows and columns each treated as a line, until stable).

    Parameters
    ----------
    counts
        ``(row, column)`` -> number of patients; the row and column totals are assumed public.
    min_cell
        Smallest number of patients a shown cell may have.
    """
    hidden = {key for key, n in counts.items() if 0 < n < min_cell}
    rows = {row for row, _ in counts}
    columns = {column for _, column in counts}
    changed = True
    while changed:
        changed = False
        for axis, values in ((0, rows), (1, columns)):
            for value in values:
                line = {key: n for key, n in counts.items() if key[axis] == value}
                grown = _complement(line, {key for key in line if key in hidden})
                if not grown <= hidden:
                    hidden |= grown
                    changed = True
    return hidden
