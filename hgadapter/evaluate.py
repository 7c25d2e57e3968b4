"""Prediction with the adapted classifiers and the choice of alpha/beta on validation.

Prediction (METHOD.md, Tip-Adapter): ``logits_text + alpha * logits_cache``; ``alpha`` and the
cache sharpness ``beta`` come from a grid search on the validation split (or are fixed in the
config). Nothing here can see the test split: it receives a
:class:`~hgadapter.protocol.SelectionData` and returns a predictor with frozen hyper-parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from hgadapter.adapter import HeteroGraphAdapter, cache_affinity, cache_logits, shift_features, text_logits
from hgadapter.config import EvalConfig, VariantConfig
from hgadapter.engines import Propagator
from hgadapter.protocol import SelectionData, accuracy

__all__ = ["Selection", "select_alpha_beta", "select_predictor"]


@dataclass(frozen=True)
class Selection:
    """A predictor with its hyper-parameters chosen on validation.

    Attributes:
        predict: image features ``(N, d)`` -> logits ``(N, C)``.
        val_acc: validation accuracy in percent.
        alpha / beta: the chosen cache weight and sharpness (``None`` without a cache).
    """

    predict: Callable[[torch.Tensor], torch.Tensor]
    val_acc: float
    alpha: float | None
    beta: float | None


def select_alpha_beta(
    text: torch.Tensor,
    affinity: torch.Tensor,
    values: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha_grid: tuple[float, ...],
    beta_grid: tuple[float, ...],
    num_classes: int | None = None,
) -> tuple[float, float, float]:
    """Grid search on validation logits; returns ``(alpha, beta, val_acc)``.

    Ties go to the first grid point in (beta, alpha) order, so the choice is deterministic.
    Shapes: text ``(N, C)``, affinity ``(N, M)``, values ``(M, C)`` one-hot or ``(M,)`` labels
    with ``num_classes`` (see :func:`~hgadapter.adapter.cache_logits`).
    """
    best = (-1.0, 0.0, 0.0)
    for beta in beta_grid:
        cache = cache_logits(affinity, values, beta, num_classes=num_classes)
        for alpha in alpha_grid:
            acc = accuracy(text + alpha * cache, labels)
            if acc > best[0]:
                best = (acc, alpha, beta)
    return best[1], best[2], best[0]


@torch.no_grad()
def select_predictor(
    variant: VariantConfig,
    eval_cfg: EvalConfig,
    *,
    adapter: HeteroGraphAdapter | None,
    graph: Propagator | None,
    feat_dict: dict[str, torch.Tensor],
    data: SelectionData,
    device: torch.device,
) -> Selection:
    """Freeze the adapted classifiers (test-time betas) and choose alpha/beta on validation."""
    if adapter is not None:
        adapter.eval()
        out = adapter(graph, feat_dict, training=False)
        text, vis_bias = out.feat_dict["pos"], out.vis_bias
    else:
        text, vis_bias = feat_dict["pos"], None
    scale = data.logit_scale
    val_x, val_y = data.val_features.float().to(device), data.val_labels.to(device)
    val_text = text_logits(val_x, text, scale)
    if variant.classifier != "text_cache":
        return Selection(predict=lambda x: text_logits(x, text, scale), val_acc=accuracy(val_text, val_y), alpha=None, beta=None)

    train = data.train_set
    views = F.normalize(train.features.float().to(device), dim=-1)  # (N, V, d)
    labels = train.labels.to(device)
    keys = shift_features(views.mean(dim=1), labels, vis_bias)  # (N, d)
    alpha_grid = (eval_cfg.alpha,) if eval_cfg.alpha is not None else eval_cfg.alpha_grid
    beta_grid = (eval_cfg.beta,) if eval_cfg.beta is not None else eval_cfg.beta_grid
    alpha, beta, val_acc = select_alpha_beta(
        val_text,
        cache_affinity(val_x, keys),
        labels,
        val_y,
        alpha_grid=alpha_grid,
        beta_grid=beta_grid,
        num_classes=data.num_classes,
    )

    def predict(x: torch.Tensor) -> torch.Tensor:
        return text_logits(x, text, scale) + alpha * cache_logits(cache_affinity(x, keys), labels, beta, num_classes=data.num_classes)

    return Selection(predict=predict, val_acc=val_acc, alpha=alpha, beta=beta)
