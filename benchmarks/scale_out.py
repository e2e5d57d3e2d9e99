"""Studies per minute with 1, 2 and 4 Celery workers on this machine, and where the time goes.

    PYTHONPATH=. .venv/bin/python benchmarks/scale_out.py [--workers 1,2,4] [--studies 8] [--no-quality]
        [--gpu-json figures.json] [--json benchmarks/results/scale_out.json]

For each worker count: a fresh redis-server, PostgreSQL database, one receiver (``serve --role receiver``)
and N workers (``fairnode worker --concurrency 1``) on loopback, results to an Orthanc; a warm-up of N
studies (each worker opens its model), then ``--studies`` one-image xr-knee studies (``fairnode cohort make``,
cloned with fresh UIDs) from one dcmtk ``storescu`` association. Measured from the registry's job rows and
Orthanc: wall time from the first instance sent to the last SR in Orthanc, the receiver's ingest time, the
wait in the broker (enqueued -> started), a worker's time per job and how much of it is the pipeline's stages
(the rest: reading, writing outputs, registry rows), worker utilisation, the delivery lag.

The GPU projection: a worker's time per study is (model stages) + (the rest); on a GPU only the model
stages shrink. Without GPU figures (``--gpu-json``, the ``--json`` output of ``benchmarks/gpu_sampling.py``)
only the ceiling is given: 60 / (the rest) studies per minute, a GPU worker with free inference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tests.integration.scale_out_cluster import cluster, create_database, run_postgres, wait_results
from tests.integration.test_scale_out import clones, study_uid
from tests.peers import run_orthanc

console = Console(width=200)  # the table stays whole when piped
#: Stages of a case that run the model (what a GPU speeds up).
MODEL_STAGES = ("inference", "sampling")


def _template(root: Path) -> Path:
    out = root / "cohort"
    subprocess.run(
        [sys.executable, "-m", "fairnode", "cohort", "make", "--kind", "xr-knee", "--n", "1", "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return next(out.glob("*/image/*.dcm"))


def measure(
    n_workers: int, studies: int, quality: bool, root: Path, server: str, pacs: Any, template: Path
) -> dict[str, Any]:
    url = create_database(server, f"bench_{n_workers}_{int(time.time())}")
    with cluster(root / f"w{n_workers}", url, pacs, quality_enabled=quality) as c:
        receiver = c.start_receiver()
        for _ in range(n_workers):
            c.start_worker()
        c.wait_listening(timeout=300)
        warm = clones(template, c.root / "warm", n_workers, f"W{n_workers}")
        sender = c.send(receiver, warm, "WARMUP")
        sender.wait(timeout=120)
        wait_results(c, {study_uid(f) for f in warm}, timeout=600)
        files = clones(template, c.root / "timed", studies, f"T{n_workers}")
        uids = {study_uid(f) for f in files}
        load = os.getloadavg()[0]
        t0 = time.time()
        sender = c.send(receiver, files, "BENCH")
        sender.wait(timeout=300)
        t_sent = time.time()
        wait_results(c, uids, timeout=1800)
        t_end = time.time()
        jobs = [j for j in c.jobs() if j.study_uid in uids]
        cases = {c_.id: c_ for c_ in c.cases()}
    waits = [(j.started_at - j.enqueued_at).total_seconds() for j in jobs if j.started_at]
    busy = [(j.finished_at - j.started_at).total_seconds() for j in jobs if j.finished_at and j.started_at]
    timed_cases = [x for x in cases.values() if x.timings and x.created_at.timestamp() >= t0 - 1]
    model_s = [sum(float(x.timings.get(s, 0.0)) for s in MODEL_STAGES) for x in timed_cases]
    stages_s = [sum(float(v) for v in x.timings.values()) for x in timed_cases]
    wall = t_end - t0
    per_job = statistics.mean(busy)
    rest = per_job - statistics.mean(model_s)
    return {
        "workers": n_workers,
        "studies": studies,
        "quality": quality,
        "load_average_1m": round(load, 2),
        "wall_s": round(wall, 2),
        "studies_per_minute": round(studies / wall * 60, 2),
        "receiver_ingest_s": round(t_sent - t0, 2),
        "broker_wait_mean_s": round(statistics.mean(waits), 2),
        "broker_wait_max_s": round(max(waits), 2),
        "worker_s_per_job": round(per_job, 2),
        "model_stages_s_per_job": round(statistics.mean(model_s), 2),
        "pipeline_stages_s_per_job": round(statistics.mean(stages_s), 2),
        "rest_s_per_job": round(rest, 2),
        "worker_utilisation": round(sum(busy) / (n_workers * wall), 2),
        "delivery_lag_s": round(t_end - max(j.finished_at.timestamp() for j in jobs if j.finished_at), 2),
        "workers_used": len({j.worker for j in jobs}),
    }


def bottleneck(rows: list[dict[str, Any]], cores: int) -> str:
    """Where the time goes as workers are added, in words."""
    words = []
    base = rows[0]
    for r in rows[1:]:
        gain = r["studies_per_minute"] / base["studies_per_minute"]
        slow = r["worker_s_per_job"] / base["worker_s_per_job"]
        if r["workers"] > cores and slow > 1.3:
            where = f"the CPU: {r['workers']} workers on {cores} cores, each job {slow:.1f}x slower"
        elif r["broker_wait_mean_s"] < 0.5 and r["worker_utilisation"] < 0.6:
            where = "upstream of the workers (receiver ingest and assembly): workers wait for studies"
        elif r["rest_s_per_job"] > r["model_stages_s_per_job"]:
            where = "outside the model (reading, writing outputs, registry rows: storage and registry)"
        else:
            where = "the workers' compute (the model)"
        words.append(f"{r['workers']} workers: {gain:.2f}x the studies/min of 1; bottleneck {where}")
    return "; ".join(words)


def gpu_projection(rows: list[dict[str, Any]], gpu_json: Path | None) -> dict[str, Any]:
    one = rows[0]
    out: dict[str, Any] = {
        "rest_s_per_job": one["rest_s_per_job"],
        "ceiling_studies_per_minute_per_gpu_worker": round(60 / one["rest_s_per_job"], 1)
        if one["rest_s_per_job"] > 0
        else None,
        "gpu_figures": None,
    }
    if gpu_json is not None and gpu_json.exists():
        figures = json.loads(gpu_json.read_text())
        rows_g = figures.get("rows", figures) if isinstance(figures, dict) else figures
        speedups = [r.get("mc_speedup") or r.get("det_speedup") for r in rows_g if isinstance(r, dict)]
        best = max((s for s in speedups if s), default=None)
        if best:
            t = one["model_stages_s_per_job"] / best + one["rest_s_per_job"]
            out.update(
                gpu_figures=str(gpu_json), speedup=best, projected_studies_per_minute_per_gpu_worker=round(60 / t, 1)
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--no-quality", action="store_true", help="segmentation only (no sampling, no RCA)")
    parser.add_argument("--gpu-json", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/scale_out.json"))
    args = parser.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="fairnode-scale-out-") as tmp:
        root = Path(tmp)
        template = _template(root)
        with run_postgres(root / "pg") as server, run_orthanc(root / "orthanc", {}) as pacs:
            for n in counts:
                console.print(f"[bold]{n} worker(s)[/] ...", highlight=False)
                rows.append(measure(n, args.studies, not args.no_quality, root, server, pacs, template))
                console.print(rows[-1], highlight=False)
    table = Table(title="scale-out: studies per minute by worker count")
    columns = {
        "workers": "workers",
        "studies_per_minute": "studies/min",
        "wall_s": "wall s",
        "receiver_ingest_s": "ingest s",
        "broker_wait_mean_s": "broker wait s",
        "worker_s_per_job": "s/job",
        "model_stages_s_per_job": "model s/job",
        "rest_s_per_job": "rest s/job",
        "worker_utilisation": "utilisation",
        "delivery_lag_s": "delivery lag s",
    }
    for header in columns.values():
        table.add_column(header, no_wrap=True, min_width=len(header), justify="right")
    for r in rows:
        table.add_row(*(str(r[k]) for k in columns))
    console.print(table)
    summary = {
        "machine": {"cpu_count": cores, "gpu": "none on this machine"},
        "command": " ".join(["benchmarks/scale_out.py", *sys.argv[1:]]),
        "rows": rows,
        "bottleneck": bottleneck(rows, cores),
        "gpu_projection": gpu_projection(rows, args.gpu_json),
    }
    console.print(summary["bottleneck"], highlight=False)
    console.print(summary["gpu_projection"], highlight=False)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2) + "\n")
    console.print(f"written to {args.json}")


if __name__ == "__main__":
    main()
