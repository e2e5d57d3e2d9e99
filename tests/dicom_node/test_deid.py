"""Outbound de-identification: what the research destination receives carries no identifier of the
cohort's headers (names, IDs, birth dates, accession, dates, device and institution, UIDs), at any depth,
while the hospital's UID map re-identifies it and references between the objects still hold."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.events import Event

from cohorts import ct_abdomen
from cohorts.dicom_writer import WrittenStudy, write_study
from cohorts.subjects import draw_subject
from dicom_node import audit_trail
from dicom_node.audit_messages import AuditSource
from dicom_node.audit_trail import AuditTrail, AuditTrailSettings, read_log
from dicom_node.deid import OPTIONS, DeidentificationError, Deidentifier, UidMap, load_profile
from dicom_node.scu import Destination, Forwarder, ForwardSettings
from dicom_node.spool import Spool

#: Attributes of the cohort's headers that identify a patient, a visit, a person, a device or a place.
IDENTIFYING = {
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "OtherPatientIDs",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "InstanceCreationDate",
    "StudyTime",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "PersonName",
    "InstitutionName",
    "InstitutionAddress",
    "StationName",
    "DeviceSerialNumber",
    "VerifyingObserverName",
}
KEPT_UIDS = {
    "SOPClassUID",
    "ReferencedSOPClassUID",
    "TransferSyntaxUID",
    "MediaStorageSOPClassUID",
    "CodingSchemeUID",
    "ImplementationClassUID",  # the sending software's, rewritten by the file meta on the wire
}


def _values(ds: Dataset) -> Iterator[tuple[str, str, str]]:
    """(keyword, VR, value as text) of every non-empty element at every depth (file meta included)."""
    meta = getattr(ds, "file_meta", None)
    for d in (meta, ds) if meta is not None else (ds,):
        for elem in d.iterall():
            if elem.VR == "SQ" or elem.value in (None, "", b""):
                continue
            if elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
                continue
            values = elem.value if elem.VM > 1 else [elem.value]
            for v in values:
                yield elem.keyword, str(elem.VR), str(v)


def _identifiers(datasets: list[Dataset]) -> set[str]:
    found = set()
    for ds in datasets:
        for keyword, vr, value in _values(ds):
            if keyword in IDENTIFYING and len(value.strip()) >= 3:
                found.add(value.strip())
            if vr == "UI" and keyword not in KEPT_UIDS and not value.startswith("1.2.840.10008.") and len(value) > 8:
                found.add(value)
    return found


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> WrittenStudy:
    subject = draw_subject("ct-abdomen", 0, 33)
    image = ct_abdomen.generate(subject, matrix=64, slice_thickness=10.0)
    return write_study(image, subject, tmp_path_factory.mktemp("cohort"))


@pytest.fixture
def research_archive() -> Iterator[tuple[int, list[Dataset]]]:
    """A pynetdicom SCP standing in for the research archive outside the hospital: keeps what it gets."""
    received: list[Dataset] = []

    def on_store(event: Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0x0000

    ae = AE(ae_title="RESEARCH")
    ae.supported_contexts = StoragePresentationContexts
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield int(server.server_address[1]), received
    finally:
        server.shutdown()


def test_nothing_identifying_reaches_the_research_archive(
    tmp_path: Path, study: WrittenStudy, research_archive: tuple[int, list[Dataset]]
) -> None:
    port, received = research_archive
    sr = get_testdata_file("reportsi.dcm")  # an SR with a content tree (observer names, references)
    assert sr is not None
    files = [*study.image_paths, study.seg_path, Path(sr)]
    originals = [pydicom.dcmread(p) for p in files]
    identifiers = _identifiers(originals)
    patient_ids = {str(ds.PatientID) for ds in originals if len(str(ds.PatientID)) >= 3}
    assert patient_ids and len(identifiers) > len(files)  # the check has something to find

    log = tmp_path / "audit.log"
    trail = AuditTrail(AuditTrailSettings(), log, AuditSource("FAIRNODE"))
    previous = audit_trail.configure(trail)
    uid_map = UidMap(tmp_path / "deid" / "uid-map.sqlite3", b"the node's pseudonymisation secret")
    dest = Destination("research", "RESEARCH", "127.0.0.1", port, deidentify=True)
    spool = Spool(tmp_path / "spool")
    forwarder = Forwarder(
        spool,
        ForwardSettings(destinations=(dest,)),
        deidentifier=lambda d: Deidentifier(uid_map, d.name, d.deidentify_options),
        pseudonym=lambda patient_id: "pseudonym-of-" + str(len(patient_id)),
    )
    try:
        for ds, path in zip(originals, files, strict=True):
            forwarder.enqueue(str(ds.StudyInstanceUID), 1, [path])
        assert forwarder.send_due() == len(files)
    finally:
        audit_trail.configure(previous)
        trail.close()

    assert len(received) == len(files)
    leaks = [
        (keyword, value)
        for ds in received
        for keyword, _vr, value in _values(ds)
        if value.strip() in identifiers or any(i in value for i in identifiers if len(i) >= 6 and not i.isdigit())
    ]
    assert not leaks, f"identifiers reached the research archive: {leaks[:10]}"
    for ds in received:
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert not any(elem.tag.is_private for elem in ds.iterall())
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert str(ds.PatientID) not in patient_ids

    # re-identification inside the hospital; references between the sent objects still resolve
    assert {uid_map.original(str(ds.StudyInstanceUID)) for ds in received} == {
        str(ds.StudyInstanceUID) for ds in originals
    }
    images = {str(ds.SOPInstanceUID) for ds in received if ds.Modality == "CT"}
    seg = next(ds for ds in received if ds.Modality == "SEG")
    referenced = {str(i.ReferencedSOPInstanceUID) for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == images
    assert len({str(ds.PatientID) for ds in received if ds.Modality in ("CT", "SEG")}) == 1  # one research patient

    # the transfer is on the audit trail, de-identified, naming the patient by pseudonym only
    sent = [m for m in read_log(log) if m.find("EventIdentification").get("EventActionCode") == "R"]  # type: ignore[union-attr]
    assert sent and all(m.findtext(".//Anonymized") == "true" for m in sent)
    text = log.read_text()
    assert not any(pid in text for pid in patient_ids)


def test_options_keep_what_they_say(study: WrittenStudy, tmp_path: Path) -> None:
    ds = pydicom.dcmread(study.image_paths[0])
    uid_map = UidMap(tmp_path / "m.sqlite3", b"k")
    basic = Deidentifier(uid_map, "r").apply(ds)
    kept = Deidentifier(uid_map, "r", ["retain-patient-characteristics", "retain-long-full-dates"]).apply(ds)
    assert not basic.get("PatientSex") and kept.PatientSex == ds.PatientSex
    assert not basic.get("StudyDate") and kept.StudyDate == ds.StudyDate
    assert [c.CodeValue for c in kept.DeidentificationMethodCodeSequence] == ["113100", "113106", "113108"]
    assert "PatientBirthDate" not in kept or not kept.PatientBirthDate
    with pytest.raises(ValueError, match="unknown de-identification options"):
        Deidentifier(uid_map, "r", ["retain-everything"])
    assert set(OPTIONS) <= {o for r in load_profile() for o in r.options}


def test_burned_in_annotation_is_refused(study: WrittenStudy, tmp_path: Path) -> None:
    ds = pydicom.dcmread(study.image_paths[0])
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(DeidentificationError, match="burned-in annotation"):
        Deidentifier(UidMap(tmp_path / "m.sqlite3", b"k"), "r").apply(ds)


def test_uid_map_is_stable_across_restarts(tmp_path: Path) -> None:
    first = UidMap(tmp_path / "m.sqlite3", b"k")
    new = first.replacement("1.2.3.4", "r")
    first.commit()
    first.close()
    again = UidMap(tmp_path / "m.sqlite3", b"k")
    assert again.replacement("1.2.3.4", "r") == new and again.original(new) == "1.2.3.4"
    assert len(new) <= 64 and new.startswith("2.25.")


def test_fairnode_outputs_stay_valid_and_keep_their_measurements(tmp_path: Path) -> None:
    """fairnode's own SEG and SR (TID 1500) of a knee radiograph, de-identified: valid for dciodvfy, no
    identifier of the source left, measurements and the SR -> SEG -> image references intact."""
    import numpy as np

    from cohorts import xr_knee
    from dicom_node.writers import OutputSettings, build_seg, build_sr, segment_measurements
    from tests.conftest import dciodvfy_errors
    from tests.dicom_node.test_writers import _card

    subject = draw_subject("xr-knee", 0, 2)
    image = xr_knee.generate(subject)
    written = write_study(image, subject, tmp_path / "cohort")
    sources = [pydicom.dcmread(p) for p in written.image_paths]
    labels = image.labels.astype(np.uint8)
    card = _card("xr-knee", xr_knee.LABELS, "DX", 2)
    seg = build_seg(sources, labels, card, OutputSettings(), 1)
    spacing = tuple(float(s) for s in image.spacing)
    sr = build_sr(sources, seg, segment_measurements(labels, spacing, card), card, OutputSettings(), 1)
    identifiers = _identifiers([*sources, seg, sr])

    deid = Deidentifier(UidMap(tmp_path / "m.sqlite3", b"k"), "research")
    out = [deid.apply(ds) for ds in (*sources, seg, sr)]
    for ds, name in zip(out, ("image", "seg", "sr"), strict=False):
        path = tmp_path / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], name
    leaks = [(k, v) for ds in out for k, _vr, v in _values(ds) if v.strip() in identifiers]
    assert not leaks, leaks[:10]
    image_out, seg_out, sr_out = out[0], out[-2], out[-1]
    numbers = [float(e.value) for e in sr_out.iterall() if e.keyword == "NumericValue"]
    original = [float(i.value) for i in sr.iterall() if i.keyword == "NumericValue"]
    assert numbers == original and numbers
    refs = {str(e.value) for e in sr_out.iterall() if e.keyword == "ReferencedSOPInstanceUID"}
    assert str(seg_out.SOPInstanceUID) in refs and str(image_out.SOPInstanceUID) in refs
