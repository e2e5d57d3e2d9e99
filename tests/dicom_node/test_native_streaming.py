"""The native receiver writes nothing while a C-STORE's dataset arrives, answers it once journaled, has it
written and indexed before it confirms the release, keeps nothing of an instance cut short, accepts PDUs
as large as it offers, and parses the header from the first fragment."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from cohorts import ct_abdomen
from cohorts.dicom_writer import WrittenStudy, write_study
from cohorts.subjects import draw_subject
from dicom_node.native import pdu
from dicom_node.scp import DicomServer, ScpSettings
from dicom_node.spool import Spool
from dicom_node.status import StoreStatus
from dicom_node.store_handling import read_header, read_header_start
from tests.dicom_node.test_scp_native import _connect, _read_pdu, _rq


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> WrittenStudy:
    subject = draw_subject("ct-abdomen", 0, 31)
    return write_study(
        ct_abdomen.generate(subject, matrix=64, slice_thickness=10.0), subject, tmp_path_factory.mktemp("c")
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DicomServer]:
    srv = DicomServer(ScpSettings(bind="127.0.0.1", port=0, min_free_disk_mb=1), Spool(tmp_path / "spool"))
    srv.start()
    yield srv
    srv.stop()


def _dataset(study: WrittenStudy, size: int = 64) -> tuple[pydicom.Dataset, bytes]:
    """A new instance of the study (``size`` x ``size`` pixels) and its encoding (Explicit VR Little Endian)."""
    ds = pydicom.dcmread(study.image_paths[0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if size != ds.Rows:
        ds.Rows = ds.Columns = size
        ds.PixelData = np.arange(size * size, dtype=np.uint16).tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    fp = BytesIO()
    ds.save_as(fp, enforce_file_format=True)
    data = fp.getvalue()
    (meta_length,) = struct.unpack_from("<I", data, 132 + 8)  # (0002,0000) File Meta Information Group Length
    return ds, data[132 + 12 + meta_length :]


def _store_rq(ds: pydicom.Dataset, message_id: int = 1) -> bytes:
    """A C-STORE-RQ command set with a dataset (group 0000, Implicit VR Little Endian)."""

    def ui(tag: int, uid: str) -> bytes:
        raw = uid.encode() + (b"\0" if len(uid) % 2 else b"")
        return struct.pack("<HHI", 0, tag, len(raw)) + raw

    body = ui(0x0002, str(ds.SOPClassUID))
    for element, value in ((0x0100, 0x0001), (0x0110, message_id), (0x0700, 0), (0x0800, 0x0102)):
        body += struct.pack("<HHIH", 0, element, 2, value)
    body += ui(0x1000, str(ds.SOPInstanceUID))
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def _status(body: bytes) -> int:
    command = body[6:]
    at = command.index(struct.pack("<HHI", 0, 0x0900, 2))
    return int(struct.unpack_from("<H", command, at + 8)[0])


def test_answered_once_journaled_indexed_before_the_release_and_a_cut_instance_leaves_nothing(
    server: DicomServer, study: WrittenStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = server.spool
    committer = spool._committer
    index = committer.write_index

    def slow_index(items: object) -> None:  # the writer thread lags well behind the answer
        time.sleep(0.5)
        index(items)  # type: ignore[arg-type]

    monkeypatch.setattr(committer, "write_index", slow_index)
    ds, raw = _dataset(study)
    half = len(raw) // 2
    with _connect(server) as sock:
        sock.sendall(_rq())
        assert _read_pdu(sock)[0] == pdu.PduType.ASSOCIATE_AC
        sock.sendall(pdu.p_data(1, 0x03, _store_rq(ds)))
        sock.sendall(pdu.p_data(1, 0x00, raw[:half]))
        time.sleep(0.2)
        assert list(spool.tmp.iterdir()) == [] and spool.instances(str(ds.StudyInstanceUID)) == []
        sock.sendall(pdu.p_data(1, 0x02, raw[half:]))
        kind, body = _read_pdu(sock)
        assert kind == pdu.PduType.P_DATA_TF and _status(body) == StoreStatus.SUCCESS
        # answered from the journal: held (a duplicate is recognised), not yet indexed
        assert spool.is_known(str(ds.SOPInstanceUID)) and spool.instances(str(ds.StudyInstanceUID)) == []
        sock.sendall(struct.pack(">BBI", pdu.PduType.RELEASE_RQ, 0, 4) + bytes(4))
        assert _read_pdu(sock)[0] == pdu.PduType.RELEASE_RP
    (rec,) = spool.instances(str(ds.StudyInstanceUID))  # the release waited for it
    assert rec.path.read_bytes().endswith(raw) and pydicom.dcmread(rec.path).PixelData == ds.PixelData
    assert list(spool.tmp.iterdir()) == [] and not committer.holds(str(ds.SOPInstanceUID))
    # a second instance cut short by A-ABORT, then one in a connection dropped inside its dataset: nothing
    # of either is written or indexed
    cut, cut_raw = _dataset(study)
    for message_id, end in ((2, pdu.abort(source=0)), (3, b"")):
        with _connect(server) as sock:
            sock.sendall(_rq())
            assert _read_pdu(sock)[0] == pdu.PduType.ASSOCIATE_AC
            sock.sendall(pdu.p_data(1, 0x03, _store_rq(cut, message_id)))
            sock.sendall(pdu.p_data(1, 0x00, cut_raw[:half]) + end)
            time.sleep(0.2)
    time.sleep(0.2)
    assert spool.settle(timeout=10)
    assert list(spool.tmp.iterdir()) == [] and not spool.is_known(str(cut.SOPInstanceUID))
    assert {r.sop_uid for r in spool.instances(str(ds.StudyInstanceUID))} == {str(ds.SOPInstanceUID)}


def test_large_pdus_are_offered_and_accepted(server: DicomServer, study: WrittenStudy) -> None:
    """The acceptor offers 4 MiB PDUs (dcmtk's storescu sends at most 128 kB ones, pynetdicom its own
    maximum): a 512 x 512 instance in one P-DATA-TF of half a megabyte is stored."""
    ds, raw = _dataset(study, size=512)
    assert len(raw) > 512 * 1024
    with _connect(server) as sock:
        sock.sendall(_rq())
        kind, body = _read_pdu(sock)
        assert kind == pdu.PduType.ASSOCIATE_AC
        max_length = body.index(bytes([0x51, 0, 0, 4]))
        assert struct.unpack_from(">I", body, max_length + 4)[0] == 4 * 1024 * 1024
        sock.sendall(pdu.p_data(1, 0x03, _store_rq(ds)))
        sock.sendall(pdu.p_data(1, 0x02, raw))
        kind, body = _read_pdu(sock)
        assert kind == pdu.PduType.P_DATA_TF and _status(body) == StoreStatus.SUCCESS
        sock.sendall(struct.pack(">BBI", pdu.PduType.RELEASE_RQ, 0, 4) + bytes(4))
        assert _read_pdu(sock)[0] == pdu.PduType.RELEASE_RP
    (rec,) = server.spool.instances(str(ds.StudyInstanceUID))
    assert pydicom.dcmread(rec.path).PixelData == ds.PixelData


def test_header_parsed_from_the_first_fragment_is_the_whole_datasets(study: WrittenStudy) -> None:
    ds, raw = _dataset(study)
    pixels = raw.index(b"\xe0\x7f\x10\x00")
    start = read_header_start(raw[: pixels + 12], ExplicitVRLittleEndian)  # up to the pixel data's length
    assert start is not None and start.pixels == pixels
    whole = read_header(raw, ExplicitVRLittleEndian)
    early = read_header(raw, ExplicitVRLittleEndian, start=start)
    assert early.pixel_bytes == whole.pixel_bytes == len(ds.PixelData)
    assert early.scan == whole.scan and early.dataset == whole.dataset
    assert early.dataset.SOPInstanceUID == ds.SOPInstanceUID
    assert read_header_start(raw[: pixels - 10], ExplicitVRLittleEndian) is None  # cut before the pixel data
    assert read_header_start(raw[: pixels + 4], ExplicitVRLittleEndian) is None  # its element header cut
    assert read_header_start(raw, DeflatedExplicitVRLittleEndian) is None
    assert read_header_start(b"\xff" * 64, ExplicitVRLittleEndian) is None  # garbage: parsed again in full later


def test_duplicate_sent_in_fragments_keeps_the_first_copy(server: DicomServer, study: WrittenStudy) -> None:
    ds, raw = _dataset(study)
    for message_id in (1, 2):
        with _connect(server) as sock:
            sock.sendall(_rq())
            assert _read_pdu(sock)[0] == pdu.PduType.ASSOCIATE_AC
            sock.sendall(pdu.p_data(1, 0x03, _store_rq(ds, message_id)))
            sock.sendall(pdu.p_data(1, 0x00, raw[:100]) + pdu.p_data(1, 0x02, raw[100:]))
            _, body = _read_pdu(sock)
            assert _status(body) == StoreStatus.SUCCESS
            sock.shutdown(socket.SHUT_WR)
    assert server.spool.settle(timeout=10)
    (rec,) = server.spool.instances(str(ds.StudyInstanceUID))
    assert rec.path.read_bytes().endswith(raw)
    assert list(server.spool.tmp.iterdir()) == []
