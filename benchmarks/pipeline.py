"""Pipeline latency: from the last instance of a 128-slice ct-abdomen study received by fairnode to its SEG
and SR stored at the PACS (a real Orthanc), per stage.

    PYTHONPATH=. .venv/bin/python benchmarks/pipeline.py [--slices 128] [--idle 2]

Prints the stages (idle timer, read, volume, inference, outputs, delivery) and the pipeline overhead
beyond model inference and the idle timer, as a share of the total.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cohorts import ct_abdomen
from cohorts.dicom_writer import write_study
from cohorts.subjects import draw_subject
from fairnode.node import build_node
from fairnode.settings import load_settings
from tests.peers import free_port, run_orthanc, wait_for

console = Console()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--slices", type=int, default=128)
    ap.add_argument("--idle", type=float, default=2.0, help="the node's idle timer (s)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fairnode-pipeline-"))
    subject = draw_subject("ct-abdomen", 5, 600)
    # choose the slice thickness that gives the wanted slice count over this subject's scan range
    probe = ct_abdomen.generate(subject, matrix=64, slice_thickness=2.0)
    extent = (probe.pixels.shape[0] - 1) * 2.0
    thickness = extent / (args.slices - 1)
    image = ct_abdomen.generate(subject, matrix=512, slice_thickness=thickness)
    written = write_study(image, subject, tmp / "cohort")
    n = len(written.image_paths)
    node_port = free_port()
    with run_orthanc(tmp / "orthanc", {"fairnode": ["FAIRNODE", "127.0.0.1", node_port]}) as pacs:
        settings = load_settings(
            None,
            data_dir=tmp / "node",
            bind="127.0.0.1",
            port=node_port,
            idle_seconds=args.idle,
            min_free_disk_mb=100,
            log_level="WARNING",
            pseudonym_secret="b" * 40,
            destinations=[{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}],
        )
        node = build_node(settings)
        node.start()
        try:
            subprocess.run(
                [
                    "/usr/bin/storescu",
                    "-aec",
                    "FAIRNODE",
                    "-aet",
                    "BENCH",
                    "127.0.0.1",
                    str(node_port),
                    *map(str, written.image_paths),
                ],
                env={**os.environ, "TCP_NODELAY": "1"},
                check=True,
                capture_output=True,
            )
            t_last = time.time()
            with pacs.client() as c:
                # the images went to fairnode only: the PACS receives just the SEG and the SR

                def results_stored() -> bool:
                    found = c.post("/tools/lookup", content=written.study_uid).json()
                    return bool(found) and len(c.get(f"/studies/{found[0]['ID']}/series").json()) >= 2

                wait_for(results_stored, 900, "SEG and SR at the PACS", interval=0.05)
            t_done = time.time()
            outcome = node.runner.last
            st = node.spool.study(written.study_uid)
        finally:
            node.stop()
    assert outcome is not None and st is not None
    series = next(s for s in outcome.series if s.status == "done")
    timings = series.timings
    total = t_done - t_last
    ready_at = st.last_received + args.idle
    idle_wait = max(0.0, ready_at - t_last)
    inference = timings["inference"]
    stages = {"idle timer": idle_wait, **{k: v for k, v in timings.items()}}
    stages["delivery + queueing"] = total - idle_wait - sum(timings.values())
    table = Table(title=f"pipeline: {n}-slice ct-abdomen study (512x512), last instance -> SEG+SR at Orthanc")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("share", justify="right")
    for k, v in stages.items():
        table.add_row(k, f"{v:.2f}", f"{v / total:.0%}")
    table.add_row("total", f"{total:.2f}", "100%")
    console.print(table)
    overhead = total - inference - idle_wait
    console.print(f"providers: {', '.join(series.providers)}")
    console.print(
        f"overhead beyond inference and idle timer: {overhead:.2f} s = {overhead / total:.0%} of total (target < 30%)"
    )


if __name__ == "__main__":
    main()
