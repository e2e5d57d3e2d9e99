"""The spool journal: what got Success survives the loss of its files and index rows (a power cut before
the checkpoint), a torn or corrupt record ends replay, a failed commit voids its records."""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import pydicom
import pytest

from cohorts import ct_abdomen
from cohorts.dicom_writer import WrittenStudy, write_study
from cohorts.subjects import draw_subject
from dicom_node import group_commit
from dicom_node.spool import Spool
from dicom_node.spool_journal import Journal, JournalRecord
from tests.dicom_node.spool_helpers import hold_writer_index, store_file


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> WrittenStudy:
    subject = draw_subject("ct-abdomen", 0, 67)
    return write_study(
        ct_abdomen.generate(subject, matrix=64, slice_thickness=10.0), subject, tmp_path_factory.mktemp("c")
    )


def _store(spool: Spool, path: Path) -> str:
    assert store_file(spool, path)
    return _uid(path)


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_journal_append_read_rollback_and_checkpoint(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.wal")
    journal.checkpoint()  # a fresh journal is usable after its first checkpoint
    first = [JournalRecord({"n": "1"}, b"a" * 1000), JournalRecord({"n": "2"}, b"b" * 10)]
    journal.append(first)
    start = journal.append([JournalRecord({"n": "3"}, b"c" * 99)])
    assert [r.meta["n"] for r in Journal(tmp_path / "j.wal").records()] == ["1", "2", "3"]
    journal.rollback(start)
    assert [r.data for r in Journal(tmp_path / "j.wal").records()] == [b"a" * 1000, b"b" * 10]
    journal.checkpoint()
    assert list(Journal(tmp_path / "j.wal").records()) == []
    journal.append([JournalRecord({"n": "4"}, b"d")])  # a new generation reuses the file from its start
    assert [r.meta["n"] for r in Journal(tmp_path / "j.wal").records()] == ["4"]
    with (tmp_path / "j.wal").open("r+b") as f:  # its data byte changed (after file and record headers)
        f.seek(16 + 28 + len(b'{"n":"4"}'))
        assert f.read(1) == b"d"
        f.seek(-1, 1)
        f.write(b"e")
    assert list(Journal(tmp_path / "j.wal").records()) == []


def test_power_cut_before_checkpoint_is_replayed(
    tmp_path: Path, study: WrittenStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(group_commit.GroupCommit, "_safe_checkpoint", lambda self: None)  # no checkpoint yet
    spool = Spool(tmp_path / "before")
    sent = list(study.image_paths[:3])
    uids = [_store(spool, p) for p in sent]
    # a power cut that kept only what was flushed: the journal, not the renamed files nor the index rows
    after = tmp_path / "after"
    after.mkdir()
    shutil.copy(spool.root / "journal.wal", after / "journal.wal")
    with (after / "journal.wal").open("ab") as f:
        f.write(b"FNR1" + bytes(40))  # the start of a record torn by the cut
    monkeypatch.undo()
    again = Spool(after)
    indexed, _ = again.reconcile()
    assert indexed == 0  # replay indexed them already, before the scan for unindexed files
    recs = {r.sop_uid: r for r in again.instances(study.study_uid)}
    assert set(recs) == set(uids)
    for uid, path in zip(uids, sent, strict=True):
        assert recs[uid].path.read_bytes() == path.read_bytes()
    st = again.study(study.study_uid)
    assert st is not None and st.state == "receiving"
    # replay checkpointed: the journal's records are void now
    assert list(Journal(after / "journal.wal").records()) == []


def test_a_damaged_file_is_written_back_from_the_journal(
    tmp_path: Path, study: WrittenStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(group_commit.GroupCommit, "_safe_checkpoint", lambda self: None)
    spool = Spool(tmp_path / "s")
    uid = _store(spool, study.image_paths[0])
    (rec,) = spool.instances(study.study_uid)
    rec.path.write_bytes(rec.path.read_bytes()[:100])  # what a power cut can leave of an unflushed file
    copy = tmp_path / "copy"
    shutil.copytree(spool.root, copy)  # the state on disk after the cut (journal, index, damaged file)
    monkeypatch.undo()
    again = Spool(copy)
    again.reconcile()
    (back,) = again.instances(study.study_uid)
    # the index holds absolute paths (those of the original folder here): look at the copy's file
    restored = copy / rec.path.relative_to(spool.root)
    assert back.sop_uid == uid and restored.read_bytes() == study.image_paths[0].read_bytes()


def test_a_record_with_its_head_and_crc_computed_as_the_bytes_arrived(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.wal")
    journal.checkpoint()
    head, data = b"H" * 132, b"D" * 1000
    journal.append([JournalRecord({"n": "1"}, data, head, zlib.crc32(data, zlib.crc32(head)))])
    journal.append([JournalRecord({"n": "2"}, data, head)])  # the CRC computed by the journal
    journal.append([JournalRecord({"n": "3"}, data, head, crc=12345)])  # a wrong CRC: reading stops there
    journal.append([JournalRecord({"n": "4"}, data)])
    read = [(r.meta["n"], r.data) for r in Journal(tmp_path / "j.wal").records()]
    assert read == [("1", head + data), ("2", head + data)]


def test_a_record_of_the_previous_format_is_still_replayed(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.wal")
    meta, data = b'{"n":"old"}', b"x" * 77
    header = struct.pack(
        ">4sQIQI", b"FNR1", journal.generation, len(meta), len(data), zlib.crc32(data, zlib.crc32(meta))
    )
    os.pwrite(journal._fd, header + meta + data, 16)
    assert [(r.meta, r.data) for r in Journal(tmp_path / "j.wal").records()] == [({"n": "old"}, data)]


def test_a_deferred_instance_whose_index_fails_is_kept_retried_and_replayed(
    tmp_path: Path, study: WrittenStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3
    import time

    spool = Spool(tmp_path / "node")
    committer = spool._committer
    index = committer.write_index
    failing = [True]

    def flaky(items: object) -> None:
        if failing[0]:
            raise sqlite3.OperationalError("database is locked")
        index(items)  # type: ignore[arg-type]

    monkeypatch.setattr(committer, "write_index", flaky)
    first, second = study.image_paths[:2]
    assert store_file(spool, first, deferred=True)  # answered once journaled: Success
    uid = _uid(first)
    assert not spool.settle(timeout=10)  # its indexing failed ...
    assert spool.is_known(uid) and spool.instances(study.study_uid) == []  # ... it is held, not lost
    # while it fails, new stores are committed inline: their sender sees the failure, not a Success
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        store_file(spool, second, deferred=True)
    # a crash now: a fresh spool given only the journals replays the answered instance
    after = tmp_path / "after"
    after.mkdir()
    for name in ("journal.wal", "journal-1.wal"):
        shutil.copy(spool.root / name, after / name)
    again = Spool(after)
    again.reconcile()
    (rec,) = again.instances(study.study_uid)
    assert rec.sop_uid == uid and rec.path.read_bytes() == first.read_bytes()
    # without a crash: once the index takes writes again, the next checkpoint (stores paused) indexes it
    failing[0] = False
    deadline = time.monotonic() + 20
    while not spool.instances(study.study_uid) and time.monotonic() < deadline:
        time.sleep(0.1)
    (rec,) = spool.instances(study.study_uid)
    assert rec.sop_uid == uid and rec.path.read_bytes() == first.read_bytes()
    assert spool.settle(timeout=10) and not spool.is_known(_uid(second))
    assert list(spool.tmp.iterdir()) == []


def test_instances_committed_together_are_indexed_before_their_success(
    tmp_path: Path, study: WrittenStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone deferred instance is indexed by the writer thread after its Success; instances that arrive while
    a commit is under way (concurrent associations) are committed as one group, written and indexed first."""
    import threading
    import time

    spool = Spool(tmp_path / "node")
    committer = spool._committer
    writer_may_index = hold_writer_index(spool, monkeypatch)
    append = Journal.append
    appending, go_on = threading.Event(), threading.Event()

    def first_append_waits(self: Journal, records: list[JournalRecord]) -> int:
        if not appending.is_set():
            appending.set()
            go_on.wait(20)
        return append(self, records)

    monkeypatch.setattr(Journal, "append", first_append_waits)
    lone, *together = study.image_paths[:3]
    uid = {p: _uid(p) for p in (lone, *together)}
    answered: dict[Path, bool] = {}

    def send(path: Path) -> None:
        answered[path] = bool(store_file(spool, path, deferred=True))

    first = threading.Thread(target=send, args=(lone,))
    first.start()
    assert appending.wait(20)  # the lone instance's commit is under way
    others = [threading.Thread(target=send, args=(p,)) for p in together]
    for thread in others:
        thread.start()
    deadline = time.monotonic() + 20
    while len(committer._waiting) < len(together) and time.monotonic() < deadline:
        time.sleep(0.01)
    go_on.set()
    for thread in (first, *others):
        thread.join(20)
    assert answered == {lone: True, together[0]: True, together[1]: True}
    indexed = {rec.sop_uid for rec in spool.instances(study.study_uid)}
    assert indexed == {uid[p] for p in together}  # the group: indexed before its Success
    assert spool.is_known(uid[lone])  # the lone one: held until the writer indexes it
    writer_may_index.set()
    assert spool.settle(timeout=10)
    assert {rec.sop_uid for rec in spool.instances(study.study_uid)} == set(uid.values())


def test_a_full_journals_checkpoint_hands_back_its_files_cached_pages_an_idle_one_keeps_them(
    tmp_path: Path, study: WrittenStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While stores stream on, the checkpoint of a full journal makes its files durable and hands their cached
    pages back (the next files reuse that memory); the idle checkpoint, after which the pipeline is about to
    read the study, keeps them cached. (``CACHED_BYTES``, the most recent files never handed back, set to none
    and then to all.)"""
    import time

    from dicom_node import spool_writer

    dropped: list[Path] = []
    monkeypatch.setattr(spool_writer, "drop_cached", lambda paths: dropped.extend(paths))
    monkeypatch.setattr(spool_writer, "CACHED_BYTES", 0)
    monkeypatch.setattr(group_commit, "CHECKPOINT_BYTES", 1)  # every append fills the journal
    spool = Spool(tmp_path / "node")
    first, second, third = study.image_paths[:3]
    for path in (first, second):
        assert store_file(spool, path, deferred=True)
    assert spool.settle(timeout=10)
    deadline = time.monotonic() + 10
    while not dropped and time.monotonic() < deadline:
        time.sleep(0.05)
    (rec,) = [r for r in spool.instances(study.study_uid) if r.path in dropped]
    assert rec.sop_uid == _uid(first) and rec.path.read_bytes() == first.read_bytes()  # sealed with the first
    monkeypatch.setattr(group_commit, "CHECKPOINT_BYTES", 10**9)
    monkeypatch.setattr(spool_writer, "CACHED_BYTES", 10**9)  # the idle checkpoint hands back nothing recent
    assert store_file(spool, third, deferred=True)
    assert spool.settle(timeout=10)
    before = spool._committer.checkpoints
    while spool._committer.checkpoints == before and time.monotonic() < deadline + 10:
        time.sleep(0.05)  # the idle checkpoint (stores paused for a second)
    records = {r.sop_uid: r.path for r in spool.instances(study.study_uid)}
    assert spool._committer.checkpoints > before and set(records) == {_uid(p) for p in (first, second, third)}
    assert dropped == [records[_uid(first)]]  # the second (the other journal) and third: kept cached


def test_the_most_recent_durable_files_stay_cached_older_ones_are_handed_back_oldest_first(
    tmp_path: Path, study: WrittenStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each checkpoint hands back the pages of the durable files beyond the most recent ``CACHED_BYTES`` (here
    room for two files), oldest first: the files of a study that has just filled a journal stay cached for the
    pipeline that reads it. (Handing back every file at its own journal's checkpoint also drops the fourth.)"""
    import time

    from dicom_node import spool_writer

    dropped: list[Path] = []
    monkeypatch.setattr(spool_writer, "drop_cached", lambda paths: dropped.extend(paths))
    paths = study.image_paths[:5]
    monkeypatch.setattr(spool_writer, "CACHED_BYTES", int(2.5 * paths[0].stat().st_size))
    monkeypatch.setattr(group_commit, "CHECKPOINT_BYTES", 1)  # every append fills the journal
    spool = Spool(tmp_path / "node")
    for path in paths:
        assert store_file(spool, path, deferred=True)
    assert spool.settle(timeout=10)
    deadline = time.monotonic() + 15
    while len(dropped) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2.0)  # past the idle checkpoint, which makes the fifth durable
    records = {r.sop_uid: r.path for r in spool.instances(study.study_uid)}
    in_order = [records[_uid(p)] for p in paths]
    assert dropped == in_order[:3]  # oldest first, each once; the two newest stay cached
    assert all(p.read_bytes() == src.read_bytes() for p, src in zip(in_order, paths, strict=True))
