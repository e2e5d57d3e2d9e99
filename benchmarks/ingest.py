"""Ingest speed: 300 CT instances of 512 x 512 sent to fairnode's SCP (durable spool writes: Success only
once the instance is fsynced in the spool's journal), to dcmtk storescp and to Orthanc, side by side.

    .venv/bin/python benchmarks/ingest.py [--repeats 3] [--n 300] [--senders 8] [--receivers native,pynetdicom]
        [--tls] [--peers dcmtk,orthanc | --peers none]

``--peers``: the peers measured beside fairnode (default both); ``none`` measures fairnode alone, e.g. to compare
two versions of it, run in each one's checkout in turn.

``--receivers``: fairnode's receivers to measure (``receiver:`` in its configuration; default: native).
``--tls``: every association over DICOM TLS (a development CA from ``make_dev_certificates``; storescu
``+tls`` with a client certificate, each receiver requiring one: fairnode's ``tls:``, storescp ``+tls``,
Orthanc's ``DicomTls*``).

For each receiver: instances/s with one association (one dcmtk storescu, TCP_NODELAY=1) and with
``--senders`` concurrent associations (that many storescu processes, each sending its share of ``--n``
other instances, so that no receiver is handed an instance it holds already); p95 store
latency (ms) from a pynetdicom client timing each C-STORE, on one association and on ``--senders``
concurrent ones (threads; the client's own cost is the same for every receiver). Prints the medians of
the repeats, fairnode's ratio to each peer, the load average measured under, and the raw figures as JSON.
Each repeat starts with another receiver (fairnode, then dcmtk, then Orthanc first).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
import yaml
from pydicom.uid import generate_uid
from rich.console import Console
from rich.table import Table

from dicom_node.dev_certs import DevCertificates, make_dev_certificates

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


@dataclass(frozen=True)
class Tls:
    """The development CA and certificates every peer uses with ``--tls``."""

    certs: DevCertificates

    @property
    def storescu(self) -> list[str]:
        c = self.certs
        return ["+tls", str(c.client_key), str(c.client_certificate), "+cf", str(c.ca_certificate)]

    def client_context(self) -> ssl.SSLContext:
        from dicom_node.tls import DestinationTls, client_context

        c = self.certs
        return client_context(
            DestinationTls(ca_file=c.ca_certificate, certificate=c.client_certificate, private_key=c.client_key)
        )


def send(files: list[Path], port: int, aec: str, tls: Tls | None = None) -> float:
    t0 = time.perf_counter()
    extra = tls.storescu if tls else []
    res = subprocess.run(
        ["/usr/bin/storescu", *extra, "-aet", "BENCH", "-aec", aec, "127.0.0.1", str(port), *map(str, files)],
        env=ENV,
        capture_output=True,
        text=True,
        check=False,
    )
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"storescu to {aec} failed: {res.stderr[-500:]}")
    return dt


def send_concurrent(files: list[Path], port: int, aec: str, senders: int, tls: Tls | None = None) -> float:
    """Seconds for ``senders`` storescu processes, each sending every ``senders``-th file, to finish."""
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                "/usr/bin/storescu",
                *(tls.storescu if tls else []),
                "-aet",
                f"BENCH{k}",
                "-aec",
                aec,
                "127.0.0.1",
                str(port),
                *map(str, files[k::senders]),
            ],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(senders)
    ]
    errors = [p.communicate()[1] for p in procs]
    dt = time.perf_counter() - t0
    failed = [e for p, e in zip(procs, errors, strict=True) if p.returncode != 0]
    if failed:
        raise RuntimeError(f"storescu to {aec} failed: {failed[0][-500:]}")
    return dt


def store_latencies(
    datasets: list[pydicom.Dataset], port: int, aec: str, senders: int, tls: Tls | None = None
) -> list[float]:
    """Seconds of each C-STORE (request sent to response read) from ``senders`` pynetdicom associations."""
    from pynetdicom import AE
    from pynetdicom.association import Association

    from dicom_node.scu import responses_only

    out: list[float] = []
    lost: list[int] = []
    lock = threading.Lock()

    def connect(k: int, ds: pydicom.Dataset) -> Association:
        ae = AE(ae_title=f"LAT{k}")
        # dcmtk storescp serves one association at a time: the others wait their turn to be accepted
        ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = 600, 30, 600
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        tls_args = (tls.client_context(), "localhost") if tls else None
        assoc = responses_only(ae.associate("127.0.0.1", port, ae_title=aec, tls_args=tls_args))
        if not assoc.is_established:
            raise RuntimeError(f"no association with {aec}")
        sock = getattr(assoc.dul.socket, "socket", None)  # an SSLSocket is a socket too
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return assoc

    def one(items: list[pydicom.Dataset], k: int) -> None:
        assoc = connect(k, items[0])
        mine = []
        for ds in items:
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # never a duplicate
            t0 = time.perf_counter()
            status = assoc.send_c_store(ds)
            dt = time.perf_counter() - t0
            if "Status" not in status:  # no response within the DIMSE timeout
                lost.append(1)
                assoc = connect(k, ds)
                continue
            mine.append(dt)
            if int(status.Status) != 0:
                raise RuntimeError(f"{aec} answered {status}")
        assoc.release()
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=one, args=(datasets[k::senders], k)) for k in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if lost:
        console.print(f"{aec}: {len(lost)} C-STORE responses not read within the DIMSE timeout, left out")
    return out


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.95 * (len(ordered) - 1))] if ordered else float("nan")


def run_receiver(name: str, work: Path, tls: Tls | None = None) -> tuple[subprocess.Popen[bytes], int, str]:
    """Start ``name`` (a peer, or ``fairnode`` / ``fairnode (pynetdicom)``) on a free port."""
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    log = (work / "log.txt").open("wb")
    c = tls.certs if tls else None
    if name == "dcmtk storescp":
        own = ["+tls", str(c.server_key), str(c.server_certificate), "+cf", str(c.ca_certificate)] if c else []
        cmd = ["/usr/bin/storescp", *own, "-od", str(work), str(port)]
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
        if c:
            cfg |= {
                "DicomTlsEnabled": True,
                "DicomTlsCertificate": str(c.server_certificate),
                "DicomTlsPrivateKey": str(c.server_key),
                "DicomTlsTrustedCertificates": str(c.ca_certificate),
                "DicomTlsRemoteCertificateRequired": True,
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
            "receiver": "pynetdicom" if "pynetdicom" in name else "native",
        }
        if c:
            cfg["tls"] = {
                "enabled": True,
                "certificate": str(c.server_certificate),
                "private_key": str(c.server_key),
                "ca_file": str(c.ca_certificate),
            }
        (work / "node.yaml").write_text(yaml.safe_dump(cfg))
        cmd = [sys.executable, "-m", "fairnode", "serve", "--config", str(work / "node.yaml")]
        aec = "FAIRNODE"
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV
    )  # dcmtk-based peers read TCP_NODELAY too
    try:
        wait_port(port)
    except TimeoutError:
        proc.kill()
        log.close()
        tail = (work / "log.txt").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{name} did not listen on {port} (exit {proc.wait()}):\n{tail}") from None
    return proc, port, aec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--senders", type=int, default=8)
    ap.add_argument("--receivers", default="native", help="fairnode receivers, comma-separated")
    ap.add_argument("--tls", action="store_true", help="every association over DICOM TLS")
    ap.add_argument("--peers", default="dcmtk,orthanc", help="peers to compare with, comma-separated, or none")
    args = ap.parse_args()
    receivers = [r.strip() for r in args.receivers.split(",") if r.strip()]
    if not receivers or set(receivers) - {"native", "pynetdicom"}:
        ap.error(f"--receivers takes native and/or pynetdicom, comma-separated; got {args.receivers!r}")
    peer_names = {"dcmtk": "dcmtk storescp", "orthanc": "Orthanc"}
    chosen = [] if args.peers.strip() == "none" else [p.strip().lower() for p in args.peers.split(",") if p.strip()]
    if set(chosen) - set(peer_names):
        ap.error(f"--peers takes dcmtk and/or orthanc, comma-separated, or none; got {args.peers!r}")
    peers = tuple(peer_names[p] for p in peer_names if p in chosen)
    tmp = Path(tempfile.mkdtemp(prefix="fairnode-ingest-"))
    try:
        tls = Tls(make_dev_certificates(tmp / "certs")) if args.tls else None
        console.print(f"making {args.n} CT instances of 512 x 512 ...")
        files = make_instances(tmp / "one", args.n)
        # the concurrent phase sends other instances: a receiver that already holds an instance may skip it
        # (fairnode keeps the first copy of a SOP Instance UID, Orthanc too), which would measure no write
        concurrent_files = make_instances(tmp / "concurrent", args.n)
        datasets: list[pydicom.Dataset] = [pydicom.dcmread(f) for f in files]
        mb = sum(f.stat().st_size for f in files) / 1e6  # each phase
        ours = ["fairnode" if r == "native" else "fairnode (pynetdicom)" for r in receivers]
        names = (*ours, *peers)
        figures: dict[str, dict[str, list[float]]] = {n: {} for n in names}
        for r in range(args.repeats):
            # each repeat starts with the next receiver: what one leaves behind (memory it freed, files the
            # kernel is still writing back) falls on every other in turn, not always on the same one
            for name in names[r % len(names) :] + names[: r % len(names)]:
                work = tmp / f"{name.replace(' ', '_').strip('()')}-{r}"
                proc, port, aec = run_receiver(name, work, tls)
                try:
                    got = figures[name]
                    got.setdefault("load_1min", []).append(os.getloadavg()[0])  # the machine is shared: say how busy
                    got.setdefault("rate_1", []).append(args.n / send(files, port, aec, tls))
                    got.setdefault(f"rate_{args.senders}", []).append(
                        args.n / send_concurrent(concurrent_files, port, aec, args.senders, tls)
                    )
                    got.setdefault("p95_1", []).append(1000 * p95(store_latencies(datasets, port, aec, 1, tls)))
                    got.setdefault(f"p95_{args.senders}", []).append(
                        1000 * p95(store_latencies(datasets, port, aec, args.senders, tls))
                    )
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
                    shutil.rmtree(work, ignore_errors=True)  # its files out of the page cache and off the disk
        med = {n: {k: statistics.median(v) for k, v in figures[n].items()} for n in names}
        k = args.senders
        table = Table(
            title=f"ingest: {args.n} CT instances 512x512 ({mb:.0f} MB), TCP_NODELAY=1, "
            f"{'DICOM TLS, ' if tls else ''}median of {args.repeats}"
        )
        for col in ("receiver", "1 assoc /s", f"{k} assoc /s", "p95 ms (1)", f"p95 ms ({k})", f"{ours[0]} / this"):
            table.add_column(col, justify="left" if col == "receiver" else "right")
        fair = med[ours[0]]
        for name in names:
            m = med[name]
            table.add_row(
                name,
                f"{m['rate_1']:.0f}",
                f"{m[f'rate_{k}']:.0f}",
                f"{m['p95_1']:.1f}",
                f"{m[f'p95_{k}']:.1f}",
                f"{fair['rate_1'] / m['rate_1']:.2f}x / {fair[f'rate_{k}'] / m[f'rate_{k}']:.2f}x",
            )
        console.print(table)
        runs = [(f"run {r + 1}", r) for r in range(args.repeats)] + [(f"median of {args.repeats}", -1)]
        targets = {"dcmtk storescp": 0.5, "Orthanc": 1.5}
        for name in ours:
            for label, r in runs if peers else ():
                f, *others = (
                    (med[n] if r < 0 else {key: v[r] for key, v in figures[n].items()}) for n in (name, *peers)
                )
                versus = ", ".join(
                    f"vs {peer} {f['rate_1'] / o['rate_1']:.2f}x / {f[f'rate_{k}'] / o[f'rate_{k}']:.2f}x "
                    f"(target >= {targets[peer]}x)"
                    for peer, o in zip(peers, others, strict=True)
                )
                console.print(f"{name}, {label} (1 / {k} associations): {versus}")
        loads = [x for n in names for x in figures[n]["load_1min"]]
        console.print(f"1-minute load average at the start of each measurement: {min(loads):.2f} to {max(loads):.2f}")
        console.print(json.dumps({n: {k2: [round(x, 2) for x in v] for k2, v in figures[n].items()} for n in names}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
