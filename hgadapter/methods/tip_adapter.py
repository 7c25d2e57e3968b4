"""Tip-Adapter: a training-free cache model added to zero-shot CLIP (Zhang et al., ECCV 2022, Sec. 3.2).

    logits(f) = s * f W^T + alpha * exp(-beta * (1 - f K^T)) L

W: the zero-shot text classifier (positive prompt ensemble), K ``(N, d)``: the cache keys, each
training image's augmented views averaged and renormalised, L ``(N, C)``: one-hot labels.
alpha (residual ratio) and beta (sharpness) come from the grid search of the official code
(``utils.search_hp``) on the validation split:

    beta  in {0.1 + i * (search_scale[0] - 0.1) / search_step[0] : i < search_step[0]}
    alpha in {0.1 + i * (search_scale[1] - 0.1) / search_step[1] : i < search_step[1]}

The first best pair in (beta, alpha) order wins, as in the official code. ``alpha``/``beta``
fix a value instead of searching it; ``alpha: 0`` is zero-shot CLIP exactly.

Change: the official code hard-codes s = 100; we use the cache's logit scale (100 for OpenAI
CLIP).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from hgadapter.evaluate import select_alpha_beta
from hgadapter.heads import CacheHead
from hgadapter.methods._common import cache_model, prompt_ensemble, zero_shot_logits
from hgadapter.methods._registry import Method, hparam, register_method
from hgadapter.protocol import FitContext, Fitted, SelectionData

__all__ = ["TipAdapterConfig", "TipAdapter", "search_grid", "search_grids", "tip_logits", "select_cache_predictor"]


def search_grid(scale: float, steps: int) -> tuple[float, ...]:
    """The official ``search_hp`` grid: ``steps`` values from 0.1 up to (not including) ``scale``."""
    return tuple(i * (scale - 0.1) / steps + 0.1 for i in range(steps))


def tip_logits(
    clip_logits: torch.Tensor, affinity: torch.Tensor, values: torch.Tensor, *, alpha: float, beta: float
) -> torch.Tensor:
    """``clip_logits + alpha * exp(-beta (1 - A)) L``. Shapes: ``(B, C), (B, N), (N, C) -> (B, C)``."""
    return clip_logits + alpha * torch.exp(-beta * (1.0 - affinity)) @ values


@dataclass(frozen=True)
class TipAdapterConfig:
    """Tip-Adapter's hyper-parameter search (official ``configs/imagenet.yaml``)."""

    search_scale: tuple[float, ...] = hparam((7.0, 3.0), positive=True, length=2)  # upper ends of the beta and alpha grids
    search_step: tuple[int, ...] = hparam((200, 20), low=1, length=2)  # number of beta and alpha values tried
    extend_rounds: int = hparam(4, low=0)  # times a grid is extended outward when the optimum lies on its edge (0: the source's fixed grid)
    alpha: float | None = hparam(None, low=0.0)  # fix the residual ratio instead of searching (null = search)
    beta: float | None = hparam(None, low=0.0)  # fix the sharpness instead of searching (null = search)


def search_grids(cfg: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (alpha, beta) candidates of a config with ``search_scale``, ``search_step``, ``alpha``, ``beta``.

    A fixed ``alpha``/``beta`` is the only candidate; otherwise the official grid.
    """
    alphas = (cfg.alpha,) if cfg.alpha is not None else search_grid(cfg.search_scale[1], cfg.search_step[1])
    betas = (cfg.beta,) if cfg.beta is not None else search_grid(cfg.search_scale[0], cfg.search_step[0])
    return alphas, betas


def select_cache_predictor(
    data: SelectionData, text: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, cfg: Any, dev: torch.device
) -> tuple[CacheHead, float, dict[str, Any]]:
    """Grid-search alpha/beta (:func:`search_grids` of ``cfg``) on validation for fixed keys.

    Returns:
        ``(head, val_acc, {"alpha": ..., "beta": ...})``.
    """
    alphas, betas = search_grids(cfg)
    scale = data.logit_scale
    val_x, val_y = data.val_features.float().to(dev), data.val_labels.to(dev)
    with torch.no_grad():
        choice = select_alpha_beta(
            zero_shot_logits(val_x, text, scale), val_x @ keys.T, values, val_y, alpha_grid=alphas, beta_grid=betas,
            extend_rounds=cfg.extend_rounds,
        )
    alpha, beta = choice.alpha, choice.beta
    head = CacheHead(text=text, keys=keys, values=values, alpha=alpha, beta=beta, logit_scale=scale)
    hparams: dict[str, Any] = {"alpha": float(alpha), "beta": float(beta)}
    if choice.extended:  # the optimum lay on the grid's edge (recorded in metrics.json)
        hparams["grid_extended"] = choice.extended
    return head, choice.val_acc, hparams


@register_method("tip_adapter")
class TipAdapter(Method):
    """Training-free cache model; alpha and beta chosen on validation."""

    config_cls = TipAdapterConfig

    def _fit(self, data: SelectionData, ctx: FitContext) -> Fitted:
        text = prompt_ensemble(data.pos_text).to(ctx.device)  # (C, d)
        keys, values = cache_model(data, ctx.device)  # (N, d), (N, C)
        start = time.perf_counter()
        head, val_acc, hparams = select_cache_predictor(data, text, keys, values, self.config, ctx.device)
        return Fitted(head=head, val_acc=val_acc, hparams=hparams, select_seconds=time.perf_counter() - start)
