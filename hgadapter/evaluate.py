"""The cache classifier's keys, and the choice of its alpha/beta on validation.

Prediction (METHOD.md, Tip-Adapter): ``logits_text + alpha * logits_cache``; ``alpha`` and the
cache sharpness ``beta`` come from a grid search on the validation split (or are fixed in the
config). Tip-Adapter, Tip-Adapter-F and HeGraphAdapter build their cache keys with
:func:`cache_keys` and search with :func:`select_alpha_beta`. Nothing here can see the test
split: it receives a :class:`~hgadapter.protocol.SelectionData` and returns a predictor with
frozen hyper-parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from hgadapter.adapter import cache_affinity, cache_logits, shift_features, text_logits
from hgadapter.config import EvalConfig
from hgadapter.data.cache import FewShotSet
from hgadapter.protocol import SelectionData, accuracy

__all__ = ["Selection", "cache_keys", "select_alpha_beta", "select_predictor"]


def cache_keys(train_set: FewShotSet, *, device: torch.device | str, vis_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Tip-Adapter's cache keys: each image's V unit-norm views averaged and renormalised, then shifted and renormalised.

    Tip-Adapter (``build_cache_model``) averages the features of ``augment_epoch`` augmented
    passes over the training set; the cache's V views are those passes. With ``vis_bias``
    ``(C, d)`` (HeGraphAdapter's visual stage) each key is shifted by its class's bias before
    renormalising (:func:`~hgadapter.adapter.shift_features`).

    Returns:
        keys ``(N, d)`` on ``device``.
    """
    views = F.normalize(train_set.features.float(), dim=-1).to(device)  # (N, V, d)
    # The unshifted key is renormalised before the shift, as in training
    # (adapter.shifted_cache_affinity expects unit-norm keys), so the bias means the same in both.
    keys = F.normalize(views.mean(dim=1), dim=-1)  # (N, d)
    return shift_features(keys, train_set.labels.to(device), vis_bias)  # (N, d)


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
    text: torch.Tensor,
    vis_bias: torch.Tensor | None,
    eval_cfg: EvalConfig,
    *,
    with_cache: bool,
    data: SelectionData,
    device: torch.device,
) -> Selection:
    """Freeze a text classifier ``(C, d)`` (plus the cache, ``with_cache``) and choose alpha/beta on validation.

    ``vis_bias`` ``(C, d)`` shifts the cache keys (:func:`cache_keys`); ``eval_cfg`` fixes alpha
    or beta, or gives their grids.
    """
    scale = data.logit_scale
    val_x, val_y = data.val_features.float().to(device), data.val_labels.to(device)
    val_text = text_logits(val_x, text, scale)
    if not with_cache:
        return Selection(predict=lambda x: text_logits(x, text, scale), val_acc=accuracy(val_text, val_y), alpha=None, beta=None)

    labels = data.train_set.labels.to(device)
    keys = cache_keys(data.train_set, device=device, vis_bias=vis_bias)  # (N, d)
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
