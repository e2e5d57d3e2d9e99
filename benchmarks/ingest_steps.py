"""Where one association's time goes in the native receiver: each step of a C-STORE timed in-process.

    PYTHONPATH=. .venv/bin/python benchmarks/ingest_steps.py [--n 300]

Starts the node's DICOM server (native receiver, a fresh spool) in this process, wraps the receiver's steps
with timers, and sends ``--n`` CT instances of 512 x 512 with one dcmtk ``storescu`` (TCP_NODELAY=1), after
20 others to warm up. Prints instances/s and, per step, milliseconds per instance. Steps nest: the store holds the
checks and the group commit, which holds the journal append, which holds its ``fdatasync``; reading the PDUs
includes the wait for the sender's next one.
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import dicom_node.group_commit as group_commit
import dicom_node.native.association as association
import dicom_node.spool_journal as spool_journal
import dicom_node.spool_writer as spool_writer
from benchmarks.ingest import make_instances, send, send_concurrent
from dicom_node.scp import DicomServer, ScpSettings
from dicom_node.spool import Spool

console = Console()
SECONDS: collections.defaultdict[str, float] = collections.defaultdict(float)
CALLS: collections.Counter[str] = collections.Counter()


def timed(owner: Any, name: str, label: str) -> None:
    """Replace ``owner.name`` by a wrapper adding its wall time to ``SECONDS[label]``."""
    inner: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            SECONDS[label] += time.perf_counter() - t0
            CALLS[label] += 1

    setattr(owner, name, wrapper)


STEPS = (
    (association.NativeAssociation, "_store", "store (checks and group commit)"),
    (group_commit.GroupCommit, "commit", "  group commit (reserve, journal)"),
    (spool_journal.Journal, "append", "    journal append"),
    (spool_journal.os, "fdatasync", "      fdatasync"),
    (association.NativeAssociation, "_read_pdu", "read PDUs (with the wait for the sender)"),
    (spool_writer.SpoolWriter, "_materialise", "writer thread (overlaps): file written, renamed, indexed"),
    (spool_writer, "write_all", "  file's bytes written"),
    (spool_writer, "start_writeback", "  write-back started"),
    (spool_writer.os, "replace", "  renamed"),
    (Spool, "_record_batch", "  indexed"),
    (spool_writer.os, "posix_fallocate", "file reserved (in the handler thread)"),
    (association.NativeAssociation, "_send_message", "response"),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=300, help="instances sent")
    ap.add_argument("--senders", type=int, default=1, help="concurrent associations (storescu processes)")
    ap.add_argument("--warm", type=int, default=20, help="instances sent first on one association, not timed")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fairnode-ingest-steps-"))
    console.print(f"making {args.n} CT instances of 512 x 512 ...")
    files = make_instances(work / "src", args.n + args.warm)
    warm, files = files[args.n :], files[: args.n]
    for owner, name, label in STEPS:
        timed(owner, name, label)
    spool = Spool(work / "spool")
    spool.prepare()  # as the node does at start-up
    server = DicomServer(ScpSettings(bind="127.0.0.1", port=0, min_free_disk_mb=1, receiver="native"), spool)
    server.start()
    try:
        send(warm, server.port, "FAIRNODE")  # warm up (other instances): the journal taken, the index open
        SECONDS.clear()
        CALLS.clear()
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        if args.senders > 1:
            send_concurrent(files, server.port, "FAIRNODE", args.senders)
        else:
            send(files, server.port, "FAIRNODE")
        wall = time.perf_counter() - t0
    finally:
        server.stop()
    n = len(files)
    table = Table(
        title=f"{args.senders} association(s), {n} instances: {n / wall:.0f}/s, {wall / n * 1e3:.2f} ms each "
        f"(load {load:.2f})"
    )
    table.add_column("step")
    table.add_column("ms per instance", justify="right")
    table.add_column("calls", justify="right")
    for _, _, label in STEPS:
        table.add_row(label, f"{SECONDS[label] / n * 1e3:.3f}", str(CALLS[label]))
    console.print(table)


if __name__ == "__main__":
    main()
