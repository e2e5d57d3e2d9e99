"""Does the current RCA revision track the CT model's true Dice better than the legacy levels its card keeps?

    PYTHONPATH=. .venv/bin/python benchmarks/ct_rca_revision.py [--cases 24] [--seed 4000] \
        [--shift stress-ct-abdomen] [--json benchmarks/results/ct_rca_revision.json]

The bundled CT model segments ``--cases`` generated subjects of ``--shift`` (seed ``--seed``: the calibration
cohort's subjects, whose segmentations include failures); each segmentation's raw RCA (max Dice over the k
references of the card's bank) is computed twice on the same bank: with the card's RCA settings (the legacy
levels) and with the defaults of :class:`quality.rca.RcaSettings` (the current revision). Both are compared
with the true Dice: Pearson r, MAE, and AUROC for Dice < 0.8, over every structure, plus the seconds per
case. RCA only (no stochastic samples), so a case costs the segmentation and two RCA runs. Per-case results
are cached in ``work/ct-rca-revision-<seed>.jsonl`` so that a rerun only adds what is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy.stats import pearsonr
from sklearn.metrics import roc_auc_score

from cohorts.shift import load_shift, shipped_scenarios
from cohorts.subjects import draw_subject
from fairnode.calibration.measure import generate
from inference.backends import InferenceSettings
from inference.metrics import dice
from inference.model_card import bundled_models
from inference.model_store import open_segmenter
from inference.preprocess import probabilities_to_source, to_model_grid
from quality import rca
from quality.assess import QualityModel

console = Console(width=120)


def _figures(rows: list[dict[str, float]], key: str) -> dict[str, float | None]:
    ok = [r for r in rows if r[key] is not None and math.isfinite(r[key])]
    est, true = np.array([r[key] for r in ok]), np.array([r["true"] for r in ok])
    fail = true < 0.8
    return {
        "n": len(ok),
        "pearson": round(float(pearsonr(est, true).statistic), 4) if len(ok) > 2 else None,
        "mae": round(float(np.mean(np.abs(est - true))), 4) if ok else None,
        "auroc_dice_below_0.8": round(float(roc_auc_score(fail, -est)), 4) if 0 < fail.sum() < len(ok) else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--seed", type=int, default=4000)
    parser.add_argument("--shift", default="stress-ct-abdomen")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/ct_rca_revision.json"))
    args = parser.parse_args()
    folder = bundled_models()["ct-abdomen"]
    segmenter = open_segmenter(folder, prefer_gpu=False, inference=InferenceSettings(ort_threads=1))
    card = segmenter.card
    qm = QualityModel.open(folder, card)
    assert qm.bank is not None and qm.rca_settings is not None
    legacy, current = qm.rca_settings, rca.RcaSettings.for_bank(qm.bank.ndim)
    k = card.quality.rca.k if card.quality and card.quality.rca else 5
    spec = load_shift(shipped_scenarios()[args.shift])
    cache = Path("work") / f"ct-rca-revision-{args.shift}-{args.seed}.jsonl"
    cache.parent.mkdir(parents=True, exist_ok=True)
    done = {d["case"]: d for d in map(json.loads, cache.read_text().splitlines())} if cache.is_file() else {}
    for i in range(args.cases):
        case = f"ct-abdomen-{args.seed}-{i}"
        if case in done:
            continue
        image = generate("ct-abdomen", draw_subject("ct-abdomen", i, args.seed, spec))
        x = to_model_grid(image.pixels, tuple(image.spacing), card.input)
        probs = segmenter.model_grid_probabilities(x)
        labels = np.argmax(probabilities_to_source(probs, image.pixels.shape), axis=0).astype(np.uint8)
        grid_labels = np.argmax(probs, axis=0).astype(np.uint8)
        out: dict[str, object] = {"case": case, "structures": [], "seconds": {}}
        estimates = {}
        for name, settings in (("legacy", legacy), ("current", current)):
            t0 = time.perf_counter()
            try:
                result = rca.estimate(x[0], grid_labels, card.input.spacing_mm, qm.bank, k=k, settings=settings)
                estimates[name] = {s.label: s.max_dice for s in result.structures}
            except (rca.RcaError, RuntimeError):
                estimates[name] = {}
            out["seconds"][name] = round(time.perf_counter() - t0, 2)  # type: ignore[index]
        for value, lab in enumerate(card.labels, start=1):
            out["structures"].append(  # type: ignore[union-attr]
                {
                    "name": lab.name,
                    "true": round(dice(labels == value, image.labels == value), 5),
                    "legacy": estimates["legacy"].get(value),
                    "current": estimates["current"].get(value),
                }
            )
        with cache.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(out) + "\n")
        done[case] = out
        console.print(f"{case}: legacy {out['seconds']['legacy']} s, current {out['seconds']['current']} s")  # type: ignore[index]
    cases = [done[f"ct-abdomen-{args.seed}-{i}"] for i in range(args.cases)]
    rows = [s for c in cases for s in c["structures"]]
    result = {
        "command": "PYTHONPATH=. .venv/bin/python benchmarks/ct_rca_revision.py "
        f"--cases {args.cases} --seed {args.seed} --shift {args.shift}",
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "cases": len(cases),
        "failures": sum(1 for r in rows if r["true"] < 0.8),
        "settings": {"legacy": legacy.changes_from_default(3), "current": {}},
        "overall": {name: _figures(rows, name) for name in ("legacy", "current")},
        "by_structure": {
            lab.name: {n: _figures([r for r in rows if r["name"] == lab.name], n) for n in ("legacy", "current")}
            for lab in card.labels
        },
        "seconds_per_case": {
            n: round(float(np.median([c["seconds"][n] for c in cases])), 2) for n in ("legacy", "current")
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    table = Table(title=f"raw RCA against true Dice, {len(cases)} CT cases of {args.shift} (seed {args.seed})")
    for h in ("subset", "settings", "n", "r", "MAE", "AUROC<0.8"):
        table.add_column(h)
    for subset, figs in {"all": result["overall"], **result["by_structure"]}.items():  # type: ignore[dict-item]
        for n, f in figs.items():
            table.add_row(subset, n, *(str(f[c]) for c in ("n", "pearson", "mae", "auroc_dice_below_0.8")))
    console.print(table)
    console.print(f"median seconds per case: {result['seconds_per_case']}; load average {result['load_average']}")


if __name__ == "__main__":
    main()
