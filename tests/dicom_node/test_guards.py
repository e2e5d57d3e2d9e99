"""Resource guards against real associations: caps, size, rate, backlog and disk, each refusal named."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.association import Association

from cohorts import ct_abdomen
from cohorts.dicom_writer import WrittenStudy, write_study
from cohorts.subjects import draw_subject
from dicom_node.guards import GuardSettings, RateLimiter
from dicom_node.scp import DicomServer, ScpSettings
from dicom_node.spool import Spool
from dicom_node.status import AssociationRejection, StoreStatus
from tests.conftest import require_tool
from tests.peers import association_reply, wait_for

ENV = {**os.environ, "TCP_NODELAY": "1"}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> WrittenStudy:
    subject = draw_subject("ct-abdomen", 0, 23)
    image = ct_abdomen.generate(subject, matrix=64, slice_thickness=10.0)
    return write_study(image, subject, tmp_path_factory.mktemp("cohort"))


@contextmanager
def serving(tmp_path: Path, guards: GuardSettings | None = None, **kw: object) -> Iterator[DicomServer]:
    settings = ScpSettings(
        bind="127.0.0.1",
        port=0,
        min_free_disk_mb=1,
        guards=guards or GuardSettings(),
        **kw,  # type: ignore[arg-type]
    )
    server = DicomServer(settings, Spool(tmp_path / "spool"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _associate(server: DicomServer, ds: pydicom.Dataset, aet: str = "SENDER") -> Association:
    ae = AE(ae_title=aet)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc, rejection = association_reply(ae, server.port)
    assoc.rejection_pdu = rejection  # type: ignore[attr-defined]
    return assoc


def _rejection(assoc: Association) -> tuple[int, int, int]:
    rj = assoc.rejection_pdu  # type: ignore[attr-defined]
    assert rj is not None, "the association was not rejected (no A-ASSOCIATE-RJ PDU came back)"
    assert not assoc.is_established
    return int(rj.result), int(rj.source), int(rj.reason_diagnostic)


def _fresh(path: Path, study_uid: str | None = None) -> pydicom.Dataset:
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if study_uid:
        ds.StudyInstanceUID = study_uid
    return ds


def _admitted(server: DicomServer) -> int:
    return server.admitted()


def test_global_association_cap_rejects_transient_and_frees_up(
    tmp_path: Path, study: WrittenStudy, caplog: pytest.LogCaptureFixture
) -> None:
    ds = pydicom.dcmread(study.image_paths[0])
    with serving(tmp_path, max_associations=2) as srv:
        held = [_associate(srv, ds, aet) for aet in ("A1", "A2")]
        assert all(a.is_established for a in held)
        with caplog.at_level(logging.WARNING, logger="dicom_node.guards"):
            third = _associate(srv, ds, "A3")
        assert _rejection(third) == AssociationRejection.LOCAL_LIMIT_EXCEEDED.value
        assert "2 associations open; the limit is 2" in caplog.text
        # dcmtk sees a transient rejection too
        res = subprocess.run(
            [require_tool("echoscu"), "-aet", "DCMTK", "-aec", "FAIRNODE", "127.0.0.1", str(srv.port)],
            capture_output=True,
            text=True,
            env=ENV,
            check=False,
            timeout=60,
        )
        assert res.returncode != 0 and "Rejected Transient" in res.stderr
        held[0].release()
        wait_for(lambda: _admitted(srv) < 2, 30, "the released association to end")
        again = _associate(srv, ds, "A3")
        assert again.is_established
        assert int(again.send_c_echo().Status) == 0
        again.release()
        held[1].release()


def test_per_ae_cap_rejects_only_that_ae(tmp_path: Path, study: WrittenStudy, caplog: pytest.LogCaptureFixture) -> None:
    ds = pydicom.dcmread(study.image_paths[0])
    with serving(tmp_path, GuardSettings(max_associations_per_ae=1), max_associations=10) as srv:
        first = _associate(srv, ds, "BUSY")
        assert first.is_established
        with caplog.at_level(logging.WARNING, logger="dicom_node.guards"):
            second = _associate(srv, ds, "BUSY")
        assert _rejection(second) == AssociationRejection.LOCAL_LIMIT_EXCEEDED.value
        assert "association from BUSY" in caplog.text and "the limit per AE is 1" in caplog.text
        other = _associate(srv, ds, "QUIET")
        assert other.is_established
        assert int(other.send_c_store(_fresh(study.image_paths[0])).Status) == StoreStatus.SUCCESS
        other.release()
        first.release()


def test_instance_above_the_size_limit_is_refused_and_not_written(
    tmp_path: Path, study: WrittenStudy, caplog: pytest.LogCaptureFixture
) -> None:
    ds = pydicom.dcmread(study.image_paths[0])
    size_mb = len(study.image_paths[0].read_bytes()) / 1e6
    with serving(tmp_path, GuardSettings(max_instance_mb=size_mb / 2)) as srv:
        assoc = _associate(srv, ds)
        with caplog.at_level(logging.WARNING, logger="dicom_node.scp"):
            status = int(assoc.send_c_store(ds).Status)
        assert status == StoreStatus.INSTANCE_TOO_LARGE
        assert "INSTANCE_TOO_LARGE" in caplog.text and "above the limit" in caplog.text
        assert int(assoc.send_c_echo().Status) == 0  # the association goes on
        assoc.release()
        assert srv.spool.instances(study.study_uid) == []
        assert list(srv.spool.incoming.rglob("*.dcm")) == []


def test_rate_limit_per_calling_ae(tmp_path: Path, study: WrittenStudy) -> None:
    # 0.01 instances/s after a burst of 3 and no waiting: the 4th store within the test's run is refused
    guards = GuardSettings(rate_per_ae=0.01, rate_burst=3, rate_wait_seconds=0)
    with serving(tmp_path, guards) as srv:
        assoc = _associate(srv, pydicom.dcmread(study.image_paths[0]), "FAST")
        statuses = [int(assoc.send_c_store(_fresh(p)).Status) for p in study.image_paths[:5]]
        assoc.release()
        assert statuses == [StoreStatus.SUCCESS] * 3 + [StoreStatus.RATE_LIMITED] * 2
        other = _associate(srv, pydicom.dcmread(study.image_paths[0]), "SLOW")
        assert int(other.send_c_store(_fresh(study.image_paths[5])).Status) == StoreStatus.SUCCESS
        other.release()
        assert len(srv.spool.instances(study.study_uid)) == 4


def test_rate_limiter_waits_for_tokens_within_the_wait() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=1, clock=lambda: now[0])
    assert limiter.acquire("X", 0)
    assert not limiter.acquire("X", 0.1)  # the next token is 0.5 s away
    now[0] += 0.5
    assert limiter.acquire("X", 0)
    assert limiter.acquire("Y", 0)  # every AE has its own bucket
    with pytest.raises(ValueError, match="rate must be > 0"):
        RateLimiter(rate=0, burst=1)


def test_backlog_bound_refuses_new_studies_but_completes_known_ones(tmp_path: Path, study: WrittenStudy) -> None:
    with serving(tmp_path, GuardSettings(max_backlog_studies=1)) as srv:
        assoc = _associate(srv, pydicom.dcmread(study.image_paths[0]))
        assert int(assoc.send_c_store(_fresh(study.image_paths[0])).Status) == StoreStatus.SUCCESS
        other_study = generate_uid()
        assert int(assoc.send_c_store(_fresh(study.image_paths[1], other_study)).Status) == StoreStatus.BACKLOG_FULL
        # the study already in the spool still completes
        assert int(assoc.send_c_store(_fresh(study.image_paths[2])).Status) == StoreStatus.SUCCESS
        # processed, as the pipeline would be: once what was answered is indexed (an instance indexed after
        # its study was done opens the study again, and it would count in the backlog once more)
        assert srv.spool.settle(timeout=10)
        srv.spool.set_state(study.study_uid, "done")
        assert int(assoc.send_c_store(_fresh(study.image_paths[1], other_study)).Status) == StoreStatus.SUCCESS
        assoc.release()
        assert len(srv.spool.instances(study.study_uid)) == 2 and len(srv.spool.instances(other_study)) == 1


def test_backlog_counts_studies_answered_before_they_are_indexed(
    tmp_path: Path, study: WrittenStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone instance gets Success once journaled and is indexed just after: in between, its study already
    fills the backlog (a new study is refused) and is known (its next instance is admitted)."""
    from dicom_node.guards import DiskGuard, StoreGuards
    from tests.dicom_node.spool_helpers import hold_writer_index, store_file

    spool = Spool(tmp_path / "spool")
    writer_may_index = hold_writer_index(spool, monkeypatch)
    guards = StoreGuards(
        DiskGuard(spool.root, 1), GuardSettings(max_backlog_studies=1), spool.pending_count, spool.has_study
    )
    other = generate_uid()
    assert store_file(spool, study.image_paths[0], deferred=True)  # answered, held by the writer
    assert spool.instances(study.study_uid) == []  # not yet indexed
    assert spool.pending_count() == 1 and spool.has_study(study.study_uid) and not spool.has_study(other)
    status = guards.check_study(other)
    assert status is not None and status[0] == StoreStatus.BACKLOG_FULL and "1 studies wait" in status[1].reason
    assert guards.check_study(study.study_uid) is None  # the study already answered completes
    writer_may_index.set()
    assert spool.settle(timeout=10)
    assert len(spool.instances(study.study_uid)) == 1 and spool.pending_count() == 1  # counted once
    spool.set_state(study.study_uid, "done")
    assert spool.pending_count() == 0 and guards.check_study(other) is None


def test_watermark_reached_on_an_open_association_answers_out_of_resources(tmp_path: Path, study: WrittenStudy) -> None:
    with serving(tmp_path) as srv:
        assoc = _associate(srv, pydicom.dcmread(study.image_paths[0]))
        assert int(assoc.send_c_store(_fresh(study.image_paths[0])).Status) == StoreStatus.SUCCESS
        srv.disk.min_free = srv.disk.free_bytes() + 2**40  # the disk "fills up" under the open association
        assert int(assoc.send_c_store(_fresh(study.image_paths[1])).Status) == StoreStatus.OUT_OF_RESOURCES
        assert int(assoc.send_c_echo().Status) == 0
        assoc.release()
        refused = _associate(srv, pydicom.dcmread(study.image_paths[0]))
        assert _rejection(refused) == AssociationRejection.LOCAL_LIMIT_EXCEEDED.value
        assert len(srv.spool.instances(study.study_uid)) == 1


def test_the_node_names_a_peer_rejection_when_it_sends(tmp_path: Path, study: WrittenStudy) -> None:
    from dicom_node.scu import Destination, send_files

    ds = pydicom.dcmread(study.image_paths[0])
    with serving(tmp_path, max_associations=1) as srv:
        held = _associate(srv, ds, "HOLDER")
        assert held.is_established
        dest = Destination(name="busy", ae_title="FAIRNODE", host="127.0.0.1", port=srv.port)
        with pytest.raises(ConnectionError, match=r"rejected, transient: Local limit exceeded"):
            send_files([ds], dest, "FAIRNODE", timeout=30)
        held.release()


def test_a_response_goes_to_the_call_waiting_for_it_not_to_pynetdicoms_reactor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node's requested associations (dicom_node.scu.request_association) answer the reactor's poll
    with nothing: a message on the queue stays there for the send_* call that blocks for it."""
    from pynetdicom.ae import ApplicationEntity
    from pynetdicom.dimse_primitives import C_ECHO

    from dicom_node.scu import request_association

    # pynetdicom's own associate, not the tests' session-wide wrapper (tests/conftest.py)
    monkeypatch.setattr(ApplicationEntity, "associate", ApplicationEntity.associate.__wrapped__)  # type: ignore[attr-defined]
    with serving(tmp_path) as srv:
        ae = AE(ae_title="SENDER")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc, rejection = request_association(ae, "127.0.0.1", srv.port, "FAIRNODE")
        assert assoc.is_established and rejection is None
        try:
            queued = (1, C_ECHO())
            assoc.dimse.msg_queue.put(queued)
            assert assoc.dimse.get_msg(block=False) == (None, None)  # the reactor's poll
            assert assoc.dimse.get_msg(block=True) is queued  # the send_* call's wait
            assert int(assoc.send_c_echo().Status) == 0
        finally:
            assoc.release()
