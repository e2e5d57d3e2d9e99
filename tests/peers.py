"""Real peers for integration tests: Orthanc as the PACS, started on free ports and stopped by PID."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import IN_CI, require_tool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition, timeout: float, what: str, interval: float = 0.1):  # type: ignore[no-untyped-def]
    """Poll ``condition()`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def association_reply(ae, port: int, called: str = "FAIRNODE"):  # type: ignore[no-untyped-def]
    """Request an association from ``ae`` at the local ``port``; it and the A-ASSOCIATE-RJ PDU the peer sent,
    if any (:func:`dicom_node.scu.request_association`: read off the wire, where pynetdicom may see an abort)."""
    from dicom_node.scu import request_association

    return request_association(ae, "127.0.0.1", port, called)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


#: Debian's orthanc-dicomweb plugin, where the package installs it.
ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_dicomweb() -> dict[str, object]:
    """``extra`` for :func:`run_orthanc` loading the DICOMweb plugin at ``/dicom-web/`` (missing: skip or fail)."""
    if not ORTHANC_DICOMWEB_PLUGIN.exists():
        message = f"Orthanc's DICOMweb plugin is not at {ORTHANC_DICOMWEB_PLUGIN} (deploy/system-deps.sh installs it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return {"Plugins": [str(ORTHANC_DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}


@dataclass
class Orthanc:
    http_port: int
    dicom_port: int
    aet: str
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def upload(self, files: list[Path]) -> str:
        """Upload files through the REST API; returns the Orthanc ID of their study."""
        study = ""
        with self.client() as c:
            for f in files:
                r = c.post("/instances", content=f.read_bytes())
                r.raise_for_status()
                study = r.json()["ParentStudy"]
        return study


@contextmanager
def run_orthanc(
    workdir: Path,
    modalities: dict[str, list[object]],
    dicom_port: int | None = None,
    *,
    http_port: int | None = None,
    extra: dict[str, object] | None = None,
) -> Iterator[Orthanc]:
    """Start a throwaway Orthanc with its own storage and ``modalities``; stop it by PID afterwards.

    ``extra``: configuration entries added or replaced (e.g. :func:`orthanc_dicomweb` for the DICOMweb
    plugin, ``RegisteredUsers``, ``LuaScripts``).
    """
    exe = require_tool("Orthanc")
    http_port, dicom_port = http_port or free_port(), dicom_port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "fairnode-test-pacs",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomModalities": modalities,
        "DicomAlwaysAllowStore": True,
        "DicomCheckCalledAet": False,
        "Plugins": [],
        "StableAge": 1,
        **(extra or {}),
    }
    cfg = workdir / "orthanc.json"
    cfg.write_text(json.dumps(config))
    log = (workdir / "orthanc.log").open("wb")
    proc = subprocess.Popen([exe, str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(
            lambda: proc.poll() is not None or (port_open(http_port) and port_open(dicom_port)), 60, "Orthanc to listen"
        )
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {proc.returncode}; see {workdir / 'orthanc.log'}")
        yield Orthanc(http_port, dicom_port, "ORTHANC", proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
