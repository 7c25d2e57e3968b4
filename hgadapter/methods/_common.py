"""What the baselines share: the zero-shot text classifier, the cache model and a training loop.

Every baseline starts from the same zero-shot classifier (the positive prompt ensemble), so the
table compares adaptation methods, not prompt sets.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from collections.abc import Callable, Iterator
from typing import Any
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from hgadapter.adapter import text_logits as zero_shot_logits  # CLIP's classifier s * cos(f, t_c)
from hgadapter.graph import class_means, prompt_ensemble
from hgadapter.method import resolve_device
from hgadapter.protocol import Fitted, SelectionData, accuracy

__all__ = [
    "CHECKPOINTS",
    "device_of",
    "fit_on_device",
    "prompt_ensemble",
    "class_means",
    "cache_model",
    "zero_shot_logits",
    "dassl_lr",
    "step_cosine_lr",
    "TrainResult",
    "train_loop",
    "train_dassl",
    "trained_fitted",
]

# Which trained weights a method keeps: the last epoch's (Dassl's default), or the epoch with the
# best validation accuracy (Tip-Adapter-F keeps its best epoch; we judge it on val, not test).
CHECKPOINTS: tuple[str, ...] = ("last", "best_val")


def device_of(device: torch.device | str | None) -> torch.device:
    """``None``/``auto`` -> CUDA if present, else CPU."""
    return resolve_device("auto" if device is None else str(device))


@contextlib.contextmanager
def _intra_op_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def fit_on_device(fit: Callable) -> Callable:
    """Decorate a baseline's ``Method.fit``: resolve the device, use one thread on CPU, record the device.

    ``device`` reaches ``fit`` as a :class:`torch.device` and is stored in
    ``Fitted.artifacts["device"]`` (where :func:`~hgadapter.protocol.score_on_test` sends the
    test features). On CPU the fit runs on one intra-op thread: the baselines' steps are small
    products over a batch or the C*K training rows, where extra threads mostly add
    synchronisation. On a 2-core machine shared with another job, Tip-Adapter's grid search took
    76 s with two threads and 1.3 s with one. One thread also fixes the order of float
    reductions while fitting, so a seed gives the same fit whatever the machine's core count.
    """

    @functools.wraps(fit)
    def wrapper(self, data, *, seed: int, device: torch.device | str | None = None, progress: bool = False):
        dev = device_of(device)
        context = _intra_op_threads(1) if dev.type == "cpu" else contextlib.nullcontext()
        with context:
            fitted = fit(self, data, seed=seed, device=dev, progress=progress)
        fitted.artifacts.setdefault("device", dev)
        return fitted

    return wrapper


def cache_model(data: SelectionData, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Tip-Adapter's cache: keys = each image's views averaged and renormalised, values = one-hot.

    Tip-Adapter (``build_cache_model``) averages the features of ``augment_epoch`` augmented
    passes over the training set; the cache's V views are those passes.

    Returns:
        keys ``(N, d)`` and values ``(N, C)`` on ``device``.
    """
    views = F.normalize(data.train_set.features.float(), dim=-1)  # (N, V, d)
    keys = F.normalize(views.mean(dim=1), dim=-1).to(device)  # (N, d)
    values = F.one_hot(data.train_set.labels, num_classes=data.num_classes).float().to(device)  # (N, C)
    return keys, values


def dassl_lr(epoch: int, *, epochs: int, lr: float, warmup_epochs: int, warmup_lr: float) -> float:
    """Dassl's ``cosine`` schedule with ``constant`` warmup, updated once per epoch.

    The first ``warmup_epochs`` epochs run at ``warmup_lr``; epoch e after them runs at
    ``lr / 2 * (1 + cos(pi * (e - warmup_epochs) / epochs))`` (CoOp, TaskRes, CLIP-Adapter and
    GraphAdapter all train with this schedule).
    """
    if epoch < warmup_epochs:
        return warmup_lr
    return 0.5 * lr * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / max(epochs, 1)))


def step_cosine_lr(step: int, *, total_steps: int, lr: float) -> float:
    """PyTorch's ``CosineAnnealingLR(T_max=total_steps)`` stepped after every batch (Tip-Adapter-F)."""
    return 0.5 * lr * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


@dataclass
class TrainResult:
    """What :func:`train_loop` did.

    Attributes:
        history: per epoch ``epoch``, ``loss``, ``lr``, ``val_acc``.
        epoch: the epoch whose weights were kept (0 = the initial weights).
        val_acc: validation accuracy of the kept weights (percent).
        seconds: wall time of the loop.
        trainable_params: number of trained parameter values in the module.
    """

    history: list[dict] = field(default_factory=list)
    epoch: int = 0
    val_acc: float = 0.0
    seconds: float = 0.0
    trainable_params: int = 0


def train_loop(
    module: nn.Module,
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    lr_at: Callable[[int, int, int], float],
    *,
    data: SelectionData,
    epochs: int,
    batch_size: int,
    checkpoint: str,
    seed: int,
    device: torch.device,
    progress: bool,
    desc: str,
) -> TrainResult:
    """Minimise cross-entropy of ``logits_fn`` on the few-shot set, one random view per image per epoch.

    Each epoch shuffles the images and draws one of each image's V augmented views, as training
    on freshly augmented images does. After each epoch the validation accuracy of
    ``logits_fn(val_features)`` is recorded; with ``checkpoint="best_val"`` the weights of the
    best epoch (the earliest on ties) are restored at the end, otherwise the last epoch's stay.

    Args:
        module: holds every trainable parameter (its ``state_dict`` is the checkpoint).
        logits_fn: image features ``(B, d)`` -> logits ``(B, C)``, differentiable.
        lr_at: ``(epoch, step_in_epoch, steps_per_epoch) -> learning rate`` set before each step.
    """
    generator = torch.Generator().manual_seed(seed)
    views = F.normalize(data.train_set.features.float(), dim=-1).to(device)  # (N, V, d)
    labels = data.train_set.labels.to(device)  # (N,)
    val_x, val_y = data.val_features.float().to(device), data.val_labels.to(device)
    num_images, num_views = views.shape[0], views.shape[1]
    steps_per_epoch = math.ceil(num_images / batch_size)

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
    bar = tqdm(range(epochs), desc=desc, unit="epoch", disable=None if progress else True, leave=False)  # None: no bar off a terminal
    for epoch in bar:
        module.train()
        order = torch.randperm(num_images, generator=generator).to(device)
        view_idx = torch.randint(num_views, (num_images,), generator=generator).to(device)
        total = 0.0
        for step, begin in enumerate(range(0, num_images, batch_size)):
            lr = lr_at(epoch, step, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = order[begin : begin + batch_size]
            query = views[idx, view_idx[idx]]  # (B, d): one augmented view per image
            loss = F.cross_entropy(logits_fn(query), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * idx.numel()
        val_acc = val_accuracy()
        result.history.append({"epoch": epoch + 1, "loss": total / num_images, "lr": lr, "val_acc": val_acc})
        bar.set_postfix(loss=f"{total / num_images:.3f}", val=f"{val_acc:.1f}")
        if checkpoint == "best_val" and val_acc > best_acc:
            best_acc, best_state, result.epoch = val_acc, copy.deepcopy(module.state_dict()), epoch + 1
    if checkpoint == "best_val" and best_state is not None:
        module.load_state_dict(best_state)
        result.val_acc = best_acc
    else:
        result.epoch, result.val_acc = epochs, result.history[-1]["val_acc"]
    module.eval()
    result.seconds = time.perf_counter() - start
    return result


def train_dassl(
    module: nn.Module,
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    cfg: Any,
    *,
    data: SelectionData,
    seed: int,
    device: torch.device,
    progress: bool,
    desc: str,
) -> TrainResult:
    """:func:`train_loop` with :func:`dassl_lr` and the config's ``epochs``, ``lr``,
    ``warmup_epochs``, ``warmup_lr``, ``batch_size`` and ``checkpoint`` (TaskRes, CLIP-Adapter,
    GraphAdapter)."""

    def lr_at(epoch: int, step: int, steps_per_epoch: int) -> float:
        return dassl_lr(epoch, epochs=cfg.epochs, lr=cfg.lr, warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.warmup_lr)

    return train_loop(
        module, logits_fn, optimizer, lr_at,
        data=data, epochs=cfg.epochs, batch_size=cfg.batch_size, checkpoint=cfg.checkpoint,
        seed=seed, device=device, progress=progress, desc=desc,
    )


def trained_fitted(
    result: TrainResult,
    predict: Callable[[torch.Tensor], torch.Tensor],
    *,
    val_acc: float | None = None,
    hparams: dict[str, Any] | None = None,
    epochs: int,
    start: float,
) -> Fitted:
    """The :class:`Fitted` of a method trained by :func:`train_loop` (``start``: its fit's clock).

    ``val_acc`` defaults to the kept weights' validation accuracy; ``hparams`` gain the kept
    epoch; ``artifacts["trainable_params"]`` is the module's trained parameter count.
    """
    return Fitted(
        predict=predict,
        val_acc=result.val_acc if val_acc is None else val_acc,
        hparams={**(hparams or {}), "checkpoint_epoch": result.epoch},
        train_seconds=time.perf_counter() - start,
        epochs=epochs,
        history=result.history,
        artifacts={"trainable_params": result.trainable_params},
    )
