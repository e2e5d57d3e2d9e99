"""``fairnode model benchmark``: a model (bundled or imported) on a labelled cohort, per group, written as a report.

Each measured case is cached (``<work>/<model>-<card digest>/<cohort>/<index>.json`` and ``.npz``), so an
interrupted benchmark resumes and a re-run with other report settings measures nothing again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from fairnode.benchmark.cohort import labelled_cases, read_labelled_case
from fairnode.benchmark.compute import ATTRIBUTES, compute_benchmark
from fairnode.benchmark.measure import CaseResult, measure_case
from fairnode.benchmark.plots import benchmark_figures
from fairnode.benchmark.render import write_report
from fairnode.benchmark.settings import BenchmarkSettings
from inference.model_card import CARD_FILE, ModelCard, sha256_of
from inference.model_store import open_segmenter

__all__ = ["BenchmarkError", "group_maps", "measure_cohort", "run_benchmark"]

logger = logging.getLogger(__name__)

Step = Callable[[str, int], None]


class BenchmarkError(ValueError):
    """A benchmark that cannot be made (a cohort of another modality, too few subjects); one line."""


def _origin(card: ModelCard) -> str:
    s = card.source
    if s is None:
        return f"trained by fairnode on {card.training.cohort.n} '{card.training.cohort.kind}' subjects (bundled)"
    return (
        f"imported {s.format} '{s.name}' {s.version or ''} ({s.imported_at}); runs on {s.backend}; "
        f"sampling {s.sampling}: {s.sampling_reason}"
    )


def _load(json_path: Path) -> CaseResult | None:
    if not json_path.is_file() or not json_path.with_suffix(".npz").is_file():
        return None
    data = json.loads(json_path.read_text(encoding="utf-8"))
    with np.load(json_path.with_suffix(".npz")) as z:
        maps = {k: z[k] for k in z.files}
    return CaseResult(data["case"], data["demographics"], data["structures"], data["seconds"], maps)


def _save(json_path: Path, result: CaseResult) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(json_path.with_suffix(".npz"), **result.maps)  # type: ignore[arg-type]
    tmp = json_path.with_suffix(".part")
    tmp.write_text(json.dumps(result.as_json()), encoding="utf-8")
    tmp.replace(json_path)


def measure_cohort(
    folder: Path, cohort: Path, work: Path, settings: BenchmarkSettings, step: Step | None = None
) -> tuple[ModelCard, list[CaseResult]]:
    """Measure (or take from the cache) every subject of ``cohort`` with the model in ``folder``."""
    segmenter = open_segmenter(folder, prefer_gpu=True)
    card = segmenter.card
    found = list(labelled_cases(cohort))
    cache = work / f"{card.name}-{sha256_of(folder / CARD_FILE)[:12]}" / cohort.resolve().name
    results = []
    for row, image_dir, seg_path in found:
        modality = row.get("modality", "")
        if modality and modality != card.input.modality:
            raise BenchmarkError(f"{cohort} holds {modality} studies; model {card.name} takes {card.input.modality}")
        path = cache / f"{row['index']}.json"
        result = _load(path)
        if result is None:
            case = read_labelled_case(row, image_dir, seg_path)
            result = measure_case(case, segmenter, settings, index=str(row["index"]))
            _save(path, result)
        results.append(result)
        if step:
            step(f"case {row['index']}: {result.seconds:.1f} s", len(found))
    return card, results


def group_maps(
    cases: list[CaseResult], min_cell: int
) -> tuple[dict[str, dict[str, dict[str, np.ndarray]]], np.ndarray | None]:
    """Mean FP and FN maps (summed over structures) per attribute and group with at least ``min_cell`` subjects,
    and the mean truth map; empty for 3D cohorts."""
    with_maps = [c for c in cases if c.maps]
    if not with_maps:
        return {}, None
    truth = np.mean([c.maps["truth"] for c in with_maps], axis=0)
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for attribute in ATTRIBUTES:
        groups: dict[str, list[CaseResult]] = {}
        for c in with_maps:
            groups.setdefault(c.demographics[attribute], []).append(c)
        out[attribute] = {
            g: {k: np.mean([c.maps[k].sum(axis=0) for c in members], axis=0) for k in ("fp", "fn")}
            for g, members in sorted(groups.items())
            if len(members) >= min_cell
        }
    return out, truth


def _composition(cases: list[CaseResult]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for attribute in ATTRIBUTES:
        counts: dict[str, int] = {}
        for c in cases:
            counts[c.demographics[attribute]] = counts.get(c.demographics[attribute], 0) + 1
        out[attribute] = dict(sorted(counts.items()))
    return out


def run_benchmark(
    folder: Path,
    cohort: Path,
    out: Path,
    *,
    settings: BenchmarkSettings,
    work: Path,
    pdf: bool = True,
    step: Step | None = None,
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Benchmark the model in ``folder`` on ``cohort``; write the report into ``out``.

    Returns
    -------
    written, report
        format -> path written, and the report (what ``report.json`` holds).

    Raises
    ------
    BenchmarkError
        for a cohort the model cannot be benchmarked on.
    FileNotFoundError
        when ``cohort`` is not a cohort folder.
    """
    card, cases = measure_cohort(folder, cohort, work, settings, step)
    if len(cases) < 2 * settings.min_cell:
        raise BenchmarkError(
            f"{cohort} has {len(cases)} subjects; a benchmark needs at least {2 * settings.min_cell} "
            f"(twice benchmark.min_cell = {settings.min_cell})"
        )
    model = {
        "name": card.name,
        "version": card.version,
        "description": card.description,
        "origin": _origin(card),
        "source": card.source.model_dump(mode="json") if card.source else None,
    }
    cohort_info = {"name": cohort.resolve().name, "n": len(cases), "composition": _composition(cases)}
    result = compute_benchmark(cases, settings=settings, model=model, cohort=cohort_info)
    try:
        software = f"fairnode {metadata.version('fairnode')}"
    except metadata.PackageNotFoundError:
        software = "fairnode"
    report = {"meta": {"generated_at": datetime.now(UTC).isoformat(timespec="seconds"), "software": software}, **result}
    maps, truth = group_maps(cases, settings.min_cell)
    figures = benchmark_figures(report, maps, truth)
    return write_report(out, report, figures, pdf=pdf), report
