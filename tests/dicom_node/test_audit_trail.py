"""The security audit trail: messages valid against the DICOM audit message schema (PS3.15 A.5.1), the
append-only local log with rotation read back, syslog (RFC 5424) received over UDP and over TLS, and the
SCP's associations (accepted, rejected with the reason) recorded."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from xml.etree import ElementTree as ET

import pydicom
import pytest
from lxml import etree
from pynetdicom import AE

from dicom_node import audit_messages as am
from dicom_node import audit_trail
from dicom_node.audit_trail import AuditTrail, AuditTrailSettings, read_log
from dicom_node.dev_certs import make_dev_certificates
from dicom_node.scp import DicomServer, ScpSettings
from dicom_node.spool import Spool
from tests.peers import association_reply, wait_for

SOURCE = am.AuditSource("FAIRNODE", site_id="TESTSITE")
CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY = "1.2.826.0.1.3680043.10.1234.1"


@pytest.fixture(scope="module")
def schema() -> etree.RelaxNG:
    text = resources.files("dicom_node").joinpath("data/audit_message.rng").read_bytes()
    return etree.RelaxNG(etree.fromstring(text))


EVENTS: dict[str, Callable[[], am.AuditEvent]] = {
    "application start": lambda: am.application_activity(started=True, application="FAIRNODE", user="svc-fairnode"),
    "application stop": lambda: am.application_activity(started=False, application="FAIRNODE"),
    "association accepted": lambda: am.association(
        accepted=True, calling_ae="PACS", called_ae="FAIRNODE", address="10.0.0.5"
    ),
    "association rejected": lambda: am.association(
        accepted=False, calling_ae="ROGUE", called_ae="FAIRNODE", address="10.0.0.6", reason="calling AE not allowed"
    ),
    "tls refused": lambda: am.node_authentication_failure(address="10.0.0.7", node="FAIRNODE", reason="untrusted"),
    "instances received": lambda: am.instances_received(
        study_uid=STUDY, patient="p-3f2a", sop_classes={CT: 120}, source_aes=["PACS"], node_ae="FAIRNODE"
    ),
    "results transferred": lambda: am.instances_sent(
        study_uid=STUDY,
        patient="p-3f2a",
        sop_classes={"1.2.840.10008.5.1.4.1.1.66.4": 1, "1.2.840.10008.5.1.4.1.1.88.34": 1},
        node_ae="FAIRNODE",
        destination_ae="PACS",
        destination_address="pacs.hospital.example",
        ok=True,
        deidentified=True,
        tls=True,
    ),
    "transfer failed": lambda: am.instances_sent(
        study_uid=STUDY,
        patient="p-3f2a",
        sop_classes={CT: 1},
        node_ae="FAIRNODE",
        destination_ae="PACS",
        destination_address="10.0.0.5",
        ok=False,
        error="no association\nwith PACS",
    ),
    "registry query": lambda: am.registry_query(user="alice", query="cases route=REVIEW site=north", address="::1"),
    "review action": lambda: am.review_action(user="alice", action="reject", case_id=17, study_uid=STUDY),
    "sign-in": lambda: am.user_authentication(user="alice", ok=True, address="10.1.1.1"),
    "sign-in failed": lambda: am.user_authentication(user="mallory", ok=False, reason="wrong password"),
    "sign-out": lambda: am.user_authentication(user="alice", ok=True, logout=True),
    "audit export": lambda: am.audit_export(user="governance", report="fairness audit 2026Q3", destination="/reports"),
}


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_every_message_is_valid_against_the_dicom_schema(name: str, schema: etree.RelaxNG) -> None:
    xml = am.to_xml(EVENTS[name](), SOURCE)
    doc = etree.fromstring(xml)
    assert schema.validate(doc), schema.error_log
    assert b"\n" not in xml


def test_the_schema_rejects_an_incomplete_message(schema: etree.RelaxNG) -> None:
    doc = etree.fromstring(am.to_xml(EVENTS["sign-in"](), SOURCE))
    doc.remove(doc.find("ActiveParticipant"))
    assert not schema.validate(doc)
    doc = etree.fromstring(am.to_xml(EVENTS["sign-in"](), SOURCE))
    doc.find("EventIdentification").set("EventOutcomeIndicator", "3")
    assert not schema.validate(doc)


def test_event_codes_follow_ps3_15() -> None:
    def codes(name: str) -> tuple[str, str | None, str]:
        root = ET.fromstring(am.to_xml(EVENTS[name](), SOURCE))
        ident = root.find("EventIdentification")
        assert ident is not None
        type_code = ident.find("EventTypeCode")
        return (
            str(ident.find("EventID").get("csd-code")),  # type: ignore[union-attr]
            None if type_code is None else type_code.get("csd-code"),
            str(ident.get("EventOutcomeIndicator")),
        )

    assert codes("application start") == ("110100", "110120", "0")
    assert codes("application stop") == ("110100", "110121", "0")
    assert codes("association rejected") == ("110113", "110126", "4")
    assert codes("instances received") == ("110104", None, "0")
    assert codes("transfer failed") == ("110104", None, "4")
    assert codes("registry query") == ("110112", None, "0")
    assert codes("sign-in failed") == ("110114", "110122", "4")
    assert codes("audit export") == ("110106", None, "0")


@pytest.fixture
def trail(tmp_path: Path) -> Iterator[AuditTrail]:
    t = AuditTrail(AuditTrailSettings(), tmp_path / "audit" / "audit.log", SOURCE)
    yield t
    t.close()


def test_local_log_is_appended_and_read_back(trail: AuditTrail, schema: etree.RelaxNG) -> None:
    names = sorted(EVENTS)
    sizes = []
    for name in names:
        before = trail.log_file.read_bytes() if trail.log_file.exists() else b""
        trail.record(EVENTS[name]())
        after = trail.log_file.read_bytes()
        assert after.startswith(before), "the log is only ever appended to"
        sizes.append(len(after))
    messages = list(read_log(trail.log_file))
    assert len(messages) == len(names)
    assert all(schema.validate(etree.fromstring(ET.tostring(m))) for m in messages)
    assert sizes == sorted(sizes)
    assert (trail.log_file.stat().st_mode & 0o777) == 0o600


def test_rotation_keeps_the_newest_files_in_order(tmp_path: Path) -> None:
    settings = AuditTrailSettings(max_bytes=4096, backup_count=3)
    t = AuditTrail(settings, tmp_path / "audit.log", SOURCE)
    for k in range(120):
        t.record(am.registry_query(user=f"user{k:03d}", query="q"))
    rotated = sorted(p.name for p in tmp_path.glob("audit.log.*"))
    assert rotated == ["audit.log.1", "audit.log.2", "audit.log.3"]
    users = [m.find("ActiveParticipant").get("UserID") for m in read_log(tmp_path / "audit.log")]  # type: ignore[union-attr]
    assert users == sorted(users), "read back oldest first"
    assert users[-1] == "user119"
    assert all(p.stat().st_size <= 4096 for p in tmp_path.glob("audit.log*"))


def test_record_without_a_trail_is_a_no_op() -> None:
    previous = audit_trail.configure(None)
    try:
        audit_trail.record(EVENTS["sign-in"]())
    finally:
        audit_trail.configure(previous)


def _parse_syslog(frame: bytes) -> tuple[str, bytes]:
    header, _, rest = frame.partition(b"\xef\xbb\xbf")
    return header.decode("ascii"), rest


def test_syslog_over_udp(tmp_path: Path, schema: etree.RelaxNG) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.bind(("127.0.0.1", 0))
        collector.settimeout(10)
        port = collector.getsockname()[1]
        settings = AuditTrailSettings(syslog_host="127.0.0.1", syslog_port=port, syslog_transport="udp")
        t = AuditTrail(settings, tmp_path / "audit.log", SOURCE)
        try:
            t.record(EVENTS["sign-in failed"]())
            t.flush()
            frame, _ = collector.recvfrom(65535)
        finally:
            t.close()
    header, xml = _parse_syslog(frame)
    parts = header.split(" ")
    assert parts[0] == "<85>1", "facility authpriv (10), severity notice (5), RFC 5424 version 1"
    assert parts[3] == "FAIRNODE" and parts[5] == "IHE+RFC-3881"
    assert parts[6] == "-"
    assert schema.validate(etree.fromstring(xml))
    assert xml == (tmp_path / "audit.log").read_bytes().strip()


def test_syslog_over_tls(tmp_path: Path, schema: etree.RelaxNG) -> None:
    certs = make_dev_certificates(tmp_path / "certs")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.server_certificate, certs.server_key)
    received: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with ctx.wrap_socket(conn, server_side=True) as tls:
            buffer = b""
            while len(received) < 2:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                while b" " in buffer:  # RFC 5425 octet counting: "LEN SP MSG"
                    length, _, rest = buffer.partition(b" ")
                    if len(rest) < int(length):
                        break
                    received.append(rest[: int(length)])
                    buffer = rest[int(length) :]

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    settings = AuditTrailSettings(
        syslog_host="127.0.0.1", syslog_port=port, syslog_transport="tls", syslog_ca_file=certs.ca_certificate
    )
    t = AuditTrail(settings, tmp_path / "audit.log", SOURCE)
    try:
        t.record(EVENTS["application start"]())
        t.record(EVENTS["audit export"]())
        t.flush()
        thread.join(timeout=10)
    finally:
        t.close()
        listener.close()
    assert len(received) == 2
    for frame in received:
        header, xml = _parse_syslog(frame)
        assert header.startswith("<85>1 ")
        assert schema.validate(etree.fromstring(xml))


def test_an_absent_collector_never_blocks_the_local_log(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    settings = AuditTrailSettings(syslog_host="127.0.0.1", syslog_port=port, syslog_transport="tls")
    t = AuditTrail(settings, tmp_path / "audit.log", SOURCE)
    try:
        t.record(EVENTS["sign-in"]())
        t.flush()
    finally:
        t.close()
    assert len(list(read_log(tmp_path / "audit.log"))) == 1


def test_scp_associations_are_recorded(tmp_path: Path, trail: AuditTrail) -> None:
    previous = audit_trail.configure(trail)
    settings = ScpSettings(bind="127.0.0.1", port=0, min_free_disk_mb=1, allowed_calling_aes=("GOODSCU",))
    server = DicomServer(settings, Spool(tmp_path / "spool"))
    server.start()
    try:
        for calling in ("GOODSCU", "ROGUE"):
            ae = AE(ae_title=calling)
            ae.add_requested_context("1.2.840.10008.1.1")
            assoc = ae.associate("127.0.0.1", server.port, ae_title="FAIRNODE")
            if assoc.is_established:
                assoc.release()
        messages = wait_for(lambda: (m := list(read_log(trail.log_file))) and len(m) >= 2 and m, 10, "two messages")
    finally:
        server.stop()
        audit_trail.configure(previous)
    by_event = {m.find("EventIdentification/EventID").get("csd-code"): m for m in messages}  # type: ignore[union-attr]
    accepted, rejected = by_event["110114"], by_event["110113"]
    assert accepted.find("ActiveParticipant").get("UserID") == "GOODSCU"  # type: ignore[union-attr]
    assert rejected.find("ActiveParticipant").get("UserID") == "ROGUE"  # type: ignore[union-attr]
    assert rejected.findtext("EventIdentification/EventOutcomeDescription") == (
        "association rejected: calling AE title not recognised"
    )


def test_the_running_node_records_start_received_and_stop(tmp_path: Path, schema: etree.RelaxNG) -> None:
    """The composed node (fairnode.node.build_node): start, a study received by C-STORE, stop."""
    from cohorts import xr_knee
    from cohorts.dicom_writer import write_study
    from cohorts.subjects import draw_subject
    from fairnode import security
    from fairnode.node import build_node
    from fairnode.settings import load_settings

    subject = draw_subject("xr-knee", 0, 9)
    written = write_study(xr_knee.generate(subject), subject, tmp_path / "cohort")
    patient_id = str(subject.patient_id)
    settings = load_settings(
        None,
        data_dir=tmp_path / "node",
        bind="127.0.0.1",
        port=0,
        idle_seconds=0.5,
        min_free_disk_mb=1,
        rules=[],  # nothing to segment: the study is received, found complete and skipped
        pseudonym_secret="s" * 40,
    )
    node = build_node(settings)
    node.start()
    log = settings.data_dir / "audit" / "audit.log"
    try:
        ae = AE(ae_title="MODALITY")
        ds = pydicom.dcmread(written.image_paths[0])
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", node.server.port, ae_title=settings.ae_title)
        assert assoc.is_established
        assert int(assoc.send_c_store(ds).Status) == 0
        assoc.release()

        def received() -> list[ET.Element]:
            return [m for m in read_log(log) if m.find("EventIdentification").get("EventActionCode") == "C"]  # type: ignore[union-attr]

        got = wait_for(received, 30, "DICOM Instances Transferred (received) on the audit trail")
    finally:
        node.stop()
        security.stop_audit_trail()
    messages = list(read_log(log))
    events = [m.find("EventIdentification/EventTypeCode") for m in messages]
    assert events[0] is not None and events[0].get("csd-code") == "110120"
    assert events[-1] is not None and events[-1].get("csd-code") == "110121"
    assert all(schema.validate(etree.fromstring(ET.tostring(m))) for m in messages)
    study, patient = got[0].findall("ParticipantObjectIdentification")
    assert study.get("ParticipantObjectID") == written.study_uid
    assert patient.get("ParticipantObjectID") == security.patient_pseudonym(settings)(patient_id)
    assert got[0].find("ActiveParticipant").get("UserID") == "MODALITY"  # type: ignore[union-attr]
    assert patient_id not in log.read_text()


def test_a_guard_rejection_is_recorded_with_its_reason(tmp_path: Path, trail: AuditTrail) -> None:
    from dicom_node.guards import GuardSettings

    previous = audit_trail.configure(trail)
    settings = ScpSettings(
        bind="127.0.0.1", port=0, min_free_disk_mb=1, guards=GuardSettings(max_associations_per_ae=1)
    )
    server = DicomServer(settings, Spool(tmp_path / "spool"))
    server.start()
    try:
        ae = AE(ae_title="BUSYSCU")
        ae.add_requested_context("1.2.840.10008.1.1")
        first = ae.associate("127.0.0.1", server.port, ae_title="FAIRNODE")
        second, rejection = association_reply(ae, server.port)
        assert first.is_established and rejection is not None and not second.is_established
        first.release()

        def rejected() -> list[ET.Element]:
            return [
                m for m in read_log(trail.log_file) if m.find("EventIdentification/EventID").get("csd-code") == "110113"
            ]  # type: ignore[union-attr]

        alert = wait_for(rejected, 10, "the rejection on the audit trail")[0]
    finally:
        server.stop()
        audit_trail.configure(previous)
    reason = alert.findtext("EventIdentification/EventOutcomeDescription") or ""
    assert reason.startswith("association rejected: local limit exceeded"), reason
    assert "the limit per AE is 1" in reason, reason  # the guard's own words, with the measured value
