"""Ingest speed: 300 CT instances of 512 x 512 sent by dcmtk storescu (TCP_NODELAY=1), one association,
to fairnode's SCP (durable spool writes), to dcmtk storescp and to Orthanc, side by side.

    .venv/bin/python benchmarks/ingest.py [--repeats 3] [--n 300]

Prints instances/s per receiver (median of the repeats) and fairnode's ratio to each peer.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
import yaml
from pydicom.uid import generate_uid
from rich.console import Console
from rich.table import Table

ENV = {**os.environ, "TCP_NODELAY": "1"}
console = Console()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port}")


def make_instances(folder: Path, n: int) -> list[Path]:
    """``n`` CT slices of 512 x 512 from one cohort subject, each with its own UIDs and position."""
    from cohorts import ct_abdomen
    from cohorts.dicom_writer import write_study
    from cohorts.subjects import draw_subject

    subject = draw_subject("ct-abdomen", 0, 500)
    src = write_study(ct_abdomen.generate(subject, matrix=512, slice_thickness=2.5), subject, folder / "src")
    study, series = generate_uid(), generate_uid()
    out = []
    for i in range(n):
        ds = pydicom.dcmread(src.image_paths[i % len(src.image_paths)])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], float(-i)]
        p = folder / "bench" / f"{i:04d}.dcm"
        p.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(p, enforce_file_format=True)
        out.append(p)
    return out


def send(files: list[Path], port: int, aec: str) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(
        ["/usr/bin/storescu", "-aet", "BENCH", "-aec", aec, "127.0.0.1", str(port), *map(str, files)],
        env=ENV,
        capture_output=True,
        text=True,
        check=False,
    )
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"storescu to {aec} failed: {res.stderr[-500:]}")
    return dt


def run_receiver(name: str, work: Path) -> tuple[subprocess.Popen[bytes], int, str]:
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    log = (work / "log.txt").open("wb")
    if name == "dcmtk storescp":
        cmd = ["/usr/bin/storescp", "-od", str(work), str(port)]
        aec = "ANY-SCP"
    elif name == "Orthanc":
        cfg = {
            "StorageDirectory": str(work / "db"),
            "IndexDirectory": str(work / "db"),
            "DicomPort": port,
            "HttpPort": free_port(),
            "DicomAet": "ORTHANC",
            "Plugins": [],
            "RemoteAccessAllowed": False,
            "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": False,
        }
        (work / "orthanc.json").write_text(json.dumps(cfg))
        cmd = ["/usr/sbin/Orthanc", str(work / "orthanc.json")]
        aec = "ORTHANC"
    else:
        cfg = {
            "data_dir": str(work / "data"),
            "bind": "127.0.0.1",
            "port": port,
            "http_port": 0,
            "idle_seconds": 3600,
            "min_free_disk_mb": 100,
            "log_level": "WARNING",
            "pseudonym_secret": "b" * 40,
        }
        (work / "node.yaml").write_text(yaml.safe_dump(cfg))
        cmd = [sys.executable, "-m", "fairnode", "serve", "--config", str(work / "node.yaml")]
        aec = "FAIRNODE"
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV
    )  # dcmtk-based peers read TCP_NODELAY too
    wait_port(port)
    return proc, port, aec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fairnode-ingest-"))
    try:
        console.print(f"making {args.n} CT instances of 512 x 512 ...")
        files = make_instances(tmp, args.n)
        mb = sum(f.stat().st_size for f in files) / 1e6
        rates: dict[str, list[float]] = {}
        for name in ("fairnode", "dcmtk storescp", "Orthanc"):
            for r in range(args.repeats):
                proc, port, aec = run_receiver(name, tmp / f"{name.replace(' ', '_')}-{r}")
                try:
                    dt = send(files, port, aec)
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
                rates.setdefault(name, []).append(args.n / dt)
        table = Table(
            title=f"ingest: {args.n} CT instances 512x512 ({mb:.0f} MB), storescu TCP_NODELAY=1, "
            f"median of {args.repeats}"
        )
        table.add_column("receiver")
        table.add_column("instances/s", justify="right")
        table.add_column("seconds", justify="right")
        table.add_column("fairnode / this", justify="right")
        med = {k: statistics.median(v) for k, v in rates.items()}
        for name, rate in med.items():
            table.add_row(name, f"{rate:.0f}", f"{args.n / rate:.2f}", f"{med['fairnode'] / rate:.2f}x")
        console.print(table)
        console.print(
            f"targets: fairnode >= 0.5x dcmtk storescp ({med['fairnode'] / med['dcmtk storescp']:.2f}x), "
            f">= 1.5x Orthanc ({med['fairnode'] / med['Orthanc']:.2f}x)"
        )
        console.print(json.dumps({k: [round(x, 1) for x in v] for k, v in rates.items()}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
