"""Fuzzing the C-STORE path and series -> volume, and every DICOM file the libraries ship sent to the node.

The properties: the SCP answers every C-STORE with one of its named statuses (never pynetdicom's
"handler raised" failure, never no answer), keeps nothing it did not acknowledge, and keeps answering
C-ECHO; :func:`dicom_node.volume.load_volume` returns a consistent volume or raises ``VolumeError``
(which the pipeline records as the series' skip reason), nothing else. Hypothesis runs a bounded number
of examples with a deadline so that the whole file costs about a minute.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import split_dataset

from dicom_node.scp import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, DicomServer, ScpSettings
from dicom_node.spool import Spool
from dicom_node.status import StoreStatus
from dicom_node.volume import VolumeError, load_volume
from tests.peers import wait_for

VERIFICATION = "1.2.840.10008.1.1"
NAMED = {int(s) for s in StoreStatus}
FUZZ_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    JPEG2000Lossless,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DicomServer]:
    srv = DicomServer(
        ScpSettings(bind="127.0.0.1", port=0, min_free_disk_mb=1), Spool(tmp_path_factory.mktemp("fuzz") / "spool")
    )
    srv.start()
    yield srv
    srv.stop()


def _associate(server: DicomServer, contexts: list[tuple[str, str]]) -> Association:
    ae = AE(ae_title="FUZZER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60  # a hang fails the test instead of stalling
    for sop, ts in contexts:
        ae.add_requested_context(sop, ts)
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="FAIRNODE")
    assert assoc.is_established, "the node refused an association"
    # this thread reads every response: pynetdicom's reactor stays paused until release (pausing and resuming it
    # around each message, as its send_c_* do, lets the reactor take a fast response off the queue as an
    # "unexpected service message" when the next pause reads a stale paused flag)
    assoc._reactor_checkpoint.clear()
    wait_for(lambda: assoc._is_paused, 10, "pynetdicom's reactor to pause", interval=0.0001)
    return assoc


def _echo(assoc: Association) -> int | None:
    """C-ECHO on the paused association; the response status or None."""
    req = C_ECHO()
    req.MessageID = 2
    req.AffectedSOPClassUID = VERIFICATION
    assoc.dimse.send_msg(req, assoc._get_valid_context(VERIFICATION, "", "scu").context_id)
    _, rsp = assoc.dimse.get_msg(block=True)
    return None if rsp is None else int(rsp.Status)


def _send_raw(assoc: Association, sop_class: str, sop_uid: str, syntax: str, data: bytes) -> int | None:
    """C-STORE ``data`` as the encoded dataset (whatever it holds); the response status or None."""
    cx = assoc._get_valid_context(sop_class, syntax, "scu")
    req = C_STORE()
    req.MessageID = 1
    req.AffectedSOPClassUID = sop_class
    req.AffectedSOPInstanceUID = sop_uid
    req.Priority = 2
    req.DataSet = BytesIO(data)
    assoc.dimse.send_msg(req, cx.context_id)  # the reactor is paused (_associate): this thread reads the response
    _, rsp = assoc.dimse.get_msg(block=True)
    return None if rsp is None else int(rsp.Status)


def _encode(ds: Dataset, syntax: str) -> bytes:
    """The dataset encoded as the transfer syntax says (deflate aside: sent as it is, like a broken SCU)."""
    buf = DicomBytesIO()
    buf.is_little_endian = syntax != ExplicitVRBigEndian
    buf.is_implicit_VR = syntax == ImplicitVRLittleEndian
    write_dataset(buf, ds)
    return bytes(buf.getvalue())


def _base(rows: int = 8, columns: int = 8) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.ImagePositionPatient = [0.0, 0.0, 0.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.PixelData = bytes(rows * columns * 2)
    return ds


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    """An Explicit VR Little Endian element, with the 4-byte length form for VRs that have one."""
    group, elem = tag >> 16, tag & 0xFFFF
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR", b"OF", b"OD", b"OL"):
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value) & 0xFFFF) + value


mutations = st.lists(
    st.one_of(
        st.tuples(st.just("drop"), st.sampled_from(["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])),
        st.tuples(st.just("truncate_pixels"), st.integers(min_value=0, max_value=127)),
        st.tuples(st.just("wrong_vr"), st.sampled_from([0x00280010, 0x00280011, 0x00200032, 0x00280030])),
        st.tuples(st.just("huge_length"), st.integers(min_value=0, max_value=3)),
        st.tuples(st.just("cut"), st.integers(min_value=0, max_value=400)),
        st.tuples(st.just("flip"), st.integers(min_value=0, max_value=10_000)),
        st.tuples(st.just("bad_uid"), st.binary(min_size=0, max_size=70)),
    ),
    min_size=1,
    max_size=4,
)


def _mutate(ops: list[tuple[str, object]], syntax: str) -> tuple[str, bytes]:
    """A base instance changed by ``ops``; returns its SOP Instance UID and the bytes sent."""
    ds = _base()
    appended = b""
    for op, arg in ops:
        if op == "drop" and isinstance(arg, str) and arg in ds:
            delattr(ds, arg)
        elif op == "truncate_pixels" and isinstance(arg, int):
            ds.PixelData = bytes(ds.PixelData)[:arg]
        elif op == "bad_uid" and isinstance(arg, bytes):
            appended += _element(0x0020000E, b"UI", arg + (b"\0" if len(arg) % 2 else b""))
    uid = str(ds.get("SOPInstanceUID", generate_uid()))
    data = _encode(ds, syntax)
    for op, arg in ops:
        if op == "wrong_vr" and isinstance(arg, int) and syntax == ExplicitVRLittleEndian:
            # the same tag again at the end, with a VR that is wrong for it and a value of another type
            appended += _element(arg, b"DA", b"not-a-date")
        elif op == "huge_length" and isinstance(arg, int):
            vr = [b"OB", b"UN", b"SQ", b"UT"][arg]
            appended += struct.pack("<HH2sHI", 0x0009, 0x1010, vr, 0, 0xFFFFFFF0) + b"\x00" * 16
        elif op == "cut" and isinstance(arg, int):  # at least one byte stays: an empty dataset is never sent
            data = data[: max(1, len(data) - arg)]
        elif op == "flip" and isinstance(arg, int) and data:
            i = arg % len(data)
            data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
    return uid, data + appended


@settings(
    max_examples=int(os.environ.get("FAIRNODE_FUZZ_EXAMPLES", "60")),
    deadline=20_000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=mutations, syntax=st.sampled_from(FUZZ_SYNTAXES))
def test_mutated_cstore_gets_a_named_status_and_the_node_keeps_answering(
    server: DicomServer, ops: list[tuple[str, object]], syntax: str
) -> None:
    uid, data = _mutate(ops, syntax)
    assoc = _associate(server, [(CTImageStorage, syntax)])
    try:
        status = _send_raw(assoc, CTImageStorage, uid, syntax, data)
        assert status in NAMED, f"status {status} for {ops} in {syntax}"
        event(StoreStatus(status).name)
        assert _echo(assoc) == 0
    finally:
        assoc.release()
    if status == StoreStatus.SUCCESS:  # what was acknowledged is in the spool and reads back
        assert server.spool.is_known(uid)
        kept = list(server.spool.incoming.rglob(f"{uid}.dcm"))
        assert len(kept) == 1 and pydicom.dcmread(kept[0]).SOPInstanceUID == uid


#: what the shipped-file test leaves out of the package folders: code, text and metadata files
_NOT_DICOM = {".py", ".pyc", ".pyi", ".json", ".txt", ".md", ".typed", ".cfg", ".ini", ".toml", ".html"}
#: files larger than this are not sent (none of the shipped ones is; a bound on the test's time)
_MAX_SHIPPED_BYTES = 32 * 10**6


def _shipped_files() -> list[Path]:
    """Every data file in the package folders of pydicom (test files, palettes, character sets),
    pydicom-data (``data_store``) and pynetdicom (its test DICOM files)."""
    import pydicom as pydicom_package
    import pynetdicom

    try:
        import data_store  # pydicom-data, a declared dependency
    except ImportError:
        pytest.fail("pydicom-data is not installed; it is a declared dependency")
    roots = [
        Path(pydicom_package.__file__).parent / "data",
        Path(data_store.__file__).parent,
        Path(pynetdicom.__file__).parent / "tests" / "dicom_files",
    ]
    files = {
        f
        for root in roots
        for f in root.rglob("*")
        if f.is_file() and f.suffix.lower() not in _NOT_DICOM and f.stat().st_size <= _MAX_SHIPPED_BYTES
    }
    assert any("data_store" in str(f) for f in files), "no pydicom-data file found"
    return sorted(files)


def _split(path: Path) -> tuple[str, str, str, bytes]:
    """(SOP class, transfer syntax, SOP instance UID, dataset bytes) of a file; CT and Explicit VR Little
    Endian (and a new UID) where its file meta does not say."""
    raw = path.read_bytes()
    try:
        meta, offset = split_dataset(path)
        return (
            str(meta.get("MediaStorageSOPClassUID", "") or CTImageStorage),
            str(meta.get("TransferSyntaxUID", "") or ExplicitVRLittleEndian),
            str(meta.get("MediaStorageSOPInstanceUID", "") or generate_uid()),
            raw[offset:],
        )
    except Exception:  # no or broken file meta: the bytes as they are
        return CTImageStorage, ExplicitVRLittleEndian, generate_uid(), raw[132:] if raw[128:132] == b"DICM" else raw


def test_every_shipped_dicom_file_gets_a_proper_answer(server: DicomServer) -> None:
    """Each file's dataset goes in its own SOP class and transfer syntax where the node takes them (else
    the presentation context is refused at negotiation, a proper answer too), and once more as a CT image
    in Explicit VR Little Endian, where the node must decode whatever the bytes are and answer with a
    named status."""
    files = _shipped_files()
    assert len(files) > 250  # pydicom's ~190, pydicom-data's ~70, pynetdicom's 6
    answers: dict[str, int] = {}
    for path in files:
        sop, syntax, uid, body = _split(path)
        if not body:
            continue  # nothing to send: a C-STORE always carries a dataset
        contexts = [(CTImageStorage, ExplicitVRLittleEndian)]
        native = sop in STORAGE_SOP_CLASSES and syntax in TRANSFER_SYNTAXES
        if native and (sop, syntax) != contexts[0]:
            contexts.append((sop, syntax))
        assoc = _associate(server, contexts)
        try:
            if native:
                status = _send_raw(assoc, sop, uid, syntax, body)
                assert status in NAMED, f"{path.name}: status {status}"
                answers[f"{path.name} as {sop}"] = status
            as_ct = _send_raw(assoc, CTImageStorage, uid, ExplicitVRLittleEndian, body)
            assert as_ct in NAMED, f"{path.name}: status {as_ct} for its bytes as a CT image"
            answers[path.name] = as_ct
            assert _echo(assoc) == 0
        finally:
            assoc.release()
    assert len(answers) >= len(files) - 5
    assert StoreStatus.SUCCESS in answers.values() and len(set(answers.values())) > 2


# -- series -> volume ---------------------------------------------------------------------------------------
finite = st.floats(min_value=-500, max_value=500, allow_nan=False, allow_infinity=False)
odd = st.one_of(finite, st.just(float("nan")), st.just(float("inf")), st.just(0.0))


@st.composite
def series(draw: st.DrawFn) -> list[Dataset]:
    """A small CT series with geometry that is consistent, a little off, or nonsense."""
    n = draw(st.integers(min_value=1, max_value=6))
    rows, columns = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    series_uid = generate_uid()
    clean = draw(st.booleans())  # half the series are well formed, the rest have one or more faults
    spacing = draw(st.one_of(st.just(2.5), finite))
    orientation = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    orientation = (
        orientation
        if clean
        else draw(
            st.one_of(
                st.just([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
                st.lists(odd, min_size=6, max_size=6),
                st.lists(finite, min_size=3, max_size=7),
            )
        )
    )
    out = []
    for k in range(n):
        ds = _base(rows, columns)
        ds.SeriesInstanceUID = series_uid
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        kind = (
            "regular"
            if clean
            else draw(st.sampled_from(["regular", "jitter", "random", "duplicate", "missing", "odd"]))
        )
        z = k * spacing
        if kind == "jitter":
            z += draw(st.floats(-1, 1))
        elif kind == "random":
            z = draw(finite)
        elif kind == "duplicate":
            z = 0.0
        pos = [0.0, 0.0, z] if kind != "odd" else [draw(odd), draw(odd), draw(odd)]
        if kind != "missing":
            ds.ImagePositionPatient = pos
        else:
            del ds.ImagePositionPatient
        ds.ImageOrientationPatient = orientation
        if not clean and draw(st.booleans()):
            ds.PixelSpacing = draw(st.lists(odd, min_size=1, max_size=3))
        if not clean and draw(st.integers(0, 4)) == 0:
            ds.Rows = rows + 1  # a slice of another matrix, or pixel data shorter than the matrix
        if not clean and draw(st.integers(0, 4)) == 0:
            ds.PixelData = bytes(draw(st.integers(0, rows * columns * 2)))
        ds.RescaleSlope = draw(st.sampled_from([1.0, 0.0, -2.0, 1e30]))
        ds.RescaleIntercept = draw(st.sampled_from([0.0, -1024.0]))
        out.append(ds)
    return out


@settings(max_examples=int(os.environ.get("FAIRNODE_FUZZ_EXAMPLES", "150")), deadline=5_000)
@given(datasets=series())
def test_load_volume_gives_a_consistent_volume_or_a_volume_error(datasets: list[Dataset]) -> None:
    try:
        volume = load_volume(datasets)
    except VolumeError as exc:
        assert str(exc)  # the reason the pipeline records as the series' skip
        event("VolumeError")
        return
    event("volume")
    assert volume.pixels.ndim == 3
    assert volume.pixels.shape[0] + len(volume.dropped) == len(datasets)
    assert volume.pixels.shape[1:] == (int(datasets[0].Rows), int(datasets[0].Columns))
    assert all(np.isfinite(s) and s > 0 for s in volume.spacing), volume.spacing
    assert all(np.isfinite(volume.origin))
