"""``fairnode run DIR --out OUT``: the node's pipeline on a folder, no network."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cohorts import ct_abdomen, xr_knee
from cohorts.dicom_writer import write_study
from cohorts.subjects import draw_subject
from tests.conftest import dciodvfy_errors


def test_offline_run_writes_seg_sr_and_summary(tmp_path: Path) -> None:
    ct = draw_subject("ct-abdomen", 0, 71)
    write_study(ct_abdomen.generate(ct, matrix=128, slice_thickness=5.0), ct, tmp_path / "in")
    knee = draw_subject("xr-knee", 0, 71)
    write_study(xr_knee.generate(knee), knee, tmp_path / "in")
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    res = subprocess.run(
        [sys.executable, "-m", "fairnode", "run", str(tmp_path / "in"), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    summaries = sorted((tmp_path / "out").glob("*/summary.json"))
    assert len(summaries) == 2
    done = {}
    for s in summaries:
        for series in json.loads(s.read_text())["series"]:
            if series["status"] == "done":
                done[series["model"]] = series
            else:  # the ground-truth SEGs in the input folder are skipped with a reason
                assert series["status"] == "skipped" and "modality SEG" in series["reason"]
    assert set(done) == {"ct-abdomen", "xr-knee"}
    assert done["ct-abdomen"]["measurements"]["liver"] > 500  # ml
    assert done["xr-knee"]["measurements"]["femur"] > 1000  # mm2
    for series in done.values():
        for key in ("seg_path", "sr_path"):
            assert dciodvfy_errors(Path(series[key])) == []


def test_offline_run_on_a_folder_without_dicom(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("x")
    res = subprocess.run(
        [sys.executable, "-m", "fairnode", "run", str(tmp_path / "in"), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 2 and "no DICOM studies found" in res.stderr and "Traceback" not in res.stderr
