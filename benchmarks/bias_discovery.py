"""Bias discovered without ground truth (Gaggion et al.): estimated vs true group gaps over scenarios.

    PYTHONPATH=. .venv/bin/python benchmarks/bias_discovery.py [--kind xr-knee|ct-abdomen] [--n 30]
        [--iterations 400] [--n-train 60] [--n-calibration 40] [--scenario NAME ...] [--work work/bias-discovery]
        [--out benchmarks/results/bias_discovery.json]

For each scenario of ``fairnode.bias_discovery.scenarios`` (under-represented groups in training, group-specific
acquisition shifts at deployment, no bias): the scenario's model (the bundled one, or a small model trained here
on the skewed cohort, keeping the bundled model's RCA bank and recalibrated on ``--n-calibration`` balanced
subjects of its own), ``--n`` deployment subjects through ``fairnode.pipeline.analyse``, an audit of the estimates
only, and the true per-group Dice. Prints per scenario the signed true, RCA-estimated (calibrated, and raw) and
predictor-estimated gaps (group minus reference), sign agreement
where the true gap exceeds 0.02 and the disparity alerts; then Pearson r between estimated and true gaps, the
alerts of the unbiased scenario and which estimator is closer. Writes the JSON (merged per task with an
existing file). Per-case results are cached under ``--work`` (JSON lines), so a rerun resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from fairnode.bias_discovery.evaluate import ScenarioResult, evaluate, summarise
from fairnode.bias_discovery.run import Schedule, audit_frame, biased_model, cache_path, run_cohort
from fairnode.bias_discovery.scenarios import scenarios
from inference.model_card import load_card
from inference.training import TrainingProgress

#: a model whose true mean Dice is below this is unusable; the figures are also given without its scenarios
USABLE_DICE = 0.7
NOTES = (
    "Gaps are signed: mean Dice of the scenario's group minus its reference groups, over cases and structures.",
    "The audit (fairness_registry.audit.compute.compute_audit) sees the estimates only: true_dice is emptied.",
    "A biased model is a small model (n_train subjects, iterations) trained on the skewed cohort. It keeps the "
    "bundled model's RCA reference bank (reference images with their ground truth, independent of the model) and "
    "is recalibrated, as a deployment that retrains recalibrates: with n_calibration > 0 its RCA calibration, Dice "
    "predictor and gate are refitted on its own balanced calibration cohort (fairnode.calibration.calibrate with "
    "the bank kept; the deployment cohort's composition drawn from the calibration seed 4000, other subjects than "
    "the deployment seed 6000's). With n_calibration 0 it reuses the bundled model's calibration table.",
    "RCA is the estimate the gate uses: max Dice over the k = 5 most similar references (centred-thumbnail "
    "correlation, mirrored where that fits better), mapped per structure by the model's isotonic calibration where "
    "it has one; rca_raw_gap is the same before that map. The knee bank holds 5 references per sex and BMI band.",
    "The case caches are named by a fingerprint of the model's graphs and quality files: a recalibrated model, or "
    "a rebuilt bank, is measured afresh.",
    "The balanced scenario (bundled model) and train-women-50pct (small model, balanced training) carry no bias.",
)

console = Console(width=160)
err = Console(stderr=True)


class _Bar(TrainingProgress):
    def __init__(self, progress: Progress):
        self.progress = progress
        self.task: Any = None

    def stage(self, name: str, total: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(name, total=total, info="")

    def advance(self, info: str = "") -> None:
        self.progress.update(self.task, advance=1, info=info)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=err,
    )


def _fmt_sign(v: bool | None) -> str:
    return "-" if v is None else ("yes" if v else "NO")


def table(kind: str, results: list[ScenarioResult], summary: dict[str, Any]) -> Table:
    t = Table(title=f"Bias discovery without ground truth: {kind} (gap = group - reference, mean Dice)")
    for col in (
        "scenario",
        "attribute: group",
        "n",
        "true gap [95% CI]",
        "RCA gap (raw)",
        "pred. gap",
        "sign RCA",
        "sign pred.",
        "alerts (attr / all)",
    ):
        t.add_column(col)
    for r in results:
        t.add_row(
            r.name,
            f"{r.attribute}: {r.group}",
            f"{r.n_group}/{r.n_reference}",
            f"{r.true_gap:+.4f} [{r.true_gap_ci[0]:+.3f}, {r.true_gap_ci[1]:+.3f}]",
            f"{r.rca_gap:+.4f} ({r.rca_raw_gap:+.4f})",
            f"{r.predictor_gap:+.4f}",
            _fmt_sign(r.sign_agrees("rca")),
            _fmt_sign(r.sign_agrees("predictor")),
            f"{len(r.alerts_on_attribute())} / {len([a for a in r.alerts if a.get('kind') == 'disparity'])}",
        )
    t.caption = (
        f"Pearson r: RCA {summary['rca']['pearson_r']} (raw {summary.get('rca_raw', {}).get('pearson_r')}), "
        f"predictor {summary['predictor']['pearson_r']}; "
        f"sign right (|true| > 0.02): RCA {summary['rca']['sign_agreement']}, predictor "
        f"{summary['predictor']['sign_agreement']}; mean |est - true|: RCA {summary['rca']['mean_abs_error']}, "
        f"predictor {summary['predictor']['mean_abs_error']}; predictor closer in {summary['predictor_closer']}; "
        f"alerts when unbiased: {summary['unbiased_alerts']} (not confirmed by the truth: "
        f"{summary['unbiased_false_alerts']})"
    )
    return t


def _against_control(results: list[ScenarioResult]) -> dict[str, dict[str, float]]:
    """Each under-represented training's gaps minus those of the 50% training at the same schedule.

    The small models' gap between the sexes has a part that any short training gives (women's bones are
    smaller); what under-representation adds is the difference to the 50% control.
    """
    pattern = re.compile(r"^train-women-(\d+)pct(-\d+it)?$")
    by_label = {r.name: r for r in results}
    out: dict[str, dict[str, float]] = {}
    for r in results:
        m = pattern.match(r.name)
        if m is None or m.group(1) == "50":
            continue
        control = by_label.get(f"train-women-50pct{m.group(2) or ''}")
        if control is None:
            continue
        out[r.name] = {
            "true": round(r.true_gap - control.true_gap, 4),
            "rca": round(r.rca_gap - control.rca_gap, 4),
            "predictor": round(r.predictor_gap - control.predictor_gap, 4),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", default="xr-knee", choices=("xr-knee", "ct-abdomen"))
    parser.add_argument("--n", type=int, default=30, help="deployment subjects per scenario")
    parser.add_argument("--iterations", type=int, default=400, help="training iterations of a biased model")
    parser.add_argument("--n-train", type=int, default=60, help="training subjects of a biased model")
    parser.add_argument(
        "--n-calibration",
        type=int,
        default=40,
        help="balanced calibration subjects each trained model is recalibrated on (0: reuse the bundled model's)",
    )
    parser.add_argument("--scenario", action="append", help="run only these scenarios (repeatable)")
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME=ITERATIONS",
        help="also run a training scenario with another number of iterations (repeatable), e.g. train-women-0pct=400",
    )
    parser.add_argument("--work", type=Path, default=Path("work/bias-discovery"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bias_discovery.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    chosen = [s for s in scenarios(args.kind) if not args.scenario or s.name in args.scenario]
    if not chosen:
        parser.error(f"no scenario of {args.kind} is named {args.scenario}")
    schedule = Schedule(n_train=args.n_train, iterations=args.iterations, n_calibration=args.n_calibration)
    by_name = {s.name: s for s in scenarios(args.kind)}
    runs = [(sc, schedule, sc.name) for sc in chosen]
    for extra in args.also:
        name, _, iterations = extra.partition("=")
        if name not in by_name or by_name[name].train is None or not iterations.isdigit():
            parser.error(f"--also {extra}: expected TRAINING-SCENARIO=ITERATIONS, e.g. train-women-0pct=400")
        longer = Schedule(n_train=args.n_train, iterations=int(iterations), n_calibration=args.n_calibration)
        runs.append((by_name[name], longer, f"{name}-{iterations}it"))
    measured = []
    timings: dict[str, dict[str, float]] = {}
    t_all = time.perf_counter()
    with _progress() as progress:  # measure every scenario first: the audit runs on the cached cases after
        overall = progress.add_task(f"{args.kind}: scenarios", total=len(runs), info="")
        for sc, sc_schedule, label in runs:
            t0 = time.perf_counter()
            bar = _Bar(progress)
            model = biased_model(sc, args.work, sc_schedule, bar)
            t_model = time.perf_counter() - t0
            bar.stage(f"{sc.name}: {args.n} deployment cases", args.n)
            cache = cache_path(args.work, model, sc.deploy.name)
            cases = run_cohort(sc, model, args.n, cache, step=bar.advance)
            card = load_card(model)
            measured.append((sc, card, cases, label))
            timings[label] = {
                "model_wall_s": round(t_model, 1),
                "training_s": card.training.seconds if sc.train is not None else 0.0,
                "cases_wall_s": round(time.perf_counter() - t0 - t_model, 1),
                "analyse_s_per_case": round(sum(c.seconds for c in cases) / len(cases), 2),
            }
            progress.update(overall, advance=1, info=sc.name)
            if bar.task is not None:
                progress.remove_task(bar.task)
    results: list[ScenarioResult] = []
    for sc, card, cases, label in measured:
        frame = audit_frame(cases, card.name, card.version, with_truth=True)
        result = evaluate(sc, frame, card.name)
        result.name = label
        results.append(result)
    summary = summarise(results)
    summary["under_representation_effect"] = _against_control(results)
    usable = [r for r in results if min(r.true_mean.values()) >= USABLE_DICE]
    if len(usable) < len(results):
        summary[f"without_models_below_{USABLE_DICE}_dice"] = summarise(usable)
    console.print(table(args.kind, results, summary))
    for key, value in summary.items():
        if key.startswith("without_models_below"):
            console.print(
                f"{key}: Pearson r RCA {value['rca']['pearson_r']}, predictor {value['predictor']['pearson_r']}; "
                f"mean |est - true| RCA {value['rca']['mean_abs_error']}, predictor "
                f"{value['predictor']['mean_abs_error']} ({value['n_scenarios']} scenarios)"
            )
    if summary["under_representation_effect"]:
        effect = summary["under_representation_effect"]
        console.print(f"under-representation effect (gap minus the 50% training's): {effect}")

    payload: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    payload.setdefault("tasks", {})[args.kind] = {
        "settings": {
            "n_deploy": args.n,
            "n_train": args.n_train,
            "iterations": args.iterations,
            "n_calibration": args.n_calibration,
            "deploy_seed": 6000,
        },
        "scenarios": [
            {
                **r.__dict__,
                "sign_rca": r.sign_agrees("rca"),
                "sign_predictor": r.sign_agrees("predictor"),
                "alerts_on_attribute": len(r.alerts_on_attribute()),
            }
            for r in results
        ],
        "summary": summary,
        "notes": NOTES,
        "timings": timings,
        "wall_s": round(time.perf_counter() - t_all, 1),
        "load_average": os.getloadavg(),
        "command": f"PYTHONPATH=. .venv/bin/python benchmarks/bias_discovery.py --kind {args.kind} --n {args.n} "
        f"--iterations {args.iterations} --n-train {args.n_train} --n-calibration {args.n_calibration}"
        + "".join(f" --scenario {s}" for s in (args.scenario or []))
        + "".join(f" --also {a}" for a in args.also),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1, default=str) + "\n", encoding="utf-8")
    err.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
