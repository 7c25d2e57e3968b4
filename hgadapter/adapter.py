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
from hgadapter.heads import cache_logits, text_logits  # the classifier formulas (Eq. 7, 8), defined with the heads
from hgadapter.metapaths import CANONICAL_ETYPES

__all__ = [
    "AdapterOutput",
    "HeteroGraphAdapter",
    "text_logits",
    "cache_affinity",
    "cache_logits",
    "shift_features",
    "shifted_cache_affinity",
]

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
    is applied hop by hop to the projected source features (computed as the propagation of the
    raw features followed by one projection, which is the same linear map),
    :math:`y^0 = H_{src} W_s`, :math:`y^l = \mathrm{hop}_{r_l}(y^{l-1}, H_{dst_l} W_s)`,
    :math:`z(P) = \mathrm{act}(y^L + B_P)`, and the meta-paths are fused with fixed weights:

    - residual stage: :math:`H_t \leftarrow H_t + \sum_P \beta_P z(P)` (Eqs. 1-4);
    - bias stage: :math:`b = \gamma \sum_P \beta_P z(P)` (Eqs. 5-6).

    ``hop`` is the engine's normalised propagation (see :mod:`hgadapter.engines`); ``beta_test``
    replaces ``beta`` outside training. With ``learn_betas`` every :math:`\beta_P` is a parameter
    initialised at the configured ``beta`` (``beta_test`` is then unused), the paper's Table 3
    "learn" setting. With ``classwise_bias`` every meta-path carries a learnable class-wise term
    :math:`B_P \in R^{C \times d}`, zero at the start (METHOD.md, "Open question": the paper's
    10.367M trained parameters at C = 1000, d = 1024 match 5 (d^2 + C d) + 4 d, i.e. layers with a
    C x d term, as GraphAdapter's graph convolution has); without it :math:`B_P = 0`.

    Shapes:
        - input ``feat_dict[ntype]``: ``(C, d)``
        - output: :class:`AdapterOutput` with ``(C, d)`` tensors
    """

    def __init__(
        self,
        *,
        dim: int,
        stages: Sequence[StageConfig],
        init: str = "identity",
        learn_betas: bool = False,
        num_classes: int | None = None,
        classwise_bias: bool = False,
    ) -> None:
        super().__init__()
        if classwise_bias and not num_classes:
            raise ValueError("classwise_bias needs num_classes (the C of the C x d term)")
        self.dim = dim
        self.stages = tuple(stages)
        self.projections = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in self.stages)
        # One class-wise term per meta-path, zero at the start so training begins at the plain
        # graph aggregation.
        self.classwise = (
            nn.ParameterList(nn.Parameter(torch.zeros(len(stage.metapaths), num_classes, dim)) for stage in self.stages)  # (P_s, C, d) each
            if classwise_bias
            else None
        )
        # Learned fusion weights (the paper's Table 3 "learn" column), one per meta-path, starting
        # at the configured beta and used in training and testing alike.
        self.betas = (
            nn.ParameterList(nn.Parameter(torch.tensor([mp.beta for mp in stage.metapaths])) for stage in self.stages)  # (P_s,) each
            if learn_betas
            else None
        )
        self._memo: dict[tuple[int, int], tuple] = {}  # see _propagate_path
        self.reset_parameters(init)

    @classmethod
    def from_config(
        cls,
        variant: VariantConfig,
        *,
        dim: int,
        init: str = "identity",
        learn_betas: bool = False,
        num_classes: int | None = None,
        classwise_bias: bool = False,
    ) -> "HeteroGraphAdapter":
        return cls(dim=dim, stages=variant.stages, init=init, learn_betas=learn_betas, num_classes=num_classes, classwise_bias=classwise_bias)

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
        for s_idx, (stage, proj) in enumerate(zip(self.stages, self.projections)):
            act = _ACTIVATIONS[stage.activation]
            fused = None
            for p_idx, mp in enumerate(stage.metapaths):
                # hop(x W, h W) = hop(x, h) W: the projection commutes with propagation, so each
                # meta-path is propagated on raw features and projected once.
                agg = self._propagate_path(graph, stage, mp, h, feat_dict, key=(s_idx, p_idx))  # (C, d)
                beta = self.betas[s_idx][p_idx] if self.betas is not None else mp.weight(training=training)
                projected = proj(agg)  # (C, d)
                if self.classwise is not None:
                    projected = projected + self.classwise[s_idx][p_idx]  # (C, d)
                term = beta * act(projected)  # (C, d)
                fused = term if fused is None else fused + term
            if stage.mode == "residual":
                h[stage.target] = h[stage.target] + fused
            else:
                shift = stage.gamma * fused
                bias = shift if bias is None else bias + shift
        return AdapterOutput(feat_dict=h, vis_bias=bias)

    def _propagate_path(self, graph, stage, mp, h, inputs, *, key) -> torch.Tensor:
        """Run the meta-path's hops on unprojected features, memoising paths whose inputs are the
        caller's frozen features: those do not change between training steps, so the graph part
        of, e.g., v2p is computed once per run and only the renewed negatives flow through n2p."""
        ntypes = [mp.src_ntype]
        if stage.norm == "gcn":
            ntypes += [CANONICAL_ETYPES[etype][2] for etype in mp.relations]
        used = tuple(h[t] for t in ntypes)
        static = all(u is inputs.get(t) and not u.requires_grad for t, u in zip(ntypes, used))
        if static:
            hit = self._memo.get(key)
            if hit is not None and hit[0] is graph and all(a is b and a._version == v for a, b, v in zip(used, hit[1], hit[2])):
                return hit[3]
        y = h[mp.src_ntype]
        for etype in mp.relations:
            dst_t = CANONICAL_ETYPES[etype][2]
            y = graph.propagate(etype, stage.norm, y, h[dst_t] if stage.norm == "gcn" else None)
        if static:
            self._memo[key] = (graph, used, tuple(u._version for u in used), y)
        return y

def shift_features(keys: torch.Tensor, labels: torch.Tensor, vis_bias: torch.Tensor | None) -> torch.Tensor:
    """Cache keys shifted by their class's visual bias and renormalised: ``(N, d)``."""
    if vis_bias is None:
        return F.normalize(keys, dim=-1)
    return F.normalize(keys + vis_bias[labels], dim=-1)


def cache_affinity(features: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Cosine affinity of queries to cache keys: ``(B, d), (N, d) -> (B, N)``."""
    return F.normalize(features, dim=-1) @ keys.T


def shifted_cache_affinity(
    features: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, vis_bias: torch.Tensor | None
) -> torch.Tensor:
    """``cos(f, normalise(k_n + b_{y_n}))`` without materialising the shifted keys.

    Equal to ``cache_affinity(features, shift_features(keys, labels, vis_bias))`` for unit-norm
    ``keys``: the numerator splits into ``f k_n + f b_{y_n}`` and the key norm is
    ``sqrt(1 + 2 k_n b_{y_n} + |b_{y_n}|^2)``. During training ``f`` and ``k`` are frozen, so
    the one large product ``f K^T`` needs no backward pass and gradients reach the bias through
    ``(B, C)`` and ``(N,)``-sized terms only.

    Shapes: features ``(B, d)``, keys ``(N, d)`` (unit norm), labels ``(N,)``, vis_bias ``(C, d)``
    -> ``(B, N)``.
    """
    query = F.normalize(features, dim=-1)
    base = query @ keys.T  # (B, N)
    if vis_bias is None:
        return base
    num_classes = vis_bias.shape[0]
    bias_sq = vis_bias.square().sum(dim=-1)  # (C,)
    query_bias = query @ vis_bias.T  # (B, C)
    shots = _equal_blocks(labels, num_classes)
    if shots is not None:  # few-shot sets: K consecutive keys per class -> broadcasting, no gathers
        grouped = keys.view(num_classes, shots, -1)  # (C, K, d)
        key_dot_bias = torch.bmm(grouped, vis_bias.unsqueeze(2)).squeeze(2)  # (C, K)
        norm = torch.sqrt(1.0 + 2.0 * key_dot_bias + bias_sq.unsqueeze(1))  # (C, K)
        out = (base.view(-1, num_classes, shots) + query_bias.unsqueeze(2)) / norm  # (B, C, K)
        return out.reshape(base.shape)  # (B, N)
    key_dot_bias = (keys * vis_bias[labels]).sum(dim=-1)  # (N,)
    norm = torch.sqrt(1.0 + 2.0 * key_dot_bias + bias_sq[labels])  # (N,)
    return (base + query_bias[:, labels]) / norm  # (B, N)


def _equal_blocks(labels: torch.Tensor, num_classes: int) -> int | None:
    """K if ``labels`` is ``[0]*K + [1]*K + ... + [C-1]*K``, else ``None``."""
    n = labels.numel()
    if n == 0 or n % num_classes:
        return None
    shots = n // num_classes
    expected = torch.arange(num_classes, device=labels.device).repeat_interleave(shots)
    return shots if torch.equal(labels, expected) else None
