"""The Orthanc routing rule of the deployment (deploy/orthanc/route-ct.lua with the keys of
deploy/orthanc/orthanc.json) on a real Orthanc: a CT study is sent to fairnode once, when stable; a radiograph
is not; the SEG fairnode sends back into the study does not send the study again."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt

from cohorts import xr_knee
from cohorts.dicom_writer import WrittenStudy, write_study
from cohorts.subjects import draw_subject
from tests.deploy.conftest import DEPLOY
from tests.peers import Orthanc, free_port, run_orthanc, wait_for

ORTHANC_DIR = DEPLOY / "orthanc"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> WrittenStudy:
    subject = draw_subject("xr-knee", 0, 4)
    return write_study(xr_knee.generate(subject), subject, tmp_path_factory.mktemp("cohort"))


@contextmanager
def storage_scp(port: int = 0) -> Iterator[tuple[int, list[pydicom.Dataset]]]:
    """A storage SCP standing in for fairnode's receiver (AE FAIRNODE)."""
    received: list[pydicom.Dataset] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.dataset)
        return 0x0000

    ae = AE(ae_title="FAIRNODE")
    ae.supported_contexts = AllStoragePresentationContexts
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield int(server.server_address[1]), received
    finally:
        server.shutdown()


@pytest.fixture
def fairnode_scp() -> Iterator[tuple[int, list[pydicom.Dataset]]]:
    with storage_scp() as scp:
        yield scp


def _extra(fairnode_port: int) -> dict[str, object]:
    """The deployment's routing keys, with fairnode's address and the script's path made local."""
    config = json.loads((ORTHANC_DIR / "orthanc.json").read_text(encoding="utf-8"))
    modality = config["DicomModalities"]["fairnode"]
    assert (modality["AET"], modality["Host"], modality["Port"]) == ("FAIRNODE", "receiver", 11112)
    assert config["LuaScripts"] == ["/etc/orthanc/route-ct.lua"]  # where compose.yaml mounts the script
    extra = {
        key: config[key] for key in ("UserMetadata", "DicomModalities", "DicomCheckCalledAet", "DicomAlwaysAllowStore")
    }
    extra["DicomModalities"] = {"fairnode": {**modality, "Host": "127.0.0.1", "Port": fairnode_port}}
    extra["LuaScripts"] = [str(ORTHANC_DIR / "route-ct.lua")]
    extra["StableAge"] = 1
    return extra


@pytest.fixture
def pacs(tmp_path: Path, fairnode_scp: tuple[int, list[pydicom.Dataset]]) -> Iterator[Orthanc]:
    with run_orthanc(tmp_path / "orthanc", {}, extra=_extra(fairnode_scp[0])) as orthanc:
        yield orthanc


def _copy(path: Path, out: Path, **values: str) -> Path:
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(out, enforce_file_format=True)
    return out


def _stable(orthanc: Orthanc, study_id: str) -> bool:
    with orthanc.client() as client:
        return bool(client.get(f"/studies/{study_id}").json()["IsStable"])


def _ct_copies(study: WrittenStudy, out: Path, study_uid: str, prefix: str) -> list[Path]:
    return [
        _copy(p, out / f"{prefix}-{i}.dcm", Modality="CT", StudyInstanceUID=study_uid, SeriesInstanceUID=generate_uid())
        for i, p in enumerate(study.image_paths)
    ]


def test_ct_studies_are_routed_to_fairnode_once(
    tmp_path: Path, pacs: Orthanc, fairnode_scp: tuple[int, list[pydicom.Dataset]], study: WrittenStudy
) -> None:
    _, received = fairnode_scp
    ct_study = generate_uid()
    ct = _ct_copies(study, tmp_path, ct_study, "ct")
    xr_id = pacs.upload(list(study.image_paths))  # a knee radiograph: not routed
    ct_id = pacs.upload(ct)
    wait_for(lambda: len(received) >= len(ct), 60, "Orthanc to route the CT study")
    assert {str(ds.StudyInstanceUID) for ds in received} == {ct_study}
    with pacs.client() as client:
        assert client.get(f"/studies/{ct_id}/metadata/RoutedToFairnode").text == "yes"

    # fairnode's SEG goes back into the same study, which becomes stable again: it must not be routed again
    seg = _copy(study.seg_path, tmp_path / "seg.dcm", StudyInstanceUID=ct_study)
    assert pacs.upload([seg]) == ct_id
    wait_for(lambda: _stable(pacs, ct_id) and _stable(pacs, xr_id), 60, "both studies to be stable")
    log = tmp_path / "orthanc" / "orthanc.log"
    wait_for(lambda: log.read_text(errors="ignore").count("routing CT study") >= 1, 10, "the routing log line")
    assert len(received) == len(ct) and all(str(ds.Modality) == "CT" for ds in received)
    assert log.read_text(errors="ignore").count("routing CT study") == 1


def test_a_study_fairnode_did_not_take_is_routed_when_it_next_becomes_stable(
    tmp_path: Path, study: WrittenStudy
) -> None:
    port = free_port()  # nothing listens there yet: fairnode is down
    with run_orthanc(tmp_path / "orthanc", {}, extra=_extra(port)) as pacs:
        ct_study = generate_uid()
        ct_id = pacs.upload(_ct_copies(study, tmp_path, ct_study, "first"))
        log = tmp_path / "orthanc" / "orthanc.log"
        wait_for(lambda: "failed: fairnode did not take it" in log.read_text(errors="ignore"), 60, "the failed route")
        with pacs.client() as client:
            assert client.get(f"/studies/{ct_id}/metadata/RoutedToFairnode").status_code == 404  # not marked
        with storage_scp(port) as (_port, received):
            later = _ct_copies(study, tmp_path, ct_study, "later")  # a late instance: the study changes
            assert pacs.upload(later) == ct_id
            wait_for(lambda: len(received) >= 2 * len(later), 60, "the study to be routed once fairnode is up")
        assert {str(ds.StudyInstanceUID) for ds in received} == {ct_study}
