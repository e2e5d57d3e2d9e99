"""Fault injection on the running node: SIGKILL during inference and during forwarding, a destination down
across restarts, the spool's disk filling up mid-study, the registry database stopped.

Each test waits on the node's own state (the spool index, the registry, sockets), never on a fixed sleep.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pydicom
import pytest
import yaml
from pydicom.uid import generate_uid
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.events import Event
from sqlalchemy import text

from cohorts import ct_abdomen
from cohorts.dicom_writer import WrittenStudy, write_study
from cohorts.subjects import draw_subject
from dicom_node.scp import DicomServer, ScpSettings
from dicom_node.spool import Spool
from dicom_node.status import StoreStatus
from fairness_registry.db import dispose_engines, get_engine
from tests.conftest import IN_CI
from tests.fairness_registry.conftest import PG_BIN, PG_USER
from tests.peers import free_port, port_open, wait_for

SECRET = "f" * 40


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> WrittenStudy:
    subject = draw_subject("ct-abdomen", 4, 91)
    return write_study(
        ct_abdomen.generate(subject, matrix=64, slice_thickness=5.0), subject, tmp_path_factory.mktemp("cohort")
    )


# -- the node in a subprocess --------------------------------------------------------------------------------
class NodeProcess:
    """``fairnode serve`` in a subprocess on a config file; ``kill()`` is SIGKILL, ``start()`` restarts it."""

    def __init__(self, folder: Path, **settings: object):
        self.port = free_port()
        self.data = folder / "node"
        self.config = folder / "node.yaml"
        self.log = folder / "node.log"
        values: dict[str, object] = {
            "data_dir": str(self.data),
            "bind": "127.0.0.1",
            "port": self.port,
            "http_port": 0,
            "idle_seconds": 1.0,
            "min_free_disk_mb": 10,
            "pseudonym_secret": SECRET,
            "quality_rca": False,
            "quality_samples": 2,
        }
        values.update(settings)
        self.config.write_text(yaml.safe_dump(values))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fairnode", "serve", "--config", str(self.config)],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_for(
            lambda: self.proc is not None and (self.proc.poll() is not None or port_open(self.port)), 180, "listen"
        )
        if self.proc.poll() is not None:
            raise RuntimeError(f"the node exited with {self.proc.returncode}:\n{self.tail()}")

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    @property
    def spool(self) -> Spool:
        return Spool(self.data / "spool")


def _send(port: int, paths: list[Path], aet: str = "SENDER") -> list[int]:
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    ae = AE(ae_title=aet)
    ae.add_requested_context(first.SOPClassUID, first.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="FAIRNODE")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(pydicom.dcmread(p)).Status) for p in paths]
    finally:
        assoc.release()


def _cases(data: Path, series_uid: str) -> list[tuple[str, str, int, str]]:
    """(model, model_version, run, status) of every registry case of a series (SQLite registry)."""
    with sqlite3.connect(data / "registry.db") as db:
        rows = db.execute(
            'SELECT c.model, c.model_version, c.run, c.status FROM "case" c JOIN series s ON s.id = c.series_id '
            "WHERE s.series_uid = ? ORDER BY c.run",
            (series_uid,),
        ).fetchall()
    return [(str(r[0]), str(r[1]), int(r[2]), str(r[3])) for r in rows]


def _registry_ready(data: Path) -> bool:
    if not (data / "registry.db").exists():
        return False
    with sqlite3.connect(data / "registry.db") as db:
        return db.execute("SELECT 1 FROM sqlite_master WHERE name = 'case'").fetchone() is not None


def _complete_files(spool: Spool, study_uid: str) -> None:
    """Every indexed instance decodes in full (pixels included); no partial write is left in tmp/."""
    for rec in spool.instances(study_uid):
        ds = pydicom.dcmread(rec.path)
        assert len(ds.PixelData) == ds.Rows * ds.Columns * ds.BitsAllocated // 8, rec.path
    assert list(spool.tmp.iterdir()) == []


def _done(spool: Spool, study_uid: str) -> object:
    st = spool.study(study_uid)
    return st if st is not None and st.state in ("done", "failed") else None


@pytest.mark.timeout(900)
def test_sigkill_during_inference_processes_the_study_once(tmp_path: Path, study: WrittenStudy) -> None:
    node = NodeProcess(tmp_path)
    node.start()
    try:
        assert _send(node.port, list(study.image_paths)) == [0] * len(study.image_paths)
        spool = node.spool
        # the pipeline logs the series it starts segmenting (the registry is told only at the end): kill it there
        started = f"series {study.series_uid}: segmenting with"
        wait_for(lambda: started in node.tail(), 300, "the series to be segmented", interval=0.05)
        node.kill()
        assert not _registry_ready(node.data) or not _cases(node.data, study.series_uid)  # killed before the end
        assert spool.study(study.study_uid).state == "processing"  # type: ignore[union-attr]
        node.start()
        st = wait_for(lambda: _done(spool, study.study_uid), 600, "the study after the restart", interval=0.5)
        assert st.state == "done", node.tail()
        assert st.run == 1  # the interrupted run was resumed, not a new one started
        cases = _cases(node.data, study.series_uid)
        per_version: dict[tuple[str, str], int] = {}
        for model, version, _, status in cases:
            per_version[(model, version)] = per_version.get((model, version), 0) + 1
            assert status == "done", cases
        assert per_version and all(n == 1 for n in per_version.values()), cases
        _complete_files(spool, study.study_uid)
        outs = list((spool.outbox / study.study_uid / "run-1").rglob("*.dcm"))
        assert outs and all(pydicom.dcmread(p).SOPInstanceUID for p in outs)
        assert not list(spool.outbox.rglob("*.part")) or all(
            str(p) not in {str(d.path) for d in spool.deliveries()} for p in spool.outbox.rglob("*.part")
        )
    finally:
        node.stop()


class BlockingPacs:
    """A C-STORE SCP that records what it receives; while ``hold`` is clear it blocks inside its handler."""

    def __init__(self, port: int):
        self.port = port
        self.received: dict[str, int] = {}
        self.entered = threading.Event()
        self.hold = threading.Event()
        self.hold.set()
        self._lock = threading.Lock()
        ae = AE(ae_title="PACS")
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.require_called_aet = False
        self.ae = ae
        self._server: object | None = None

    def _store(self, event: Event) -> int:
        self.entered.set()
        self.hold.wait(120)
        with self._lock:
            uid = str(event.request.AffectedSOPInstanceUID)
            self.received[uid] = self.received.get(uid, 0) + 1
        return 0

    def start(self) -> None:
        self._server = self.ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def stop(self) -> None:
        self.hold.set()
        self.ae.shutdown()


@pytest.mark.timeout(900)
def test_destination_down_across_restarts_and_sigkill_during_forwarding(tmp_path: Path, study: WrittenStudy) -> None:
    pacs_port = free_port()
    node = NodeProcess(
        tmp_path,
        destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}],
        retry_base_seconds=0.3,
        retry_max_delay_seconds=1.0,
        retry_max_attempts=10_000,
    )
    node.start()
    pacs = BlockingPacs(pacs_port)
    try:
        assert _send(node.port, list(study.image_paths)) == [0] * len(study.image_paths)
        spool = node.spool
        # the destination is down: deliveries are persisted and retried
        wait_for(lambda: _done(spool, study.study_uid), 600, "the study to be processed", interval=0.5)
        wait_for(lambda: any(d.attempts >= 2 for d in spool.deliveries()), 120, "failed delivery attempts")
        # a restart while it is down loses nothing
        node.kill()
        node.start()
        wait_for(lambda: any(d.attempts >= 3 for d in spool.deliveries()), 120, "retries after the restart")
        assert {d.state for d in spool.deliveries()} == {"pending"}
        # the destination returns, but the node is killed in the middle of sending
        pacs.hold.clear()
        pacs.start()
        assert pacs.entered.wait(120), "the node never sent"
        node.kill()
        pacs.hold.set()
        node.start()
        wait_for(lambda: all(d.state == "sent" for d in spool.deliveries()), 180, "every delivery to be sent")
        expected = {str(pydicom.dcmread(d.path, stop_before_pixels=True).SOPInstanceUID) for d in spool.deliveries()}
        assert set(pacs.received) == expected  # everything arrived; a resend repeats the same SOP Instance UIDs
        st = spool.study(study.study_uid)
        assert st is not None and st.state == "done" and st.run == 1  # forwarding never re-runs the pipeline
        assert [c[2] for c in _cases(node.data, study.series_uid)] == [1]
    finally:
        node.stop()
        pacs.stop()


# -- the disk filling up ---------------------------------------------------------------------------------------
@contextmanager
def small_filesystem(folder: Path, size_mb: int) -> Iterator[bool]:
    """A size-limited tmpfs at ``folder`` (yields True); yields False where mounting is not permitted."""
    folder.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)], capture_output=True, check=False
    )
    try:
        yield res.returncode == 0
    finally:
        if res.returncode == 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def _big_instances(src: Path, n: int) -> list[pydicom.Dataset]:
    """``n`` CT instances of 512 x 512 x 16 bit (0.5 MB each) of one new study."""
    base = pydicom.dcmread(src)
    study_uid, series_uid = generate_uid(), generate_uid()
    out = []
    for i in range(n):
        ds = pydicom.dcmread(src)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.Rows = ds.Columns = 512
        ds.PixelData = (bytes([i % 251]) * 2) * (512 * 512)
        ds.InstanceNumber = i + 1
        out.append(ds)
    assert base.BitsAllocated == 16
    return out


def _store_all(port: int, datasets: list[pydicom.Dataset]) -> list[int]:
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="FAIRNODE")
    assert assoc.is_established
    try:
        statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
        assert int(assoc.send_c_echo().Status) == 0  # the node still answers
        return statuses
    finally:
        assoc.release()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("watermark_mb", [0, 4], ids=["no-watermark-enospc", "watermark"])
def test_disk_full_mid_study_answers_out_of_resources_without_corruption(
    tmp_path: Path, study: WrittenStudy, watermark_mb: int
) -> None:
    spool_dir = tmp_path / "spool"
    with small_filesystem(spool_dir, 20) as mounted:
        if not mounted:
            pytest.skip("mounting a tmpfs is not permitted here; test_guards covers the watermark")
        datasets = _big_instances(study.image_paths[0], 60)  # 30 MB into 20 MB
        server = DicomServer(ScpSettings(bind="127.0.0.1", port=0, min_free_disk_mb=watermark_mb), Spool(spool_dir))
        server.start()
        try:
            statuses = _store_all(server.port, datasets)
            ok = [ds for ds, s in zip(datasets, statuses, strict=True) if s == StoreStatus.SUCCESS]
            refused = [ds for ds, s in zip(datasets, statuses, strict=True) if s != StoreStatus.SUCCESS]
            assert ok and refused, statuses
            assert {s for s in statuses if s != StoreStatus.SUCCESS} == {StoreStatus.OUT_OF_RESOURCES}
            first_refused = statuses.index(StoreStatus.OUT_OF_RESOURCES)
            assert all(s == StoreStatus.SUCCESS for s in statuses[:first_refused])
            spool = server.spool
            study_uid = str(datasets[0].StudyInstanceUID)
            indexed = {r.sop_uid for r in spool.instances(study_uid)}
            assert indexed == {str(ds.SOPInstanceUID) for ds in ok}  # Success means stored and indexed
            _complete_files(spool, study_uid)
            on_disk = {p.stem for p in spool.incoming.rglob("*.dcm")}
            assert on_disk == indexed  # no file without a Success
            with sqlite3.connect(spool.db_path) as db:
                assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            # room again (the file system grows): the sender's retry of what was refused is stored
            subprocess.run(["mount", "-o", "remount,size=80m", str(spool_dir)], check=True)
            assert _store_all(server.port, refused) == [StoreStatus.SUCCESS] * len(refused)
            assert len(spool.instances(study_uid)) == len(datasets)
            _complete_files(spool, study_uid)
        finally:
            server.stop()


# -- the registry database stopped ----------------------------------------------------------------------------
@dataclass
class StoppablePostgres:
    """A throwaway PostgreSQL 15 cluster of this test alone, so that it can be stopped and started again."""

    command: list[str]
    data_dir: Path
    url: str

    def _ctl(self, *args: str) -> None:
        res = subprocess.run([*self.command, "-D", str(self.data_dir), *args], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {res.stderr[-1000:]}")

    def stop(self) -> None:
        self._ctl("stop", "-m", "immediate", "-w")

    def start(self) -> None:
        self._ctl("-l", str(self.data_dir.parent / "server.log"), "-o", self._options, "-w", "-t", "60", "start")

    _options: str = ""


@pytest.fixture
def postgres() -> Iterator[StoppablePostgres]:
    initdb, pg_ctl = PG_BIN / "initdb", PG_BIN / "pg_ctl"
    if not (initdb.is_file() and pg_ctl.is_file()):
        if IN_CI:
            pytest.fail(f"PostgreSQL 15 server binaries not found in {PG_BIN}")
        pytest.skip(f"PostgreSQL 15 server binaries not found in {PG_BIN}")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="fairnode-pgf-"))
    sock = root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:  # initdb refuses to run as root
        owner = pwd.getpwnam(PG_USER)
        as_user = ["runuser", "-u", PG_USER, "--"]
        for path in (root, sock):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    port = free_port()
    subprocess.run(
        [*as_user, str(initdb), "-D", str(root / "data"), "-U", PG_USER, "--auth=trust", "--no-sync"],
        capture_output=True,
        check=True,
    )
    pg = StoppablePostgres([*as_user, str(pg_ctl)], root / "data", "")
    pg._options = f"-p {port} -k {sock} -c listen_addresses='' -c fsync=off"
    pg.start()
    with psycopg.connect(host=str(sock), port=port, user=PG_USER, dbname="postgres", autocommit=True) as c:
        c.execute("CREATE DATABASE fairnode")
    pg.url = f"postgresql+psycopg://{PG_USER}@/fairnode?host={sock}&port={port}"
    try:
        yield pg
    finally:
        dispose_engines()
        if (root / "data" / "postmaster.pid").exists():
            subprocess.run([*pg.command, "-D", str(pg.data_dir), "stop", "-m", "immediate", "-w"], check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.timeout(900)
def test_registry_stopped_stores_kept_and_the_node_recovers(
    tmp_path: Path, study: WrittenStudy, postgres: StoppablePostgres
) -> None:
    from fairnode.node import build_node
    from fairnode.settings import load_settings

    settings = load_settings(
        None,
        data_dir=tmp_path / "node",
        bind="127.0.0.1",
        port=0,
        idle_seconds=0.5,
        min_free_disk_mb=10,
        registry_url=postgres.url,
        pseudonym_secret=SECRET,
        quality_rca=False,
        quality_samples=2,
    )
    node = build_node(settings)
    node.start()
    try:
        postgres.stop()
        # the SCP never waits on the registry: every store gets Success and is in the spool
        assert _send(node.server.port, list(study.image_paths)) == [0] * len(study.image_paths)
        assert len(node.spool.instances(study.study_uid)) == len(study.image_paths)
        # the registry is not in the clinical path: the study is processed and its results written, and
        # the case waits on disk for the registry (not failed, not lost) ...
        st = wait_for(lambda: _done(node.spool, study.study_uid), 600, "the study while the registry is stopped")
        assert st.state == "done", st
        kept = settings.data_dir / "registry-pending"
        assert [p for p in kept.iterdir() if p.is_dir()], "the case was not kept for the registry"
        # ... and is recorded by itself once the registry is back
        postgres.start()
        wait_for(lambda: not [p for p in kept.iterdir() if p.is_dir()], 120, "the kept case to be written")
        with get_engine(postgres.url).connect() as c:
            rows = c.execute(
                text(
                    'SELECT c.model, c.model_version, c.status FROM "case" c JOIN series s ON s.id = c.series_id '
                    "WHERE s.series_uid = :u"
                ),
                {"u": study.series_uid},
            ).fetchall()
        assert len(rows) == 1 and rows[0][2] == "done", rows
    finally:
        node.stop()
