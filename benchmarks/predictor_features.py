"""Which features let the Dice predictor see a group's gap as it is, under acquisition shifts it never saw?

    PYTHONPATH=. .venv/bin/python benchmarks/predictor_features.py [--kind xr-knee] [--n 30]
        [--scenario NAME ...] [--work work/predictor-features] [--out benchmarks/results/predictor_features.json]

The bundled model runs ``--n`` deployment subjects of each acquisition-shift scenario of
``fairnode.bias_discovery.scenarios`` (and the balanced control) through ``fairnode.pipeline.analyse``; each
structure's predictor features, its calibrated RCA and its true Dice are kept (JSON lines under ``--work``, so a
rerun only refits). The predictor's method (``quality.predictor``: extremely randomised trees) is then refitted
on the model's shipped calibration table with several feature sets, and for each set the benchmark prints:

- on the calibration cohort, the out-of-fold MAE and Pearson r (5 folds by subject, as calibration does);
- per scenario, the signed group gap (group minus reference, mean Dice over cases and structures) it estimates
  beside the true gap and RCA's, and its per-case MAE;
- over the scenarios, the gap's Pearson r and MAE against the true gaps and in how many scenarios it is closer
  to the true gap than RCA.

Feature sets: ``all`` (what the node uses), ``no-image`` (without the image and structure intensity statistics),
``residual-no-image`` (without them, fitted to the residual of the calibrated RCA, so that the trees correct RCA
where the uncertainty says so), ``rca-and-agreement`` (RCA and the samples' agreement only).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.ensemble import ExtraTreesRegressor
from sklearn.model_selection import GroupKFold

import quality.assess as assess
from cohorts.subjects import draw_subject
from fairnode.bias_discovery.run import DEPLOY_SEED, bundled_folder, demographics, generate
from fairnode.bias_discovery.scenarios import Scenario, scenarios
from fairnode.pipeline import QualitySettings, analyse
from inference.segmenter import Segmenter
from quality.assess import QualityModel
from quality.predictor import FEATURES, FOLDS, read_table
from quality.rca_calibration import RcaCalibration
from quality.uncertainty import dice

INTENSITY = ("image_", "structure_")
FEATURE_SETS: dict[str, tuple[tuple[str, ...], bool]] = {
    "all": (FEATURES, False),
    "no-image": (tuple(f for f in FEATURES if not f.startswith(INTENSITY)), False),
    "residual-no-image": (tuple(f for f in FEATURES if not f.startswith(INTENSITY)), True),
    "rca-and-agreement": (("rca_max_dice", "rca_mean_dice", "rca_hd95_mm", "sample_dice", "volume_cv"), False),
}


def _trees() -> ExtraTreesRegressor:
    return ExtraTreesRegressor(n_estimators=300, max_features=0.5, min_samples_leaf=1, random_state=0)


def _design(rows: list[dict[str, float]], labels: list[int], names: tuple[str, ...], n_labels: int) -> np.ndarray:
    x = np.array([[float(r[f]) for f in names] for r in rows]).reshape(len(rows), len(names))
    onehot = np.zeros((len(rows), n_labels))
    onehot[np.arange(len(rows)), np.asarray(labels) - 1] = 1.0
    return np.nan_to_num(np.hstack([x, onehot]), nan=-1.0)


def measure(
    kind: str, chosen: list[Scenario], n: int, cache: Path, step: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Per deployment case: demographics and, per structure, features, calibrated RCA and true Dice."""
    done = {}
    if cache.is_file():
        for line in cache.read_text(encoding="utf-8").splitlines():
            d = json.loads(line)
            done[(d["scenario"], d["i"])] = d
    captured: dict[int, dict[str, float]] = {}
    original = assess.structure_features

    def recording(u: Any, rca: Any, stats: Any, expected: float) -> dict[str, float]:
        features = original(u, rca, stats, expected)
        captured[u.label] = features
        return features

    model = bundled_folder(kind)
    segmenter: Segmenter | None = None
    qm: QualityModel | None = None
    out = []
    assess.structure_features = recording  # type: ignore[assignment]
    try:
        for scenario in chosen:
            for i in range(n):
                if (scenario.name, i) not in done:
                    if segmenter is None or qm is None:
                        segmenter = Segmenter(model, prefer_gpu=False)
                        qm = QualityModel.open(model, segmenter.card)
                    subject = draw_subject(kind, i, DEPLOY_SEED, scenario.deploy)
                    image = generate(subject)
                    captured.clear()
                    analysis = analyse(
                        image.pixels, tuple(image.spacing), image.modality, segmenter, qm, QualitySettings(), {}
                    )
                    assert analysis.assessment is not None
                    structures = [
                        {
                            "label": s.label,
                            "true_dice": float(dice(analysis.labels == s.label, image.labels == s.label)),
                            "rca": float(s.rca.dice) if s.rca else None,
                            "features": captured[s.label],
                        }
                        for s in analysis.assessment.quality.structures
                    ]
                    record = {"scenario": scenario.name, "i": i, "demographics": demographics(subject)}
                    done[(scenario.name, i)] = {**record, "structures": structures}
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    with cache.open("a", encoding="utf-8") as fh:
                        fh.write(json.dumps(done[(scenario.name, i)]) + "\n")
                out.append(done[(scenario.name, i)])
                step(f"{scenario.name} {i}")
    finally:
        assess.structure_features = original
    return out


def evaluate(kind: str, chosen: list[Scenario], cases: list[dict[str, Any]]) -> dict[str, Any]:
    folder = bundled_folder(kind)
    rows = read_table(folder / "quality-calibration.csv")
    rca_map = RcaCalibration.fit(rows, "isotonic", split="fit")
    n_labels = max(r.label for r in rows)
    names_of = {r.label: r.name for r in rows}

    def calibrated(label: int, raw: float) -> float:
        value = rca_map.apply(names_of[label], raw)  # structures without a map keep raw RCA, as in the node
        return raw if value is None else value

    feats = [r.features for r in rows]
    labels = [r.label for r in rows]
    y = np.array([r.true_dice for r in rows])
    rca_cal = np.array([calibrated(r.label, r.features["rca_max_dice"]) for r in rows])
    subjects = np.array([r.subject for r in rows])
    fitted, calibration = {}, {}
    for name, (columns, residual) in FEATURE_SETS.items():
        x = _design(feats, labels, columns, n_labels)
        target = y - rca_cal if residual else y
        oof = np.zeros(len(y))
        for train, held in GroupKFold(FOLDS).split(x, target, subjects):
            oof[held] = _trees().fit(x[train], target[train]).predict(x[held])
        estimate = np.clip(oof + (rca_cal if residual else 0.0), 0.0, 1.0)
        calibration[name] = {
            "oof_mae": round(float(np.mean(np.abs(estimate - y))), 4),
            "oof_pearson": round(float(np.corrcoef(estimate, y)[0, 1]), 4),
        }
        fitted[name] = _trees().fit(x, target)
    per_scenario: list[dict[str, Any]] = []
    for scenario in chosen:
        mine = [c for c in cases if c["scenario"] == scenario.name]
        means: dict[str, list[float]] = {k: [] for k in ("true", "rca", *FEATURE_SETS)}
        in_group, in_reference = [], []
        for c in mine:
            ss = c["structures"]
            rca = np.array([s["rca"] for s in ss], dtype=float)
            means["true"].append(float(np.mean([s["true_dice"] for s in ss])))
            means["rca"].append(float(rca.mean()))
            for name, (columns, residual) in FEATURE_SETS.items():
                x = _design([s["features"] for s in ss], [s["label"] for s in ss], columns, n_labels)
                p = fitted[name].predict(x) + (rca if residual else 0.0)
                means[name].append(float(np.mean(np.clip(p, 0.0, 1.0))))
            value = str(c["demographics"][scenario.attribute])
            in_group.append(value == scenario.group)
            in_reference.append(value != scenario.group and (not scenario.reference or value in scenario.reference))
        g, r = np.array(in_group), np.array(in_reference)
        truth = np.array(means["true"])
        per_scenario.append(
            {
                "scenario": scenario.name,
                "n_group": int(g.sum()),
                "n_reference": int(r.sum()),
                "gap": {
                    k: round(float(np.mean(np.array(v)[g]) - np.mean(np.array(v)[r])), 4) for k, v in means.items()
                },
                "case_mae": {
                    k: round(float(np.mean(np.abs(np.array(v) - truth))), 4) for k, v in means.items() if k != "true"
                },
            }
        )
    true_gaps = np.array([s["gap"]["true"] for s in per_scenario])
    summary = {}
    for k in ("rca", *FEATURE_SETS):
        est = np.array([s["gap"][k] for s in per_scenario])
        rca = np.array([s["gap"]["rca"] for s in per_scenario])
        summary[k] = {
            "gap_pearson": round(float(np.corrcoef(est, true_gaps)[0, 1]), 4),
            "gap_mae": round(float(np.mean(np.abs(est - true_gaps))), 4),
            "closer_than_rca": f"{int(np.sum(np.abs(est - true_gaps) < np.abs(rca - true_gaps)))}/{len(est)}",
        }
    return {"calibration": calibration, "scenarios": per_scenario, "summary": summary}


def _print(result: dict[str, Any], console: Console) -> None:
    keys = ["true", "rca", *FEATURE_SETS]
    table = Table(title="signed group gap (group - reference), per scenario; per-case MAE below")
    table.add_column("scenario", no_wrap=True)
    for k in keys:
        table.add_column(k, justify="right")
    for s in result["scenarios"]:
        table.add_row(s["scenario"], *(f"{s['gap'][k]:+.3f}" for k in keys))
        table.add_row("  case MAE", "", *(f"{s['case_mae'][k]:.3f}" for k in keys[1:]))
    console.print(table)
    summary = Table(title="over the scenarios; calibration cohort out of fold")
    for column in ("estimate", "gap r", "gap MAE", "closer than RCA", "calibration OOF MAE", "calibration OOF r"):
        summary.add_column(column, justify="right" if column != "estimate" else "left")
    for k, v in result["summary"].items():
        c = result["calibration"].get(k, {})
        summary.add_row(
            k,
            f"{v['gap_pearson']:.3f}",
            f"{v['gap_mae']:.4f}",
            v["closer_than_rca"],
            f"{c['oof_mae']:.4f}" if c else "-",
            f"{c['oof_pearson']:.3f}" if c else "-",
        )
    console.print(summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", default="xr-knee", choices=("xr-knee", "ct-abdomen"))
    parser.add_argument("--n", type=int, default=30, help="deployment subjects per scenario")
    parser.add_argument("--scenario", action="append", help="only these scenarios (default: control and shifts)")
    parser.add_argument("--work", type=Path, default=Path("work/predictor-features"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/predictor_features.json"))
    args = parser.parse_args()
    every = {s.name: s for s in scenarios(args.kind)}
    names = args.scenario or [s.name for s in every.values() if s.train is None]
    unknown = sorted(set(names) - set(every))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(every)}")
    chosen = [every[n] for n in names]
    chosen_training = [s.name for s in chosen if s.train is not None]
    if chosen_training:
        parser.error(f"{', '.join(chosen_training)} train a model of their own; this benchmark uses the bundled one")
    console = Console(width=160)
    t0 = time.perf_counter()
    from rich.progress import Progress

    with Progress(console=Console(stderr=True)) as progress:
        task = progress.add_task("deployment cases", total=len(chosen) * args.n)
        cases = measure(
            args.kind,
            chosen,
            args.n,
            args.work / f"{args.kind}.jsonl",
            lambda label: progress.update(task, advance=1, description=label),
        )
    result = evaluate(args.kind, chosen, cases)
    _print(result, console)
    payload: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    payload[args.kind] = {
        **result,
        "n": args.n,
        "deploy_seed": DEPLOY_SEED,
        "wall_s": round(time.perf_counter() - t0, 1),
        "load_average": os.getloadavg(),
        "command": f"PYTHONPATH=. .venv/bin/python benchmarks/predictor_features.py --kind {args.kind} --n {args.n}"
        + "".join(f" --scenario {s}" for s in (args.scenario or [])),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
