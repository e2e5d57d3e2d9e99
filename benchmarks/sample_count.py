"""How much the number of MC-dropout samples changes the Dice predictor's error (ct-abdomen, held-out subjects).

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/sample_count.py [--shift stress-ct-abdomen]
        [--n 24] [--seed 5600] [--samples 4 --samples 6 --samples 10] [--work work/sample-count]
        [--json benchmarks/results/pipeline-samples.json]

Each subject is generated in memory (as ``fairnode quality validate --shift`` does) and measured by the
validation tooling (:func:`fairnode.calibration.measure.generated_cases`, the node's ``analyse``) once per sample
count, under the model's shipped calibration. The sample sets are nested: the largest count is drawn once per
subject and the smaller counts are its first samples, so the counts differ only in how many samples the
estimates see, not in which dropout masks were drawn (a paired comparison). The deterministic prediction is
computed once per subject too. Measurements are cached per subject and count under ``--work`` (resumable).

Printed and written: per count, the predictor's MAE and Pearson r against true Dice, the interval coverage, the
review rate and failures caught (all from :func:`fairnode.calibration.validate.figures_of`), how far each
structure's predicted Dice moves from the largest count's, how many cases change route, and the network seconds
per sample measured while drawing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from cohorts.shift import load_shift, shipped_scenarios
from fairnode.calibration.measure import CaseMeasure, fingerprint, generated_cases
from fairnode.calibration.validate import figures_of
from fairnode.pipeline import QualitySettings
from inference.backends import InferenceSettings
from inference.model_card import MODELS_DIR
from inference.model_store import open_segmenter
from inference.segmenter import Segmenter
from quality.assess import QualityModel

console = Console(width=None if sys.stdout.isatty() else 160)


class NestedSamples:
    """A :class:`Segmenter` whose samples of one input are the first ``n`` of one draw of ``largest`` samples,
    and whose deterministic probabilities of one input are computed once (the last input is kept)."""

    def __init__(self, segmenter: Segmenter, largest: int):
        self._segmenter = segmenter
        self.largest = largest
        self.card = segmenter.card
        self._key: str | None = None
        self._probabilities: np.ndarray | None = None
        self._draw: np.ndarray | None = None
        self.seconds_per_sample: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._segmenter, name)

    def _same(self, x: np.ndarray) -> bool:
        key = hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()
        if key != self._key:
            self._key, self._probabilities, self._draw = key, None, None
        return True

    def model_grid_probabilities(self, model_input: np.ndarray, mc_dropout: bool = False) -> np.ndarray:
        self._same(model_input)
        if mc_dropout:
            return self._segmenter.model_grid_probabilities(model_input, True)
        if self._probabilities is None:
            self._probabilities = self._segmenter.model_grid_probabilities(model_input)
        return self._probabilities

    def samples(self, model_input: np.ndarray, n: int, method: str = "mc-dropout") -> np.ndarray:
        if n > self.largest:
            raise ValueError(f"{n} samples asked, at most {self.largest} are drawn")
        self._same(model_input)
        if self._draw is None:
            t = time.perf_counter()
            self._draw = self._segmenter.samples(model_input, self.largest, method)
            self.seconds_per_sample.append((time.perf_counter() - t) / self.largest)
        return self._draw[:n]


def _predictions(cases: list[CaseMeasure]) -> dict[tuple[str, str], float]:
    return {
        (c.case, str(s["name"])): float(s["predicted_dice"])  # type: ignore[arg-type]
        for c in cases
        for s in c.structures
        if s["predicted_dice"] is not None
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="ct-abdomen")
    ap.add_argument("--shift", default="stress-ct-abdomen", help="shipped scenario of the generated subjects")
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--seed", type=int, default=5600, help="held out: calibration used 1000-4000")
    ap.add_argument("--samples", type=int, action="append", help="sample counts (default 4, 6, 10)")
    ap.add_argument("--work", type=Path, default=Path("work/sample-count"))
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/pipeline-samples.json"))
    args = ap.parse_args()
    counts = sorted(set(args.samples or [4, 6, 10]), reverse=True)
    folder = MODELS_DIR / args.model
    segmenter = open_segmenter(folder, prefer_gpu=False, inference=InferenceSettings(ort_threads=args.threads))
    card = segmenter.card
    qm = QualityModel.open(folder, card)
    nested = NestedSamples(segmenter, counts[0])
    spec = load_shift(shipped_scenarios()[args.shift])
    caches = {
        k: args.work
        / f"samples-{k}-{card.name}-{args.shift}-{args.seed}-{fingerprint(card, qm, QualitySettings(samples=k))}.jsonl"
        for k in counts
    }
    cases: dict[int, list[CaseMeasure]] = {k: [] for k in counts}
    for i in range(args.n):
        for k in counts:  # the largest first: it draws the samples the others reuse
            done = generated_cases(
                card,
                nested,  # type: ignore[arg-type]  # a Segmenter in all that analyse uses
                qm,
                QualitySettings(samples=k),
                spec,
                range(i, i + 1),
                args.seed,
                caches[k],
            )
            cases[k] += done
        console.print(f"subject {i + 1}/{args.n} measured with {', '.join(map(str, counts))} samples", style="dim")
    reference = _predictions(cases[counts[0]])
    reference_route = {c.case: c.route for c in cases[counts[0]]}
    rows: list[dict[str, object]] = []
    for k in sorted(counts):
        figures, _ = figures_of(cases[k], qm, card)
        f: dict[str, Any] = figures
        pred = _predictions(cases[k])
        moved = [abs(pred[key] - reference[key]) for key in pred if key in reference]
        rows.append(
            {
                "samples": k,
                "predictor_mae": f["overall"]["predictor"]["mae"],
                "predictor_pearson": f["overall"]["predictor"]["pearson"],
                "coverage": f["overall"]["coverage"],
                "review_rate": f["overall"]["review_rate"],
                "failures": f["overall"]["failures"],
                "failures_caught": f["overall"]["failures_caught"],
                "by_structure_mae": {s: v["predictor"]["mae"] for s, v in f["by_structure"].items()},
                f"mean_abs_change_vs_{counts[0]}": round(statistics.fmean(moved), 5) if moved else None,
                f"max_abs_change_vs_{counts[0]}": round(max(moved), 5) if moved else None,
                f"cases_changing_route_vs_{counts[0]}": sum(c.route != reference_route[c.case] for c in cases[k]),
            }
        )
    per_sample = statistics.median(nested.seconds_per_sample) if nested.seconds_per_sample else None
    table = Table(
        title=f"{card.name}: predictor error by MC sample count ({args.n} subjects, {args.shift} seed {args.seed})"
    )
    for col in (
        "samples",
        "MAE",
        "Pearson r",
        "coverage",
        "review rate",
        "caught",
        f"|Δ| vs {counts[0]} mean/max",
        "route changes",
    ):
        table.add_column(col, justify="right")
    for r in rows:

        def fmt(v: object) -> str:
            return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

        table.add_row(
            str(r["samples"]),
            fmt(r["predictor_mae"]),
            fmt(r["predictor_pearson"]),
            fmt(r["coverage"]),
            fmt(r["review_rate"]),
            f"{fmt(r['failures_caught'])} of {r['failures']} failures",
            f"{fmt(r[f'mean_abs_change_vs_{counts[0]}'])} / {fmt(r[f'max_abs_change_vs_{counts[0]}'])}",
            str(r[f"cases_changing_route_vs_{counts[0]}"]),
        )
    console.print(table)
    if per_sample is not None:
        console.print(
            f"network seconds per sample (median over subjects, {args.threads} ORT thread(s)): {per_sample:.2f}"
        )
    out = {
        "command": "PYTHONPATH=. .venv/bin/python benchmarks/sample_count.py " + " ".join(sys.argv[1:]),
        "model": {
            "name": card.name,
            "version": card.version,
            "calibrated_with_samples": card.quality.samples if card.quality else None,
        },
        "cohort": {"shift": args.shift, "n": args.n, "seed": args.seed},
        "nested": f"the first k of {counts[0]} samples drawn once per subject",
        "seconds_per_sample": per_sample,
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2), encoding="utf-8")
    console.print(f"written to {args.json}")


if __name__ == "__main__":
    main()
