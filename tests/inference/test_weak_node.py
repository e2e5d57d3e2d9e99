"""The node runs the weakly supervised lesion model after the organ model: lesion SEG, SR and counterfactual,
dciodvfy-clean."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from cohorts import ct_abdomen
from cohorts.dicom_writer import write_study
from cohorts.shift import ImagingShift
from cohorts.subjects import draw_subject
from fairnode.lesions import CARD, NAME
from inference.model_card import MODELS_DIR
from inference.weak.slices import liver_region
from tests.conftest import dciodvfy_errors

MODELS = Path(os.environ.get("FAIRNODE_MODELS_DIR", str(MODELS_DIR)))
pytestmark = pytest.mark.skipif(not (MODELS / NAME / CARD).is_file(), reason="lesion model not shipped")


def test_node_run_writes_the_liver_lesion_segment_and_sr(tmp_path: Path) -> None:
    subject = dataclasses.replace(draw_subject("ct-abdomen", 1, 73), shift=ImagingShift(lesion_mm=25.0))
    write_study(ct_abdomen.generate(subject, matrix=128, slice_thickness=5.0), subject, tmp_path / "in")
    env = {
        **os.environ,
        "FAIRNODE_LESIONS__ENABLED": "true",
        "FAIRNODE_LESIONS__COUNTERFACTUAL": "true",
        "FAIRNODE_QUALITY_ENABLED": "false",
    }
    res = subprocess.run(
        [sys.executable, "-m", "fairnode", "run", str(tmp_path / "in"), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    (summary,) = sorted((tmp_path / "out").glob("*/summary.json"))
    (done,) = [s for s in json.loads(summary.read_text())["series"] if s["status"] == "done"]
    lesions = done["lesions"]
    assert lesions["model"].startswith(NAME) and lesions["count"] == len(lesions["volumes_ml"])
    assert 0.0 <= lesions["probability_before"] <= 1.0 and 0.0 <= lesions["mc_agreement"] <= 1.0
    seg_path, sr_path = Path(lesions["seg_path"]), Path(lesions["sr_path"])
    assert dciodvfy_errors(seg_path) == [] and dciodvfy_errors(sr_path) == []
    seg = pydicom.dcmread(seg_path)
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "liver lesion"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"  # SCT Lesion
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == NAME
    assert str(seg.StudyInstanceUID) == str(pydicom.dcmread(Path(done["seg_path"])).StudyInstanceUID)
    assert seg.SeriesInstanceUID != pydicom.dcmread(Path(done["seg_path"])).SeriesInstanceUID
    # the counterfactual: the source image in HU wherever the model changed nothing (outside the liver region)
    cf_path = Path(lesions["counterfactual_path"])
    assert dciodvfy_errors(cf_path) == []
    cf = pydicom.dcmread(cf_path)
    mapping = cf.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    hu = cf.pixel_array * float(mapping.RealWorldValueSlope) + float(mapping.RealWorldValueIntercept)
    sources = [ds for ds in (pydicom.dcmread(p) for p in (tmp_path / "in").rglob("*.dcm")) if "PixelData" in ds]
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    refs = [
        f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for f in cf.PerFrameFunctionalGroupsSequence
    ]
    original = np.stack(
        [by_uid[r].pixel_array * float(by_uid[r].RescaleSlope) + float(by_uid[r].RescaleIntercept) for r in refs]
    )
    unchanged = np.abs(hu - original) <= 0.5
    organ = hd.seg.segread(Path(done["seg_path"]))
    liver = organ.get_pixels_by_source_instance(source_sop_instance_uids=refs, segment_numbers=[1])[..., 0] > 0
    region = liver_region(liver, float(by_uid[refs[0]].PixelSpacing[0]))
    assert unchanged[~region].all()  # outside the liver region: the source itself
    assert not unchanged[region].all()  # inside it: what the generator inpainted
