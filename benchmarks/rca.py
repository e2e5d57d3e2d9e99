"""Reverse classification accuracy: seconds per case, and (``--accuracy``) how well it tracks the true Dice.

    PYTHONPATH=. .venv/bin/python benchmarks/rca.py [--kind ct-abdomen|xr-knee] [--refs 20] [--cases 5] [--k 5]
    PYTHONPATH=. .venv/bin/python benchmarks/rca.py --accuracy [--cases 12]
    PYTHONPATH=. .venv/bin/python benchmarks/rca.py --kind xr-knee --group-bias [--cases 30] [--refs 40]

Builds a bank of ``--refs`` cohort phantoms (seed 3000, held out from training 1000 and validation 2000) on
the model grid, writes it to a temporary ``.npz`` (its size is reported) and reads it back, then runs
``quality.rca.estimate`` on ``--cases`` subjects of seed 4000 with their ground truth as the prediction.
Prints seconds per case (median; first case apart, as it fills the bank's caches), CPU seconds, the split
between choosing references and registering them, and the ratio to the ~660 s per case of Valindria et al.
(IEEE TMI 2017). The load average is printed too: the timings are wall-clock on a machine that may be shared.

With ``--accuracy`` each case is also scored with deliberately wrong masks (labels shifted 20 mm, the first
structure eroded to a blob, the first two structures swapped, the second structure removed) and with masks
eroded or dilated by 1-4 voxels (3D) or 1-8 pixels (2D); it prints the RCA max-Dice estimate against the true
Dice: means per kind of mask, and Pearson r, MAE and bias on the partially wrong masks (true Dice 0.3-0.95).

With ``--group-bias`` it asks instead whether RCA reads one group lower than another when the segmentations are
equally good: the bundled model segments ``--cases`` subjects of the bias-discovery balanced cohort (half women,
seed 6000), and raw RCA (no calibration) of its predictions is computed on the RCA grid of the model card against
banks of ``--refs`` references that differ only in who they are (the shipped bank, 5 per sex and BMI band; a bank
drawn from the population; a bank of men only) and with the ``k`` references chosen as the most similar or at
random. Per configuration it prints the mean error (RCA minus true Dice) of women and men, its difference (what
RCA adds to the true gap between the sexes), and the same for obese against normal-weight patients.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import track
from rich.table import Table
from scipy import ndimage, stats

from cohorts import ct_abdomen, xr_knee
from cohorts.shift import Group, GroupMatch, ShiftSpec
from cohorts.subjects import draw_subject
from inference.metrics import dice
from inference.model_card import bundled_models, load_card
from inference.preprocess import labels_to_model_grid, to_model_grid
from quality.rca import RcaSettings, ReferenceBank, estimate

VALINDRIA_SECONDS = 660.0
BANK_SEED = 3000
CASE_SEED = 4000

console = Console(width=150)


@dataclass(frozen=True)
class Subject:
    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, ...]
    demographics: dict[str, str]


def make_subject(kind: str, index: int, seed: int, matrix: int) -> Subject:
    """One cohort phantom on the model grid (network input in [0, 1] and its ground truth)."""
    card = load_card(bundled_models()[kind])
    s = draw_subject(kind, index, seed)
    img = ct_abdomen.generate(s, matrix=matrix) if kind == "ct-abdomen" else xr_knee.generate(s)
    return Subject(
        image=to_model_grid(img.pixels, img.spacing, card.input)[0],
        labels=labels_to_model_grid(img.labels, img.spacing, card.input)[0],
        spacing=tuple(card.input.spacing_mm),
        demographics={"sex": s.sex, "age_band": s.age_band, "ethnic_group": s.ethnic_group, "bmi_band": s.bmi_band},
    )


class SplitRecorder(logging.Handler):
    """Keeps the selection / registration seconds that ``estimate`` logs (as record extras) at DEBUG."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.splits: list[tuple[float, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        selection, registration = getattr(record, "rca_selection_s", None), getattr(record, "rca_registration_s", None)
        if selection is not None and registration is not None:
            self.splits.append((float(selection), float(registration)))


def build_bank(kind: str, n: int, matrix: int) -> ReferenceBank:
    card = load_card(bundled_models()[kind])
    bank = ReferenceBank.build(tuple(card.input.spacing_mm), tuple(label.name for label in card.labels))
    for i in track(range(n), description=f"bank: {n} {kind} references", console=console):
        ref = make_subject(kind, i, BANK_SEED, matrix)
        bank.add(f"{kind}-{BANK_SEED}-{i}", ref.image, ref.labels, ref.spacing, ref.demographics)
    return bank


def timing(kind: str, bank: ReferenceBank, cases: list[Subject], k: int, settings: RcaSettings) -> None:
    recorder = SplitRecorder()
    rca_logger = logging.getLogger("quality.rca")
    rca_logger.addHandler(recorder)
    rca_logger.setLevel(logging.DEBUG)
    load_before = os.getloadavg()[0]
    walls, cpus = [], []
    try:
        for case in track(cases, description=f"estimate k={k}", console=console):
            cpu = time.process_time()
            result = estimate(case.image, case.labels, case.spacing, bank, k=k, settings=settings)
            cpus.append(time.process_time() - cpu)
            walls.append(result.seconds)
    finally:
        rca_logger.removeHandler(recorder)
    median = statistics.median(walls)
    warm = walls[1:] or walls
    table = Table(title=f"RCA {kind}, k={k}, bank of {len(bank.references)}, {len(cases)} cases")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("seconds per case, median", f"{median:.2f}")
    table.add_row("seconds per case, first (cold caches)", f"{walls[0]:.2f}")
    table.add_row("seconds per case, median of the others", f"{statistics.median(warm):.2f}")
    table.add_row("CPU seconds per case, median (all threads)", f"{statistics.median(cpus):.2f}")
    table.add_row("choosing references, median s", f"{statistics.median(s for s, _ in recorder.splits):.2f}")
    table.add_row("registering + scoring, median s", f"{statistics.median(r for _, r in recorder.splits):.2f}")
    table.add_row("faster than Valindria et al. (660 s/case)", f"{VALINDRIA_SECONDS / median:.0f}x")
    table.add_row("load average (1 min) before / after", f"{load_before:.1f} / {os.getloadavg()[0]:.1f}")
    table.add_row("CPU cores", str(os.cpu_count()))
    console.print(table)


def _morph(labels: np.ndarray, n: int) -> np.ndarray:
    """Every structure eroded (``n < 0``) or dilated into the background (``n > 0``) by ``|n|`` voxels."""
    out = np.zeros_like(labels)
    element = ndimage.generate_binary_structure(labels.ndim, 1)
    for value in range(1, int(labels.max()) + 1):
        mask = labels == value
        if n < 0:
            mask = ndimage.binary_erosion(mask, element, iterations=-n)
        elif n > 0:
            mask = ndimage.binary_dilation(mask, element, iterations=n) & ((labels == 0) | mask)
        out[mask & (out == 0)] = value
    return out


def wrong_masks(case: Subject) -> dict[str, np.ndarray]:
    """Masks that are clearly wrong: shifted 20 mm along columns, structure 1 eroded to a blob, 1 and 2
    swapped, structure 2 missing."""
    y = case.labels
    first = y == 1
    depth = ndimage.distance_transform_edt(first)
    blob = np.where(first & (depth < 0.6 * depth.max()), 0, y).astype(np.uint8)
    swapped = y.copy()
    swapped[y == 1], swapped[y == 2] = 2, 1
    return {
        "shifted 20 mm": np.roll(y, round(20 / case.spacing[-1]), axis=-1),
        "structure 1 eroded to a blob": blob,
        "structures 1 and 2 swapped": swapped,
        "structure 2 missing": np.where(y == 2, 0, y).astype(np.uint8),
    }


def accuracy(kind: str, bank: ReferenceBank, cases: list[Subject], k: int, settings: RcaSettings) -> None:
    names = bank.label_names
    n_labels = len(names)
    rows: dict[str, list[tuple[float, float]]] = {}  # kind of mask -> (true, estimate) of touched structures
    pairs: list[tuple[int, float, float, float]] = []  # (label, true, max estimate, mean estimate)
    amounts = (-4, -3, -2, -1, 1, 2, 3) if cases[0].image.ndim == 3 else (-8, -5, -3, -1, 2, 4, 7)
    for case in track(cases, description="accuracy", console=console):
        y = case.labels
        correct = estimate(case.image, y, case.spacing, bank, k=k, settings=settings)
        rows.setdefault("correct (ground truth)", []).extend((1.0, s.max_dice) for s in correct.structures)
        for name, mask in wrong_masks(case).items():
            result = estimate(case.image, mask, case.spacing, bank, k=k, settings=settings)
            for s in result.structures:
                true = dice(mask == s.label, y == s.label)
                if true < 0.99:
                    rows.setdefault(name, []).append((true, s.max_dice))
        for n in amounts:
            mask = _morph(y, n)
            result = estimate(case.image, mask, case.spacing, bank, k=k, settings=settings)
            for s in result.structures:
                pairs.append((s.label, dice(mask == s.label, y == s.label), s.max_dice, s.mean_dice))
    table = Table(title=f"RCA {kind}: estimate (max Dice over k={k}) against the true Dice")
    for column in ("mask", "n", "true Dice, mean", "RCA estimate, mean", "RCA estimate, max"):
        table.add_column(column, justify="right" if column != "mask" else "left")
    for name, values in rows.items():
        v = np.array(values)
        table.add_row(name, str(len(v)), f"{v[:, 0].mean():.3f}", f"{v[:, 1].mean():.3f}", f"{v[:, 1].max():.3f}")
    console.print(table)
    per_label = Table(title="correct masks: RCA estimate per structure (mean, min over cases)")
    per_label.add_column("structure")
    per_label.add_column("mean", justify="right")
    per_label.add_column("min", justify="right")
    correct_values = np.array([v for _, v in rows["correct (ground truth)"]]).reshape(-1, n_labels)
    for i, name in enumerate(names):
        per_label.add_row(name, f"{correct_values[:, i].mean():.3f}", f"{correct_values[:, i].min():.3f}")
    console.print(per_label)
    p = np.array(pairs)
    partial = p[(p[:, 1] >= 0.3) & (p[:, 1] <= 0.95)]
    corr = Table(title="partially wrong masks (eroded/dilated), true Dice 0.3-0.95")
    for column in ("structures", "n", "Pearson r (max)", "MAE (max)", "bias est-true (max)", "Pearson r (mean)"):
        corr.add_column(column, justify="right" if column != "structures" else "left")
    groups = [("all", partial)] + [(names[i], partial[partial[:, 0] == i + 1]) for i in range(n_labels)]
    for name, g in groups:
        if len(g) < 3:
            continue
        corr.add_row(
            name,
            str(len(g)),
            f"{stats.pearsonr(g[:, 1], g[:, 2])[0]:.3f}",
            f"{np.abs(g[:, 2] - g[:, 1]).mean():.3f}",
            f"{(g[:, 2] - g[:, 1]).mean():+.3f}",
            f"{stats.pearsonr(g[:, 1], g[:, 3])[0]:.3f}",
        )
    console.print(corr)


def _bank_like(card_bank: ReferenceBank, kind: str, n: int, spec: ShiftSpec) -> ReferenceBank:
    """A bank of ``n`` held-out subjects of ``spec`` (seed 3000) on the grid of the card's bank."""
    card = load_card(bundled_models()[kind])
    bank = ReferenceBank.build(card_bank.spacing, card_bank.label_names)
    for i in track(range(n), description=f"bank: {n} {spec.name}", console=console):
        s = draw_subject(kind, i, BANK_SEED, spec)
        img = xr_knee.generate(s) if kind == "xr-knee" else ct_abdomen.generate(s, matrix=256)
        demo = {"sex": s.sex, "age_band": s.age_band, "ethnic_group": s.ethnic_group, "bmi_band": s.bmi_band}
        x = to_model_grid(img.pixels, img.spacing, card.input)[0]
        y = labels_to_model_grid(img.labels, img.spacing, card.input)[0]
        bank.add(f"{spec.name}-{i}", x, y, tuple(card.input.spacing_mm), demo)
    return bank


def group_bias(kind: str, n_cases: int, n_refs: int, k: int) -> None:
    """RCA's error per sex and BMI band on equally good segmentations, per bank composition and selection."""
    from cohorts.shift import BALANCED
    from fairnode.bias_discovery.run import DEPLOY_SEED
    from fairnode.bias_discovery.scenarios import SEX_BALANCED
    from inference.segmenter import Segmenter

    folder = bundled_models()[kind]
    card = load_card(folder)
    assert card.quality is not None and card.quality.rca is not None
    shipped = ReferenceBank.load(folder / card.quality.rca.file)
    settings = RcaSettings.for_bank(shipped.ndim, card.quality.rca.settings)
    men = ShiftSpec(name="men-only", description="Men only.", groups=[Group(match=GroupMatch(sex="M"), share=1.0)])
    banks = {
        f"shipped {len(shipped.references)}, sex x BMI": shipped,
        f"population {n_refs}": _bank_like(shipped, kind, n_refs, BALANCED),
        f"men only {n_refs}": _bank_like(shipped, kind, n_refs, men),
    }
    segmenter = Segmenter(folder, prefer_gpu=False)
    cases = []
    for i in track(range(n_cases), description="cases", console=console):
        s = draw_subject(kind, i, DEPLOY_SEED, SEX_BALANCED)
        img = xr_knee.generate(s) if kind == "xr-knee" else ct_abdomen.generate(s, matrix=256)
        x = to_model_grid(img.pixels, img.spacing, card.input)
        predicted = np.argmax(segmenter.model_grid_probabilities(x), axis=0).astype(np.uint8)
        truth = labels_to_model_grid(img.labels, img.spacing, card.input)[0]
        cases.append((s, x[0], predicted, truth))
    rng = np.random.default_rng(0)
    table = Table(title=f"RCA {kind}: error (raw RCA - true Dice) by group, on the bundled model's segmentations")
    for column in ("bank", "selection", "women", "men", "women - men", "obese", "normal", "obese - normal"):
        table.add_column(column, justify="left" if column in ("bank", "selection") else "right")
    spacing = tuple(card.input.spacing_mm)
    for bank_name, bank in banks.items():
        for selection in ("k nearest", "k random"):
            errors: dict[str, list[float]] = {}
            for s, x, predicted, truth in track(cases, description=f"{bank_name}, {selection}", console=console):
                use = bank
                if selection == "k random":
                    use = ReferenceBank.build(bank.spacing, bank.label_names)
                    use.references = [bank.references[int(j)] for j in rng.choice(len(bank.references), k, False)]
                result = estimate(x, predicted, spacing, use, k=k, settings=settings)
                true = [dice(predicted == st.label, truth == st.label) for st in result.structures]
                err = float(np.mean([st.max_dice - t for st, t in zip(result.structures, true, strict=True)]))
                for group in (s.sex, s.bmi_band):
                    errors.setdefault(group, []).append(err)

            def mean(g: str, e: dict[str, list[float]] = errors) -> float:
                return float(np.mean(e[g])) if e.get(g) else float("nan")

            table.add_row(
                bank_name,
                selection,
                *(f"{v:+.3f}" for v in (mean("F"), mean("M"), mean("F") - mean("M"))),
                *(f"{v:+.3f}" for v in (mean("obese"), mean("normal"), mean("obese") - mean("normal"))),
            )
    table.caption = f"{n_cases} cases, k={k}, load average {os.getloadavg()[0]:.1f}"
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("ct-abdomen", "xr-knee"), default="ct-abdomen")
    parser.add_argument("--refs", type=int, default=20)
    parser.add_argument("--cases", type=int, default=5)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--matrix", type=int, default=256, help="CT matrix of the generated phantoms")
    parser.add_argument("--accuracy", action="store_true", help="also score wrong and partially wrong masks")
    parser.add_argument(
        "--group-bias", action="store_true", help="only: RCA's error per sex and BMI band, per bank and selection"
    )
    args = parser.parse_args()
    if args.group_bias:
        group_bias(args.kind, args.cases, args.refs, args.k)
        return
    settings = RcaSettings() if args.kind == "ct-abdomen" else RcaSettings.radiograph()

    bank = build_bank(args.kind, args.refs, args.matrix)
    with tempfile.TemporaryDirectory() as folder:
        path = bank.save(Path(folder) / "bank.npz")
        size = path.stat().st_size
        bank = ReferenceBank.load(path)
    console.print(f"bank of {len(bank.references)} references on disk: {size / 1e6:.2f} MB ({path.name})")
    console.print(f"composition: {bank.composition()}")
    cases = [
        make_subject(args.kind, i, CASE_SEED, args.matrix)
        for i in track(range(args.cases), description="cases", console=console)
    ]
    timing(args.kind, bank, cases, args.k, settings)
    if args.accuracy:
        accuracy(args.kind, bank, cases, args.k, settings)


if __name__ == "__main__":
    main()
