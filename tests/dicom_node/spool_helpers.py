"""Test helper: a DICOM file stored into a spool the way the receivers store an instance."""

from __future__ import annotations

from pathlib import Path

import pydicom

from dicom_node.spool import Spool


def store_file(spool: Spool, path: Path, calling_ae: str = "T", *, deferred: bool = False) -> bool:
    """Store the bytes of ``path`` under the UIDs of its header; what :meth:`Spool.store` returns."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return spool.store(
        path.read_bytes(),
        study_uid=ds.StudyInstanceUID,
        series_uid=ds.SeriesInstanceUID,
        sop_uid=ds.SOPInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        calling_ae=calling_ae,
        deferred=deferred,
    )
