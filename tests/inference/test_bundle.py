"""Bring your own model: a bundled model exported as a MONAI bundle and imported back runs as the original does;
malformed bundles and graphs give one-line errors naming what is wrong."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import yaml
from typer.testing import CliRunner

from cohorts.make import CohortRequest, make_cohort
from dicom_node.selection import SeriesRule
from dicom_node.writers import OutputSettings
from fairnode.benchmark.cohort import labelled_cases, read_labelled_case
from fairnode.pipeline import Models, PipelineContext, QualitySettings, process_study
from inference.bundle import BundleError, export_bundle, read_bundle
from inference.model_card import bundled_models, load_card
from inference.model_import import AnswersNeededError, import_model
from inference.model_store import find_models, open_segmenter
from inference.segmenter import Segmenter
from inference.torch_backend import TorchSegmenter

KNEE = "xr-knee"
TOLERANCE = 1e-4
#: torch's and ONNX Runtime's float32 kernels round differently (up to 1.9e-4 measured over 48 knee images)
TORCH_TOLERANCE = 5e-4
COHORT_SEED = 4343


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("byom")


@pytest.fixture(scope="module")
def bundle(work: Path) -> Path:
    return export_bundle(bundled_models()[KNEE], work / "bundle")


@pytest.fixture(scope="module")
def imported(work: Path, bundle: Path) -> Path:
    root = work / "models"
    import_model(bundle, root, answers_path=work / "answers.yaml", name="knee-reimported")
    return root


@pytest.fixture(scope="module")
def cohort(work: Path) -> Path:
    make_cohort(CohortRequest(kind=KNEE, n=2, seed=COHORT_SEED), work / "cohort")
    return work / "cohort"


def _images(cohort: Path) -> list[tuple[np.ndarray, tuple[float, ...]]]:
    cases = [read_labelled_case(*found) for found in labelled_cases(cohort)]
    return [(case.pixels, case.spacing) for case in cases]


def test_bundle_has_the_monai_layout_and_reads_back(bundle: Path) -> None:
    for f in ("configs/metadata.json", "configs/inference.json", "models/model.pt"):
        assert (bundle / f).is_file(), f
    info = read_bundle(bundle)
    card = load_card(bundled_models()[KNEE])
    assert info.labels == tuple(lab.name for lab in card.labels)
    assert info.spacing_mm == card.input.spacing_mm and info.patch_size == card.input.patch_size
    assert info.intensity == card.input.intensity and info.modality == "DX"


def test_round_trip_gives_the_same_probabilities_and_card(imported: Path, cohort: Path) -> None:
    original = Segmenter(bundled_models()[KNEE], prefer_gpu=False)
    folder = find_models(None, imported)["knee-reimported"]
    again = open_segmenter(folder, prefer_gpu=False)
    card, ref = again.card, original.card
    assert card.source is not None and card.source.format == "monai-bundle"
    assert card.source.backend == "onnx" and card.source.export_max_abs_difference is not None
    assert card.source.export_max_abs_difference <= TOLERANCE
    assert card.quality is not None and card.quality.sampling == card.source.sampling == "mc-dropout"
    assert [(lab.name, lab.code) for lab in card.labels] == [(lab.name, lab.code) for lab in ref.labels]
    assert card.input == ref.input and card.training == ref.training
    for pixels, spacing in _images(cohort):
        diff = np.abs(original.probabilities(pixels, spacing) - again.probabilities(pixels, spacing)).max()
        assert diff <= TOLERANCE, diff


def test_torch_backend_matches_and_samples_differ(work: Path, bundle: Path, cohort: Path) -> None:
    root = work / "models-torch"
    card = import_model(bundle, root, answers_path=None, name="knee-torch", backend="torch")
    assert card.source is not None and card.source.backend == "torch" and card.files.deterministic == "model.ts"
    seg = open_segmenter(root / "knee-torch", prefer_gpu=False)
    assert isinstance(seg, TorchSegmenter)
    original = Segmenter(bundled_models()[KNEE], prefer_gpu=False)
    pixels, spacing = _images(cohort)[0]
    diff = np.abs(original.probabilities(pixels, spacing) - seg.probabilities(pixels, spacing)).max()
    assert diff <= TORCH_TOLERANCE, diff
    from inference.preprocess import to_model_grid

    x = to_model_grid(pixels, spacing, seg.card.input)
    samples = seg.samples(x, 2, "mc-dropout")
    assert np.abs(samples[0] - samples[1]).max() > 1e-3


def test_torchscript_bundle_samples_by_test_time_augmentation(work: Path) -> None:
    bundle = export_bundle(bundled_models()[KNEE], work / "bundle-ts", torchscript=True)
    card = import_model(bundle, work / "models-ts", answers_path=None, name="knee-ts")
    assert card.source is not None and card.source.sampling == "tta-flip" and card.quality is not None
    assert card.quality.sampling == "tta-flip" and "TorchScript" in card.source.sampling_reason


def test_selection_rules_route_a_study_to_the_imported_model_with_the_same_seg(imported: Path, cohort: Path) -> None:
    _, image_dir, _ = next(iter(labelled_cases(cohort)))
    files = sorted(image_dir.glob("*.dcm"))
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    segs = {}
    for model in (KNEE, "knee-reimported"):
        ctx = PipelineContext(
            rules=[SeriesRule(model=model, modalities=["DX"])],
            models=Models(None, prefer_gpu=False, imported_dir=imported),
            outputs=OutputSettings(),
            registry_session=None,
            secret=b"",
            quality=QualitySettings(enabled=False),
        )
        outcome = process_study(files, study_uid=study_uid, run=1, out_dir=imported.parent / f"out-{model}", ctx=ctx)
        (series,) = outcome.series
        assert series.status == "done" and series.model == model, series.reason
        assert series.seg_path is not None
        segs[model] = pydicom.dcmread(series.seg_path)
    a, b = segs[KNEE], segs["knee-reimported"]
    assert np.array_equal(a.pixel_array, b.pixel_array)
    assert [s.SegmentLabel for s in a.SegmentSequence] == [s.SegmentLabel for s in b.SegmentSequence]
    names = {str(s.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName) for s in b.SegmentSequence}
    assert names == {"knee-reimported"}  # the SEG names the imported model that made it


# ------------------------------------------------------------------------------------ malformed bundles
def _edit_json(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _channels(meta: dict[str, Any]) -> dict[str, Any]:
    return meta["network_data_format"]["outputs"]["pred"]  # type: ignore[no-any-return]


def _no_spacing(config: dict[str, Any]) -> None:
    config["preprocessing"]["transforms"] = [
        t for t in config["preprocessing"]["transforms"] if t["_target_"] != "Spacingd"
    ]


@pytest.mark.parametrize(
    ("file", "change", "message"),
    [
        ("configs/metadata.json", None, "has no configs/metadata.json"),
        ("configs/metadata.json", lambda m: _channels(m)["channel_def"].update({"4": "meniscus"}),
         r"label 'meniscus' \(output channel 4\) has no SNOMED CT code in .*snomed_labels.csv"),
        ("configs/metadata.json", lambda m: (_channels(m).update(num_channels=6),
                                             _channels(m)["channel_def"].update({"5": "femur"})),
         r"the network gives \(1, 5, 256, 256\); the metadata says \(1, 6, 256, 256\)"),
        ("configs/metadata.json", lambda m: m.pop("network_data_format"), "metadata.json has no network_data_format"),
        ("configs/inference.json", lambda c: c["network_def"].update(channels=[8, 16, 32, 64]),
         "models/model.pt does not fit network_def"),
        ("configs/inference.json", lambda c: c["inferer"].update(roi_size=[256, 256, 0]), "has a size <= 0"),
    ],
)  # fmt: skip
def test_malformed_bundle_gives_a_one_line_error(
    work: Path, bundle: Path, file: str, change: Callable[[dict[str, Any]], None] | None, message: str
) -> None:
    broken = work / f"broken-{abs(hash((file, message)))}"
    shutil.copytree(bundle, broken)
    if change is None:
        (broken / file).unlink()
    else:
        _edit_json(broken / file, change)
    with pytest.raises(BundleError, match=message) as caught:
        import_model(broken, work / "models-broken", answers_path=work / "broken-answers.yaml", name="broken")
    assert "\n" not in str(caught.value)
    assert not (work / "models-broken" / "broken").exists()
    assert not list((work / "models-broken").glob(".*.partial"))  # nothing half-written is left


def test_what_cannot_be_inferred_is_asked_for_in_the_named_yaml(work: Path, bundle: Path) -> None:
    broken = work / "no-spacing"
    shutil.copytree(bundle, broken)
    _edit_json(broken / "configs" / "inference.json", _no_spacing)
    answers = work / "no-spacing-answers.yaml"
    with pytest.raises(AnswersNeededError, match=f"cannot infer spacing_mm; fill them in {answers}"):
        import_model(broken, work / "models-asked", answers_path=answers, name="asked")
    asked = yaml.safe_load(answers.read_text())
    assert asked["spacing_mm"] is None and asked["task"] == KNEE and asked["modality"] == "DX"
    asked["spacing_mm"] = [1.0, 1.0]
    answers.write_text(yaml.safe_dump(asked))
    card = import_model(broken, work / "models-asked", answers_path=answers, name="asked")
    assert card.input.spacing_mm == (1.0, 1.0) and card.source is not None
    assert card.source.answers["spacing_mm"] == [1.0, 1.0]


def test_a_bundled_name_cannot_be_taken(work: Path, bundle: Path) -> None:
    with pytest.raises(BundleError, match="'xr-knee' is a bundled model's name"):
        import_model(bundle, work / "models-x", answers_path=None, reserved=frozenset(bundled_models()))


# ------------------------------------------------------------------------------------------ ONNX graphs
def test_onnx_graph_with_answers_imports(work: Path, cohort: Path) -> None:
    folder = bundled_models()[KNEE]
    ref = load_card(folder)
    answers = work / "onnx-answers.yaml"
    with pytest.raises(AnswersNeededError, match="cannot infer version, task, modality, spacing_mm, intensity, labels"):
        import_model(folder / "model_mc.onnx", work / "models-onnx", answers_path=answers, name="knee-onnx")
    answers.write_text(
        yaml.safe_dump(
            {
                "version": "1.0.0",
                "task": KNEE,
                "modality": "DX",
                "spacing_mm": list(ref.input.spacing_mm),
                "intensity": ref.input.intensity.model_dump(),
                "labels": [lab.name for lab in ref.labels],
                "output": "probabilities",
            }
        )
    )
    card = import_model(folder / "model_mc.onnx", work / "models-onnx", answers_path=answers, name="knee-onnx")
    assert card.source is not None and card.source.sampling == "mc-dropout" and card.files.mc_dropout == "model_mc.onnx"
    seg = open_segmenter(work / "models-onnx" / "knee-onnx", prefer_gpu=False)
    pixels, spacing = _images(cohort)[0]
    from inference.preprocess import to_model_grid

    x = to_model_grid(pixels, spacing, seg.card.input)
    samples = seg.samples(x, 2, "mc-dropout")
    assert np.abs(samples[0] - samples[1]).max() > 1e-3  # dropout was switched on, not optimised away


def test_cli_import_reports_an_unmapped_label_in_one_line(tmp_path: Path, bundle: Path) -> None:
    from fairnode.cli import app

    broken = tmp_path / "bundle"
    shutil.copytree(bundle, broken)
    _edit_json(broken / "configs" / "metadata.json", lambda m: _channels(m)["channel_def"].update({"2": "shin"}))
    env = {"FAIRNODE_DATA_DIR": str(tmp_path / "data"), "FAIRNODE_PSEUDONYM_SECRET": "k" * 40, "COLUMNS": "200"}
    result = CliRunner().invoke(app, ["model", "import", str(broken)], env=env)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "label 'shin' (output channel 2) has no SNOMED CT code" in lines[0], result.output


def test_cli_writes_a_bundled_model_as_a_bundle(tmp_path: Path) -> None:
    from fairnode.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["model", "bundle", KNEE, "--out", str(tmp_path / "b")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert read_bundle(tmp_path / "b").labels == ("femur", "tibia", "fibula", "patella")
    again = runner.invoke(app, ["model", "bundle", KNEE, "--out", str(tmp_path / "b")], env={"COLUMNS": "200"})
    assert again.exit_code == 2 and "exists; give a new folder" in again.output


def test_quality_calibrate_finds_and_calibrates_an_imported_model(
    imported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fairnode.cli import app

    data = tmp_path / "data"
    shutil.copytree(imported / "knee-reimported", data / "models" / "knee-reimported")
    make_cohort(CohortRequest(kind=KNEE, n=7, seed=COHORT_SEED + 1), tmp_path / "cohort")
    monkeypatch.setenv("FAIRNODE_DATA_DIR", str(data))
    args = ["quality", "calibrate", "--model", "knee-reimported", "--cohort", str(tmp_path / "cohort")]
    args += ["--n-bank", "2", "--samples", "2", "--coverage", "0.8", "--work", str(tmp_path / "work")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    card = load_card(data / "models" / "knee-reimported")
    assert card.source is not None and card.quality is not None
    assert card.quality.sampling == card.source.sampling == "mc-dropout"
    assert card.quality.rca is not None and card.quality.gate is not None
    assert (data / "models" / "knee-reimported" / "rca-bank.npz").is_file()
    unknown = CliRunner().invoke(app, ["quality", "calibrate", "--model", "knee-nowhere", "--cohort", "x"])
    assert unknown.exit_code != 0 and "knee-reimported" in unknown.output  # the installed models are named
