"""Nothing accepted is lost: SIGKILL mid-transfer, and a destination that is down for a while."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pydicom
import pytest
import yaml
from pynetdicom import AE

from cohorts import ct_abdomen
from cohorts.dicom_writer import write_study
from cohorts.subjects import draw_subject
from dicom_node.spool import Spool
from fairnode.node import build_node
from fairnode.settings import load_settings
from tests.peers import free_port, port_open, run_orthanc, wait_for


def _serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fairnode", "serve", "--config", str(config)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    return proc


@pytest.mark.timeout(600)
def test_sigkill_mid_transfer_loses_nothing_acknowledged(tmp_path: Path) -> None:
    subject = draw_subject("ct-abdomen", 1, 31)
    image = ct_abdomen.generate(subject, matrix=64, slice_thickness=1.25)
    written = write_study(image, subject, tmp_path / "cohort")
    paths = list(written.image_paths)
    assert len(paths) >= 150
    port = free_port()
    config = tmp_path / "node.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "node"),
                "bind": "127.0.0.1",
                "port": port,
                "http_port": 0,
                "idle_seconds": 3.0,
                "min_free_disk_mb": 10,
                "pseudonym_secret": "k" * 40,
            }
        )
    )
    log = tmp_path / "node.log"
    node = _serve(config, log)
    wait_for(lambda: port_open(port), 120, "the node to listen")

    acknowledged: list[str] = []
    datasets = [pydicom.dcmread(p) for p in paths]

    def send(items: list[pydicom.Dataset]) -> None:
        ae = AE(ae_title="SENDER")
        ae.add_requested_context(items[0].SOPClassUID, items[0].file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port, ae_title="FAIRNODE")
        if not assoc.is_established:
            return
        for ds in items:
            status = assoc.send_c_store(ds)
            if not assoc.is_established or not hasattr(status, "Status"):
                return
            if int(status.Status) == 0:
                acknowledged.append(str(ds.SOPInstanceUID))
        assoc.release()

    sender = threading.Thread(target=send, args=(datasets,))
    sender.start()
    wait_for(lambda: len(acknowledged) >= 60, 120, "60 acknowledged instances")
    os.kill(node.pid, signal.SIGKILL)
    node.wait()
    sender.join(timeout=60)
    assert 60 <= len(acknowledged) < len(paths)

    node = _serve(config, log)
    try:
        wait_for(lambda: port_open(port), 120, "the node to listen again")
        spool = Spool(tmp_path / "node" / "spool")
        stored = {r.sop_uid for r in spool.instances(written.study_uid)}
        assert set(acknowledged) <= stored, "an acknowledged instance was lost"
        # the sender retries what it had not got an answer for
        send([ds for ds in datasets if str(ds.SOPInstanceUID) not in set(acknowledged)])
        assert {r.sop_uid for r in spool.instances(written.study_uid)} == {str(d.SOPInstanceUID) for d in datasets}

        # the restarted node may already have run the study on what it had (its idle timer ran out during
        # the restart): the retried instances then start the next run, which must finish with everything
        def final_state() -> object:
            st = spool.study(written.study_uid)
            if st is None or st.state not in ("done", "failed"):
                return None
            outs = list((spool.outbox / written.study_uid / f"run-{st.run}").rglob("seg.dcm"))
            return st if outs else None

        st = wait_for(final_state, 300, "the study to be processed with all its instances", interval=0.5)
        assert st.state == "done", log.read_text()[-3000:]
        assert st.run <= 2
        summary = json.loads((spool.outbox / written.study_uid / f"run-{st.run}" / "summary.json").read_text())
        assert [s["status"] for s in summary["series"]] == ["done"]
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(timeout=60)
        except subprocess.TimeoutExpired:
            node.kill()


@pytest.mark.timeout(600)
def test_results_wait_for_a_destination_that_is_down(tmp_path: Path) -> None:
    subject = draw_subject("ct-abdomen", 2, 41)
    written = write_study(ct_abdomen.generate(subject, matrix=96, slice_thickness=5.0), subject, tmp_path / "c")
    pacs_port = free_port()
    settings = load_settings(
        None,
        data_dir=tmp_path / "node",
        bind="127.0.0.1",
        port=0,
        idle_seconds=0.5,
        min_free_disk_mb=10,
        destinations=[{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": pacs_port}],
        retry_base_seconds=0.5,
        retry_max_delay_seconds=2.0,
        retry_max_attempts=200,
        pseudonym_secret="p" * 40,
    )
    node = build_node(settings)
    node.start()
    try:
        ae = AE(ae_title="SENDER")
        ds0 = pydicom.dcmread(written.image_paths[0])
        ae.add_requested_context(ds0.SOPClassUID, ds0.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", node.server.port, ae_title="FAIRNODE")
        for p in written.image_paths:
            assert int(assoc.send_c_store(pydicom.dcmread(p)).Status) == 0
        assoc.release()
        # the destination is down: deliveries are persisted and retried, not lost
        wait_for(lambda: any(d.attempts >= 2 for d in node.spool.deliveries()), 300, "failed delivery attempts")
        assert all(d.state == "pending" for d in node.spool.deliveries())
        assert len(node.spool.deliveries()) == 4  # SEG, probability SEG, entropy map and SR
        # the PACS comes up on that port: everything arrives
        with run_orthanc(tmp_path / "orthanc", {}, dicom_port=pacs_port) as pacs:
            wait_for(lambda: all(d.state == "sent" for d in node.spool.deliveries()), 120, "the deliveries")
            with pacs.client() as c:
                received = {
                    c.get(f"/instances/{i}/simplified-tags").json()["SOPInstanceUID"]
                    for i in c.get("/instances").json()
                }
        sent = {str(pydicom.dcmread(d.path, stop_before_pixels=True).SOPInstanceUID) for d in node.spool.deliveries()}
        assert received == sent
    finally:
        node.stop()
