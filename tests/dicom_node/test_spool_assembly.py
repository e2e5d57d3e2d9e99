"""Spool state and study assembly without the network."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest

from cohorts import ct_abdomen
from cohorts.dicom_writer import WrittenStudy, write_study
from cohorts.subjects import draw_subject
from dicom_node.assembly import Assembler, AssemblySettings, ready_reason
from dicom_node.scu import RetryPolicy
from dicom_node.spool import Spool
from tests.dicom_node.spool_helpers import store_file


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> WrittenStudy:
    subject = draw_subject("ct-abdomen", 0, 61)
    return write_study(
        ct_abdomen.generate(subject, matrix=64, slice_thickness=5.0), subject, tmp_path_factory.mktemp("c")
    )



def test_store_is_idempotent_and_late_instances_start_a_new_run(tmp_path: Path, study: WrittenStudy) -> None:
    spool = Spool(tmp_path)
    assert store_file(spool, study.image_paths[0]) is True
    assert store_file(spool, study.image_paths[0]) is False
    assert len(spool.instances(study.study_uid)) == 1
    assert spool.set_state(study.study_uid, "ready", expect="receiving")
    claimed = spool.claim_ready()
    assert claimed is not None and claimed.state == "processing" and spool.claim_ready() is None
    spool.set_state(study.study_uid, "done", expect="processing")
    store_file(spool, study.image_paths[1])
    st = spool.study(study.study_uid)
    assert st is not None and st.state == "receiving" and st.run == 2


def test_reconcile_indexes_orphans_requeues_and_quarantines(tmp_path: Path, study: WrittenStudy) -> None:
    spool = Spool(tmp_path)
    store_file(spool, study.image_paths[0])
    spool.set_state(study.study_uid, "processing")
    # a file on disk that the index never heard of (crash between rename and index), and a broken one
    ds = pydicom.dcmread(study.image_paths[2], stop_before_pixels=True)
    orphan = spool.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    shutil.copy(study.image_paths[2], orphan)
    broken = orphan.parent / "broken.dcm"
    broken.write_bytes(b"not dicom at all")
    (spool.tmp / "half.part").write_bytes(b"partial")
    again = Spool(tmp_path)  # a restart
    indexed, requeued = again.reconcile()
    assert (indexed, requeued) == (1, 1)
    assert {r.sop_uid for r in again.instances(study.study_uid)} >= {str(ds.SOPInstanceUID)}
    assert again.study(study.study_uid).state == "ready"  # type: ignore[union-attr]
    assert (again.quarantine_dir / "broken.dcm").exists() and not broken.exists()
    assert list(again.tmp.iterdir()) == []


def test_ready_reasons() -> None:
    from dicom_node.spool import StudyState

    st = StudyState("1.2.3", "receiving", 1, first_received=100.0, last_received=150.0, reason="")
    settings = AssemblySettings(idle_seconds=10, required_series=("PV",), required_idle_seconds=2, forced_seconds=60)
    assert ready_reason(st, 155.0, settings, ["ABD PV 5mm"]) is not None  # required series + short grace
    assert ready_reason(st, 151.0, settings, ["ABD PV 5mm"]) is None  # still inside the grace
    assert ready_reason(st, 155.0, settings, ["SCOUT"]) is None  # required series missing
    assert "idle" in (ready_reason(st, 160.5, settings, ["SCOUT"]) or "")
    busy = StudyState("1.2.3", "receiving", 1, first_received=100.0, last_received=199.0, reason="")
    assert "forced" in (ready_reason(busy, 200.0, settings, []) or "")


def test_assembler_marks_ready_and_wakes_the_runner(tmp_path: Path, study: WrittenStudy) -> None:
    spool = Spool(tmp_path)
    store_file(spool, study.image_paths[0])
    woken: list[int] = []
    asm = Assembler(spool, AssemblySettings(idle_seconds=5), on_ready=lambda: woken.append(1))
    last = spool.study(study.study_uid).last_received  # type: ignore[union-attr]
    assert asm.check(now=last + 1) == []
    assert asm.check(now=last + 6) == [study.study_uid] and woken == [1]
    assert spool.study(study.study_uid).state == "ready"  # type: ignore[union-attr]


def test_retry_policy_is_bounded_exponential() -> None:
    p = RetryPolicy(max_attempts=5, base_seconds=2, factor=2, max_delay_seconds=10)
    assert [p.delay(n) for n in range(1, 6)] == [2, 4, 8, 10, 10]


def test_instances_arriving_during_processing_start_the_next_run(tmp_path: Path, study: WrittenStudy) -> None:
    spool = Spool(tmp_path)
    store_file(spool, study.image_paths[0])
    spool.set_state(study.study_uid, "ready")
    assert spool.claim_ready() is not None
    store_file(spool, study.image_paths[1])  # arrives while run 1 is being processed
    st = spool.finish(study.study_uid, "done")
    assert st is not None and st.state == "receiving" and st.run == 2
    spool.set_state(study.study_uid, "ready")
    assert spool.claim_ready() is not None
    st = spool.finish(study.study_uid, "done")
    assert st is not None and st.state == "done" and st.run == 2


def test_deferred_study_waits_and_resumes_the_same_run(tmp_path: Path, study: WrittenStudy) -> None:
    spool = Spool(tmp_path)
    store_file(spool, study.image_paths[0])
    spool.set_state(study.study_uid, "ready")
    assert spool.claim_ready(now=1000.0) is not None
    assert spool.defer(study.study_uid, "registry unavailable", 30.0, now=1000.0)
    assert not spool.defer(study.study_uid, "again", 30.0)  # only a processing study is deferred
    st = spool.study(study.study_uid)
    assert st is not None and st.state == "ready" and st.run == 1 and st.not_before == 1030.0
    assert spool.claim_ready(now=1029.0) is None
    claimed = spool.claim_ready(now=1030.0)
    assert claimed is not None and claimed.run == 1 and claimed.reason == "registry unavailable"


def test_spool_index_of_an_older_release_gains_the_new_column(tmp_path: Path, study: WrittenStudy) -> None:
    import sqlite3

    with sqlite3.connect(tmp_path / "spool.db") as db:  # the studies table as it was before deferral
        db.execute(
            "CREATE TABLE studies (study_uid TEXT PRIMARY KEY, state TEXT NOT NULL, run INTEGER NOT NULL DEFAULT 1, "
            "first_received REAL NOT NULL, last_received REAL NOT NULL, reason TEXT NOT NULL DEFAULT '', "
            "rerun INTEGER NOT NULL DEFAULT 0)"
        )
        db.execute("INSERT INTO studies VALUES ('1.2.3', 'ready', 1, 1.0, 2.0, '', 0)")
    spool = Spool(tmp_path)
    claimed = spool.claim_ready()
    assert claimed is not None and claimed.study_uid == "1.2.3" and claimed.not_before == 0.0
    assert store_file(spool, study.image_paths[0])


def _finished_study(spool: Spool, study: WrittenStudy, study_uid: str, received: float) -> list[str]:
    """Store the study's first three images under ``study_uid`` as received at ``received``, and mark it done."""
    sops = []
    for p in study.image_paths[:3]:
        ds = pydicom.dcmread(p)
        ds.StudyInstanceUID = study_uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        path = spool.instance_path(study_uid, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        ds.save_as(path.parent.mkdir(parents=True, exist_ok=True) or path, enforce_file_format=True)
        from dicom_node.spool import InstanceRecord

        spool.record(
            InstanceRecord(ds.SOPInstanceUID, study_uid, ds.SeriesInstanceUID, ds.SOPClassUID, path), "T", now=received
        )
        sops.append(str(ds.SOPInstanceUID))
    spool.set_state(study_uid, "done")
    out = spool.outbox / study_uid / "run-1" / "seg.dcm"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(b"x" * 1000)
    return sops


def test_retention_by_age_and_size_spares_pending_and_undelivered(tmp_path: Path, study: WrittenStudy) -> None:
    from dicom_node.retention import Retention, RetentionSettings

    spool = Spool(tmp_path)
    day = 86400.0
    now = 100 * day
    old_sent, old_dead, old_pending = "1.2.1", "1.2.2", "1.2.3"
    for uid in (old_sent, old_dead, old_pending):
        _finished_study(spool, study, uid, received=now - 40 * day)
        spool.add_delivery(uid, 1, spool.outbox / uid / "run-1" / "seg.dcm", "pacs")
    by_id = {d.study_uid: d.id for d in spool.deliveries()}
    spool.delivery_result(by_id[old_sent], ok=True)
    spool.delivery_result(by_id[old_dead], ok=False, error="down", dead=True)  # undelivered: kept
    old_failed = "1.2.4"  # failed, nothing to deliver
    _finished_study(spool, study, old_failed, received=now - 35 * day)
    spool.set_state(old_failed, "failed")
    receiving = "1.2.5"  # old, but not finished
    _finished_study(spool, study, receiving, received=now - 50 * day)
    spool.set_state(receiving, "receiving")
    recent = ["1.2.6", "1.2.7"]
    for i, uid in enumerate(recent):
        _finished_study(spool, study, uid, received=now - (2 - i) * day)

    report = Retention(spool, RetentionSettings(max_age_days=30)).apply(now=now)
    assert set(report.by_age) == {old_sent, old_failed} and report.by_size == ()
    assert report.freed_bytes > 0
    for uid in (old_sent, old_failed):
        assert spool.study(uid) is None and spool.instances(uid) == []
        assert not (spool.incoming / uid).exists() and not (spool.outbox / uid).exists()
    for uid in (old_dead, old_pending, receiving, *recent):
        assert spool.study(uid) is not None and len(spool.instances(uid)) == 3
        assert all(r.path.exists() for r in spool.instances(uid))

    # by size: only removable studies go, oldest first, until the spool fits
    retention = Retention(spool, RetentionSettings(max_spool_gb=1e-9))  # 1 byte: everything removable goes
    report = retention.apply(now=now)
    assert report.by_size == tuple(recent)
    kept = {s.study_uid for s in spool.studies()}
    assert kept == {old_dead, old_pending, receiving}
    size_before = retention.spool_bytes()
    _finished_study(spool, study, "1.2.8", received=now)
    _finished_study(spool, study, "1.2.9", received=now + 1)
    retention = Retention(spool, RetentionSettings(max_spool_gb=(retention.spool_bytes() - 1) / 1e9))
    assert retention.apply(now=now).by_size == ("1.2.8",)  # the oldest removable one was enough
    assert spool.study("1.2.9") is not None and retention.spool_bytes() > size_before


def test_interrupted_removal_is_finished_at_restart_not_reindexed(tmp_path: Path, study: WrittenStudy) -> None:
    spool = Spool(tmp_path)
    sops = _finished_study(spool, study, "1.2.10", received=1000.0)
    # a crash after the study was marked purging and one file removed
    spool.set_state("1.2.10", "purging")
    spool.instances("1.2.10")[0].path.unlink()
    again = Spool(tmp_path)
    indexed, _ = again.reconcile()
    assert indexed == 0  # the remaining files are not taken for a new study
    assert again.study("1.2.10") is None and not any(again.is_known(s) for s in sops)
    assert list(again.incoming.rglob("*.dcm")) == []


def test_instance_arriving_during_removal_starts_a_new_run_and_is_kept(
    tmp_path: Path, study: WrittenStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path)
    _finished_study(spool, study, "1.2.11", received=1000.0)
    ds = pydicom.dcmread(study.image_paths[4])
    remove_files = spool._finish_purge

    def late_instance_then_remove(study_uid: str, doomed: list[tuple[str, Path]]) -> int:
        assert spool.study(study_uid).state == "purging"  # type: ignore[union-attr]
        assert spool.store(  # one more instance of the study arrives while it is being removed
            study.image_paths[4].read_bytes(),
            study_uid="1.2.11",
            series_uid=ds.SeriesInstanceUID,
            sop_uid=ds.SOPInstanceUID,
            sop_class_uid=ds.SOPClassUID,
            calling_ae="T",
        )
        return remove_files(study_uid, doomed)

    monkeypatch.setattr(spool, "_finish_purge", late_instance_then_remove)
    assert spool.purge("1.2.11")
    st = spool.study("1.2.11")
    assert st is not None and st.state == "receiving" and st.run == 2
    assert [r.sop_uid for r in spool.instances("1.2.11")] == [ds.SOPInstanceUID]
    assert spool.instances("1.2.11")[0].path.exists()


def test_concurrent_stores_are_committed_in_groups(tmp_path: Path, study: WrittenStudy) -> None:
    import threading

    spool = Spool(tmp_path)
    paths = list(study.image_paths[:16])
    barrier = threading.Barrier(len(paths))

    def one(p: Path) -> None:
        barrier.wait()
        assert store_file(spool, p)

    threads = [threading.Thread(target=one, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert spool._committer.committed == len(paths)
    assert spool._committer.batches <= len(paths)
    recs = spool.instances(study.study_uid)
    assert len(recs) == len(paths) and all(
        r.path.read_bytes() == p.read_bytes()
        for r, p in zip(
            sorted(recs, key=lambda r: r.sop_uid),
            sorted(paths, key=lambda p: str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)),
            strict=True,
        )
    )
    assert list(spool.tmp.iterdir()) == []


def test_a_failed_group_commit_keeps_nothing_and_raises(
    tmp_path: Path, study: WrittenStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    spool = Spool(tmp_path)

    def full(items: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(spool._committer, "write_index", full)
    with pytest.raises(sqlite3.OperationalError, match="full"):
        store_file(spool, study.image_paths[0])
    assert list(spool.incoming.rglob("*.dcm")) == [] and list(spool.tmp.iterdir()) == []
    assert spool.instances(study.study_uid) == []
