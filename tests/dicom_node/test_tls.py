"""DICOM TLS against real peers: dcmtk storescu/storescp with +tls and pynetdicom, both directions.

What is proved: TLS 1.2+ with BCP 195 suites and mutual certificates works with dcmtk and pynetdicom;
a plain connection to the TLS port, a client with an untrusted certificate and a client with none are
refused (no association), logged with the reason and recorded as Security Alerts; the SCU refuses a
destination whose certificate it does not trust.
"""

from __future__ import annotations

import logging
import os
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE

from cohorts import xr_knee
from cohorts.dicom_writer import WrittenStudy, write_study
from cohorts.subjects import draw_subject
from dicom_node import audit_trail
from dicom_node.audit_messages import AuditSource
from dicom_node.audit_trail import AuditTrail, AuditTrailSettings, read_log
from dicom_node.dev_certs import DevCertificates, make_dev_certificates
from dicom_node.scp import DicomServer, ScpSettings
from dicom_node.scu import Destination, send_files
from dicom_node.spool import Spool
from dicom_node.tls import DestinationTls, TlsSettings, client_context
from tests.conftest import require_tool
from tests.peers import free_port, port_open, wait_for

ENV = {**os.environ, "TCP_NODELAY": "1"}
VERIFICATION = "1.2.840.10008.1.1"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    return make_dev_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    """Certificates from another CA, which the node does not trust."""
    return make_dev_certificates(tmp_path_factory.mktemp("rogue"), client_name="rogue-client")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> WrittenStudy:
    subject = draw_subject("xr-knee", 0, 5)
    return write_study(xr_knee.generate(subject), subject, tmp_path_factory.mktemp("cohort"))


@pytest.fixture
def trail(tmp_path: Path) -> Iterator[AuditTrail]:
    t = AuditTrail(AuditTrailSettings(), tmp_path / "audit" / "audit.log", AuditSource("FAIRNODE"))
    previous = audit_trail.configure(t)
    yield t
    audit_trail.configure(previous)
    t.close()


def _tls(certs: DevCertificates, **kw: object) -> TlsSettings:
    values: dict[str, object] = {
        "enabled": True,
        "certificate": certs.server_certificate,
        "private_key": certs.server_key,
        "ca_file": certs.ca_certificate,
        **kw,
    }
    return TlsSettings.model_validate(values)


@pytest.fixture
def tls_server(tmp_path: Path, certs: DevCertificates, trail: AuditTrail) -> Iterator[DicomServer]:
    settings = ScpSettings(bind="127.0.0.1", port=0, min_free_disk_mb=1)
    server = DicomServer(settings, Spool(tmp_path / "spool"), tls_settings=_tls(certs))
    server.start()
    yield server
    server.stop()


def _events(trail: AuditTrail, event_code: str) -> list[pydicom.Dataset]:
    return [m for m in read_log(trail.log_file) if m.find("EventIdentification/EventID").get("csd-code") == event_code]  # type: ignore[union-attr]


def _echo(port: int, ctx: ssl.SSLContext | None) -> bool:
    ae = AE(ae_title="TLSSCU")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", port, ae_title="FAIRNODE", tls_args=(ctx, "localhost") if ctx else None)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status) == 0


def _client_ctx(certs: DevCertificates, own: DevCertificates | None) -> ssl.SSLContext:
    mine = own or certs
    return client_context(
        DestinationTls(ca_file=certs.ca_certificate, certificate=mine.client_certificate, private_key=mine.client_key)
    )


def test_storescu_over_tls_is_stored_and_audited(
    tls_server: DicomServer, certs: DevCertificates, study: WrittenStudy, trail: AuditTrail
) -> None:
    files = list(study.image_paths)
    res = subprocess.run(
        [
            require_tool("storescu"),
            "+tls",
            str(certs.client_key),
            str(certs.client_certificate),
            "+cf",
            str(certs.ca_certificate),
            "-aet",
            "DCMTKTLS",
            "-aec",
            "FAIRNODE",
            "127.0.0.1",
            str(tls_server.port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert {r.sop_uid for r in tls_server.spool.instances(study.study_uid)} == {
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files
    }
    accepted = wait_for(lambda: _events(trail, "110114"), 10, "the association on the audit trail")
    assert accepted[0].find("ActiveParticipant").get("UserID") == "DCMTKTLS"  # type: ignore[union-attr]


def test_pynetdicom_with_trusted_certificate_is_accepted(tls_server: DicomServer, certs: DevCertificates) -> None:
    assert _echo(tls_server.port, _client_ctx(certs, None))


@pytest.mark.parametrize("client", ["plain-pynetdicom", "plain-dcmtk", "untrusted-certificate", "no-certificate"])
def test_refused_clients_are_logged_and_audited(
    client: str,
    tls_server: DicomServer,
    certs: DevCertificates,
    rogue: DevCertificates,
    trail: AuditTrail,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="dicom_node.tls")
    if client == "plain-pynetdicom":
        assert not _echo(tls_server.port, None)
    elif client == "plain-dcmtk":
        res = subprocess.run(
            [require_tool("echoscu"), "-aet", "PLAIN", "-aec", "FAIRNODE", "127.0.0.1", str(tls_server.port)],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=60,
            check=False,
        )
        assert res.returncode != 0
    elif client == "untrusted-certificate":
        assert not _echo(tls_server.port, _client_ctx(certs, rogue))
    else:
        ctx = client_context(DestinationTls(ca_file=certs.ca_certificate))
        assert not _echo(tls_server.port, ctx)
    alerts = wait_for(lambda: _events(trail, "110113"), 15, "a Security Alert on the audit trail")
    reason = alerts[-1].findtext("EventIdentification/EventOutcomeDescription") or ""
    expected = {
        "plain-pynetdicom": "not a TLS connection",
        "plain-dcmtk": "not a TLS connection",
        "untrusted-certificate": "not trusted",
        "no-certificate": "certificate",
    }[client]
    assert expected in reason, reason
    assert any("TLS connection from 127.0.0.1 refused" in r.getMessage() for r in caplog.records)
    assert not _events(trail, "110114"), "a refused client must never reach an association"
    # the node keeps serving trusted clients
    assert _echo(tls_server.port, _client_ctx(certs, None))


def test_optional_client_certificate_accepts_a_client_without_one(
    tmp_path: Path, certs: DevCertificates, trail: AuditTrail
) -> None:
    settings = ScpSettings(bind="127.0.0.1", port=0, min_free_disk_mb=1)
    server = DicomServer(settings, Spool(tmp_path / "spool"), tls_settings=_tls(certs, client_certificates="optional"))
    server.start()
    try:
        assert _echo(server.port, client_context(DestinationTls(ca_file=certs.ca_certificate)))
    finally:
        server.stop()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_old_protocol_is_refused(tls_server: DicomServer, certs: DevCertificates, trail: AuditTrail) -> None:
    ctx = _client_ctx(certs, None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    try:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot offer TLS 1.1 at all")
    assert not _echo(tls_server.port, ctx)


@pytest.fixture
def dcmtk_tls_scp(tmp_path: Path, certs: DevCertificates) -> Iterator[tuple[int, Path]]:
    out = tmp_path / "received"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [
            require_tool("storescp"),
            "+tls",
            str(certs.server_key),
            str(certs.server_certificate),
            "+cf",
            str(certs.ca_certificate),
            "-aet",
            "DCMTKSCP",
            "-od",
            str(out),
            str(port),
        ],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: proc.poll() is not None or port_open(port), 30, "storescp +tls to listen")
        assert proc.poll() is None, "storescp +tls exited"
        yield port, out
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_scu_sends_over_tls_to_dcmtk_storescp(
    dcmtk_tls_scp: tuple[int, Path], certs: DevCertificates, study: WrittenStudy
) -> None:
    port, out = dcmtk_tls_scp
    dest_tls = DestinationTls(ca_file=certs.ca_certificate, server_name="localhost")
    dest = Destination("secure-pacs", "DCMTKSCP", "127.0.0.1", port, tls=dest_tls)
    own = _tls(certs)  # the node shows its own certificate (storescp requires one)
    datasets = [pydicom.dcmread(p) for p in study.image_paths]
    send_files(datasets, dest, "FAIRNODE", timeout=30, ssl_context=client_context(dest_tls, own))
    received = wait_for(lambda: list(out.iterdir()), 10, "storescp to write the file")
    assert {str(pydicom.dcmread(p).SOPInstanceUID) for p in received} == {str(d.SOPInstanceUID) for d in datasets}


def test_scu_refuses_a_destination_it_does_not_trust(
    dcmtk_tls_scp: tuple[int, Path], certs: DevCertificates, rogue: DevCertificates, study: WrittenStudy
) -> None:
    port, out = dcmtk_tls_scp
    dest_tls = DestinationTls(ca_file=rogue.ca_certificate, server_name="localhost")
    dest = Destination("secure-pacs", "DCMTKSCP", "127.0.0.1", port, tls=dest_tls)
    with pytest.raises(ConnectionError, match="no association"):
        send_files(
            [pydicom.dcmread(study.image_paths[0])],
            dest,
            "FAIRNODE",
            timeout=10,
            ssl_context=client_context(dest_tls, _tls(certs)),
        )
    assert not list(out.iterdir())


def test_settings_say_what_is_missing() -> None:
    with pytest.raises(ValueError, match="certificate, private_key"):
        TlsSettings(enabled=True)
    with pytest.raises(ValueError, match="ca_file"):
        TlsSettings.model_validate({"enabled": True, "certificate": "a.pem", "private_key": "a.key"})


def test_make_dev_certs_command_writes_a_chain_openssl_verifies(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fairnode.cli import app

    res = CliRunner().invoke(app, ["tls", "make-dev-certs", "--out", str(tmp_path), "--host", "node.example"])
    assert res.exit_code == 0, res.output
    check = subprocess.run(
        [require_tool("openssl"), "verify", "-CAfile", "ca.pem", "server.pem", "client.pem"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    text = subprocess.run(
        [require_tool("openssl"), "x509", "-in", "server.pem", "-noout", "-text"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "DNS:node.example" in text and "TLS Web Server Authentication" in text
    assert (tmp_path / "server.key").stat().st_mode & 0o777 == 0o600


def test_settings_wire_tls_into_the_node_and_destinations(tmp_path: Path, certs: DevCertificates) -> None:
    from fairnode import security
    from fairnode.node import build_node
    from fairnode.settings import load_settings

    settings = load_settings(
        None,
        data_dir=tmp_path / "node",
        bind="127.0.0.1",
        port=0,
        min_free_disk_mb=1,
        rules=[],
        pseudonym_secret="s" * 40,
        tls={
            "enabled": True,
            "certificate": str(certs.server_certificate),
            "private_key": str(certs.server_key),
            "ca_file": str(certs.ca_certificate),
        },
        destinations=[
            {
                "name": "research",
                "ae_title": "RESEARCH",
                "host": "localhost",
                "port": 2762,
                "tls": {"ca_file": str(certs.ca_certificate)},
                "deidentify": True,
                "deidentify_options": ["retain-patient-characteristics"],
            }
        ],
    )
    dest = settings.forwarding().destinations[0]
    assert dest.tls is not None and dest.deidentify and dest.deidentify_options == ("retain-patient-characteristics",)
    node = build_node(settings)
    node.server.start()
    try:
        assert _echo(node.server.port, _client_ctx(certs, None))
        assert not _echo(node.server.port, None)
    finally:
        node.server.stop()
        security.stop_audit_trail()
    with pytest.raises(ValueError, match="unknown de-identification options"):
        load_settings(
            None,
            destinations=[{"name": "r", "ae_title": "R", "host": "h", "port": 1, "deidentify_options": ["all"]}],
        )


def test_unreadable_certificate_files_are_named(tmp_path: Path, certs: DevCertificates) -> None:
    from dicom_node.tls import server_context

    with pytest.raises(ValueError, match=r"cannot load the certificate .*missing\.pem"):
        server_context(_tls(certs, certificate=tmp_path / "missing.pem"))
    with pytest.raises(ValueError, match="cannot load the certificate"):
        server_context(_tls(certs, private_key=certs.client_key))  # a key that does not match
    with pytest.raises(ValueError, match=r"trusted CA certificates from .*nothing\.pem"):
        client_context(DestinationTls(ca_file=tmp_path / "nothing.pem"))


def test_forwarder_sends_deidentified_copies_over_tls_to_dcmtk(
    tmp_path: Path, dcmtk_tls_scp: tuple[int, Path], certs: DevCertificates, study: WrittenStudy, trail: AuditTrail
) -> None:
    """A research archive reached over TLS (dcmtk storescp +tls, which requires the node's certificate)
    receives only de-identified copies; the audit trail says so (Encrypted, Anonymized)."""
    from dicom_node.deid import Deidentifier, UidMap
    from dicom_node.scu import Forwarder, ForwardSettings

    port, out = dcmtk_tls_scp
    dest = Destination(
        "research", "DCMTKSCP", "localhost", port, tls=DestinationTls(ca_file=certs.ca_certificate), deidentify=True
    )
    uid_map = UidMap(tmp_path / "uid-map.sqlite3", b"secret of the node")
    forwarder = Forwarder(
        Spool(tmp_path / "spool"),
        ForwardSettings(destinations=(dest,), tls=_tls(certs)),
        deidentifier=lambda d: Deidentifier(uid_map, d.name),
    )
    forwarder.enqueue(study.study_uid, 1, list(study.image_paths))
    assert forwarder.send_due() == len(study.image_paths)
    received = [pydicom.dcmread(p) for p in wait_for(lambda: list(out.iterdir()), 10, "storescp to write")]
    originals = [pydicom.dcmread(p, stop_before_pixels=True) for p in study.image_paths]
    assert {str(ds.PatientID) for ds in received}.isdisjoint({str(ds.PatientID) for ds in originals})
    assert {uid_map.original(str(ds.SOPInstanceUID)) for ds in received} == {str(ds.SOPInstanceUID) for ds in originals}
    assert all(ds.PatientIdentityRemoved == "YES" and not ds.get("PatientBirthDate") for ds in received)
    sent = _events(trail, "110104")
    assert sent and sent[-1].findtext(".//Encrypted") == "true" and sent[-1].findtext(".//Anonymized") == "true"


@pytest.mark.parametrize("profile", ["+py", "+px", "+pz"], ids=["bcp195-non-downgrading", "bcp195", "bcp195-extended"])
def test_dcmtk_bcp195_profiles_are_accepted(profile: str, tls_server: DicomServer, certs: DevCertificates) -> None:
    """dcmtk's three BCP 195 TLS secure transport connection profiles (PS3.15 B.9-B.11) all connect."""
    res = subprocess.run(
        [
            require_tool("echoscu"),
            profile,
            "+tls",
            str(certs.client_key),
            str(certs.client_certificate),
            "+cf",
            str(certs.ca_certificate),
            "-aec",
            "FAIRNODE",
            "127.0.0.1",
            str(tls_server.port),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
