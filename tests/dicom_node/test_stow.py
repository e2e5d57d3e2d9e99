"""STOW-RS destinations against Orthanc's DICOMweb plugin: TLS with basic auth, a bearer token checked by
Orthanc, refused credentials retried then dead-lettered, and an archive that is down and comes back."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes
from io import BytesIO
from pathlib import Path

import httpx
import pydicom
import pytest
from pydantic import SecretStr, ValidationError

from cohorts import xr_knee
from cohorts.dicom_writer import WrittenStudy, write_study
from cohorts.subjects import draw_subject
from dicom_node.dev_certs import DevCertificates, make_dev_certificates
from dicom_node.scu import Destination, Forwarder, ForwardSettings, RetryPolicy
from dicom_node.spool import Spool
from dicom_node.stow import DicomWebTarget, WebAuth, stow_body
from fairnode.settings import DestinationModel
from tests.conftest import require_tool
from tests.peers import free_port, orthanc_dicomweb, port_open, run_orthanc, wait_for

USER, PASSWORD, TOKEN = "fairnode", "correct horse", "token-of-the-node"
#: Orthanc lets a request through only with the node's bearer token (a real check by the peer).
BEARER_FILTER = f"""
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  return httpHeaders['authorization'] == 'Bearer {TOKEN}'
end
"""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    return make_dev_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> WrittenStudy:
    subject = draw_subject("xr-knee", 0, 3)
    return write_study(xr_knee.generate(subject), subject, tmp_path_factory.mktemp("cohort"))


@contextmanager
def tls_front(certs: DevCertificates, backend_port: int) -> Iterator[int]:
    """socat terminating TLS (the dev CA's server certificate) in front of ``backend_port``, as a hospital's
    reverse proxy does in front of its archive; yields the https port."""
    port = free_port()
    address = f"OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0"
    address += f",cert={certs.server_certificate},key={certs.server_key}"
    proc = subprocess.Popen(
        [require_tool("socat"), address, f"TCP:127.0.0.1:{backend_port}"], stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: proc.poll() is not None or port_open(port), 20, "socat to listen")
        if proc.poll() is not None:
            raise RuntimeError(f"socat exited with {proc.returncode}")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def tls_archive(tmp_path_factory: pytest.TempPathFactory, certs: DevCertificates) -> Iterator[int]:
    """Orthanc requiring HTTP basic credentials, reached over https through a TLS front; yields its https port."""
    extra = {**orthanc_dicomweb(), "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD}}
    with (
        run_orthanc(tmp_path_factory.mktemp("orthanc-tls"), {}, extra=extra) as orthanc,
        tls_front(certs, orthanc.http_port) as port,
    ):
        yield port


def _web_destination(url: str, auth: WebAuth, ca_file: Path | None = None) -> Destination:
    target = DicomWebTarget(url=url, auth=auth, ca_file=ca_file)
    return Destination("archive", "DICOMWEB", target.host, target.port, web=target)


def _forwarder(tmp_path: Path, dest: Destination, attempts: int = 8) -> Forwarder:
    retry = RetryPolicy(max_attempts=attempts, base_seconds=5.0)
    return Forwarder(Spool(tmp_path / "spool"), ForwardSettings(destinations=(dest,), retry=retry, timeout_seconds=20))


def _stored(client: httpx.Client, study_uid: str) -> int:
    """Instances of ``study_uid`` the archive holds (QIDO-RS through the same plugin)."""
    r = client.get(f"/dicom-web/studies/{study_uid}/instances")
    if r.status_code == 204 or (r.status_code == 404):
        return 0
    r.raise_for_status()
    return len(r.json())


def test_stow_body_is_multipart_related_of_part10_files(study: WrittenStudy) -> None:
    datasets = [pydicom.dcmread(p) for p in study.image_paths]
    body = stow_body(datasets, "b0undary")
    message = message_from_bytes(
        b'Content-Type: multipart/related; type="application/dicom"; boundary=b0undary\r\n\r\n' + body
    )
    parts = message.get_payload()
    assert isinstance(parts, list) and len(parts) == len(datasets)
    read = [pydicom.dcmread(BytesIO(part.get_payload(decode=True))) for part in parts]
    assert [str(ds.SOPInstanceUID) for ds in read] == [str(ds.SOPInstanceUID) for ds in datasets]
    assert all(part.get_content_type() == "application/dicom" for part in parts)


def test_delivered_by_stow_over_tls_with_basic_auth(
    tmp_path: Path, tls_archive: int, certs: DevCertificates, study: WrittenStudy
) -> None:
    url = f"https://localhost:{tls_archive}/dicom-web"
    auth = WebAuth(kind="basic", username=USER, password=SecretStr(PASSWORD))
    forwarder = _forwarder(tmp_path, _web_destination(url, auth, certs.ca_certificate))
    files = [*study.image_paths, study.seg_path]  # an image and a SEG in one request
    forwarder.enqueue(study.study_uid, 1, files)
    assert forwarder.send_due() == len(files)
    assert not forwarder.spool.deliveries("pending") and not forwarder.spool.deliveries("dead")
    base = f"https://localhost:{tls_archive}"
    with httpx.Client(
        base_url=base, auth=(USER, PASSWORD), verify=ssl.create_default_context(cafile=str(certs.ca_certificate))
    ) as client:
        assert _stored(client, study.study_uid) == len(files)


def test_refused_credentials_are_retried_then_dead_lettered_with_the_reason(
    tmp_path: Path, tls_archive: int, certs: DevCertificates, study: WrittenStudy
) -> None:
    url = f"https://localhost:{tls_archive}/dicom-web"
    auth = WebAuth(kind="basic", username=USER, password=SecretStr("wrong"))
    forwarder = _forwarder(tmp_path, _web_destination(url, auth, certs.ca_certificate), attempts=3)
    forwarder.enqueue(study.study_uid, 1, list(study.image_paths[:1]))
    now = 1e10
    for attempt in range(3):
        assert forwarder.send_due(now=now) == 0
        states = forwarder.spool.deliveries()
        assert [d.attempts for d in states] == [attempt + 1]
        now += 1e4  # past any back-off
    (dead,) = forwarder.spool.deliveries("dead")
    assert "HTTP 401" in dead.last_error and "credentials were refused" in dead.last_error
    assert not forwarder.spool.deliveries("pending")


def test_untrusted_server_certificate_is_a_tls_failure(tmp_path: Path, tls_archive: int, study: WrittenStudy) -> None:
    rogue = make_dev_certificates(tmp_path / "rogue")
    url = f"https://localhost:{tls_archive}/dicom-web"
    auth = WebAuth(kind="basic", username=USER, password=SecretStr(PASSWORD))
    forwarder = _forwarder(tmp_path, _web_destination(url, auth, rogue.ca_certificate))
    forwarder.enqueue(study.study_uid, 1, list(study.image_paths[:1]))
    assert forwarder.send_due() == 0
    (pending,) = forwarder.spool.deliveries("pending")
    assert "TLS handshake failed" in pending.last_error


def test_bearer_token_checked_by_the_archive(tmp_path: Path, study: WrittenStudy) -> None:
    script = tmp_path / "bearer.lua"
    script.write_text(BEARER_FILTER)
    extra = {**orthanc_dicomweb(), "LuaScripts": [str(script)]}
    with run_orthanc(tmp_path / "orthanc", {}, extra=extra) as orthanc:
        url = f"{orthanc.url}/dicom-web"
        wrong = _forwarder(tmp_path / "wrong", _web_destination(url, WebAuth(kind="bearer", token=SecretStr("nope"))))
        wrong.enqueue(study.study_uid, 1, list(study.image_paths[:1]))
        assert wrong.send_due() == 0
        assert "HTTP 403" in wrong.spool.deliveries("pending")[0].last_error

        right = _forwarder(tmp_path / "right", _web_destination(url, WebAuth(kind="bearer", token=SecretStr(TOKEN))))
        right.enqueue(study.study_uid, 1, list(study.image_paths))
        assert right.send_due() == len(study.image_paths)
        with httpx.Client(base_url=orthanc.url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            assert _stored(client, study.study_uid) == len(study.image_paths)


def test_archive_down_then_up_is_delivered(tmp_path: Path, study: WrittenStudy) -> None:
    port = free_port()
    forwarder = _forwarder(tmp_path, _web_destination(f"http://127.0.0.1:{port}/dicom-web", WebAuth()))
    forwarder.enqueue(study.study_uid, 1, list(study.image_paths))
    assert forwarder.send_due() == 0
    pending = forwarder.spool.deliveries("pending")
    assert len(pending) == len(study.image_paths) and all("cannot connect" in d.last_error for d in pending)
    assert forwarder.send_due() == 0  # not due yet: the back-off holds
    with run_orthanc(tmp_path / "orthanc", {}, http_port=port, extra=orthanc_dicomweb()) as orthanc:
        assert forwarder.send_due(now=max(d.next_attempt_at for d in pending)) == len(study.image_paths)
        with orthanc.client() as client:
            assert _stored(client, study.study_uid) == len(study.image_paths)
    assert not forwarder.spool.deliveries("pending") and not forwarder.spool.deliveries("dead")


def test_destination_settings_choose_the_kind(tmp_path: Path) -> None:
    web = DestinationModel(
        name="web",
        kind="dicomweb",
        url="https://pacs.example.org/dicom-web/",
        auth={"kind": "bearer", "token": "t"},  # type: ignore[arg-type]
        tls={"ca_file": tmp_path / "ca.pem"},  # type: ignore[arg-type]
    ).destination()
    assert web.web is not None and web.web.url == "https://pacs.example.org/dicom-web" and web.web.tls
    assert (web.host, web.port, web.web.ca_file) == ("pacs.example.org", 443, tmp_path / "ca.pem")
    dicom = DestinationModel(name="pacs", ae_title="PACS", host="10.0.0.5", port=104).destination()
    assert dicom.web is None and dicom.describe() == "PACS@10.0.0.5:104"
    with pytest.raises(ValidationError, match=r"\(kind dicom\) needs host, port"):
        DestinationModel(name="pacs", ae_title="PACS")
    with pytest.raises(ValidationError, match="needs url"):
        DestinationModel(name="web", kind="dicomweb")
    with pytest.raises(ValidationError, match="needs username and password"):
        DestinationModel(name="web", kind="dicomweb", url="http://x/dw", auth={"kind": "basic"})  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="http:// or https://"):
        DestinationModel(name="web", kind="dicomweb", url="ftp://x/dw")


def test_failed_sop_sequence_of_a_stow_response_is_read() -> None:
    """The answer's Failed SOP Sequence (PS3.18 Table 10.5.3-1) names each refused instance and its reason."""
    from dicom_node.stow import _failed_instances

    answer = {
        "00081198": {
            "vr": "SQ",
            "Value": [{"00081155": {"vr": "UI", "Value": ["1.2.3"]}, "00081197": {"vr": "US", "Value": [0xA700]}}],
        }
    }
    assert _failed_instances(answer) == ["1.2.3 (reason 0xA700)"]
    assert _failed_instances({"00081199": {"vr": "SQ", "Value": []}}) == [] and _failed_instances(None) == []


def test_an_unreadable_ca_file_fails_when_the_forwarder_starts(tmp_path: Path) -> None:
    dest = _web_destination("https://pacs.example.org/dicom-web", WebAuth(), tmp_path / "missing-ca.pem")
    with pytest.raises(ValueError, match=r"cannot read trusted CA certificates from .*missing-ca\.pem"):
        _forwarder(tmp_path, dest)
