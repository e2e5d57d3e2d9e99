"""Label names to SNOMED CT codes: the table an imported model's class names are coded with.

``snomed_labels.csv`` (beside this module) has one row per structure: ``name`` (lower case, words joined by
``_``), ``synonyms`` (``;``-separated), the SNOMED CT ``code`` and ``meaning``, the segmentation category
(``category_code``, ``category_meaning``) and a display ``color`` (``R G B``). A name is looked up after
normalisation (lower case; spaces, hyphens and dots become ``_``).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LABEL_TABLE", "LabelCode", "UnmappedLabelError", "load_label_map", "normalise_label"]

#: The shipped table.
LABEL_TABLE = Path(__file__).resolve().parent / "snomed_labels.csv"


class UnmappedLabelError(ValueError):
    """A class name the label table does not know."""


@dataclass(frozen=True)
class LabelCode:
    """One structure's codes and colour."""

    code: str
    meaning: str
    category_code: str
    category_meaning: str
    color: tuple[int, int, int]


def normalise_label(name: str) -> str:
    """``"Right Kidney"`` -> ``"right_kidney"``."""
    return re.sub(r"[\s\-.]+", "_", name.strip().lower()).strip("_")


def load_label_map(path: Path = LABEL_TABLE) -> dict[str, LabelCode]:
    """Normalised name (and each synonym) -> codes.

    Raises
    ------
    ValueError
        naming the file and row when a row lacks a numeric code or a three-value colour.
    """
    out: dict[str, LabelCode] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        for line, row in enumerate(csv.DictReader(fh), start=2):
            color = tuple(int(v) for v in (row.get("color") or "").split())
            if not (row.get("code") or "").isdigit() or len(color) != 3:
                raise ValueError(f"{path} line {line}: needs a numeric SNOMED CT code and a colour 'R G B'")
            code = LabelCode(
                code=row["code"],
                meaning=row["meaning"],
                category_code=row["category_code"],
                category_meaning=row["category_meaning"],
                color=(color[0], color[1], color[2]),
            )
            for name in [row["name"], *(row.get("synonyms") or "").split(";")]:
                if name.strip():
                    out[normalise_label(name)] = code
    return out
