"""Test helper: a DICOM file stored into a spool the way the receivers store an instance."""

from __future__ import annotations

import threading
from pathlib import Path

import pydicom
import pytest

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


def hold_writer_index(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Make the spool's writer thread wait before it indexes (instances it took stay answered but unindexed)
    until the returned event is set; commits indexed in a handler's own thread go on as before."""
    committer = spool._committer
    index = committer.write_index
    may_index = threading.Event()

    def held_in_writer(items: object) -> None:
        if threading.current_thread().name == "spool-writer":
            may_index.wait(20)
        index(items)  # type: ignore[arg-type]

    monkeypatch.setattr(committer, "write_index", held_in_writer)
    return may_index
