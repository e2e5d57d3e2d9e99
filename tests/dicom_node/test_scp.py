"""The SCP against real senders (dcmtk storescu/echoscu, a pynetdicom AE): statuses, spool, quarantine."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE

from cohorts import ct_abdomen
from cohorts.dicom_writer import WrittenStudy, write_study
from cohorts.subjects import draw_subject
from dicom_node.scp import DicomServer, ScpSettings
from dicom_node.spool import Spool
from dicom_node.status import StoreStatus
from tests.conftest import require_tool

ENV = {**os.environ, "TCP_NODELAY": "1"}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> WrittenStudy:
    subject = draw_subject("ct-abdomen", 0, 21)
    image = ct_abdomen.generate(subject, matrix=64, slice_thickness=5.0)
    return write_study(image, subject, tmp_path_factory.mktemp("cohort"))


def _server(tmp_path: Path, **kw: object) -> DicomServer:
    settings = ScpSettings(**{"bind": "127.0.0.1", "port": 0, "min_free_disk_mb": 1, **kw})  # type: ignore[arg-type]
    server = DicomServer(settings, Spool(tmp_path / "spool"))
    server.start()
    return server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DicomServer]:
    srv = _server(tmp_path, allowed_calling_aes=("GOODSCU",))
    yield srv
    srv.stop()


def _storescu(
    server: DicomServer, files: list[Path], aet: str = "GOODSCU", aec: str = "FAIRNODE"
) -> subprocess.CompletedProcess[str]:
    exe = require_tool("storescu")
    return subprocess.run(
        [exe, "-aet", aet, "-aec", aec, "127.0.0.1", str(server.port), *map(str, files)],
        capture_output=True,
        text=True,
        env=ENV,
        check=False,
        timeout=120,
    )


def _store_dataset(server: DicomServer, ds: pydicom.Dataset, aet: str = "GOODSCU") -> int:
    ae = AE(ae_title=aet)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="FAIRNODE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
        return int(status.Status)
    finally:
        assoc.release()


def test_echo_and_store_with_dcmtk(server: DicomServer, study: WrittenStudy) -> None:
    echo = subprocess.run(
        [require_tool("echoscu"), "-aet", "GOODSCU", "-aec", "FAIRNODE", "127.0.0.1", str(server.port)],
        capture_output=True,
        text=True,
        env=ENV,
        check=False,
    )
    assert echo.returncode == 0, echo.stderr
    res = _storescu(server, list(study.image_paths))
    assert res.returncode == 0, res.stderr
    stored = server.spool.instances(study.study_uid)
    assert len(stored) == len(study.image_paths)
    for rec in stored:  # the spooled bytes are the sent dataset, file meta included
        ds = pydicom.dcmread(rec.path)
        assert ds.SOPInstanceUID == rec.sop_uid and ds.file_meta.TransferSyntaxUID
    assert server.spool.study(study.study_uid).state == "receiving"  # type: ignore[union-attr]
    # sending again is idempotent
    assert _storescu(server, list(study.image_paths[:3])).returncode == 0
    assert len(server.spool.instances(study.study_uid)) == len(study.image_paths)


def test_unknown_calling_ae_and_wrong_called_ae_are_rejected(server: DicomServer, study: WrittenStudy) -> None:
    res = _storescu(server, list(study.image_paths[:1]), aet="STRANGER")
    assert res.returncode != 0 and "Calling AE Title Not Recognized" in res.stderr
    res = _storescu(server, list(study.image_paths[:1]), aec="SOMEONE")
    assert res.returncode != 0 and "Called AE Title Not Recognized" in res.stderr
    assert server.spool.instances(study.study_uid) == []


def test_malformed_inputs_get_statuses_and_are_quarantined(server: DicomServer, study: WrittenStudy) -> None:
    truncated = pydicom.dcmread(get_testdata_file("MR_truncated.dcm"))
    assert _store_dataset(server, truncated) == StoreStatus.PIXEL_DATA_TRUNCATED

    no_uid = pydicom.dcmread(study.image_paths[0])
    no_uid.SOPInstanceUID = generate_uid()
    del no_uid.StudyInstanceUID
    assert _store_dataset(server, no_uid) == StoreStatus.MISSING_UID

    # random bytes in a DICOM file wrapper: the dataset cannot be decoded
    garbage = pydicom.dcmread(study.image_paths[1])
    garbage.SOPInstanceUID = generate_uid()
    ae = AE(ae_title="GOODSCU")
    ae.add_requested_context(garbage.SOPClassUID, garbage.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="FAIRNODE")
    assert assoc.is_established
    from io import BytesIO

    from pynetdicom.dimse_primitives import C_STORE

    req = C_STORE()
    req.MessageID = 7
    req.AffectedSOPClassUID = garbage.SOPClassUID
    req.AffectedSOPInstanceUID = garbage.SOPInstanceUID
    req.Priority = 2
    req.DataSet = BytesIO(os.urandom(4096))
    cx = assoc._get_valid_context(garbage.SOPClassUID, garbage.file_meta.TransferSyntaxUID, "scu")
    assoc._reactor_checkpoint.clear()  # as send_c_store does: we read the response ourselves
    try:
        assoc.dimse.send_msg(req, cx.context_id)
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    assoc.release()
    # random bytes either do not decode or decode into elements without the required UIDs
    assert rsp is not None and rsp.Status in (StoreStatus.CANNOT_UNDERSTAND, StoreStatus.MISSING_UID)

    kept = sorted(server.spool.quarantine_dir.glob("*.txt"))
    reasons = " | ".join(p.read_text() for p in kept)
    assert len(kept) == 3 and "pixel data is" in reasons and "missing StudyInstanceUID" in reasons

    # the node still serves
    assert _storescu(server, list(study.image_paths[:2])).returncode == 0
    assert len(server.spool.instances(study.study_uid)) == 2


def test_unsupported_sop_class_is_rejected_at_negotiation(server: DicomServer) -> None:
    ds = pydicom.dcmread(get_testdata_file("rtplan.dcm"))  # RT Plan: not a class fairnode accepts
    ae = AE(ae_title="GOODSCU")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="FAIRNODE")
    if assoc.is_established:
        with pytest.raises(ValueError, match="No presentation context"):
            assoc.send_c_store(ds)
        assoc.release()
    assert list(server.spool.incoming.rglob("*.dcm")) == []


def test_low_disk_refuses_association_and_store(tmp_path: Path, study: WrittenStudy) -> None:
    free_mb = shutil.disk_usage(tmp_path).free // (1024 * 1024)
    srv = _server(tmp_path, min_free_disk_mb=free_mb + 1024 * 1024)  # a watermark above what is free
    try:
        res = _storescu(srv, list(study.image_paths[:1]))
        assert res.returncode != 0 and "Rejected Transient" in res.stderr
        assert srv.spool.instances(study.study_uid) == []
    finally:
        srv.stop()
