"""Evaluation: alpha/beta selection on the validation split, then one read of the test split.

Prediction (METHOD.md, Tip-Adapter): ``logits_text + alpha * logits_cache``; ``alpha`` and the
cache sharpness ``beta`` come from a grid search on validation (or are fixed in the config).
Hyper-parameters never see the test split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hgadapter.adapter import HeteroGraphAdapter, cache_affinity, cache_logits, shift_features, text_logits
from hgadapter.config import EvalConfig, VariantConfig
from hgadapter.engines import Propagator
from hgadapter.features import FeatureCache, FewShotSet

__all__ = ["Evaluation", "accuracy", "select_alpha_beta", "evaluate"]


@dataclass(frozen=True)
class Evaluation:
    """Accuracies in percent and the chosen cache hyper-parameters (``None`` without a cache)."""

    val_acc: float
    test_acc: float
    alpha: float | None
    beta: float | None


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * float((logits.argmax(dim=1) == labels).float().mean())


def select_alpha_beta(
    text: torch.Tensor,
    affinity: torch.Tensor,
    values: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha_grid: tuple[float, ...],
    beta_grid: tuple[float, ...],
) -> tuple[float, float, float]:
    """Grid search on validation logits; returns ``(alpha, beta, val_acc)``.

    Ties go to the first grid point (smallest alpha, then smallest beta), so the choice is
    deterministic. Shapes: text ``(N, C)``, affinity ``(N, M)``, values ``(M, C)``.
    """
    best = (-1.0, 0.0, 0.0)
    for beta in beta_grid:
        cache = cache_logits(affinity, values, beta)
        for alpha in alpha_grid:
            acc = accuracy(text + alpha * cache, labels)
            if acc > best[0]:
                best = (acc, alpha, beta)
    return best[1], best[2], best[0]


@torch.no_grad()
def evaluate(
    variant: VariantConfig,
    eval_cfg: EvalConfig,
    *,
    adapter: HeteroGraphAdapter | None,
    graph: Propagator | None,
    feat_dict: dict[str, torch.Tensor],
    cache: FeatureCache,
    train_set: FewShotSet,
    device: torch.device,
) -> Evaluation:
    """Choose alpha/beta on validation, then compute test accuracy once."""
    if adapter is not None:
        adapter.eval()
        out = adapter(graph, feat_dict, training=False)
        text, vis_bias = out.feat_dict["pos"], out.vis_bias
    else:
        text, vis_bias = feat_dict["pos"], None
    scale = cache.logit_scale
    val_x, val_y = cache.val_features.float().to(device), cache.val_labels.to(device)
    val_text = text_logits(val_x, text, scale)
    if variant.classifier != "text_cache":
        val_acc = accuracy(val_text, val_y)
        test_text = text_logits(cache.test_features.float().to(device), text, scale)
        return Evaluation(val_acc=val_acc, test_acc=accuracy(test_text, cache.test_labels.to(device)), alpha=None, beta=None)

    views = F.normalize(train_set.features.float().to(device), dim=-1)  # (N, V, d)
    labels = train_set.labels.to(device)
    keys = shift_features(views.mean(dim=1), labels, vis_bias)  # (N, d)
    values = F.one_hot(labels, num_classes=cache.num_classes).float()  # (N, C)
    alpha_grid = (eval_cfg.alpha,) if eval_cfg.alpha is not None else eval_cfg.alpha_grid
    beta_grid = (eval_cfg.beta,) if eval_cfg.beta is not None else eval_cfg.beta_grid
    alpha, beta, val_acc = select_alpha_beta(
        val_text, cache_affinity(val_x, keys), values, val_y, alpha_grid=alpha_grid, beta_grid=beta_grid
    )
    # The test split is read here, once, with the hyper-parameters fixed above.
    test_x = cache.test_features.float().to(device)
    logits = text_logits(test_x, text, scale) + alpha * cache_logits(cache_affinity(test_x, keys), values, beta)
    return Evaluation(val_acc=val_acc, test_acc=accuracy(logits, cache.test_labels.to(device)), alpha=alpha, beta=beta)
