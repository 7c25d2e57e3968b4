"""The ``torch`` engine: normalised relation matrices applied with plain torch ops.

Relations denser than :data:`DENSE_FRACTION` become dense ``(n_dst, n_src)`` matrices (one
GEMM per hop); sparser ones (top-k graphs) become coalesced sparse COO matrices applied with
``torch.sparse.mm``, O(E d) and differentiable in the dense operand (much faster forward and
backward than an explicit gather + ``index_add``; docs/benchmarks.md has the measurement).
"""

from __future__ import annotations

import torch

from hgadapter.graph import RelationGraph
from hgadapter.metapaths import CANONICAL_ETYPES

DENSE_FRACTION = 0.25  # use a dense matrix when E >= this fraction of n_dst * n_src


class TorchPropagator:
    engine = "torch"

    def __init__(self, graph: RelationGraph, *, device: torch.device) -> None:
        self.graph = graph.to(device)
        self.device = device
        self._ops: dict[tuple[str, str], tuple] = {}

    def _prepare(self, etype: str, norm: str) -> tuple:
        key = (etype, norm)
        if key in self._ops:
            return self._ops[key]
        src_t, _, dst_t = CANONICAL_ETYPES[etype]
        n_src, n_dst = self.graph.num_nodes_dict[src_t], self.graph.num_nodes_dict[dst_t]
        src, dst, w = self.graph.edges_dict[etype]
        absw = w.abs()
        deg_dst = torch.zeros(n_dst, device=self.device).index_add_(0, dst, absw)  # (n_dst,)
        deg_src = torch.zeros(n_src, device=self.device).index_add_(0, src, absw)  # (n_src,)
        if norm == "gcn":
            coef = w * torch.rsqrt((deg_dst[dst] + 1.0) * (deg_src[src] + 1.0))  # (E,)
            self_coef = 1.0 / (deg_dst + 1.0)  # (n_dst,)
        elif norm == "row":
            coef = w / deg_dst[dst].clamp_min(torch.finfo(w.dtype).tiny)  # (E,)
            self_coef = None
        else:
            raise ValueError(f"unknown norm {norm!r}; available: ['gcn', 'row']")
        if src.numel() >= DENSE_FRACTION * n_src * n_dst:
            matrix = coef.new_zeros(n_dst, n_src).index_put_((dst, src), coef, accumulate=True)
            op = ("dense", matrix, self_coef)
        else:
            matrix = torch.sparse_coo_tensor(
                torch.stack([dst, src]), coef, (n_dst, n_src), check_invariants=True
            ).coalesce()
            op = ("sparse", matrix, self_coef)
        self._ops[key] = op
        return op

    def propagate(self, etype: str, norm: str, src_h: torch.Tensor, dst_h: torch.Tensor | None) -> torch.Tensor:
        kind, op, self_coef = self._prepare(etype, norm)
        out = op @ src_h if kind == "dense" else torch.sparse.mm(op, src_h)  # (n_dst, d)
        if self_coef is not None and dst_h is not None:
            out = out + self_coef.unsqueeze(1) * dst_h
        return out
