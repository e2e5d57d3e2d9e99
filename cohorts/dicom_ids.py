"""Deterministic identifiers, dates and times of the studies :mod:`cohorts.dicom_writer` writes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date

from pydicom.uid import (
    PYDICOM_ROOT_UID,
    generate_uid,
)

from cohorts.image import SyntheticImage
from cohorts.subjects import Subject

#: Root of every UID written here (pydicom's registered root; the suffix is a hash of the entropy sources).
UID_ROOT: str = PYDICOM_ROOT_UID


@dataclass(frozen=True)
class StudyIds:
    """Deterministic identifiers, dates and times (``HHMMSS``) of one study."""

    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    seg_series_uid: str
    seg_sop_uid: str
    accession_number: str
    study_id: str
    study_date: date
    study_time: str
    series_time: str
    acquisition_time: str
    seg_time: str


def derived_uid(subject: Subject, modality: str, role: str, *extra: str) -> str:
    """A UID that depends only on the subject, the modality and the role (and ``extra``)."""
    sources = [subject.kind, str(subject.seed), str(subject.index), modality, role, *extra]
    return str(generate_uid(prefix=UID_ROOT, entropy_srcs=sources))


def _hhmmss(minutes: int, seconds: int = 0) -> str:
    return f"{minutes // 60:02d}{minutes % 60:02d}{seconds:02d}"


def study_ids(image: SyntheticImage, subject: Subject) -> StudyIds:
    mod = image.modality
    digest = hashlib.sha256(f"{subject.kind}/{subject.seed}/{subject.index}/{mod}".encode()).digest()
    number = int.from_bytes(digest[:8], "big")
    rng = subject.rng(f"dicom-times/{mod}")
    start = int(rng.integers(7 * 60, 17 * 60))  # minutes after midnight: 07:00 to 16:59
    second = int(rng.integers(60))
    return StudyIds(
        study_uid=derived_uid(subject, mod, "study"),
        series_uid=derived_uid(subject, mod, "series"),
        frame_of_reference_uid=derived_uid(subject, mod, "frame-of-reference"),
        seg_series_uid=derived_uid(subject, mod, "seg-series"),
        seg_sop_uid=derived_uid(subject, mod, "seg-instance"),
        accession_number=f"A{number % 10**10:010d}",
        study_id=f"{(number // 10**10) % 10**6:06d}",
        study_date=subject.study_date,
        study_time=_hhmmss(start, second),
        series_time=_hhmmss(start + 2, second),
        acquisition_time=_hhmmss(start + 3, second),
        seg_time=_hhmmss(start + 45, second),
    )
