"""Cohort writing end to end: the CLI, the manifest, determinism and dciodvfy on every file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from cohorts.make import CohortRequest, make_cohort, read_manifest
from tests.conftest import dciodvfy_errors

FAIRNODE = [sys.executable, "-m", "fairnode"]


def _all_dicom(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.dcm"))


def test_cli_ct_cohort_is_valid_dicom(tmp_path: Path) -> None:
    out = tmp_path / "c1"
    res = subprocess.run(
        [*FAIRNODE, "cohort", "make", "--kind", "ct-abdomen", "--n", "1", "--seed", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    rows = read_manifest(out)
    assert len(rows) == 1
    row = rows[0]
    files = _all_dicom(out)
    assert len(files) == int(row["n_images"]) + 1
    for f in files:
        assert dciodvfy_errors(f) == [], f
    ds = pydicom.dcmread(out / row["seg_path"])
    assert ds.Modality == "SEG"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == row["series_uid"]
    img = pydicom.dcmread(next((out / row["image_dir"]).glob("*.dcm")))
    assert img.PatientSex == row["sex"] and img.EthnicGroup == row["ethnic_group"]
    assert float(row["liver_ml"]) > 500


@pytest.mark.parametrize("kind", ["xr-knee", "mr-brain"])
def test_cohort_kinds_valid_and_deterministic(tmp_path: Path, kind: str) -> None:
    a = make_cohort(CohortRequest(kind=kind, n=1, seed=4), tmp_path / "a")
    b = make_cohort(CohortRequest(kind=kind, n=1, seed=4), tmp_path / "b")
    assert a.read_text().replace("/b/", "/a/") == b.read_text().replace("/b/", "/a/")
    files_a, files_b = _all_dicom(a.parent), _all_dicom(b.parent)
    assert [f.relative_to(a.parent) for f in files_a] == [f.relative_to(b.parent) for f in files_b]
    for fa, fb in zip(files_a, files_b, strict=True):
        assert fa.read_bytes() == fb.read_bytes(), fa
    for f in [*files_a[:: max(1, len(files_a) // 8)], files_a[-1]]:
        assert dciodvfy_errors(f) == [], f


def test_manifest_has_demographics_and_no_cross_talk(tmp_path: Path) -> None:
    make_cohort(CohortRequest(kind="xr-knee", n=3, seed=2), tmp_path / "k", workers=2)
    rows = read_manifest(tmp_path / "k")
    assert [int(r["index"]) for r in rows] == [0, 1, 2]
    for r in rows:
        assert r["sex"] in {"F", "M"} and r["age_band"] and r["bmi_band"] and r["ethnic_group"]
        assert float(r["femur_mm2"]) > 0
    assert len({r["study_uid"] for r in rows}) == 3
    # the same subject with a larger cohort is the same subject
    make_cohort(CohortRequest(kind="xr-knee", n=1, seed=2), tmp_path / "k1")
    assert read_manifest(tmp_path / "k1")[0]["study_uid"] == rows[0]["study_uid"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kind", "pet-heart", "--n", "2"], "unknown cohort kind 'pet-heart'"),
        (["--kind", "ct-abdomen", "--n", "-3"], "n must be a positive number"),
        (
            ["--kind", "ct-abdomen", "--n", "2", "--shift", "/nonexistent/shift.yaml"],
            "cannot read shift file",
        ),
    ],
)
def test_cli_bad_input_one_line_no_traceback(tmp_path: Path, args: list[str], message: str) -> None:
    res = subprocess.run(
        [*FAIRNODE, "cohort", "make", *args, "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 2
    assert message in res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "x").exists()


def test_cli_unreadable_shift_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    res = subprocess.run(
        [
            *FAIRNODE,
            "cohort",
            "make",
            "--kind",
            "xr-knee",
            "--n",
            "1",
            "--shift",
            str(bad),
            "--out",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 2 and "bad.yaml" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize(("kind", "seed"), [("ct-abdomen", 53), ("xr-knee", 14)])
def test_cli_stress_cohort_is_valid_dicom(tmp_path: Path, kind: str, seed: int) -> None:
    # seeds chosen so that both subjects are shifted: a short scan range and a truncated field of view (CT,
    # 3 mm slices to keep it quick), lytic lesions and tight collimation (DX)
    out = tmp_path / "stress"
    args = ["--kind", kind, "--n", "2", "--seed", str(seed), "--shift", f"stress-{kind}", "--out", str(out)]
    res = subprocess.run(
        [*FAIRNODE, "cohort", "make", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    rows = read_manifest(out)
    assert [r["group"] for r in rows] and all(r["group"] != "everyone" for r in rows)
    for row in rows:
        images = sorted((out / row["image_dir"]).glob("*.dcm"))
        assert len(images) == int(row["n_images"])
        for f in [*images[:: max(1, len(images) // 4)], images[-1], out / row["seg_path"]]:
            assert dciodvfy_errors(f) == [], f
        seg = pydicom.dcmread(out / row["seg_path"])
        assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == row["series_uid"]
