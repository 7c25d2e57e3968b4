"""HeGraphAdapter's modules: hierarchical meta-path aggregation and the two classifiers.

Implements paper Sec. 3.1.2 (Eqs. 1-6) and Sec. 3.2 (Eqs. 7-9) as read in METHOD.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hgadapter.config import StageConfig, VariantConfig
from hgadapter.engines import Propagator
from hgadapter.metapaths import CANONICAL_ETYPES

__all__ = ["AdapterOutput", "HeteroGraphAdapter", "text_logits", "cache_affinity", "cache_logits", "shift_features"]

_ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "identity": lambda x: x}


@dataclass
class AdapterOutput:
    """Result of one pass through the adapter.

    Attributes:
        feat_dict: node features after every residual stage, ``ntype -> (C, d)``.
        vis_bias: per-class visual bias ``(C, d)`` from the bias stage(s), or ``None``.
    """

    feat_dict: dict[str, torch.Tensor]
    vis_bias: torch.Tensor | None


class HeteroGraphAdapter(nn.Module):
    r"""Hierarchical heterogeneous meta-path aggregation.

    For stage s with target type t and projection :math:`W_s`, each meta-path P = (r_1..r_L)
    is applied hop by hop to the projected source features,
    :math:`y^0 = H_{src} W_s`, :math:`y^l = \mathrm{hop}_{r_l}(y^{l-1}, H_{dst_l} W_s)`,
    :math:`z(P) = \mathrm{act}(y^L)`, and the meta-paths are fused with fixed weights:

    - residual stage: :math:`H_t \leftarrow H_t + \sum_P \beta_P z(P)` (Eqs. 1-4);
    - bias stage: :math:`b = \gamma \sum_P \beta_P z(P)` (Eqs. 5-6).

    ``hop`` is the engine's normalised propagation (see :mod:`hgadapter.engines`); ``beta_test``
    replaces ``beta`` outside training.

    Shapes:
        - input ``feat_dict[ntype]``: ``(C, d)``
        - output: :class:`AdapterOutput` with ``(C, d)`` tensors
    """

    def __init__(self, *, dim: int, stages: Sequence[StageConfig], init: str = "identity") -> None:
        super().__init__()
        self.dim = dim
        self.stages = tuple(stages)
        self.projections = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in self.stages)
        self.reset_parameters(init)

    @classmethod
    def from_config(cls, variant: VariantConfig, *, dim: int, init: str = "identity") -> "HeteroGraphAdapter":
        return cls(dim=dim, stages=variant.stages, init=init)

    def reset_parameters(self, init: str = "identity") -> None:
        for proj in self.projections:
            if init == "identity":
                nn.init.eye_(proj.weight)
            elif init == "zeros":
                nn.init.zeros_(proj.weight)
            elif init == "xavier":
                nn.init.xavier_uniform_(proj.weight)
            else:
                raise ValueError(f"unknown init {init!r}; available: ['identity', 'zeros', 'xavier']")

    def forward(self, graph: Propagator, feat_dict: dict[str, torch.Tensor], *, training: bool | None = None) -> AdapterOutput:
        training = self.training if training is None else training
        h = dict(feat_dict)
        bias: torch.Tensor | None = None
        for stage, proj in zip(self.stages, self.projections):
            projected: dict[str, torch.Tensor] = {}

            def project(ntype: str) -> torch.Tensor:
                if ntype not in projected:
                    projected[ntype] = proj(h[ntype])  # (C, d)
                return projected[ntype]

            act = _ACTIVATIONS[stage.activation]
            fused = None
            for mp in stage.metapaths:
                y = project(mp.src_ntype)
                for etype in mp.relations:
                    dst_t = CANONICAL_ETYPES[etype][2]
                    y = graph.propagate(etype, stage.norm, y, project(dst_t) if stage.norm == "gcn" else None)
                term = mp.weight(training=training) * act(y)  # (C, d)
                fused = term if fused is None else fused + term
            if stage.mode == "residual":
                h[stage.target] = h[stage.target] + fused
            else:
                shift = stage.gamma * fused
                bias = shift if bias is None else bias + shift
        return AdapterOutput(feat_dict=h, vis_bias=bias)


def text_logits(features: torch.Tensor, text: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """Eq. 7: ``s * cos(f, t_c)``. Shapes: ``(B, d)``, ``(C, d)`` -> ``(B, C)``."""
    return logit_scale * F.normalize(features, dim=-1) @ F.normalize(text, dim=-1).T


def shift_features(keys: torch.Tensor, labels: torch.Tensor, vis_bias: torch.Tensor | None) -> torch.Tensor:
    """Cache keys shifted by their class's visual bias and renormalised: ``(N, d)``."""
    if vis_bias is None:
        return F.normalize(keys, dim=-1)
    return F.normalize(keys + vis_bias[labels], dim=-1)


def cache_affinity(features: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Cosine affinity of queries to cache keys: ``(B, d), (N, d) -> (B, N)``."""
    return F.normalize(features, dim=-1) @ keys.T


def cache_logits(affinity: torch.Tensor, values: torch.Tensor, beta: float, *, num_classes: int | None = None) -> torch.Tensor:
    """Eq. 8 (Tip-Adapter): ``exp(-beta (1 - A)) L``.

    ``values`` is either the one-hot value matrix L ``(N, C)`` or, faster, the key labels
    ``(N,)`` (int64) with ``num_classes``: multiplying by a one-hot matrix is a per-class sum, so
    it is done as a scatter-add in O(B N) instead of a B x N x C GEMM.

    Shapes: ``(B, N)`` and ``(N, C)`` or ``(N,)`` -> ``(B, C)``.
    """
    weights = torch.exp(-beta * (1.0 - affinity))  # (B, N)
    if values.dtype.is_floating_point:
        return weights @ values
    if num_classes is None:
        raise ValueError("cache_logits with integer labels needs num_classes")
    return weights.new_zeros(weights.shape[0], num_classes).index_add(1, values, weights)  # (B, C)
