"""atheris on the native receiver's parsers: A-ASSOCIATE-RQ, P-DATA-TF PDVs, DIMSE command sets and the
undecoded C-STORE header check, for a bounded time.

    .venv/bin/python benchmarks/fuzz_native.py [--seconds 60] [--target all|pdu|command|header]

A parser may refuse its input only with the error it documents (``PduError``, ``CommandError``; the header
check: any exception, which the receiver answers with Cannot Understand), never hang; anything else is a
finding (atheris prints the input and stops). Prints the executions per target.
"""

from __future__ import annotations

import argparse
import re
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import atheris

with atheris.instrument_imports(
    include=[
        "dicom_node.native.pdu",
        "dicom_node.native.dimse",
        "dicom_node.store_handling",
        "dicom_node.header_scan",
    ]
):
    from dicom_node.native import dimse, pdu
    from dicom_node.store_handling import read_header, truncation

from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, "1.2.840.10008.1.2.1.99")


def _pdu(data: bytes) -> None:
    try:
        rq = pdu.parse_associate_rq(data)
        pdu.associate_ac(
            rq,
            [(c.context_id, 0, "1.2.840.10008.1.2") for c in rq.contexts],
            max_pdu=16384,
            implementation_uid="1.2.3",
            implementation_version="X",
        )
    except pdu.PduError:
        pass
    try:
        for _ in pdu.iter_pdvs(data):
            pass
    except pdu.PduError:
        pass


def _command(data: bytes) -> None:
    try:
        cmd = dimse.parse_command(data)
    except dimse.CommandError:
        return
    dimse.response(cmd, 0)


def _header(data: bytes) -> None:
    if not data:
        return
    syntax = SYNTAXES[data[0] % len(SYNTAXES)]
    try:
        header = read_header(data[1:], syntax, inflate_limit=1 << 20)
    except Exception:  # the receiver's answer: Cannot Understand (quarantined)
        return
    try:  # the receiver answers Cannot Understand to what fails here
        truncation(header)
    except Exception:
        return
    for name in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"):
        try:
            str(header.dataset.get(name, "") or "")
        except Exception:
            return


TARGETS: dict[str, Callable[[bytes], None]] = {"pdu": _pdu, "command": _command, "header": _header}


def _seeds(name: str) -> list[bytes]:
    """Well-formed inputs for ``name`` to start from: what real peers send."""
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pydicom.uid import CTImageStorage, generate_uid

    if name == "pdu":
        ts = b"".join(pdu._item(0x40, t.encode()) for t in (ExplicitVRLittleEndian, ImplicitVRLittleEndian))
        pc = pdu._item(0x20, bytes([1, 0, 0, 0]) + pdu._item(0x30, CTImageStorage.encode()) + ts)
        user = pdu._item(0x51, struct.pack(">I", 16384)) + pdu._item(0x52, b"1.2.3.4") + pdu._item(0x55, b"SEED")
        body = struct.pack(">HH", 1, 0) + b"FAIRNODE".ljust(16) + b"SCU".ljust(16) + bytes(32)
        body += pdu._item(0x10, pdu.APPLICATION_CONTEXT.encode()) + pc + pdu._item(0x50, user)
        return [body, struct.pack(">IBB", 6, 1, 3) + b"abcd"]
    if name == "command":
        return [dimse.response(dimse.Command(0x0001, 7, True, CTImageStorage, generate_uid()), 0, "seed")]
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated, ds.SamplesPerPixel = 16, 1
    ds.PixelData = bytes(32)
    out = []
    for k, syntax in enumerate(SYNTAXES[:3]):
        buf = DicomBytesIO()
        buf.is_implicit_VR, buf.is_little_endian = syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian
        write_dataset(buf, ds)
        out.append(bytes([k]) + buf.getvalue())
    return out


def _worker(name: str, seconds: int) -> None:
    warnings.simplefilter("ignore")  # pydicom warns about each odd value it meets
    """Fuzz one target in this process (libFuzzer stops it after ``seconds``; a finding exits non-zero)."""
    corpus = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    for i, seed in enumerate(_seeds(name)):
        (corpus / f"seed{i}").write_bytes(seed)
    flags = [
        f"-artifact_prefix={corpus}/",
        f"-max_total_time={seconds}",
        "-rss_limit_mb=2048",
        "-timeout=10",
        "-max_len=65536",
    ]
    atheris.Setup([sys.argv[0], *flags, str(corpus)], TARGETS[name])
    atheris.Fuzz()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=60, help="in all, shared by the targets")
    ap.add_argument("--target", choices=["all", *TARGETS], default="all")
    ap.add_argument("--worker", choices=list(TARGETS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args.worker, args.seconds)
        return
    names = list(TARGETS) if args.target == "all" else [args.target]
    per = max(1, args.seconds // len(names))
    failed = []
    for name in names:
        t0 = time.monotonic()
        res = subprocess.run(
            [sys.executable, __file__, "--worker", name, "--seconds", str(per)],
            capture_output=True,
            text=True,
            check=False,
        )
        runs = re.findall(r"#(\d+)\s+(?:DONE|pulse|NEW|REDUCE)", res.stderr)
        print(
            f"{name}: {runs[-1] if runs else '?'} executions in {time.monotonic() - t0:.0f} s, "
            f"{'no finding' if res.returncode == 0 else 'FINDING (exit ' + str(res.returncode) + ')'}"
        )
        if res.returncode != 0:
            failed.append(name)
            print(res.stderr[-3000:])
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
