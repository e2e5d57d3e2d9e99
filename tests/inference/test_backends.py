"""The backend choice (inference.backends.choose_backend) under each availability of ONNX Runtime CUDA and
torch CUDA (the availability probes are patched: this tests the choice, not the engines), and its setting."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from inference import backends
from inference.backends import BackendError, InferenceSettings, choose_backend, max_windows_per_call
from inference.model_card import MODELS_DIR, load_card
from inference.segmenter import Segmenter, window_count


def _machine(monkeypatch: pytest.MonkeyPatch, *, ort_cuda: bool, torch_cuda: bool) -> None:
    monkeypatch.setattr(backends, "ort_cuda_available", lambda: ort_cuda)
    monkeypatch.setattr(backends, "torch_cuda_available", lambda: torch_cuda)


@pytest.mark.parametrize(
    ("ort_cuda", "torch_cuda", "weights", "prefer_gpu", "expected"),
    [
        (True, True, True, True, "onnx-cuda"),
        (True, False, True, True, "onnx-cuda"),
        (False, True, True, True, "torch-cuda"),
        (False, True, False, True, "onnx-cpu"),  # no weights: torch cannot run it
        (False, False, True, True, "onnx-cpu"),
        (True, True, True, False, "onnx-cpu"),  # prefer_gpu off keeps to the CPU
    ],
)
def test_auto_takes_the_best_engine_this_machine_has(
    monkeypatch: pytest.MonkeyPatch, ort_cuda: bool, torch_cuda: bool, weights: bool, prefer_gpu: bool, expected: str
) -> None:
    _machine(monkeypatch, ort_cuda=ort_cuda, torch_cuda=torch_cuda)
    assert choose_backend("auto", prefer_gpu=prefer_gpu, weights=weights) == expected


@pytest.mark.parametrize("forced", ["onnx-cpu", "torch-cpu"])
def test_a_cpu_backend_can_always_be_forced(monkeypatch: pytest.MonkeyPatch, forced: str) -> None:
    _machine(monkeypatch, ort_cuda=True, torch_cuda=True)
    assert choose_backend(forced) == forced  # type: ignore[arg-type]


def test_a_forced_gpu_backend_runs_only_where_it_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, ort_cuda=True, torch_cuda=True)
    assert choose_backend("onnx-cuda") == "onnx-cuda"
    assert choose_backend("torch-cuda") == "torch-cuda"
    _machine(monkeypatch, ort_cuda=False, torch_cuda=False)
    with pytest.raises(BackendError, match=r"no CUDAExecutionProvider.*accepted here: auto, onnx-cpu, torch-cpu"):
        choose_backend("onnx-cuda")
    with pytest.raises(BackendError, match="torch sees no CUDA GPU"):
        choose_backend("torch-cuda")
    with pytest.raises(BackendError, match="ships no torch weights"):
        choose_backend("torch-cpu", weights=False)
    with pytest.raises(BackendError, match=r"unknown inference backend 'gpu'.*accepted: auto, onnx-cpu"):
        choose_backend("gpu")  # type: ignore[arg-type]


def test_segmenter_reports_the_backend_it_runs_on(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, ort_cuda=False, torch_cuda=False)
    onnx_cpu = Segmenter(MODELS_DIR / "xr-knee")
    assert onnx_cpu.backend == "onnx-cpu" and onnx_cpu.providers_in_use == ["CPUExecutionProvider"]
    forced = Segmenter(MODELS_DIR / "xr-knee", settings=InferenceSettings(backend="torch-cpu"))
    assert forced.backend == "torch-cpu" and forced.providers_in_use == ["torch-cpu"]
    with pytest.raises(BackendError, match="onnx-cuda"):
        Segmenter(MODELS_DIR / "xr-knee", backend="onnx-cuda")


def test_the_setting_accepts_only_known_backends() -> None:
    from fairnode.settings import load_settings

    assert load_settings(None, inference={"backend": "torch-cpu"}).inference.backend == "torch-cpu"
    assert load_settings(None).inference.backend == "auto"
    with pytest.raises(ValidationError, match="auto"):
        InferenceSettings(backend="cuda")


def test_windows_per_call_and_window_count() -> None:
    # CPU: a few windows per call (a big batch is slower there); GPU: all windows x samples of a CT study
    assert max_windows_per_call((256, 256)) == 32
    assert max_windows_per_call((48, 96, 96), backend="torch-cpu") == 4
    assert max_windows_per_call((48, 96, 96), backend="onnx-cuda") == 37 >= 4 * 8
    assert max_windows_per_call((48, 96, 96), InferenceSettings(max_batch_voxels=1000), "torch-cuda") == 1
    assert window_count((386, 306), (256, 256), 0.25) == 4
    assert window_count((74, 124, 124), (48, 96, 96), 0.25) == 8
    assert window_count((40, 90, 90), (48, 96, 96), 0.25) == 1


@pytest.mark.parametrize(("spinning", "entry"), [(None, "0"), (False, "0"), (True, "1")])
def test_onnx_threads_sleep_between_operators_unless_spinning_is_asked_for(spinning: bool | None, entry: str) -> None:
    settings = InferenceSettings() if spinning is None else InferenceSettings(ort_spinning=spinning)
    runner = backends.open_runner(
        MODELS_DIR / "xr-knee", load_card(MODELS_DIR / "xr-knee"), "onnx-cpu", settings=settings
    )
    assert isinstance(runner, backends.OnnxRunner)
    options = runner._sessions[False].get_session_options()
    assert options.get_session_config_entry(backends.SPINNING_ENTRY) == entry
