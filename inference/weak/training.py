"""Training from image-level labels: the lesion classifier, then the counterfactual generator (COIN).

Both run inside :func:`inference.weak.slices.no_truth_access` and take a
:class:`~inference.weak.slices.SliceSet` (images and labels, no masks); slices without a training label
(:data:`~inference.weak.slices.UNLABELLED`) are left out. Batches are balanced between lesion and
lesion-free slices. The generator's loss (Shvetsov et al. 2024) is

``w_cls * BCE(f(a(x_cf)), normal) + w_adv * (D(x_cf) - 1)^2 + w_close * |x_cf - x| + w_tv * TV(x_cf - x)
+ w_id * |x_cf - x|[normal]``

with the classifier ``f`` frozen (evaluation mode), ``D`` a least-squares discriminator trained on real
normal slices against counterfactuals, the closeness term on every slice (so that it changes only what
it must), the total variation of the change (a filled-in region costs its outline, scattered small changes
cost every pixel's edges) and the identity term on the lesion-free slices. The classifier judges the
counterfactual through the training augmentation ``a`` (flips, shifts, intensity jitter, noise): a change
that flips it only at one alignment and without noise, an adversarial pattern rather than a removed
lesion, does not lower the loss. Classifier and critic see the change inside the liver region only (the
slices' ``regions``, where the mask is taken); closeness and total variation count the change everywhere.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from inference.weak import nets
from inference.weak.slices import SliceSet, no_truth_access

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoinWeights:
    """Weights of the generator's loss terms."""

    cls: float = 1.0
    adv: float = 0.1
    close: float = 10.0
    smooth: float = 30.0
    identity: float = 20.0


@dataclass
class History:
    """Loss per logged step and the wall time (s)."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _balanced_batches(labels: np.ndarray, batch: int, steps: int, rng: np.random.Generator) -> list[np.ndarray]:
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"training needs lesion and lesion-free slices; got {pos.size} and {neg.size}")
    half = batch // 2
    return [np.concatenate([rng.choice(pos, half), rng.choice(neg, batch - half)]) for _ in range(steps)]


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels of ``(B, C, H, W)``, rows plus columns."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips, shifts of up to 8 pixels, intensity scale/offset and noise: lesions may lie anywhere,
    and the classifier must not key on where a subject's anatomy sits or on tiny patterns."""
    b = x.shape[0]
    flip_h = torch.rand(b, generator=gen) < 0.5
    flip_v = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip_h[:, None, None, None], x.flip(3), x)
    x = torch.where(flip_v[:, None, None, None], x.flip(2), x)
    dy, dx = (int(v) for v in torch.randint(-8, 9, (2,), generator=gen))
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    scale = 1.0 + 0.1 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)
    offset = 0.05 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)
    return x * scale + offset + 0.02 * torch.randn(x.shape, generator=gen)


def train_classifier(
    data: SliceSet, steps: int = 600, batch: int = 32, lr: float = 1e-3, seed: int = 0
) -> tuple[nn.Module, History]:
    """Train the lesion classifier on image-level labels; returns it in evaluation mode and its history."""
    data = data.labelled()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    model = nets.classifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    loss_fn = nn.BCEWithLogitsLoss()
    hist = History()
    t0 = time.monotonic()
    with no_truth_access():
        images = torch.from_numpy(data.images)
        labels = torch.from_numpy(data.labels.astype(np.float32))
        model.train()
        for step, idx in enumerate(_balanced_batches(data.labels, batch, steps, rng)):
            x = _augment(images[idx], gen)
            loss = loss_fn(model(x)[:, 0], labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if step % 20 == 0 or step == steps - 1:
                hist.steps.append(step)
                hist.loss.append(float(loss.detach()))
                logger.info("classifier step %d loss %.4f", step, float(loss.detach()))
        _settle_batch_norm(model, images, data.labels, batch, rng, gen)
    hist.seconds = time.monotonic() - t0
    return model.eval(), hist


@torch.no_grad()
def _settle_batch_norm(
    model: nn.Module,
    images: torch.Tensor,
    labels: np.ndarray,
    batch: int,
    rng: np.random.Generator,
    gen: torch.Generator,
    batches: int = 50,
) -> None:
    """Batch-norm statistics of the final weights: the running averages, taken while the weights moved,
    replaced by plain averages over ``batches`` training batches (drawn and augmented as in training)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for idx in _balanced_batches(labels, batch, batches, rng):
        model(_augment(images[idx], gen))
    for m in norms:
        m.momentum = 0.1


def train_generator(
    data: SliceSet,
    classifier: nn.Module,
    steps: int = 800,
    batch: int = 16,
    lr: float = 5e-4,
    weights: CoinWeights = CoinWeights(),
    seed: int = 0,
) -> tuple[nn.Module, History]:
    """Train the counterfactual generator against the frozen ``classifier``; returns it in evaluation mode."""
    data = data.labelled()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    jitter = torch.Generator().manual_seed(seed + 2)
    generator = nets.Counterfactual()
    critic = nets.discriminator()
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(critic.parameters(), lr=lr, betas=(0.5, 0.999))
    classifier.eval()
    for p in classifier.parameters():
        p.requires_grad_(False)
    bce = nn.BCEWithLogitsLoss()
    hist = History()
    t0 = time.monotonic()
    normal_idx = np.flatnonzero(data.labels == 0)
    with no_truth_access():
        images = torch.from_numpy(data.images)
        regions = torch.from_numpy(data.regions.astype(np.float32))[:, None]
        for step, idx in enumerate(_balanced_batches(data.labels, batch, steps, rng)):
            x = images[idx]
            normal = torch.from_numpy((data.labels[idx] == 0).astype(np.float32))[:, None, None, None]
            generator.train()
            delta = generator(x) - x
            # the classifier and the critic judge the change inside the liver region, where the mask is taken;
            # closeness and total variation count all of it, so that the generator leaves the outside alone
            x_cf = x + regions[idx] * delta
            change = delta.abs()
            loss_cls = bce(classifier(_augment(x_cf, jitter))[:, 0], torch.zeros(len(idx)))
            loss_adv = ((critic(x_cf) - 1.0) ** 2).mean()
            loss_close = change.mean()
            loss_tv = total_variation(delta)
            loss_id = (change * normal).sum() / normal.sum().clamp(min=1.0) / float(np.prod(x.shape[1:]))
            loss = (
                weights.cls * loss_cls
                + weights.adv * loss_adv
                + weights.close * loss_close
                + weights.smooth * loss_tv
                + weights.identity * loss_id
            )
            opt_g.zero_grad()
            loss.backward()
            opt_g.step()
            real = images[rng.choice(normal_idx, len(idx))]
            loss_d = ((critic(real) - 1.0) ** 2).mean() + (critic(x_cf.detach()) ** 2).mean()
            opt_d.zero_grad()
            loss_d.backward()
            opt_d.step()
            if step % 20 == 0 or step == steps - 1:
                hist.steps.append(step)
                hist.loss.append(float(loss.detach()))
                logger.info(
                    "generator step %d loss %.4f (cls %.3f adv %.3f close %.4f tv %.4f id %.4f; critic %.3f)",
                    step,
                    *(float(t.detach()) for t in (loss, loss_cls, loss_adv, loss_close, loss_tv, loss_id, loss_d)),
                )
    for p in classifier.parameters():
        p.requires_grad_(True)
    hist.seconds = time.monotonic() - t0
    return generator.eval(), hist
