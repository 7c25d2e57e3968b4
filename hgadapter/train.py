"""The one training loop every gradient-trained method runs, and the learning-rate schedules.

Each epoch shuffles the few-shot images and draws one of each image's V cached augmented views
(training on freshly augmented images, as the methods' own code does); every step sets the
learning rate from a schedule, minimises the method's loss on the batch and steps the optimiser;
after each epoch the validation accuracy of the method's logits is recorded. CLIP features stay
frozen: only the method's module is trained. What differs between methods is their module, loss,
optimiser and schedule (HeGraphAdapter: paper Sec. 3.2 and 4.1, Eq. 9; the baselines:
docs/baselines.md).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from hgadapter.config import CHECKPOINTS  # a config value's choices, defined where configs are
from hgadapter.protocol import FitContext, SelectionData, accuracy, require_validation

__all__ = [
    "CHECKPOINTS",
    "SAMPLINGS",
    "Schedule",
    "TrainResult",
    "train_loop",
    "learning_rate",
    "warmup_cosine",
    "dassl_lr",
    "dassl_schedule",
    "step_cosine_lr",
    "step_cosine",
]

# How an epoch's batches are drawn from the few-shot set's (N, V) views: each image once with one
# random view ("image"), or the pool of every (image, view) pair shuffled and cut into the epoch's
# batches, an image possibly twice in a batch (CLAP's 20 pooled augmented passes).
SAMPLINGS: tuple[str, ...] = ("image", "pool")

Schedule = Callable[[int, int], float]
"""``(step, steps_per_epoch) -> learning rate`` for the 0-based global step about to run."""


def learning_rate(step: int, *, total_steps: int, warmup_steps: int, lr: float, warmup_lr: float) -> float:
    """Linear warmup from ``warmup_lr`` to ``lr`` over ``warmup_steps``, then cosine decay to 0."""
    if step < warmup_steps:
        return warmup_lr + (lr - warmup_lr) * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return 0.5 * lr * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(*, epochs: int, warmup_epochs: int, lr: float, warmup_lr: float) -> Schedule:
    """:func:`learning_rate` updated every step, warmup and decay counted in epochs (HeGraphAdapter)."""

    def schedule(step: int, steps_per_epoch: int) -> float:
        return learning_rate(
            step,
            total_steps=epochs * steps_per_epoch,
            warmup_steps=min(warmup_epochs, epochs) * steps_per_epoch,
            lr=lr,
            warmup_lr=warmup_lr,
        )

    return schedule


def dassl_lr(epoch: int, *, epochs: int, lr: float, warmup_epochs: int, warmup_lr: float) -> float:
    """Dassl's ``cosine`` schedule with ``constant`` warmup, updated once per epoch.

    The first ``warmup_epochs`` epochs run at ``warmup_lr``; epoch e after them runs at
    ``lr / 2 * (1 + cos(pi * (e - warmup_epochs) / epochs))`` (CoOp, TaskRes, CLIP-Adapter and
    GraphAdapter all train with this schedule).
    """
    if epoch < warmup_epochs:
        return warmup_lr
    return 0.5 * lr * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / max(epochs, 1)))


def dassl_schedule(*, epochs: int, lr: float, warmup_epochs: int, warmup_lr: float) -> Schedule:
    """:func:`dassl_lr` of the step's epoch."""

    def schedule(step: int, steps_per_epoch: int) -> float:
        return dassl_lr(step // steps_per_epoch, epochs=epochs, lr=lr, warmup_epochs=warmup_epochs, warmup_lr=warmup_lr)

    return schedule


def step_cosine_lr(step: int, *, total_steps: int, lr: float) -> float:
    """PyTorch's ``CosineAnnealingLR(T_max=total_steps)`` stepped after every batch (Tip-Adapter-F)."""
    return 0.5 * lr * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def step_cosine(*, epochs: int, lr: float) -> Schedule:
    """:func:`step_cosine_lr` over all ``epochs`` worth of steps."""

    def schedule(step: int, steps_per_epoch: int) -> float:
        return step_cosine_lr(step, total_steps=epochs * steps_per_epoch, lr=lr)

    return schedule


@dataclass
class TrainResult:
    """What :func:`train_loop` did.

    Attributes:
        history: per epoch ``epoch``, ``loss`` (mean over images), ``lr`` (the epoch's last
            step's), ``val_acc``.
        epoch: the epoch whose weights were kept (0 = the initial weights).
        val_acc: validation accuracy of the kept weights (percent).
        seconds: wall time of the loop, per-epoch validation included.
        trainable_params: number of trained parameter values in the module.
    """

    history: list[dict] = field(default_factory=list)
    epoch: int = 0
    val_acc: float = 0.0
    seconds: float = 0.0
    trainable_params: int = 0


def train_loop(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    data: SelectionData,
    ctx: FitContext,
    *,
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    epochs: int,
    batch_size: int,
    checkpoint: str = "last",
    drop_last: bool = False,
    samples: tuple[torch.Tensor, torch.Tensor] | None = None,
    sampling: str = "image",
    after_step: Callable[[int], None] | None = None,
    ties: str = "first",
    desc: str = "train",
) -> TrainResult:
    """Minimise ``loss_fn`` on ``data``'s few-shot set, one random view per image per epoch.

    With ``checkpoint="best_val"`` the weights of the epoch with the best validation accuracy
    (the earliest on ties) are restored at the end; otherwise the last epoch's stay. The view and
    batch draws come from a generator seeded with ``ctx.seed``, two draws per epoch (the image
    order, then each image's view), so a seed fixes the whole sequence of batches; ``drop_last``
    changes which images are used, never the draws.

    Args:
        module: holds every trainable parameter (its ``state_dict`` is the checkpoint).
        optimizer: over ``module``'s parameters; its learning rate is set before every step.
        schedule: the learning rate of each step.
        data: the few-shot images (``(N, V, d)`` views) and the validation split.
        ctx: seed, device, progress bar, log (one line per epoch) and tracker (each epoch's record).
        logits_fn: image features ``(B, d)`` -> logits ``(B, C)``; validated after every epoch.
        loss_fn: ``(views (B, d), labels (B,)) -> loss``; default: cross-entropy of ``logits_fn``.
        epochs / batch_size: how long, and how many images per step.
        drop_last: skip each epoch's last batch when it is partial (Dassl's training loader
            does, ``drop_last=True``, when there are at least ``batch_size`` images); the
            default uses every image every epoch.
        samples: fixed training samples ``(features (M, d), labels (M,))`` that replace the
            per-epoch view draws: every epoch steps over them in their given order, in batches of
            ``batch_size``, with no random draw (a full-batch method such as LP++ passes
            ``batch_size=M``).
        sampling: ``"image"`` (each image once per epoch, one random view) or ``"pool"``: every
            epoch shuffles all N V (image, view) pairs and takes as many batches of
            ``batch_size`` from them as the image loader would have (``drop_last`` included),
            each batch full (CLAP's source pools 20 augmented passes and batches it so).
        after_step: called with the 0-based global step after every optimiser step (LP++'s
            block-coordinate step on its text multipliers).
        ties: which epoch ``checkpoint="best_val"`` keeps among equal validation accuracies:
            the ``"first"`` or the ``"last"`` (LP++'s source keeps the later one).
        desc: the progress bar's label.
    """
    if loss_fn is None:

        def loss_fn(query: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits_fn(query), target)

    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if ties not in ("first", "last"):
        raise ValueError(f"ties must be 'first' or 'last', got {ties!r}")
    if checkpoint == "best_val":
        require_validation(data.val_labels, "checkpoint best_val (the epoch with the best validation accuracy)", "keep the last epoch (checkpoint: last; train.checkpoint=last for HeGraphAdapter)")
    device = ctx.device
    generator = torch.Generator().manual_seed(ctx.seed)
    views = F.normalize(data.train_set.features.float(), dim=-1).to(device)  # (N, V, d)
    labels = data.train_set.labels.to(device)  # (N,)
    val_x, val_y = data.val_features.float().to(device), data.val_labels.to(device)
    num_images, num_views = views.shape[0], views.shape[1]
    if samples is not None:
        fixed_x = samples[0].float().to(device)  # (M, d)
        labels = samples[1].to(device)  # (M,)
        num_images, drop_last = fixed_x.shape[0], False
    # Dassl drops the partial batch only when a full one exists (its loader keeps a lone short batch)
    dropping = drop_last and num_images > batch_size and num_images % batch_size != 0
    steps_per_epoch = num_images // batch_size if dropping else math.ceil(num_images / batch_size)
    images_per_epoch = steps_per_epoch * batch_size if dropping else num_images
    pooled = samples is None and sampling == "pool"
    if pooled:  # every batch full, from the pool of N V (image, view) pairs
        views, labels = views.reshape(num_images * num_views, 1, -1), labels.repeat_interleave(num_views)  # (N V, 1, d), (N V,)
        pool_size = num_images * num_views

    def val_accuracy() -> float:
        module.eval()
        with torch.no_grad():
            return accuracy(logits_fn(val_x), val_y)

    start = time.perf_counter()
    result = TrainResult(trainable_params=sum(p.numel() for p in module.parameters() if p.requires_grad))
    if epochs == 0:
        result.val_acc = val_accuracy()
        result.seconds = time.perf_counter() - start
        return result
    best_state, best_acc = None, -1.0
    step = 0
    bar = tqdm(range(epochs), desc=desc, unit="epoch", disable=None if ctx.progress else True, leave=False)  # None: no bar off a terminal
    for epoch in bar:
        module.train()
        if pooled:  # one draw: the pool's order; view index 0 of each (image, view) row
            order = torch.randperm(pool_size, generator=generator).to(device)
            view_idx = torch.zeros(pool_size, dtype=torch.long, device=device)
        elif samples is None:
            order = torch.randperm(num_images, generator=generator).to(device)
            view_idx = torch.randint(num_views, (num_images,), generator=generator).to(device)
        else:  # fixed samples, in their order: no draws
            order = torch.arange(num_images, device=device)
        total, seen = 0.0, 0
        starts = range(0, steps_per_epoch * batch_size, batch_size) if pooled else range(0, images_per_epoch, batch_size)
        for begin in starts:
            lr = schedule(step, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = order[begin : begin + batch_size]
            query = views[idx, view_idx[idx]] if samples is None else fixed_x[idx]  # (B, d): one augmented view per image
            loss = loss_fn(query, labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step(step)
            total += loss.item() * idx.numel()
            seen += idx.numel()
            step += 1
        val_acc = val_accuracy()
        record = {"epoch": epoch + 1, "loss": total / seen, "lr": lr, "val_acc": val_acc}
        result.history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", val=f"{val_acc:.1f}")
        ctx.note(f"epoch {epoch + 1}/{epochs} loss {record['loss']:.4f} lr {lr:.2e} val_acc {val_acc:.2f}")
        ctx.track_epoch(record)
        if checkpoint == "best_val" and (val_acc > best_acc or (ties == "last" and val_acc == best_acc)):
            best_acc, best_state, result.epoch = val_acc, copy.deepcopy(module.state_dict()), epoch + 1
    if checkpoint == "best_val" and best_state is not None:
        module.load_state_dict(best_state)
        result.val_acc = best_acc
    else:
        result.epoch, result.val_acc = epochs, result.history[-1]["val_acc"]
    module.eval()
    result.seconds = time.perf_counter() - start
    return result
