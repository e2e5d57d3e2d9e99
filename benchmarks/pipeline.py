"""Pipeline latency: from the last instance of a 128-slice ct-abdomen study received by fairnode to all its
results (BINARY SEG, PROBABILITY SEG, entropy map, SR) stored at the PACS (a real Orthanc), per stage, and
when the SEG and the SR, which the node sends first, were both stored.

    PYTHONPATH=. .venv/bin/python benchmarks/pipeline.py [--slices 128] [--idle 2]
    PYTHONPATH=. .venv/bin/python benchmarks/pipeline.py --gpu [--slices 128 --slices 300] [--json out.json]
    PYTHONPATH=. .venv/bin/python benchmarks/pipeline.py --profile work/pipeline.prof  # cProfile of the series

Prints the stages (idle timer, read, volume, inference, sampling, quality, outputs, delivery) and the
pipeline overhead beyond model inference and the idle timer, as a share of the total.

``--gpu`` runs the whole pipeline twice per study size (default 128 and 300 slices), in the same run: once on
the CPU (ONNX Runtime CPU) and once on the GPU (the backend ``inference.backends`` chooses: ONNX Runtime CUDA,
else torch CUDA with the shipped weights), and prints the stages side by side, with which of them still run on
the CPU. Without CUDA it says so and runs the CPU column only.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from highdicom._standard_utils import get_module_attribute_map
from rich.console import Console
from rich.table import Table

import fairnode.pipeline
from cohorts import ct_abdomen
from cohorts.dicom_writer import WrittenStudy, write_study
from cohorts.subjects import draw_subject
from fairnode.node import build_node
from fairnode.pipeline import Models
from fairnode.settings import load_settings
from inference.backends import ort_cuda_available, torch_cuda_available
from inference.segmenter import Segmenter
from tests.peers import free_port, run_orthanc, wait_for

#: wide enough for the table when the output goes to a file or a pipe
console = Console(width=None if sys.stdout.isatty() else 160)


MODEL = "ct-abdomen"
#: what the node sends the PACS for a study with quality on, one series each: the total ends when all are stored
RESULTS = ("BINARY SEG", "PROBABILITY SEG", "entropy map", "SR")
NETWORK = "of which network windows"
ON_CPU = "on the CPU (total - idle - network)"
PRIMARY = "SEG and SR at the PACS (sent first)"
#: rows derived from the stages (shown after the total, not part of it)
DERIVED = (NETWORK, ON_CPU, PRIMARY)
#: the stages whose work is the network's windows (on the GPU when the GPU column runs); the rest stays on the CPU
GPU_STAGES = {
    "inference": "network windows on the GPU; resampling to/from the model grid on the CPU",
    "sampling": "all windows x samples in one batched call on the GPU",
}


def make_study(slices: int, folder: Path) -> WrittenStudy:
    """A ct-abdomen study of about ``slices`` 512x512 slices written as DICOM under ``folder``."""
    subject = draw_subject("ct-abdomen", 5, 600)
    # choose the slice thickness that gives the wanted slice count over this subject's scan range
    probe = ct_abdomen.generate(subject, matrix=64, slice_thickness=2.0)
    extent = (probe.pixels.shape[0] - 1) * 2.0
    thickness = extent / (slices - 1)
    image = ct_abdomen.generate(subject, matrix=512, slice_thickness=thickness)
    return write_study(image, subject, folder)


@contextmanager
def network_timer() -> Iterator[list[float]]:
    """Seconds spent in the network's windows (every ``Segmenter._predict_windows`` call; results come back to
    host memory, so a GPU call is finished when it returns), summed in the yielded one-item list."""
    spent = [0.0]
    original = Segmenter._predict_windows

    def timed(self: Segmenter, patches: torch.Tensor, mc_dropout: bool) -> torch.Tensor:
        t = time.perf_counter()
        try:
            return original(self, patches, mc_dropout)
        finally:
            spent[0] += time.perf_counter() - t

    Segmenter._predict_windows = timed  # type: ignore[method-assign]
    try:
        yield spent
    finally:
        Segmenter._predict_windows = original  # type: ignore[method-assign]


@contextmanager
def series_profile(path: Path | None) -> Iterator[None]:
    """With ``path``, cProfile every ``fairnode.pipeline._segment_series`` call (in the node's worker thread,
    which a profiler started here would not see) and dump the statistics to ``path``."""
    if path is None:
        yield
        return
    original = fairnode.pipeline._segment_series
    profile = cProfile.Profile()

    def profiled(*args: Any, **kwargs: Any) -> Any:
        return profile.runcall(original, *args, **kwargs)

    fairnode.pipeline._segment_series = profiled
    try:
        yield
    finally:
        fairnode.pipeline._segment_series = original
        profile.dump_stats(path)


def warm_up(models: Models) -> None:
    """Open the CT model and its quality side and run one window deterministic and with dropout, so that
    opening sessions, CUDA context and kernel selection fall before the timed study (a node does this once)."""
    seg = models.get(MODEL)
    models.quality(MODEL)
    x = np.zeros((1, *seg.card.input.patch_size), dtype=np.float32)
    seg.model_grid_probabilities(x)
    seg.samples(x, 2)
    # highdicom reads its tables of the standard's modules (a large JSON file) once per process, on the first
    # object it builds: a node has done so after its first study
    get_module_attribute_map()


def run_pipeline(
    written: WrittenStudy, tmp: Path, idle: float, *, gpu: bool
) -> tuple[dict[str, float], float, list[str]]:
    """One node (GPU allowed or not) takes the study; the stages (s), the total and the providers in use.

    Besides the node's stages, ``network windows`` is the part of inference and sampling spent in the network
    (on the GPU in the GPU column) and ``on the CPU`` the rest of the total beyond the idle timer.
    """
    with network_timer() as network:
        stages, total, providers = _run_pipeline(written, tmp, idle, gpu=gpu)
    stages[NETWORK] = network[0]
    stages[ON_CPU] = total - stages["idle timer"] - network[0]
    return stages, total, providers


def _run_pipeline(
    written: WrittenStudy, tmp: Path, idle: float, *, gpu: bool
) -> tuple[dict[str, float], float, list[str]]:
    image_paths, study_uid = written.image_paths, written.study_uid
    node_port = free_port()
    tag = "gpu" if gpu else "cpu"
    with run_orthanc(tmp / f"orthanc-{tag}", {"fairnode": ["FAIRNODE", "127.0.0.1", node_port]}) as pacs:
        settings = load_settings(
            None,
            data_dir=tmp / f"node-{tag}",
            bind="127.0.0.1",
            port=node_port,
            idle_seconds=idle,
            min_free_disk_mb=100,
            log_level="WARNING",
            pseudonym_secret="b" * 40,
            prefer_gpu=gpu,
            destinations=[{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}],
        )
        node = build_node(settings)
        node.start()
        try:
            warm_up(node.runner.ctx.models)  # type: ignore[attr-defined]
            subprocess.run(
                [
                    "/usr/bin/storescu",
                    "-aec",
                    "FAIRNODE",
                    "-aet",
                    "BENCH",
                    "127.0.0.1",
                    str(node_port),
                    *map(str, image_paths),
                ],
                env={**os.environ, "TCP_NODELAY": "1"},
                check=True,
                capture_output=True,
            )
            t_last = time.time()
            with pacs.client() as c:
                # the images went to fairnode only: the PACS receives just the results, each in its own series

                primary: list[float] = []  # when the SEG and the SR (sent first) were both stored

                def results_stored() -> bool:
                    found = c.post("/tools/lookup", content=study_uid).json()
                    if not found:
                        return False
                    series = c.get(f"/studies/{found[0]['ID']}/series").json()
                    modalities = {s["MainDicomTags"].get("Modality") for s in series}
                    if not primary and {"SEG", "SR"} <= modalities:
                        primary.append(time.time())
                    return len(series) >= len(RESULTS)

                wait_for(results_stored, 900, f"{', '.join(RESULTS)} at the PACS", interval=0.05)
            t_done = time.time()
            outcome = node.runner.last  # type: ignore[attr-defined]  # the in-process runner
            st = node.spool.study(study_uid)
        finally:
            node.stop()
    assert outcome is not None and st is not None
    series = next(s for s in outcome.series if s.status == "done")
    total = t_done - t_last
    idle_wait = max(0.0, st.last_received + idle - t_last)
    stages = {"idle timer": idle_wait, **dict(series.timings)}
    stages["delivery + queueing"] = total - idle_wait - sum(series.timings.values())
    stages[PRIMARY] = primary[0] - t_last
    return stages, total, list(series.providers)


def _table(title: str, columns: dict[str, tuple[dict[str, float], float]]) -> Table:
    table = Table(title=title)
    table.add_column("stage", no_wrap=True)
    for name in columns:
        table.add_column(f"{name} s", justify="right", min_width=7)
        table.add_column(f"{name} share", justify="right", min_width=5)
    if len(columns) > 1:
        table.add_column("runs on", overflow="fold")
    keys = [k for k in dict.fromkeys(k for stages, _ in columns.values() for k in stages) if k not in DERIVED]
    for k in [*keys, "total", *DERIVED]:
        if k == "total":
            totals = [c for _, total in columns.values() for c in (f"{total:.2f}", "100%")]
            table.add_row("total", *totals, *([""] if len(columns) > 1 else []), end_section=True)
            continue
        cells = []
        for stages, total in columns.values():
            v = stages.get(k)
            cells += ["-", "-"] if v is None else [f"{v:.2f}", f"{v / total:.0%}"]
        if len(columns) > 1:
            cells.append(GPU_STAGES.get(k, {"idle timer": "timer", NETWORK: "GPU"}.get(k, "CPU")))
        table.add_row(k, *cells)
    return table


def overhead_shares(stages: dict[str, float], total: float) -> dict[str, tuple[float, float]]:
    """The time beyond the idle timer and the model, in seconds and as a share of ``total``, for three readings
    of "model time": the inference stage (what this benchmark first reported), the inference and sampling
    stages, and the network windows alone (inference and sampling less their resampling and blending)."""
    idle = stages["idle timer"]
    model = {
        "inference stage": stages.get("inference", 0.0),
        "inference + sampling stages": stages.get("inference", 0.0) + stages.get("sampling", 0.0),
        "network windows": stages.get(NETWORK, 0.0),
    }
    return {k: (total - idle - m, (total - idle - m) / total) for k, m in model.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--slices", type=int, action="append", help="study size; repeat for several (default 128)")
    ap.add_argument("--idle", type=float, default=2.0, help="the node's idle timer (s)")
    ap.add_argument("--gpu", action="store_true", help="CPU and GPU columns in the same run (GPU when CUDA exists)")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    ap.add_argument("--profile", type=Path, help="write a cProfile of the series processing (pstats) to this file")
    args = ap.parse_args()
    sizes: list[int] = args.slices or ([128, 300] if args.gpu else [128])
    cuda = ort_cuda_available() or torch_cuda_available()
    if args.gpu and not cuda:
        console.print(
            "no CUDA on this machine (ONNX Runtime has no CUDAExecutionProvider and torch sees no GPU): "
            "the GPU column was not run; CPU column only"
        )
    tmp = Path(tempfile.mkdtemp(prefix="fairnode-pipeline-"))
    figures: list[dict[str, object]] = []
    for slices in sizes:
        written = make_study(slices, tmp / f"cohort-{slices}")
        n = len(written.image_paths)
        columns: dict[str, tuple[dict[str, float], float]] = {}
        providers: dict[str, list[str]] = {}
        for name, gpu in [("CPU", False), *([("GPU", True)] if args.gpu and cuda else [])]:
            with series_profile(args.profile and args.profile.with_suffix(f".{name.lower()}{args.profile.suffix}")):
                stages, total, used = run_pipeline(written, tmp, args.idle, gpu=gpu)
            columns[name], providers[name] = (stages, total), used
            figures.append({"slices": n, "column": name, "providers": used, "total_s": total, "stages_s": stages})
        console.print(
            _table(f"pipeline: {n}-slice ct-abdomen study (512x512), last instance -> all results at Orthanc", columns)
        )
        for name, (stages, total) in columns.items():
            overheads = overhead_shares(stages, total)
            console.print(
                f"{name}: providers {', '.join(providers[name])}; overhead beyond the idle timer and "
                + "; ".join(f"{k}: {v[0]:.2f} s = {v[1]:.0%}" for k, v in overheads.items())
                + f" of total (target < 30%); idle timer excluded: {total - stages['idle timer']:.2f} s"
                + (" (GPU target for 300 slices: < 10 s)" if name == "GPU" else "")
            )
            figures[-len(columns) + list(columns).index(name)]["overhead"] = {
                k: {"s": round(v[0], 3), "share": round(v[1], 4)} for k, v in overheads.items()
            }
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
