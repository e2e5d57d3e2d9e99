"""The node between a real Orthanc (as the PACS) and its own pipeline.

Orthanc pushes a cohort study to fairnode (``/modalities/fairnode/store``); fairnode assembles it,
segments it and sends the SEG and SR back into the same study in Orthanc.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
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
from tests.conftest import dciodvfy_errors
from tests.peers import free_port, run_orthanc, wait_for


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / s if s else 1.0


@pytest.mark.timeout(600)
def test_orthanc_pushes_study_and_gets_seg_and_sr_back(tmp_path: Path) -> None:
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

                def three_series() -> list[dict] | None:  # type: ignore[type-arg]
                    series = c.get(f"/studies/{study_id}/series").json()
                    return series if len(series) >= 3 else None

                series = wait_for(three_series, 300, "the SEG and SR to arrive in Orthanc", interval=0.5)
                modalities = sorted(s["MainDicomTags"].get("Modality") for s in series)
                assert modalities == ["CT", "SEG", "SR"]
                files = {}
                for s in series:
                    mod = s["MainDicomTags"]["Modality"]
                    if mod in ("SEG", "SR"):
                        inst = s["Instances"][0]
                        path = tmp_path / f"{mod}.dcm"
                        path.write_bytes(c.get(f"/instances/{inst}/file").content)
                        files[mod] = path
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
        d = _dice(pixels == label.value, image.labels == label.value)
        assert d >= 0.85, f"{label.name}: Dice {d:.3f}"
    sr = hd.sr.srread(files["SR"])
    assert sr.StudyInstanceUID == written.study_uid

    engine = get_engine(settings.registry)
    with Session(engine) as session:
        cases = session.exec(select(Case)).all()
    assert len(cases) == 1 and cases[0].status == "done" and cases[0].model == "ct-abdomen"
    raw = Path(settings.registry.removeprefix("sqlite:///")).read_bytes()
    for identifier in (subject.patient_id, subject.patient_name.split("^")[1], subject.birth_date.strftime("%Y%m%d")):
        assert identifier.encode() not in raw
