"""The node between a real Orthanc (as the PACS) and its own pipeline.

Orthanc pushes a cohort study to fairnode (``/modalities/fairnode/store``); fairnode assembles it,
segments it, estimates the segmentation's quality and sends the binary SEG, the probability SEG, the
entropy Parametric Map and the SR (measurements, quality estimates, route) back into the same study.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from sqlmodel import Session, select

from cohorts import ct_abdomen
from cohorts.dicom_writer import write_study
from cohorts.subjects import draw_subject
from fairness_registry.db import get_engine
from fairness_registry.models import Case
from fairnode.node import build_node
from fairnode.settings import load_settings
from inference.metrics import dice
from tests.conftest import dciodvfy_errors
from tests.peers import free_port, run_orthanc, wait_for


@pytest.mark.timeout(600)
def test_orthanc_pushes_study_and_gets_seg_quality_objects_and_sr_back(tmp_path: Path) -> None:
    subject = draw_subject("ct-abdomen", 3, 77)
    image = ct_abdomen.generate(subject, matrix=256, slice_thickness=5.0)
    written = write_study(image, subject, tmp_path / "cohort")

    node_port = free_port()
    with run_orthanc(tmp_path / "orthanc", {"fairnode": ["FAIRNODE", "127.0.0.1", node_port]}) as pacs:
        settings = load_settings(
            None,
            data_dir=tmp_path / "node",
            bind="127.0.0.1",
            port=node_port,
            idle_seconds=1.0,
            min_free_disk_mb=10,
            destinations=[{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}],
            pseudonym_secret="s" * 40,
        )
        node = build_node(settings)
        node.start()
        try:
            study_id = pacs.upload(list(written.image_paths))
            with pacs.client() as c:
                r = c.post("/modalities/fairnode/store", json={"Resources": [study_id], "Synchronous": True})
                r.raise_for_status()

                def all_series() -> list[dict] | None:  # type: ignore[type-arg]
                    series = c.get(f"/studies/{study_id}/series").json()
                    complete = len(series) >= 5 and all(len(x["Instances"]) >= 1 for x in series)
                    return series if complete else None

                series = wait_for(all_series, 400, "the SEGs, map and SR to arrive in Orthanc", interval=0.5)
                modalities = sorted(s["MainDicomTags"].get("Modality") for s in series)
                assert modalities == ["CT", "OT", "SEG", "SEG", "SR"]
                files = {}
                for s in series:
                    mod = s["MainDicomTags"]["Modality"]
                    if mod != "CT":
                        inst = s["Instances"][0]
                        raw = c.get(f"/instances/{inst}/file").content
                        path = tmp_path / f"{mod}-{len(files)}.dcm"
                        path.write_bytes(raw)
                        ds = pydicom.dcmread(path, stop_before_pixels=True)
                        key = {"SEG": "PSEG" if int(ds.SeriesNumber) == 9102 else "SEG"}.get(mod, mod)
                        files[key] = path
        finally:
            node.stop()

    for path in files.values():
        assert dciodvfy_errors(path) == [], path
    seg = hd.seg.segread(files["SEG"])
    assert seg.StudyInstanceUID == written.study_uid
    sop_uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in written.image_paths]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=sop_uids, combine_segments=True, assert_missing_frames_are_empty=True
    )
    for label in image.label_info:
        d = dice(pixels == label.value, image.labels == label.value)
        assert d >= 0.85, f"{label.name}: Dice {d:.3f}"
    sr = hd.sr.srread(files["SR"])
    assert sr.StudyInstanceUID == written.study_uid
    # the probability SEG holds the mean probabilities: high inside the truth of each structure
    pseg = hd.seg.segread(files["PSEG"])
    assert pseg.SegmentationType == "FRACTIONAL" and pseg.SegmentationFractionalType == "PROBABILITY"
    probs = pseg.get_pixels_by_source_instance(
        source_sop_instance_uids=sop_uids, segment_numbers=[1], rescale_fractional=True
    )[..., 0]
    assert float(probs[image.labels == 1].mean()) > 0.8 and float(probs[image.labels == 0].mean()) < 0.05
    umap = pydicom.dcmread(files["OT"])
    assert umap.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map
    # the SR carries, per structure, the quality estimates and the gate's verdict
    text = str(pydicom.dcmread(files["SR"]))
    for meaning in ("Dice similarity coefficient", "Reverse classification accuracy", "Segmentation quality"):
        assert meaning.lower() in text.lower(), meaning

    engine = get_engine(settings.registry)
    with Session(engine) as session:
        cases = session.exec(select(Case)).all()
    assert len(cases) == 1 and cases[0].status == "done" and cases[0].model == "ct-abdomen"
    assert cases[0].route in ("PASS", "REVIEW") and cases[0].quality
    assert cases[0].review_state == ("not_needed" if cases[0].route == "PASS" else "forwarded")
    raw = Path(settings.registry.removeprefix("sqlite:///")).read_bytes()
    for identifier in (subject.patient_id, subject.patient_name.split("^")[1], subject.birth_date.strftime("%Y%m%d")):
        assert identifier.encode() not in raw
