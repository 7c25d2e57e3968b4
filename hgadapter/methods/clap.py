"""CLAP: a zero-shot-initialised linear probe held near the zero-shot prototypes by a class-adaptive constraint.

Silva-Rodriguez et al., "A Closer Look at the Few-Shot Adaptation of Large Vision-Language
Models", CVPR 2024, Sec. 4. The class prototypes W ``(C, d)`` start at the zero-shot text
classifier t and are trained on

    CE(s * cos(f, W), y) + 1/C * sum_c lambda_c * ||w_c - t_c||^2

(the penalty of an augmented Lagrangian for the constraint ``w_c ~ t_c``). The multipliers are
set once, before training, from how well zero-shot CLIP already does on each class of the
few-shot set: ``lambda_c`` = the mean zero-shot softmax probability of class c over its training
samples (every augmented view), so a class the text already gets right is held close to it and a
poorly described one may move. Official code (github.com/jusiro/CLAP, ``trainers/adapters.py``,
``CONSTRAINT l2`` in ``scripts/adapt.sh``, ``configs/trainers/SGD_lr1e-1_B256_ep300.yaml``):
SGD lr 0.1 (Dassl's momentum 0.9), weight decay 0, batch 256, 300 epochs, cosine after one
constant warmup epoch at 1e-5, the partial batch dropped, the last epoch kept: no validation set
is used for anything. ``multipliers: balanced`` is the source's ``l2_balanced`` (every
``lambda_c = 1``); ``constraint: none`` is its ZS-LP (no penalty).

Scale (``text_scale: raw``, the source's): the source's prototypes start at the raw mean of its
templates' text features, whose norm r_c is far above 1, and are normalised only inside the
logits, so its lr 0.1 and penalty act on weights of norm r_c. Here w_c starts at r_c t_c, with t_c
the shared renormalised prompt ensemble (its direction) and r_c the norm of the raw mean,
``|| mean_p n_cp u_cp ||`` from the cache's per-prompt raw norms n_cp (``pos_text_norm``) and unit
features u_cp; the penalty pulls towards r_c t_c. A cache written before the norms were recorded
falls back to r_c = ``fallback_text_norm`` with a one-time warning. ``text_scale: unit`` trains
unit-norm prototypes (this project's earlier recipe).

Sampling (``sampling: pool``, the source's): every epoch shuffles the pool of every cached view
of every image (the source: 20 augmented passes) and cuts it into as many full batches as Dassl's
image loader has, so a batch may hold an image twice; ``sampling: image`` draws each image once per
epoch with one random view.

Changes: the direction of t is the shared renormalised prompt ensemble (the source's raw mean
weights each template by its norm); the pool holds the cache's V views, not 20 passes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hgadapter.methods._common import CHECKPOINTS, TrainedMethod, text_predictor, zero_shot_logits
from hgadapter.methods._registry import hparam, register_method
from hgadapter.protocol import SelectionData
from hgadapter.train import SAMPLINGS

__all__ = ["ClapConfig", "Clap", "ConstrainedPrototypes", "zero_shot_multipliers", "raw_prototype_norms"]

CONSTRAINTS: tuple[str, ...] = ("l2", "none")
MULTIPLIERS: tuple[str, ...] = ("zero_shot", "balanced")
TEXT_SCALES: tuple[str, ...] = ("raw", "unit")
_warned_fallback = False  # the missing-norms warning is given once per process


@dataclass(frozen=True)
class ClapConfig:
    """CLAP (official ``SGD_lr1e-1_B256_ep300.yaml``, ``TRAINER.ADAPTER.CONSTRAINT l2``)."""

    constraint: str = hparam("l2", choices=CONSTRAINTS)  # penalty on ||w_c - t_c||^2, or none (ZS-LP)
    multipliers: str = hparam("zero_shot", choices=MULTIPLIERS)  # lambda_c: zero-shot class performance, or 1
    lr: float = hparam(0.1, positive=True)  # SGD peak learning rate
    momentum: float = hparam(0.9, low=0.0)  # SGD momentum (Dassl's default)
    weight_decay: float = hparam(0.0, low=0.0)  # SGD weight decay (the config sets 0)
    epochs: int = hparam(300, low=0)  # training epochs
    batch_size: int = hparam(256, low=1)  # training samples per step
    warmup_epochs: int = hparam(1, low=0)  # constant-warmup epochs
    warmup_lr: float = hparam(1e-5, positive=True)  # learning rate during warmup
    checkpoint: str = hparam("last", choices=CHECKPOINTS)  # the source keeps the last epoch (it has no validation set)
    drop_last: bool = hparam(True)  # skip each epoch's partial last batch, as Dassl's loader does
    sampling: str = hparam("pool", choices=SAMPLINGS)  # batches cut from the shuffled pool of every view (the source's), or each image once per epoch
    text_scale: str = hparam("raw", choices=TEXT_SCALES)  # prototypes start at the raw text norm r_c (the source's), or at unit norm
    fallback_text_norm: float = hparam(10.0, positive=True)  # r_c for a cache without recorded raw text norms


def zero_shot_multipliers(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``lambda_c``: the mean zero-shot softmax probability of class c over its samples.

    Shapes: logits ``(N, C)``, labels ``(N,)`` -> ``(C,)``; a class without samples gets 0.
    """
    true_prob = torch.softmax(logits.float(), dim=-1).gather(1, labels[:, None]).squeeze(1)  # (N,)
    total = torch.zeros(num_classes, dtype=true_prob.dtype, device=true_prob.device).index_add_(0, labels, true_prob)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).to(true_prob.dtype)
    return total / counts


def raw_prototype_norms(pos_text: torch.Tensor, pos_text_norm: torch.Tensor) -> torch.Tensor:
    """``r_c = || mean_p n_cp u_cp ||``: the norm of the source's raw prompt mean.

    Shapes: pos_text ``(C, P, d)`` (unit rows u), pos_text_norm ``(C, P)`` (raw norms n) -> ``(C,)``.
    """
    raw = pos_text.float() * pos_text_norm.float()[..., None]  # (C, P, d): the raw features
    return raw.mean(dim=1).norm(dim=-1)  # (C,)


class ConstrainedPrototypes(nn.Module):
    r"""Trainable class prototypes W, initialised at (and penalised towards) the text classifier t.

    Shapes:
        - text ``(C, d)``, multipliers ``(C,)``; ``penalty()`` is a scalar.
    """

    def __init__(self, text: torch.Tensor, multipliers: torch.Tensor | None) -> None:
        super().__init__()
        self.register_buffer("text", text)
        self.register_buffer("multipliers", multipliers)
        self.weight = nn.Parameter(text.clone())  # (C, d): zero-shot initialisation

    def penalty(self) -> torch.Tensor:
        r""":math:`\frac{1}{C} \sum_c \lambda_c \|w_c - t_c\|^2` (0 without multipliers)."""
        if self.multipliers is None:
            return self.weight.new_zeros(())
        return (self.multipliers * (self.weight - self.text).pow(2).sum(dim=-1)).mean()


@register_method("clap")
class Clap(TrainedMethod):
    """Zero-shot-initialised linear probe with the class-adaptive constraint to the text prototypes."""

    config_cls = ClapConfig

    def build(self, data: SelectionData, text: torch.Tensor, device: torch.device):
        cfg: ClapConfig = self.config
        multipliers = None
        if cfg.constraint != "none":
            if cfg.multipliers == "balanced":
                multipliers = torch.ones(data.num_classes, device=device)
            else:  # every augmented view is a sample, as the source's 20 augmented passes are
                views = F.normalize(data.train_set.features.float(), dim=-1).to(device)  # (N, V, d)
                labels = data.train_set.labels.to(device).repeat_interleave(views.shape[1])  # (N V,)
                logits = zero_shot_logits(views.reshape(-1, views.shape[-1]), text, data.logit_scale)  # (N V, C)
                multipliers = zero_shot_multipliers(logits, labels, data.num_classes)
        norms, source = self._text_norms(data)
        prototypes = text if norms is None else text * norms.to(device)[:, None]  # (C, d): r_c t_c
        module = ConstrainedPrototypes(prototypes, multipliers).to(device)
        module.text_norm_source = source  # recorded by select()
        return module, lambda x: zero_shot_logits(x, module.weight, data.logit_scale)

    def _text_norms(self, data: SelectionData) -> tuple[torch.Tensor | None, str]:
        """``(r_c (C,), where it came from)``: the cache's raw norms or the fallback for
        ``text_scale: raw``; ``(None, "unit")`` for ``unit``."""
        cfg: ClapConfig = self.config
        if cfg.text_scale == "unit":
            return None, "unit"
        if data.pos_text_norm is not None:
            return raw_prototype_norms(data.pos_text, data.pos_text_norm), "cache"
        global _warned_fallback
        if not _warned_fallback:
            _warned_fallback = True
            warnings.warn(
                "this feature cache records no raw text norms (pos_text_norm; caches extracted before they were), "
                f"so CLAP starts its prototypes at norm fallback_text_norm={cfg.fallback_text_norm:g} instead of the "
                "encoder's own; extract the cache again to record them (docs/baselines.md, clap)",
                stacklevel=2,
            )
        return torch.full((data.num_classes,), cfg.fallback_text_norm), "fallback"

    def loss(self, module, logits_fn):
        def loss_fn(query: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits_fn(query), target) + module.penalty()

        return loss_fn

    def optimizer(self, module: nn.Module) -> torch.optim.Optimizer:
        cfg: ClapConfig = self.config
        return torch.optim.SGD(module.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def sampling(self) -> str:
        return self.config.sampling

    def select(self, module, logits_fn, result, data, *, device):
        hparams = {} if module.multipliers is None else {"multiplier_mean": float(module.multipliers.mean())}
        hparams["text_norm_source"] = module.text_norm_source
        hparams["text_norm_mean"] = float(module.text.norm(dim=-1).mean())  # r_c, 1 for unit
        return text_predictor(module.weight.detach(), data.logit_scale, device), result.val_acc, hparams
