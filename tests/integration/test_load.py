"""Load: 8 concurrent senders (4 dcmtk storescu, 4 pynetdicom) push 2,000 instances across 20 studies to
the node running in its own process; every instance is accounted for (received = spooled = indexed) and
every study is processed exactly once.

To keep the test's cost to ingest and accounting, the node runs with no selection rule (``rules: []``):
each series is processed and recorded as skipped, without inference. The inference path under faults is
tested in ``test_faults.py``; the throughput figures come from ``benchmarks/ingest.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE

from cohorts import ct_abdomen
from cohorts.dicom_writer import write_study
from cohorts.subjects import draw_subject
from tests.conftest import require_tool
from tests.integration.test_faults import NodeProcess
from tests.peers import wait_for

STUDIES = 20
PER_STUDY = 100
SENDERS = 8


def _cohort(folder: Path) -> list[list[Path]]:
    """``STUDIES`` studies of ``PER_STUDY`` CT slices of 64 x 64, each with its own UIDs."""
    subject = draw_subject("ct-abdomen", 0, 7)
    src = write_study(ct_abdomen.generate(subject, matrix=64, slice_thickness=5.0), subject, folder / "src")
    template = pydicom.dcmread(src.image_paths[0])
    studies = []
    for s in range(STUDIES):
        study_uid, series_uid = generate_uid(), generate_uid()
        paths = []
        for i in range(PER_STUDY):
            ds = template.copy()
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber = i + 1
            ds.ImagePositionPatient = [0.0, 0.0, -5.0 * i]
            p = folder / f"s{s:02d}" / f"{i:03d}.dcm"
            p.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(p, enforce_file_format=True)
            paths.append(p)
        studies.append(paths)
    return studies


def _pynetdicom_sender(port: int, files: list[Path], statuses: dict[str, int], latencies: list[float]) -> None:
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    ae = AE(ae_title="PYSENDER")
    ae.add_requested_context(first.SOPClassUID, first.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="FAIRNODE")
    assert assoc.is_established
    try:
        for f in files:
            ds = pydicom.dcmread(f)
            t0 = time.perf_counter()
            status = assoc.send_c_store(ds)
            latencies.append(time.perf_counter() - t0)
            statuses[str(ds.SOPInstanceUID)] = int(status.Status)
    finally:
        assoc.release()


@pytest.mark.timeout(900)
def test_eight_concurrent_senders_every_instance_accounted_for(tmp_path: Path) -> None:
    storescu = require_tool("storescu")
    studies = _cohort(tmp_path / "cohort")
    every = [p for s in studies for p in s]
    assert len(every) == STUDIES * PER_STUDY == 2000
    node = NodeProcess(tmp_path, rules=[], idle_seconds=3.0, max_associations=SENDERS + 2, log_level="WARNING")
    node.start()
    try:
        # as PACS do, each sender sends whole studies (sender k: studies k, k + 8, k + 16); the 8 senders'
        # studies arrive interleaved
        shares = [[p for s in studies[k::SENDERS] for p in s] for k in range(SENDERS)]
        statuses: dict[str, int] = {}
        latencies: list[float] = []
        env = {**os.environ, "TCP_NODELAY": "1"}
        t0 = time.perf_counter()
        dcmtk = [
            subprocess.Popen(
                [storescu, "-aet", f"DCMTK{k}", "-aec", "FAIRNODE", "127.0.0.1", str(node.port), *map(str, share)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for k, share in enumerate(shares[:4])
        ]
        threads = [
            threading.Thread(target=_pynetdicom_sender, args=(node.port, share, statuses, latencies))
            for share in shares[4:]
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        for proc in dcmtk:
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-2000:]  # storescu exits non-zero on any failed store
        elapsed = time.perf_counter() - t0
        assert len(statuses) == sum(map(len, shares[4:])) and set(statuses.values()) == {0}
        rate = len(every) / elapsed
        latencies.sort()
        p95 = latencies[int(0.95 * (len(latencies) - 1))]
        print(
            f"load: {len(every)} instances from {SENDERS} senders in {elapsed:.1f} s = {rate:.0f}/s, "
            f"pynetdicom p95 store latency {1000 * p95:.1f} ms"
        )

        spool = node.spool
        sent = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in every}
        on_disk = {p.stem for p in spool.incoming.rglob("*.dcm")}
        indexed = {r.sop_uid for s in spool.studies() for r in spool.instances(s.study_uid)}
        assert sent == on_disk == indexed  # received = spooled = registered
        assert len(spool.studies()) == STUDIES

        def all_done() -> bool:
            return all(s.state == "done" for s in spool.studies())

        wait_for(all_done, 300, "every study to be processed", interval=0.5)
        for st in spool.studies():
            assert st.run == 1, st  # processed once: no second run
            runs = sorted(p.name for p in (spool.outbox / st.study_uid).iterdir())
            assert runs == ["run-1"]
            summary = json.loads((spool.outbox / st.study_uid / "run-1" / "summary.json").read_text())
            assert [s["status"] for s in summary["series"]] == ["skipped"]
            assert len(spool.instances(st.study_uid)) == PER_STUDY
    finally:
        node.stop()
