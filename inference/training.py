"""Train, export and validate the bundled models on cohorts the project generates.

The one module of ``inference`` that imports ``cohorts``: training needs images with ground truth.
Each model has a :class:`Recipe` (cohort, network, input spec, schedule); :func:`train_model` runs it
end to end with fixed seeds:

1. draw the training cohort and put every image on the model grid (in parallel worker processes);
2. train the MONAI UNet on foreground-biased random patches with Dice + cross-entropy loss;
3. export the deterministic and the MC-dropout ONNX graphs and check them against torch;
4. validate the exported graph through :class:`~inference.segmenter.Segmenter` on a held-out cohort
   generated at native resolution, Dice per label overall and per demographic group;
5. write the model card.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from monai.losses import DiceCELoss

from cohorts.kinds import get_kind
from cohorts.make import composition
from cohorts.shift import BALANCED, ShiftSpec
from cohorts.subjects import Subject, draw_subject
from inference.export import export_graphs, max_abs_difference
from inference.metrics import monai_dice_per_label
from inference.mitigation import Mitigation
from inference.model_card import (
    CohortSpec,
    InputSpec,
    IntensitySpec,
    LabelSpec,
    ModelCard,
    ModelFiles,
    NetworkSpec,
    TrainingSpec,
    ValidationSpec,
    save_card,
    sha256_of,
)
from inference.network import build_unet
from inference.preprocess import label_fractions_to_model_grid, labels_to_model_grid, to_model_grid
from inference.segmenter import Segmenter

logger = logging.getLogger(__name__)

T = TypeVar("T")

GROUP_ATTRIBUTES: tuple[str, ...] = ("sex", "age_band", "ethnic_group", "bmi_band")
#: ONNX Runtime probabilities must match torch within this (deterministic graph).
EXPORT_TOLERANCE = 1e-4
#: the trained torch weights, shipped beside the graphs (the export's reference; small)
WEIGHTS_FILE = "weights.pt"


@dataclass(frozen=True)
class Recipe:
    """Everything that defines a bundled model, so that ``make models`` rebuilds it identically."""

    name: str
    kind: str
    version: str
    description: str
    input: InputSpec
    network: NetworkSpec
    n_train: int
    n_validate: int
    iterations: int
    batch_size: int = 2
    learning_rate: float = 2e-3
    train_seed: int = 1000
    validate_seed: int = 2000
    foreground_ratio: float = 0.75
    #: extra arguments of the generator for training images (e.g. a smaller CT matrix: faster, and the
    #: model grid is coarser than either); validation always uses the generator's defaults
    train_generate_kwargs: tuple[tuple[str, object], ...] = ()
    #: who is in the training cohort (e.g. an under-represented group, to study bias); the bundled
    #: recipes train on the balanced population
    train_shift: ShiftSpec = BALANCED
    #: bias mitigation (:mod:`inference.mitigation`): strategy and the group attributes it balances
    mitigation: str = "none"
    group_by: tuple[str, ...] = ("sex",)
    #: train on partial-volume class fractions (:func:`~inference.preprocess.label_fractions_to_model_grid`)
    #: instead of nearest labels: for a model grid coarser than the source, whose nearest labels alias
    soft_labels: bool = False


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            name="ct-abdomen",
            kind="ct-abdomen",
            version="1.0.0",
            description="3D UNet segmenting liver, spleen, right and left kidney and aorta on portal-venous "
            "abdominal CT.",
            input=InputSpec(
                modality="CT",
                spatial_dims=3,
                spacing_mm=(3.0, 3.0, 3.0),
                patch_size=(48, 96, 96),
                intensity=IntensitySpec(mode="window", low=-250.0, high=350.0),
            ),
            network=NetworkSpec(channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=1, dropout=0.1),
            n_train=80,
            n_validate=40,
            iterations=900,
            train_generate_kwargs=(("matrix", 256),),
        ),
        Recipe(
            name="xr-knee",
            kind="xr-knee",
            version="1.0.0",
            description="2D UNet segmenting femur, tibia, fibula and patella on AP knee radiographs.",
            input=InputSpec(
                modality="DX",
                spatial_dims=2,
                spacing_mm=(1.0, 1.0),
                patch_size=(256, 256),
                intensity=IntensitySpec(mode="percentile", low=1.0, high=99.0),
                mirror_axes=(1,),  # a mirrored AP knee is the other knee, and the cohort has both
            ),
            network=NetworkSpec(channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1, dropout=0.1),
            n_train=160,
            n_validate=40,
            iterations=900,
            batch_size=4,
        ),
        Recipe(
            name="mr-brain",
            kind="mr-brain",
            version="1.1.0",
            description="3D UNet segmenting grey matter, white matter and CSF on T1-weighted brain MR.",
            input=InputSpec(
                modality="MR",
                spatial_dims=3,
                spacing_mm=(1.5, 1.5, 1.5),
                patch_size=(64, 64, 64),
                intensity=IntensitySpec(mode="percentile", low=1.0, high=99.0),
                mirror_axes=(2,),  # the tissue classes have no side, and the MNI152 2009 template is symmetric
            ),
            network=NetworkSpec(channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1, dropout=0.1),
            n_train=48,
            n_validate=40,
            iterations=1400,
            # nearest labels on the 1.5 mm grid cap held-out CSF Dice at 0.89 (benchmarks/mr_brain_ceiling.py)
            soft_labels=True,
        ),
    )
}


@dataclass
class Example:
    """One training image on the model grid.

    ``image`` is ``(1, *spatial)`` float32 in [0, 1]; ``labels`` ``(1, *spatial)`` uint8; ``fractions``, with
    a recipe's ``soft_labels``, ``(classes, *spatial)`` float16 class fractions (the training target).
    """

    subject: Subject
    image: np.ndarray
    labels: np.ndarray
    fractions: np.ndarray | None = None


def _prepare(args: tuple[Recipe, int, int]) -> Example:
    recipe, index, seed = args
    subject = draw_subject(recipe.kind, index, seed, recipe.train_shift)
    synth = get_kind(recipe.kind).generate(subject, **dict(recipe.train_generate_kwargs))
    fractions = None
    if recipe.soft_labels:
        n_classes = len(get_kind(recipe.kind).labels) + 1
        fractions = label_fractions_to_model_grid(synth.labels, synth.spacing, recipe.input, n_classes)
    return Example(
        subject=subject,
        image=to_model_grid(synth.pixels, synth.spacing, recipe.input),
        labels=labels_to_model_grid(synth.labels, synth.spacing, recipe.input),
        fractions=None if fractions is None else fractions.astype(np.float16),
    )


def prepare_examples(
    recipe: Recipe, n: int, seed: int, workers: int, progress: Callable[[], None] | None = None
) -> list[Example]:
    """Generate ``n`` subjects and put them on the model grid, ``workers`` processes in parallel."""
    jobs = [(recipe, i, seed) for i in range(n)]
    out: list[Example] = []
    for ex in _parallel_map(_prepare, jobs, workers):
        out.append(ex)
        if progress:
            progress()
    return out


def _parallel_map(fn: Callable[[Any], T], jobs: list[Any], workers: int) -> Iterator[T]:
    """``fn`` over ``jobs`` in ``workers`` processes, or in this process for one worker (no fork: a process
    with threads, such as a running node or a test session, may deadlock a forked child)."""
    if workers <= 1:
        yield from map(fn, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(fn, jobs)


def sample_patch(
    ex: Example, patch: tuple[int, ...], rng: np.random.Generator, foreground_ratio: float
) -> tuple[np.ndarray, np.ndarray]:
    """A random patch of ``ex`` (zero-padded where the image is smaller, background there), centred on a random
    voxel of a random foreground class with probability ``foreground_ratio``, else anywhere; the target patch
    is of ``ex.fractions`` (float32) where the example has them, else of ``ex.labels``."""
    spatial = ex.image.shape[1:]
    present = [int(v) for v in np.unique(ex.labels) if v > 0]
    if present and rng.random() < foreground_ratio:
        coords = np.argwhere(ex.labels[0] == present[int(rng.integers(len(present)))])
        centre = coords[int(rng.integers(len(coords)))]
    else:
        centre = np.array([int(rng.integers(n)) for n in spatial])
    img = np.zeros((1, *patch), np.float32)
    target = ex.labels if ex.fractions is None else ex.fractions
    lab = np.zeros((target.shape[0], *patch), np.uint8 if ex.fractions is None else np.float32)
    if ex.fractions is not None:
        lab[0] = 1.0  # background beyond the image
    src, dst = [], []
    for c, n, p in zip(centre, spatial, patch, strict=True):
        start = int(np.clip(c - p // 2, 0, max(0, n - p)))
        stop = min(n, start + p)
        src.append(slice(start, stop))
        dst.append(slice(0, stop - start))
    img[(slice(None), *dst)] = ex.image[(slice(None), *src)]
    lab[(slice(None), *dst)] = target[(slice(None), *src)]
    return img, lab


def augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Contrast, brightness and noise jitter (no flips: left and right structures must stay apart)."""
    img = img * rng.uniform(0.85, 1.15) + rng.uniform(-0.08, 0.08)
    gamma = rng.uniform(0.8, 1.25)
    img = np.clip(img, 0, None) ** gamma
    img = img + rng.normal(0, rng.uniform(0, 0.03), img.shape).astype(np.float32)
    return img.astype(np.float32)


def train_network(
    recipe: Recipe,
    examples: list[Example],
    step: Callable[[int, float], None] | None = None,
    mitigation: Mitigation | None = None,
) -> torch.nn.Module:
    """Train the recipe's UNet on ``examples``; ``step(iteration, loss)`` is called after each iteration.

    With ``mitigation``, its batches choose the examples of each iteration and its loss combines the
    per-sample losses (see :mod:`inference.mitigation`); without, examples are drawn uniformly as the
    bundled recipes always were (same random stream, same models).
    """
    if mitigation is not None:
        return _train_mitigated(recipe, examples, mitigation, step)
    rng, model, opt, sched, loss_fn = _training_state(recipe)
    for it in range(recipe.iterations):
        batch = [
            sample_patch(
                examples[int(rng.integers(len(examples)))],
                recipe.input.patch_size,
                rng,
                recipe.foreground_ratio,
            )
            for _ in range(recipe.batch_size)
        ]
        x = torch.from_numpy(np.stack([augment(b[0], rng) for b in batch]))
        y = _targets([b[1] for b in batch])
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step:
            step(it, loss.item())
    model.eval()
    return model


def _targets(patches: list[np.ndarray]) -> torch.Tensor:
    """The loss's target batch: class indices (int64) of label patches, or the fractions (float32) as they are."""
    y = np.stack(patches)
    return torch.from_numpy(y if y.dtype == np.float32 else y.astype(np.int64))


_TrainingState = tuple[
    np.random.Generator, torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.OneCycleLR, DiceCELoss
]


def _training_state(recipe: Recipe) -> _TrainingState:
    """Seeded generator, network in training mode, optimiser, schedule and loss of ``recipe`` (the seeds are
    set first, so every training of a recipe starts from the same weights and random stream)."""
    torch.manual_seed(recipe.train_seed)
    rng = np.random.default_rng(recipe.train_seed)
    n_classes = len(get_kind(recipe.kind).labels) + 1
    model = build_unet(recipe.network, recipe.input.spatial_dims, n_classes)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=recipe.learning_rate, total_steps=recipe.iterations, pct_start=0.1
    )
    # soft targets: Dice and cross-entropy of the fractions themselves (MONAI takes probabilities as a target)
    loss = DiceCELoss(to_onehot_y=not recipe.soft_labels, softmax=True, include_background=False)
    return rng, model, opt, sched, loss


def _train_mitigated(
    recipe: Recipe,
    examples: list[Example],
    mitigation: Mitigation,
    step: Callable[[int, float], None] | None,
) -> torch.nn.Module:
    rng, model, opt, sched, loss_fn = _training_state(recipe)
    batches = mitigation.batches(recipe.iterations, recipe.batch_size, recipe.train_seed + 1)
    for it, indices in enumerate(batches):
        batch = [sample_patch(examples[i], recipe.input.patch_size, rng, recipe.foreground_ratio) for i in indices]
        x = torch.from_numpy(np.stack([augment(b[0], rng) for b in batch]))
        y = _targets([b[1] for b in batch])
        logits = model(x)
        per_sample = torch.stack([loss_fn(logits[k : k + 1], y[k : k + 1]) for k in range(len(indices))])
        loss = mitigation.loss(per_sample, indices)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step:
            step(it, loss.item())
    model.eval()
    return model


def dice_per_label(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """Dice of each foreground class (``n_classes - 1`` values; NaN where the truth lacks the class).

    :func:`inference.metrics.monai_dice_per_label` (MONAI's ``compute_dice``), whose convention applies.
    """
    return monai_dice_per_label(pred, truth, n_classes)


def _validate_one(args: tuple[Recipe, Path, int]) -> tuple[Subject, np.ndarray]:
    recipe, model_dir, index = args
    torch.set_num_threads(1)
    subject = draw_subject(recipe.kind, index, recipe.validate_seed)
    synth = get_kind(recipe.kind).generate(subject)
    seg = Segmenter(model_dir, prefer_gpu=False)
    pred = seg.segment(synth.pixels, synth.spacing)
    return subject, dice_per_label(pred, synth.labels, seg.card.n_classes)


def validate(
    recipe: Recipe, model_dir: Path, workers: int, progress: Callable[[], None] | None = None
) -> ValidationSpec:
    """Dice of the exported model on a held-out cohort at native resolution, overall and per group."""
    names = [lab.name for lab in get_kind(recipe.kind).labels]
    results: list[tuple[Subject, np.ndarray]] = []
    jobs = [(recipe, model_dir, i) for i in range(recipe.n_validate)]
    for res in _parallel_map(_validate_one, jobs, workers):
        results.append(res)
        if progress:
            progress()

    def mean_dice(rows: list[np.ndarray]) -> dict[str, float]:
        arr = np.stack(rows)
        return {n: round(float(np.nanmean(arr[:, i])), 4) for i, n in enumerate(names)}

    by_group: dict[str, dict[str, dict[str, float]]] = {}
    n_by_group: dict[str, dict[str, int]] = {}
    for attr in GROUP_ATTRIBUTES:
        groups: dict[str, list[np.ndarray]] = {}
        for subject, d in results:
            groups.setdefault(str(getattr(subject, attr)), []).append(d)
        by_group[attr] = {g: mean_dice(rows) for g, rows in sorted(groups.items())}
        n_by_group[attr] = {g: len(rows) for g, rows in sorted(groups.items())}
    rows = [_subject_row(s) for s, _ in results]
    return ValidationSpec(
        cohort=CohortSpec(kind=recipe.kind, n=recipe.n_validate, seed=recipe.validate_seed),
        composition={k: v for k, v in composition(rows).items() if k in GROUP_ATTRIBUTES},
        dice=mean_dice([d for _, d in results]),
        dice_by_group=by_group,
        n_by_group=n_by_group,
    )


def _subject_row(s: Subject) -> dict[str, object]:
    return {a: getattr(s, a) for a in GROUP_ATTRIBUTES} | {"group": s.group}


def label_specs(kind: str) -> tuple[LabelSpec, ...]:
    return tuple(
        LabelSpec(
            value=lab.value,
            name=lab.name,
            code=lab.code,
            meaning=lab.meaning,
            category_code=lab.category_code,
            category_meaning=lab.category_meaning,
            color=lab.color,
        )
        for lab in get_kind(kind).labels
    )


def build_card(
    recipe: Recipe,
    folder: Path,
    training: TrainingSpec,
    validation: ValidationSpec | None,
) -> ModelCard:
    return ModelCard(
        name=recipe.name,
        version=recipe.version,
        description=recipe.description,
        labels=label_specs(recipe.kind),
        input=recipe.input,
        network=recipe.network,
        files=ModelFiles(
            deterministic_sha256=sha256_of(folder / "model.onnx"),
            mc_dropout_sha256=sha256_of(folder / "model_mc.onnx"),
            weights_sha256=sha256_of(folder / WEIGHTS_FILE),
        ),
        training=training,
        validation=validation,
        reproduce=(
            "make install",
            f".venv/bin/fairnode model train {recipe.name}",
        ),
    )


def export_and_check(recipe: Recipe, model: torch.nn.Module, folder: Path) -> float:
    """Export both graphs into ``folder``; returns the torch/ONNX max abs difference (deterministic graph).

    Raises
    ------
    RuntimeError
        if the deterministic graph differs from torch by more than :data:`EXPORT_TOLERANCE`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / WEIGHTS_FILE)  # kept first: a failed check loses no training
    det, _ = export_graphs(model, recipe.input.patch_size, folder)
    rng = np.random.default_rng(0)
    x = rng.random((1, 1, *recipe.input.patch_size), dtype=np.float32)
    diff = max_abs_difference(model, det, x)
    if diff > EXPORT_TOLERANCE:
        raise RuntimeError(f"ONNX export of {recipe.name} differs from torch by {diff:.2e} > {EXPORT_TOLERANCE}")
    return diff


def training_spec(recipe: Recipe, examples: list[Example], seconds: float) -> TrainingSpec:
    rows = [_subject_row(ex.subject) for ex in examples]
    return TrainingSpec(
        cohort=CohortSpec(kind=recipe.kind, n=recipe.n_train, seed=recipe.train_seed, shift=recipe.train_shift.name),
        composition={k: v for k, v in composition(rows).items() if k in GROUP_ATTRIBUTES},
        iterations=recipe.iterations,
        batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate,
        seed=recipe.train_seed,
        seconds=round(seconds, 1),
        device=f"cpu x{torch.get_num_threads()} threads",
    )


class TrainingProgress:
    """Callbacks the caller supplies to show progress (all optional)."""

    def stage(self, name: str, total: int) -> None:
        """A new stage of ``total`` steps begins."""

    def advance(self, info: str = "") -> None:
        """One step of the current stage is done."""


def train_model(
    recipe: Recipe,
    folder: Path,
    workers: int = 2,
    progress: TrainingProgress | None = None,
    *,
    validate_model: bool = True,
) -> ModelCard:
    """Run ``recipe`` end to end and write the model (two graphs + card) into ``folder``.

    ``validate_model=False`` skips the held-out validation (the card then has none), for experiments that
    validate the model their own way.
    """
    p = progress or TrainingProgress()
    t0 = time.perf_counter()
    p.stage(f"{recipe.name}: generating {recipe.n_train} training subjects", recipe.n_train)
    examples = prepare_examples(recipe, recipe.n_train, recipe.train_seed, workers, lambda: p.advance())
    p.stage(f"{recipe.name}: training {recipe.iterations} iterations", recipe.iterations)
    model = train_network(recipe, examples, lambda it, loss: p.advance(f"loss {loss:.3f}"))
    seconds = time.perf_counter() - t0
    diff = export_and_check(recipe, model, folder)
    logger.info("%s exported; ONNX vs torch max abs difference %.2e", recipe.name, diff)
    training = training_spec(recipe, examples, seconds)
    save_card(build_card(recipe, folder, training, None), folder)
    if not validate_model:
        return build_card(recipe, folder, training, None)
    p.stage(f"{recipe.name}: validating on {recipe.n_validate} held-out subjects", recipe.n_validate)
    validation = validate(recipe, folder, workers, lambda: p.advance())
    card = build_card(recipe, folder, training, validation)
    save_card(card, folder)
    return card
