"""A C-STORE's header check: the raw walk (``dicom_node.header_scan``) against pydicom's ``read_dataset``.

    PYTHONPATH=. .venv/bin/python benchmarks/header_scan.py [--repeat 2000]

On the first 16 KB of the ingest benchmark's 512 x 512 CT instance (what the receiver holds when the first
fragment has arrived) and on headers with nested sequences of undefined length (pydicom's own
``CT_small.dcm`` and an RT structure set, re-encoded so), times :func:`dicom_node.store_handling.read_header_start` (the
walk) and pydicom's ``read_dataset`` stopped at the pixel data (what the receiver ran before), each the
median of 5 rounds of ``--repeat`` calls, and prints microseconds per call and the ratio.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from rich.console import Console
from rich.table import Table

from benchmarks.ingest import make_instances
from dicom_node.header_scan import PIXEL_TAGS, scan_header
from dicom_node.store_handling import read_header_start

console = Console()


def _dataset_bytes(path: Path) -> tuple[bytes, str]:
    """The encoded dataset after the file meta header, and its transfer syntax."""
    raw = path.read_bytes()
    fp = io.BytesIO(raw)
    pydicom.filereader.read_preamble(fp, False)
    meta = pydicom.filereader._read_file_meta_info(fp)
    return raw[fp.tell() :], str(meta.TransferSyntaxUID)


def _undefined_lengths(path: Path) -> tuple[bytes, str]:
    """pydicom's test file re-encoded in explicit VR little endian with every sequence and item of undefined
    length, as many modalities write them (the walk then follows each item)."""
    ds = pydicom.dcmread(path, force=True)

    def mark(d: pydicom.Dataset) -> None:
        for elem in d:
            if elem.VR == "SQ":
                elem.is_undefined_length = True
                for item in elem.value:
                    item.is_undefined_length_sequence_item = True
                    mark(item)

    mark(ds)
    out = DicomBytesIO()
    out.is_implicit_VR, out.is_little_endian = False, True
    write_dataset(out, ds)
    return out.getvalue(), str(pydicom.uid.ExplicitVRLittleEndian)


def _per_call_us(fn: Callable[[], object], repeat: int) -> float:
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        rounds.append((time.perf_counter() - t0) / repeat * 1e6)
    return statistics.median(rounds)


def _parse(prefix: bytes, implicit: bool, little: bool) -> object:
    return read_dataset(io.BytesIO(prefix), implicit, little, stop_when=lambda t, v, n: int(t) in PIXEL_TAGS)


def _row(prefix: bytes, syntax: str, whole: bool, repeat: int) -> tuple[int, float, float] | None:
    """Elements found, microseconds per walk and per pydicom parse; None when the walk leaves it to pydicom.
    ``whole``: the prefix is the whole dataset (walked as :func:`read_header` walks it), else the start of
    one still arriving (:func:`read_header_start`)."""
    implicit = syntax == pydicom.uid.ImplicitVRLittleEndian
    little = syntax != pydicom.uid.ExplicitVRBigEndian
    walk_fn = partial(scan_header, prefix, implicit, little) if whole else partial(read_header_start, prefix, syntax)
    scan = walk_fn()
    if scan is None:
        return None
    slow = _per_call_us(partial(_parse, prefix, implicit, little), repeat)
    return len(scan.elements), _per_call_us(walk_fn, repeat), slow


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        (ct,) = make_instances(Path(tmp), 1)
        cases = [("ingest benchmark CT 512x512, first 16 KB", *_dataset_bytes(ct), 16384)]
    for name, file in (("pydicom CT_small.dcm", "CT_small.dcm"), ("pydicom rtstruct.dcm", "rtstruct.dcm")):
        data, syntax = _undefined_lengths(Path(str(get_testdata_file(file))))
        cases.append((name, data, syntax, len(data)))
    table = Table(title="header check per instance (microseconds per call, median of 5 rounds)")
    for col in ("dataset", "elements", "walk", "pydicom read_dataset", "pydicom / walk"):
        table.add_column(col, justify="left" if col == "dataset" else "right")
    for name, data, syntax, cut in cases:
        row = _row(data[:cut], syntax, whole=cut >= len(data), repeat=args.repeat)
        if row is None:
            console.print(f"{name}: left to pydicom by the walk")
            continue
        elements, walk, slow = row
        table.add_row(name, str(elements), f"{walk:.1f}", f"{slow:.1f}", f"{slow / walk:.1f}x")
    console.print(table)


if __name__ == "__main__":
    main()
