"""CLIP-Adapter: a bottleneck MLP on the image features, blended residually (Gao et al., IJCV 2024, Sec. 3.2).

    A(f) = ReLU(ReLU(f W_1) W_2),   W_1: d x d/r, W_2: d/r x d (no biases)
    f'   = ratio * A(f) + (1 - ratio) * f,   logits(f) = s * cos(f', t_c)

Official ``clip_adapter.py``: reduction r = 4, ratio 0.2, PyTorch's default Linear init; only
the adapter is trained (cross-entropy). The trainer runs on CoOp's Dassl config
(``configs/trainers/CoOp/rn50.yaml``): SGD (Dassl's momentum 0.9, weight decay 5e-4), lr 2e-3,
batch 32, 200 epochs, cosine schedule after one constant warmup epoch at 1e-5; the last epoch is
kept.

Changes: the adapter reads the cache's L2-normalised image features (the official code feeds
raw ones), the classifier is the shared prompt ensemble instead of one hand-written template per
dataset, and the width is the cache's d instead of the hard-coded 1024 (RN50).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hgadapter.heads import FeatureMLPHead
from hgadapter.methods._common import CHECKPOINTS, TrainedMethod, prompt_ensemble, zero_shot_logits
from hgadapter.methods._registry import hparam, register_method
from hgadapter.protocol import SelectionData

__all__ = ["ClipAdapterConfig", "ClipAdapter", "FeatureAdapter"]


@dataclass(frozen=True)
class ClipAdapterConfig:
    """CLIP-Adapter (official ``clip_adapter.py`` under CoOp's ``rn50.yaml``)."""

    ratio: float = hparam(0.2, low=0.0)  # residual ratio: share of the adapted feature in the blend
    reduction: int = hparam(4, low=1)  # bottleneck reduction: hidden width = d / reduction
    lr: float = hparam(2e-3, positive=True)  # SGD peak learning rate
    momentum: float = hparam(0.9, low=0.0)  # SGD momentum (Dassl's default)
    weight_decay: float = hparam(5e-4, low=0.0)  # SGD weight decay (Dassl's default)
    epochs: int = hparam(200, low=0)  # training epochs
    batch_size: int = hparam(32, low=1)  # training images per step
    warmup_epochs: int = hparam(1, low=0)  # constant-warmup epochs
    warmup_lr: float = hparam(1e-5, positive=True)  # learning rate during warmup
    checkpoint: str = hparam("last", choices=CHECKPOINTS)  # which epoch's adapter to keep
    drop_last: bool = hparam(True)  # skip each epoch's partial last batch, as Dassl's training loader does

    def check(self) -> tuple[str, str] | None:
        if self.ratio > 1.0:
            return "ratio", f"must be in [0, 1], got {self.ratio}"
        return None


class FeatureAdapter(nn.Module):
    r"""Bottleneck adapter blended with its input: :math:`r A(f) + (1 - r) f`.

    Shapes:
        - input ``(B, d)``; output ``(B, d)``.
    """

    def __init__(self, dim: int, *, reduction: int = 4, ratio: float = 0.2) -> None:
        super().__init__()
        hidden = max(dim // reduction, 1)
        self.fc = nn.Sequential(
            nn.Linear(dim, hidden, bias=False),
            nn.ReLU(),
            nn.Linear(hidden, dim, bias=False),
            nn.ReLU(),
        )
        self.ratio = ratio

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.ratio * self.fc(features) + (1.0 - self.ratio) * features


@register_method("clip_adapter")
class ClipAdapter(TrainedMethod):
    """Residual bottleneck MLP on image features, trained with SGD."""

    config_cls = ClipAdapterConfig

    def build(self, data: SelectionData, text: torch.Tensor, device: torch.device):
        adapter = FeatureAdapter(data.dim, reduction=self.config.reduction, ratio=self.config.ratio).to(device)
        return adapter, lambda x: zero_shot_logits(adapter(x.float()), text, data.logit_scale)

    def optimizer(self, module: nn.Module) -> torch.optim.Optimizer:
        cfg: ClipAdapterConfig = self.config
        return torch.optim.SGD(module.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def select(self, module, logits_fn, result, data, *, device):
        first, second = module.fc[0].weight.detach(), module.fc[2].weight.detach()  # (h, d), (d, h)
        text = prompt_ensemble(data.pos_text).to(device)  # (C, d)
        head = FeatureMLPHead(w1=first, w2=second, ratio=module.ratio, text=text, logit_scale=data.logit_scale)
        return head, result.val_acc, {}
