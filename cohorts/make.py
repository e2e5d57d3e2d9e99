"""Write a cohort to disk: one DICOM study per subject, its ground-truth SEG, and ``manifest.csv``.

Subjects are independent, so they are generated in parallel worker processes; each subject's content
depends only on ``(kind, seed, index, shift)``, never on the number of workers or on ``n``.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cohorts.dicom_writer import write_study
from cohorts.image import SyntheticImage
from cohorts.kinds import get_kind
from cohorts.shift import BALANCED, ShiftSpec
from cohorts.subjects import Subject, draw_subject

logger = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
COHORT_JSON = "cohort.json"

MANIFEST_FIELDS: tuple[str, ...] = (
    "index",
    "patient_id",
    "study_uid",
    "series_uid",
    "seg_series_uid",
    "seg_sop_uid",
    "sex",
    "age_years",
    "age_band",
    "height_m",
    "weight_kg",
    "bmi",
    "bmi_band",
    "ethnic_group",
    "group",
    "study_date",
    "manufacturer",
    "model_name",
    "institution",
    "modality",
    "n_images",
    "rows",
    "columns",
    "spacing_mm",
    "image_dir",
    "seg_path",
)


@dataclass(frozen=True)
class CohortRequest:
    """What to generate: ``n`` subjects of ``kind`` for ``seed`` under ``spec``."""

    kind: str
    n: int
    seed: int
    spec: ShiftSpec = BALANCED

    def __post_init__(self) -> None:
        get_kind(self.kind)
        if self.n < 1:
            raise ValueError(f"n must be a positive number of subjects, got {self.n}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    def subjects(self) -> Iterator[Subject]:
        for i in range(self.n):
            yield draw_subject(self.kind, i, self.seed, self.spec)


def structure_sizes(image: SyntheticImage) -> dict[str, float]:
    """Size of each ground-truth structure: ml for volumes, mm^2 for radiographs."""
    unit = float(np.prod(image.spacing)) / (1000.0 if image.pixels.ndim == 3 else 1.0)
    counts = np.bincount(image.labels.ravel(), minlength=max(lab.value for lab in image.label_info) + 1)
    suffix = "ml" if image.pixels.ndim == 3 else "mm2"
    return {f"{lab.name}_{suffix}": round(float(counts[lab.value]) * unit, 2) for lab in image.label_info}


def _make_one(subject: Subject, out: Path) -> dict[str, object]:
    kind = get_kind(subject.kind)
    image = kind.generate(subject)
    written = write_study(image, subject, out)
    shape = image.pixels.shape
    row: dict[str, object] = {
        "index": subject.index,
        "patient_id": subject.patient_id,
        "study_uid": written.study_uid,
        "series_uid": written.series_uid,
        "seg_series_uid": written.seg_series_uid,
        "seg_sop_uid": written.seg_sop_uid,
        "sex": subject.sex,
        "age_years": subject.age_years,
        "age_band": subject.age_band,
        "height_m": subject.height_m,
        "weight_kg": subject.weight_kg,
        "bmi": round(subject.bmi, 1),
        "bmi_band": subject.bmi_band,
        "ethnic_group": subject.ethnic_group,
        "group": subject.group,
        "study_date": subject.study_date.isoformat(),
        "manufacturer": subject.manufacturer,
        "model_name": subject.model_name,
        "institution": subject.institution,
        "modality": image.modality,
        "n_images": len(written.image_paths),
        "rows": shape[-2],
        "columns": shape[-1],
        "spacing_mm": " ".join(f"{s:.4g}" for s in image.spacing),
        "image_dir": str(written.image_paths[0].parent.relative_to(out)),
        "seg_path": str(written.seg_path.relative_to(out)),
    }
    row.update(structure_sizes(image))
    return row


def make_cohort(
    request: CohortRequest,
    out: Path,
    workers: int = 1,
    on_subject: Callable[[dict[str, object]], None] | None = None,
) -> Path:
    """Generate the cohort into ``out`` and return the path of its manifest.

    Parameters
    ----------
    request
        kind, size, seed and shift.
    out
        output folder (created); subject folders are named by patient ID.
    workers
        parallel worker processes (>= 1).
    on_subject
        called with each subject's manifest row as it completes (for progress display).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out.mkdir(parents=True, exist_ok=True)
    subjects = list(request.subjects())
    rows: list[dict[str, object]] = []
    if workers == 1:
        for s in subjects:
            rows.append(_make_one(s, out))
            if on_subject:
                on_subject(rows[-1])
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for row in pool.map(_make_one, subjects, [out] * len(subjects)):
                rows.append(row)
                if on_subject:
                    on_subject(row)
    rows.sort(key=lambda r: int(r["index"]))  # type: ignore[call-overload]
    manifest = out / MANIFEST
    fields = list(MANIFEST_FIELDS) + [k for k in rows[0] if k not in MANIFEST_FIELDS]
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    summary = {
        "kind": request.kind,
        "n": request.n,
        "seed": request.seed,
        "shift": request.spec.model_dump(),
        "composition": composition(rows),
    }
    (out / COHORT_JSON).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    logger.info("cohort %s n=%d seed=%d written to %s", request.kind, request.n, request.seed, out)
    return manifest


def composition(rows: list[dict[str, object]]) -> dict[str, dict[str, int]]:
    """Counts of subjects by sex, age band, ethnic group, BMI band and shift group."""
    out: dict[str, dict[str, int]] = {}
    for key in ("sex", "age_band", "ethnic_group", "bmi_band", "group"):
        counts: dict[str, int] = {}
        for r in rows:
            counts[str(r[key])] = counts.get(str(r[key]), 0) + 1
        out[key] = dict(sorted(counts.items()))
    return out


def read_manifest(path: Path) -> list[dict[str, str]]:
    """The rows of a cohort's ``manifest.csv`` (``path`` is the file or its folder)."""
    path = path / MANIFEST if path.is_dir() else path
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
