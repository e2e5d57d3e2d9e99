"""The native receiver on the wire: what PS3.8 says it must do with odd peers, raw sockets against it."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from cohorts import ct_abdomen
from cohorts.dicom_writer import WrittenStudy, write_study
from cohorts.subjects import draw_subject
from dicom_node.native import dimse, pdu
from dicom_node.scp import DicomServer, ScpSettings
from dicom_node.spool import Spool
from dicom_node.status import StoreStatus
from tests.conftest import require_tool

ENV = {**os.environ, "TCP_NODELAY": "1"}
VERIFICATION = "1.2.840.10008.1.1"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> WrittenStudy:
    subject = draw_subject("ct-abdomen", 0, 29)
    return write_study(
        ct_abdomen.generate(subject, matrix=64, slice_thickness=10.0), subject, tmp_path_factory.mktemp("c")
    )


def _serve(tmp_path: Path, **kw: object) -> DicomServer:
    settings = ScpSettings(**{"bind": "127.0.0.1", "port": 0, "min_free_disk_mb": 1, **kw})  # type: ignore[arg-type]
    server = DicomServer(settings, Spool(tmp_path / "spool"))
    server.start()
    return server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DicomServer]:
    srv = _serve(tmp_path, acse_timeout_seconds=1.0)
    yield srv
    srv.stop()


def _rq(context: str = pdu.APPLICATION_CONTEXT, version: int = 1) -> bytes:
    """An A-ASSOCIATE-RQ: CT (Explicit VR LE) as context 1, Verification (Implicit VR LE) as context 3."""
    ct = pdu._item(0x30, CTImageStorage.encode()) + pdu._item(0x40, ExplicitVRLittleEndian.encode())
    echo = pdu._item(0x30, VERIFICATION.encode()) + pdu._item(0x40, ImplicitVRLittleEndian.encode())
    user = pdu._item(0x51, struct.pack(">I", 16384)) + pdu._item(0x52, b"1.2.3.4")
    body = struct.pack(">HH", version, 0) + b"FAIRNODE".ljust(16) + b"RAWSCU".ljust(16) + bytes(32)
    body += pdu._item(0x10, context.encode())
    body += pdu._item(0x20, bytes([1, 0, 0, 0]) + ct) + pdu._item(0x20, bytes([3, 0, 0, 0]) + echo)
    body += pdu._item(0x50, user)
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def _command(field: int, message_id: int, sop_class: str) -> bytes:
    """A request command set without a dataset (group 0000, Implicit VR Little Endian)."""
    uid = sop_class.encode() + (b"\0" if len(sop_class) % 2 else b"")
    body = struct.pack("<HHI", 0, 0x0002, len(uid)) + uid
    for element, value in ((0x0100, field), (0x0110, message_id), (0x0800, dimse.NO_DATASET)):
        body += struct.pack("<HHIH", 0, element, 2, value)
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    head = b""
    while len(head) < 6:
        chunk = sock.recv(6 - len(head))
        if not chunk:
            return -1, b""
        head += chunk
    kind, _, length = struct.unpack(">BBI", head)
    body = b""
    while len(body) < length:
        body += sock.recv(length - len(body))
    return kind, body


def _connect(server: DicomServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _echo_ok(server: DicomServer) -> bool:
    res = subprocess.run(
        [require_tool("echoscu"), "-aet", "CHECK", "-aec", "FAIRNODE", "127.0.0.1", str(server.port)],
        capture_output=True,
        text=True,
        env=ENV,
        check=False,
        timeout=60,
    )
    return res.returncode == 0


def test_garbage_silence_and_bad_requests_are_answered_and_the_node_stays_up(server: DicomServer) -> None:
    with _connect(server) as sock:  # not DICOM: A-ABORT (service provider), then closed
        sock.sendall(b"GET / HTTP/1.1\r\nHost: node\r\n\r\n")
        kind, body = _read_pdu(sock)
        assert kind == pdu.PduType.ABORT and body[2] == 2
    with _connect(server) as sock:  # silence: closed once the ARTIM timer (1 s here) runs out
        t0 = time.monotonic()
        kind, _ = _read_pdu(sock)
        assert kind in (pdu.PduType.ABORT, -1) and time.monotonic() - t0 < 10
    with _connect(server) as sock:  # an unknown application context: rejected permanent, ACSE, reason 2
        sock.sendall(_rq(context="1.2.3.4"))
        assert _read_pdu(sock) == (pdu.PduType.ASSOCIATE_RJ, bytes([0, 1, 1, 2]))
    with _connect(server) as sock:  # no protocol version 1: rejected, ACSE provider, reason 2
        sock.sendall(_rq(version=2))
        assert _read_pdu(sock) == (pdu.PduType.ASSOCIATE_RJ, bytes([0, 1, 2, 2]))
    with _connect(server) as sock:  # a PDU cut short by the peer closing: the node just closes
        sock.sendall(_rq()[:40])
    assert _echo_ok(server)


def test_raw_association_echo_unknown_command_and_release(server: DicomServer) -> None:
    with _connect(server) as sock:
        sock.sendall(_rq())
        kind, body = _read_pdu(sock)
        assert kind == pdu.PduType.ASSOCIATE_AC
        # C-FIND-RQ on the CT context: a command the node does not perform is answered, not dropped
        sock.sendall(pdu.p_data(1, 0x03, _command(0x0020, 5, CTImageStorage)))
        kind, body = _read_pdu(sock)
        rsp = dimse.parse_command(body[6:])
        assert kind == pdu.PduType.P_DATA_TF and rsp.command_field == 0x8020
        assert struct.pack("<HHIH", 0, 0x0120, 2, 5) in body  # Message ID Being Responded To
        assert struct.pack("<HHIH", 0, 0x0900, 2, 0x0211) in body  # Unrecognized Operation
        # C-ECHO on the Verification context
        echo = _command(0x0030, 6, VERIFICATION)
        sock.sendall(pdu.p_data(3, 0x03, echo))
        kind, body = _read_pdu(sock)
        assert dimse.parse_command(body[6:]).command_field == 0x8030
        assert struct.pack("<HHIH", 0, 0x0900, 2, 0) in body
        # a message on a context that was never proposed aborts the association
        sock.sendall(pdu.p_data(7, 0x03, echo))
        assert _read_pdu(sock)[0] == pdu.PduType.ABORT
    with _connect(server) as sock:
        sock.sendall(_rq())
        assert _read_pdu(sock)[0] == pdu.PduType.ASSOCIATE_AC
        sock.sendall(struct.pack(">BBI", pdu.PduType.RELEASE_RQ, 0, 4) + bytes(4))
        assert _read_pdu(sock) == (pdu.PduType.RELEASE_RP, bytes(4))
    assert server.admitted() == 0 or _echo_ok(server)


def test_dataset_in_many_small_pdus_is_stored_byte_for_byte(tmp_path: Path, study: WrittenStudy) -> None:
    srv = _serve(tmp_path, max_pdu_bytes=4096)  # a 64 x 64 CT instance needs a few PDUs
    try:
        ds = pydicom.dcmread(study.image_paths[0])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ae = AE(ae_title="SMALLPDU")
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", srv.port, ae_title="FAIRNODE")
        assert assoc.is_established and assoc.acceptor.maximum_length == 4096
        assert int(assoc.send_c_store(ds).Status) == StoreStatus.SUCCESS
        assoc.release()
        (rec,) = srv.spool.instances(str(ds.StudyInstanceUID))
        stored = pydicom.dcmread(rec.path)
        assert stored.PixelData == ds.PixelData and stored.SOPInstanceUID == ds.SOPInstanceUID
        assert stored.file_meta.SourceApplicationEntityTitle == "SMALLPDU"
    finally:
        srv.stop()


@pytest.mark.parametrize("receiver", ["native", "pynetdicom"])
def test_both_receivers_store_what_dcmtk_sends(tmp_path: Path, study: WrittenStudy, receiver: str) -> None:
    srv = _serve(tmp_path, receiver=receiver)
    try:
        assert _echo_ok(srv)
        res = subprocess.run(
            [require_tool("storescu"), "-aet", "DCMTK", "-aec", "FAIRNODE", "127.0.0.1", str(srv.port)]
            + [str(p) for p in study.image_paths],
            capture_output=True,
            text=True,
            env=ENV,
            check=False,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr
        stored = srv.spool.instances(study.study_uid)
        assert len(stored) == len(study.image_paths)
        sent = {str(pydicom.dcmread(p).SOPInstanceUID): p.read_bytes() for p in study.image_paths}
        for rec in stored:  # the dataset bytes as sent, behind a file meta header
            body = sent[rec.sop_uid]
            assert rec.path.read_bytes().endswith(body[body.index(b"\x08\x00", 132 + 12) :])
    finally:
        srv.stop()
