"""Scale-out on loopback with real processes: two receivers, two Celery workers, Redis, PostgreSQL, Orthanc.

Twenty xr-knee studies from two dcmtk senders are each processed exactly once and their SEG and SR reach
Orthanc; a worker SIGKILLed in the middle of a study gives its task back and the study is processed once
by the other; with the broker down the receivers keep accepting and enqueue when it returns.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.fairness_registry.conftest import PostgresServer, postgres_server  # noqa: F401 (the fixture)
from tests.integration.scale_out_cluster import Cluster, cluster, wait_results
from tests.peers import run_orthanc, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def clones(template: Path, out: Path, n: int, tag: str) -> list[Path]:
    """``n`` copies of a one-image study, each its own patient, study, series and instance (fresh UIDs)."""
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        ds = pydicom.dcmread(template)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID = f"SO{tag}{i:04d}"
        path = out / f"{tag}-{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def study_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def spool_states(c: Cluster, receiver: str) -> dict[str, tuple[str, str]]:
    """Study UID -> (state, reason) in a receiver's spool index (read-only)."""
    db = sqlite3.connect(f"file:{c.root / receiver / 'spool' / 'spool.db'}?mode=ro", uri=True)
    try:
        return {r[0]: (r[1], r[2]) for r in db.execute("SELECT study_uid, state, reason FROM studies")}
    finally:
        db.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny xr-knee study made by ``fairnode cohort make``."""
    out = tmp_path_factory.mktemp("cohort")
    subprocess.run(
        [sys.executable, "-m", "fairnode", "cohort", "make", "--kind", "xr-knee", "--n", "1", "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return next(out.glob("*/image/*.dcm"))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer) -> Iterator[Cluster]:  # noqa: F811
    root = tmp_path_factory.mktemp("scale-out")
    url = postgres_server.create_database(f"scale_out_{int(time.time() * 1000) % 10**9}")
    with run_orthanc(root / "orthanc", {}) as pacs, cluster(root / "shared", url, pacs) as c:
        c.start_receiver()
        c.start_receiver(review={"first_admin": ""})  # the first receiver creates the web app's first admin
        c.start_worker()
        c.start_worker()
        c.wait_listening()
        yield c


def test_twenty_studies_from_two_senders_are_each_processed_once(node: Cluster, template: Path) -> None:
    files = clones(template, node.root / "send-20", 20, "A")
    uids = {study_uid(f) for f in files}
    senders = [node.send(node.receivers[0], files[:10], "SENDER1"), node.send(node.receivers[1], files[10:], "SENDER2")]
    for s in senders:
        _, err = s.communicate(timeout=120)
        assert s.returncode == 0, err.decode(errors="replace")
    got = wait_results(node, uids, timeout=150)
    for uid in uids:
        assert got[uid] == {"SEG": 1, "SR": 1}, (uid, got[uid])  # one SEG and one SR each: nothing twice
    jobs = [j for j in node.jobs() if j.study_uid in uids]
    assert len(jobs) == 20 and {j.study_uid for j in jobs} == uids
    assert all(j.state == "done" and j.model == "xr-knee" and j.queue == "xr-knee" for j in jobs)
    assert {j.receiver for j in jobs} == {"receiver1", "receiver2"}
    cases = node.cases()
    assert len(cases) == 20 and all(c.status == "done" and c.seg_sop_uid and c.sr_sop_uid for c in cases)
    assert len({c.series_id for c in cases}) == 20
    # every worker beats, exposes its metrics and health, and counts the jobs it did
    with httpx.Client(timeout=10) as http:
        done = 0
        for w in node.workers:
            assert http.get(f"http://127.0.0.1:{w.port}/health").json()["status"] == "ok"
            text = http.get(f"http://127.0.0.1:{w.port}/metrics").text
            line = next(x for x in text.splitlines() if x.startswith("fairnode_worker_jobs_done_total"))
            done += int(float(line.split()[-1]))
    assert done == 20
    for r in ("receiver1", "receiver2"):
        assert {s for s, _ in spool_states(node, r).values()} == {"done"}


def test_sigkill_worker_mid_study_redelivers_and_processes_once(node: Cluster, template: Path) -> None:
    victim_name = None
    for attempt in range(3):  # the study must still be running when the kill lands; else try another
        path = clones(template, node.root / f"send-kill-{attempt}", 1, f"K{attempt}")[0]
        uid = study_uid(path)
        sender = node.send(node.receivers[0], [path], "SENDER1")
        assert sender.wait(timeout=60) == 0

        def running(uid: str = uid) -> str | None:
            job = next((j for j in node.jobs() if j.study_uid == uid), None)
            if job is not None and job.state != "queued":
                return f"{job.state}:{job.worker}"
            return None

        state, worker = wait_for(running, 60, "the study's job to start", interval=0.02).split(":", 1)
        if state != "running":
            continue
        victim = next(w for w in node.workers if worker.startswith(f"{w.name}@"))
        pool = victim.children()
        assert len(pool) == 1, pool  # concurrency 1: the one pool process runs the study
        os.kill(pool[0], signal.SIGKILL)  # the worker process running the study dies mid-study
        victim_name = worker
        break
    assert victim_name is not None, "no study was caught running in three tries"
    got = wait_results(node, {uid}, timeout=90)
    assert got[uid] == {"SEG": 1, "SR": 1}, got[uid]  # no second SEG reached the PACS
    job = next(j for j in node.jobs() if j.study_uid == uid)
    assert job.state == "done" and job.attempt == 2, (job.state, job.attempt)  # given back, taken up again
    logs = "".join(w.log.read_text() for w in node.workers)
    assert "WorkerLostError" in logs or "taken over" in logs
    assert sum(1 for c in node.cases() if c.seg_sop_uid and c.status == "done") == len(
        {c.series_id for c in node.cases()}
    )  # one case per series: the redelivered task resumed the first attempt's case


def test_broker_down_receivers_keep_accepting_and_enqueue_when_it_returns(node: Cluster, template: Path) -> None:
    files = clones(template, node.root / "send-broker", 3, "B")
    uids = {study_uid(f) for f in files}
    node.redis.stop()
    try:
        sender = node.send(node.receivers[1], files, "SENDER2")
        _, err = sender.communicate(timeout=60)
        assert sender.returncode == 0, err.decode(errors="replace")  # accepted and spooled

        def waiting() -> bool:  # every study assembled and kept as "to enqueue", one refused by the broker
            states = spool_states(node, "receiver2")
            kept = all(states.get(u, ("", ""))[0] == "ready" for u in uids)
            return kept and any("broker unavailable" in states[u][1] for u in uids)

        wait_for(waiting, 60, "the studies to wait for the broker (to enqueue)", interval=0.2)
        assert all(j.state == "queued" for j in node.jobs() if j.study_uid in uids)
    finally:
        node.redis.start()
    got = wait_results(node, uids, timeout=90)
    assert all(got[u] == {"SEG": 1, "SR": 1} for u in uids)
    assert sorted(j.state for j in node.jobs() if j.study_uid in uids) == ["done"] * 3
