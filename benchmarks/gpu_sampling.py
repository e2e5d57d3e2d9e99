"""How long the CT model's segmentation and its MC-dropout quality samples take on CPU and on a GPU.

    PYTHONPATH=. .venv/bin/python benchmarks/gpu_sampling.py [--repeat 5] [--warmup 1] [--samples 6]
        [--input volume.npy] [--save-input volume.npy] [--json figures.json]

What is measured, on one model-grid input ``(1, 75, 107, 107)`` (a ct-abdomen study at 3 mm, 8 windows of
48x96x96 at overlap 0.25), each figure the median of ``--repeat`` runs after ``--warmup`` runs:

- one deterministic pass (the segmentation) and ``--samples`` MC-dropout passes (the quality estimate), each a
  MONAI ``sliding_window_inference`` with Gaussian blending, probabilities back in host memory;
- (a) ONNX Runtime, CPUExecutionProvider, default threads: exactly what the node runs today
  (:class:`inference.segmenter.Segmenter`, one window per ``session.run``, one sliding-window call per sample);
- (b) torch CUDA fp32 (TF32 off), the same way: one window per forward, one sliding-window call per sample;
- (c) torch CUDA fp32 batched: all windows in one forward; the MC samples as one sliding-window call on the input
  repeated ``--samples`` times, all windows of all samples in one forward. MC samples differ only by their
  dropout masks, which torch draws independently per batch element, so this is the same distribution (the ONNX
  path too draws a new mask for every window); the run checks that the samples do differ;
- (d) as (c) with TF32 convolutions and ``cudnn.benchmark``: the fastest a GPU node could reasonably be set up.

Why torch CUDA stands in for onnxruntime-gpu: the onnxruntime-gpu wheel (about 256 MB) is too big to take to the
GPU machine this was measured on, which only has the CPU build of onnxruntime. The ONNX graphs are exports of the
very network in ``weights.pt`` (``inference/export.py``: the UNet followed by a softmax; the MC graph with every
dropout always applied), so torch CUDA runs the same function with cuDNN kernels, which is also what
onnxruntime-gpu's CUDA provider calls for 3D convolutions. The figures tell what a GPU buys for this model, not
the exact onnxruntime-gpu numbers (whose per-call overhead and memory copies differ somewhat). The agreement
check (max abs difference of softmax probabilities, ORT CPU vs torch deterministic) shows it is the same network.

Input: ``--input`` (a saved ``(1, 75, 107, 107)`` float32 array), else the project's phantom cohort (subject 27 of
seed 600, a 512-matrix 5 mm CT resampled with ``to_model_grid``), else, where ``cohorts`` cannot be imported
(pydicom missing), a deterministic smooth random volume of that shape. Without CUDA, the torch CUDA rows show as
not available and the agreement is checked against torch on the CPU instead.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import monai
import numpy as np
import onnxruntime as ort
import torch
from monai.inferers import sliding_window_inference
from rich.console import Console
from rich.table import Table
from scipy import ndimage
from torch import nn

from inference.model_card import MODELS_DIR, ModelCard, load_card
from inference.network import build_unet, with_dropout_always_on
from inference.segmenter import Segmenter

#: wide enough for the table when the output goes to a file or a pipe (rich would otherwise use 80 columns)
console = Console(width=None if sys.stdout.isatty() else 150)

MODEL = "ct-abdomen"
OVERLAP = 0.25
#: the phantom whose study at 3 mm is (75, 107, 107) voxels: 45 slices of 5 mm, 320 mm field of view
SUBJECT_SEED, SUBJECT_INDEX, SOURCE_MATRIX = 600, 27, 512
SHAPE = (1, 75, 107, 107)


@dataclass
class Row:
    """One way of running the model: its timings (s) and what it produced."""

    key: str
    label: str
    available: bool
    note: str = ""
    det_s: float | None = None
    mc_s: float | None = None
    det_runs_s: list[float] = field(default_factory=list)
    mc_runs_s: list[float] = field(default_factory=list)
    det_speedup: float | None = None
    mc_speedup: float | None = None
    peak_gpu_mib: float | None = None
    samples_distinct: bool | None = None
    sample_min_pair_max_abs_diff: float | None = None
    mc_mean_voxel_std: float | None = None
    det_max_abs_diff_vs_ort: float | None = None


def model_input(path: Path | None, card: ModelCard) -> tuple[np.ndarray, str]:
    """The model-grid input ``(1, *grid)`` float32 and a description of where it came from."""
    if path is not None:
        return np.load(path).astype(np.float32), f"loaded from {path}"
    try:
        from cohorts import ct_abdomen
        from cohorts.subjects import draw_subject
        from inference.preprocess import to_model_grid
    except ImportError as exc:
        rng = np.random.default_rng(0)
        vol = ndimage.gaussian_filter(rng.standard_normal(SHAPE[1:]), sigma=4.0)
        vol = (vol - vol.min()) / (vol.max() - vol.min())
        return vol[None].astype(np.float32), f"smooth random volume (seed 0, sigma 4 voxels; cohorts: {exc})"
    subject = draw_subject(MODEL, SUBJECT_INDEX, SUBJECT_SEED)
    image = ct_abdomen.generate(subject, matrix=SOURCE_MATRIX)
    x = to_model_grid(image.pixels, image.spacing, card.input)
    spacing = ", ".join(f"{s:.2f}" for s in image.spacing)
    desc = f"phantom ct-abdomen subject {SUBJECT_INDEX} of seed {SUBJECT_SEED}, {image.pixels.shape} at ({spacing}) mm"
    return x, desc


def n_windows(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> int:
    """Windows ``sliding_window_inference`` cuts an image of ``shape`` into (MONAI's scan rule)."""
    total = 1
    for size, r in zip(shape, roi, strict=True):
        if r >= size:
            continue
        interval = max(1, int(r * (1 - overlap)))
        total *= math.ceil((size - r) / interval) + 1
    return total


def timed(fn: Callable[[], Any], repeat: int, warmup: int) -> tuple[list[float], Any]:
    """Wall-clock seconds of ``repeat`` calls of ``fn`` after ``warmup`` calls, and the last result."""
    out = None
    for _ in range(warmup):
        out = fn()
    runs = []
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        runs.append(time.perf_counter() - t0)
    return runs, out


def load_networks(card: ModelCard, model_dir: Path) -> tuple[nn.Module, nn.Module]:
    """The trained UNet (eval mode, dropout off) and its always-dropout twin, each followed by a softmax."""
    net = build_unet(card.network, card.input.spatial_dims, card.n_classes)
    state = torch.load(model_dir / card.files.weights, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    net.eval()
    mc = with_dropout_always_on(copy.deepcopy(net)).eval()
    return nn.Sequential(net, nn.Softmax(dim=1)), nn.Sequential(mc, nn.Softmax(dim=1))


def torch_window(model: nn.Module, x: torch.Tensor, roi: tuple[int, ...], sw_batch_size: int) -> torch.Tensor:
    """Gaussian-blended sliding-window probabilities ``(batch, classes, *grid)`` of ``x``, copied to the host."""
    with torch.inference_mode():
        out = sliding_window_inference(
            x, roi_size=roi, sw_batch_size=sw_batch_size, predictor=model, overlap=OVERLAP, mode="gaussian"
        )
    assert isinstance(out, torch.Tensor)
    return out.cpu()


def mc_stats(samples: np.ndarray) -> tuple[bool, float, float]:
    """(all samples pairwise different, smallest pairwise max-abs difference, mean per-voxel std)."""
    n = samples.shape[0]
    diffs = [float(np.abs(samples[i] - samples[j]).max()) for i in range(n) for j in range(i + 1, n)]
    return min(diffs) > 0.0, min(diffs), float(samples.std(axis=0).mean())


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def measure_torch(
    row: Row,
    nets: tuple[nn.Module, nn.Module],
    x: np.ndarray,
    roi: tuple[int, ...],
    n: int,
    device: torch.device,
    batched: bool,
    repeat: int,
    warmup: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Fill ``row`` with the timings of torch on ``device``; returns (deterministic probs, MC samples)."""
    det_net, mc_net = (m.to(device) for m in nets)
    xt = torch.from_numpy(x[None]).to(device)
    windows = n_windows(x.shape[1:], roi, OVERLAP)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if batched:
        xn = xt.expand(n, *xt.shape[1:]).contiguous()

        def det() -> torch.Tensor:
            return torch_window(det_net, xt, roi, windows)

        def mc() -> torch.Tensor:
            return torch_window(mc_net, xn, roi, windows * n)
    else:

        def det() -> torch.Tensor:
            return torch_window(det_net, xt, roi, 1)

        def mc() -> torch.Tensor:
            return torch.cat([torch_window(mc_net, xt, roi, 1) for _ in range(n)])

    row.det_runs_s, det_out = timed(det, repeat, warmup)
    row.mc_runs_s, mc_out = timed(mc, repeat, warmup)
    if device.type == "cuda":
        row.peak_gpu_mib = torch.cuda.max_memory_allocated() / 2**20
    return det_out.numpy()[0], mc_out.numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per figure (the median is reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs before them")
    ap.add_argument("--samples", type=int, default=6, help="MC-dropout samples")
    ap.add_argument("--input", type=Path, default=None, help="a saved (1, *grid) float32 model-grid input (.npy)")
    ap.add_argument("--save-input", type=Path, default=None, help="save the model-grid input used (.npy)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()

    torch.manual_seed(0)
    model_dir = MODELS_DIR / MODEL
    card = load_card(model_dir)
    roi = tuple(card.input.patch_size)
    x, source = model_input(args.input, card)
    if args.save_input is not None:
        np.save(args.save_input, x)
    n = args.samples
    windows = n_windows(x.shape[1:], roi, OVERLAP)
    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if cuda else None
    console.print(f"input {x.shape} {x.dtype} in [{x.min():.3f}, {x.max():.3f}]: {source}")
    console.print(f"{windows} windows of {roi}, overlap {OVERLAP}; {n} MC samples; median of {args.repeat}")
    console.print(
        f"GPU: {gpu or 'none (torch CUDA rows not available)'}; ORT providers {ort.get_available_providers()}"
    )

    # (a) ONNX Runtime on the CPU, as the node runs it
    seg = Segmenter(model_dir, prefer_gpu=False, overlap=OVERLAP)
    ort_row = Row("ort_cpu", "ORT CPUExecutionProvider", True, f"{os.cpu_count()} cores, default threads")
    ort_row.det_runs_s, ort_det = timed(lambda: seg.model_grid_probabilities(x), args.repeat, args.warmup)
    ort_row.mc_runs_s, ort_mc = timed(lambda: seg.samples(x, n), args.repeat, args.warmup)
    rows = [ort_row]
    outputs: dict[str, tuple[np.ndarray, np.ndarray]] = {"ort_cpu": (ort_det, ort_mc)}

    nets = load_networks(card, model_dir)
    specs = [
        ("torch_cuda", "torch CUDA fp32, 1 window/forward", False, False, "sw_batch_size 1, samples in turn"),
        (
            "torch_cuda_batched",
            "torch CUDA fp32, batched",
            True,
            False,
            f"det: {windows} windows/forward; MC: {windows * n} windows/forward",
        ),
        ("torch_cuda_batched_tf32", "torch CUDA TF32, batched", True, True, "as batched, TF32 + cudnn.benchmark"),
    ]
    for key, label, batched, fast, note in specs:
        row = Row(key, label, cuda, note if cuda else "not available: no CUDA device")
        rows.append(row)
        if not cuda:
            continue
        set_tf32(fast)
        torch.backends.cudnn.benchmark = fast
        outputs[key] = measure_torch(row, nets, x, roi, n, torch.device("cuda"), batched, args.repeat, args.warmup)
    set_tf32(False)
    torch.backends.cudnn.benchmark = False

    cpu_check: dict[str, float] = {}
    if not cuda:  # sanity check that torch computes the same network as the ONNX graph, on the CPU: one pass
        with torch.inference_mode():
            ref = torch_window(nets[0].cpu(), torch.from_numpy(x[None]), roi, 1).numpy()[0]
        cpu_check["torch_cpu_det_max_abs_diff_vs_ort"] = float(np.abs(ref - ort_det).max())

    for row in rows:
        if not row.det_runs_s:
            continue
        row.det_s = statistics.median(row.det_runs_s)
        row.mc_s = statistics.median(row.mc_runs_s)
        row.det_speedup = ort_row.det_s / row.det_s if ort_row.det_s else None
        row.mc_speedup = ort_row.mc_s / row.mc_s if ort_row.mc_s else None
        det_out, mc_out = outputs[row.key]
        row.samples_distinct, row.sample_min_pair_max_abs_diff, row.mc_mean_voxel_std = mc_stats(mc_out)
        row.det_max_abs_diff_vs_ort = float(np.abs(det_out - ort_det).max())

    table = Table(title=f"{MODEL}: {x.shape} input, {windows} windows, {n} MC samples, median of {args.repeat}")
    table.add_column("backend")
    for col in ("det s", "det speed-up", f"MC x{n} s", "MC speed-up", "peak GPU MiB", "samples differ", "voxel std"):
        table.add_column(col, justify="right")
    table.add_column("det max|Δp| vs ORT", justify="right")
    for row in rows:
        if row.det_s is None:
            table.add_row(row.label, *["n/a"] * 8)
            continue
        table.add_row(
            row.label,
            f"{row.det_s:.3f}",
            f"{row.det_speedup:.1f}x",
            f"{row.mc_s:.3f}",
            f"{row.mc_speedup:.1f}x",
            f"{row.peak_gpu_mib:.0f}" if row.peak_gpu_mib is not None else "-",
            str(row.samples_distinct),
            f"{row.mc_mean_voxel_std:.2e}",
            "-" if row.key == "ort_cpu" else f"{row.det_max_abs_diff_vs_ort:.1e}",
        )
    console.print(table)
    for row in rows:
        console.print(f"  {row.label}: {row.note}")
    console.print("  speed-up: ORT CPU time / this row's time, same run; voxel std: mean over voxels and classes of")
    console.print("  the per-voxel standard deviation of the MC samples' probabilities")
    console.print(f"device: {gpu or 'no CUDA device'}; host {platform.node()}, {os.cpu_count()} CPUs")
    for k, v in cpu_check.items():
        console.print(f"{k}: {v:.2e}")

    if args.json is not None:
        figures = {
            "model": MODEL,
            "input_shape": list(x.shape),
            "input_source": source,
            "patch_size": list(roi),
            "overlap": OVERLAP,
            "windows": windows,
            "mc_samples": n,
            "repeat": args.repeat,
            "warmup": args.warmup,
            "gpu": gpu,
            "cpu_count": os.cpu_count(),
            "ort_providers_available": ort.get_available_providers(),
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version() if cuda else None,
                "onnxruntime": ort.__version__,
                "monai": monai.__version__,
                "numpy": np.__version__,
            },
            "rows": [asdict(r) for r in rows],
            **cpu_check,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")
        console.print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
