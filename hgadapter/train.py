"""Training the stage projections (paper Sec. 3.2 and 4.1): loss, optimiser and schedule.

Loss (Eq. 9): ``CE(text logits) + lambda * CE(cache logits)``. AdamW, a linear warmup of
``warmup_epochs`` starting at ``warmup_lr``, then cosine decay to 0, updated every step. Each
step draws one augmented view per training image; CLIP features stay frozen and only the
adapter's projections are trained.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hgadapter.adapter import HeteroGraphAdapter, cache_logits, shifted_cache_affinity, text_logits
from hgadapter.config import RunConfig
from hgadapter.engines import Propagator
from hgadapter.data.cache import FewShotSet

__all__ = ["FitResult", "fit", "learning_rate"]


@dataclass
class FitResult:
    """A trained adapter and what happened while training it.

    Attributes:
        adapter: the trained module (``None`` for zero-shot variants, which train nothing).
        history: one record per epoch: ``epoch``, ``loss``, ``lr``, ``val_acc`` (text classifier).
        train_seconds: wall time of the optimisation loop.
        epochs: epochs run.
    """

    adapter: HeteroGraphAdapter | None
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    epochs: int = 0


def learning_rate(step: int, *, total_steps: int, warmup_steps: int, lr: float, warmup_lr: float) -> float:
    """Linear warmup from ``warmup_lr`` to ``lr`` over ``warmup_steps``, then cosine decay to 0."""
    if step < warmup_steps:
        return warmup_lr + (lr - warmup_lr) * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return 0.5 * lr * (1.0 + math.cos(math.pi * progress))


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(dim=1) == labels).float().mean())


def fit(
    cfg: RunConfig,
    *,
    graph: Propagator | None,
    feat_dict: dict[str, torch.Tensor],
    train_set: FewShotSet,
    val_features: torch.Tensor,
    val_labels: torch.Tensor,
    logit_scale: float,
    seed: int,
    device: torch.device,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """Train an adapter for ``cfg.variant`` on one few-shot set.

    Args:
        graph: the prepared heterograph (``None`` for zero-shot variants).
        feat_dict: initial node features ``ntype -> (C, d)`` on ``device``.
        train_set: the few-shot images, ``(N, V, d)`` views.
        val_features / val_labels: used only to log per-epoch validation accuracy.
        seed: seeds parameter init (for random inits) and the view/batch sampling.
    """
    variant, tcfg = cfg.variant, cfg.train
    if variant.classifier == "zero_shot":
        return FitResult(adapter=None)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    dim = feat_dict["pos"].shape[1]
    adapter = HeteroGraphAdapter.from_config(
        variant, dim=dim, init=tcfg.init, learn_betas=tcfg.learn_betas, num_classes=feat_dict["pos"].shape[0], classwise_bias=tcfg.classwise_bias
    ).to(device)

    views = F.normalize(train_set.features.float(), dim=-1).to(device)  # (N, V, d)
    labels = train_set.labels.to(device)  # (N,)
    num_images, num_views = views.shape[0], views.shape[1]
    use_cache = variant.classifier == "text_cache"
    keys = F.normalize(views.mean(dim=1), dim=-1)  # (N, d): cache keys before the visual bias
    num_classes = feat_dict["pos"].shape[0]
    val_features = val_features.to(device)
    val_labels = val_labels.to(device)

    steps_per_epoch = math.ceil(num_images / tcfg.batch_size)
    total_steps = tcfg.epochs * steps_per_epoch
    warmup_steps = min(tcfg.warmup_epochs, tcfg.epochs) * steps_per_epoch
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)

    history: list[dict] = []
    step = 0
    start = time.perf_counter()
    # disable=None: tqdm hides the bar when stderr is not a terminal (logs, CI)
    bar = tqdm(range(tcfg.epochs), desc=f"train {variant.name}", unit="epoch", disable=None if progress else True, leave=False)
    for epoch in bar:
        adapter.train()
        order = torch.randperm(num_images, generator=generator).to(device)
        view_idx = torch.randint(num_views, (num_images,), generator=generator).to(device)
        total_loss = 0.0
        for begin in range(0, num_images, tcfg.batch_size):
            idx = order[begin : begin + tcfg.batch_size]
            lr = learning_rate(step, total_steps=total_steps, warmup_steps=warmup_steps, lr=tcfg.lr, warmup_lr=tcfg.warmup_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            query = views[idx, view_idx[idx]]  # (B, d): one augmented view per image
            target = labels[idx]
            out = adapter(graph, feat_dict, training=True)
            loss = F.cross_entropy(text_logits(query, out.feat_dict["pos"], logit_scale), target)
            if use_cache:
                affinity = shifted_cache_affinity(query, keys, labels, out.vis_bias)  # (B, N)
                logits = cache_logits(affinity, labels, tcfg.cache_beta, num_classes=num_classes)
                loss = loss + tcfg.cache_loss_weight * F.cross_entropy(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * idx.numel()
            step += 1
        adapter.eval()
        with torch.no_grad():
            pos = adapter(graph, feat_dict, training=False).feat_dict["pos"]
            val_acc = _accuracy(text_logits(val_features, pos, logit_scale), val_labels)
        record = {"epoch": epoch + 1, "loss": total_loss / num_images, "lr": lr, "val_acc": val_acc}
        history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", val=f"{val_acc:.1f}")
        if log is not None:
            log(f"epoch {epoch + 1}/{tcfg.epochs} loss {record['loss']:.4f} lr {lr:.2e} val_acc(text) {val_acc:.2f}")
    return FitResult(adapter=adapter, history=history, train_seconds=time.perf_counter() - start, epochs=tcfg.epochs)
