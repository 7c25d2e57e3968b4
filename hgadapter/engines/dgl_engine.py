"""The ``dgl`` engine: the DGL heterograph with built-in message and reduce functions.

Degrees come from ``copy_e`` + ``sum`` on the relation and on its reverse, edge coefficients
from ``u_mul_v`` of the per-node ``1/sqrt(d + 1)`` factors, and each hop is one
``update_all(u_mul_e, sum)`` on that relation. The heterograph lives on the device the run uses
(a CUDA device needs a CUDA build of DGL; :func:`hgadapter._dgl.check_dgl_device`).
"""

from __future__ import annotations

import torch

from hgadapter._dgl import check_dgl_device, import_dgl
from hgadapter.graph import RelationGraph
from hgadapter.metapaths import CANONICAL_ETYPES

__all__ = ["DGLPropagator", "build_heterograph"]


def build_heterograph(graph: RelationGraph, *, device: torch.device | str = "cpu"):
    """The DGL heterograph of ``graph`` on ``device``: node types pos/neg/vis, one edge type per
    relation, and the edge weights in ``edata["w"]``.

    Raises ``DGLUnavailableError`` when dgl cannot be imported or cannot use ``device``.
    """
    dgl = import_dgl()
    device = check_dgl_device(device)
    graph = graph.to(device)
    data = {CANONICAL_ETYPES[etype]: (src, dst) for etype, (src, dst, _) in graph.edges_dict.items()}
    g = dgl.heterograph(data, num_nodes_dict=dict(graph.num_nodes_dict), device=device)
    for etype, (_, _, w) in graph.edges_dict.items():
        g.edges[etype].data["w"] = w
    return g


class DGLPropagator:
    engine = "dgl"

    def __init__(self, graph: RelationGraph, *, device: torch.device | str = "cpu") -> None:
        self.dgl = import_dgl()
        self.fn = self.dgl.function
        self.hg = build_heterograph(graph, device=device)
        self._coef: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor | None]] = {}

    def _weighted_degrees(self, etype: str) -> tuple[torch.Tensor, torch.Tensor]:
        fn = self.fn
        rel = self.hg[etype]  # one-relation view of the heterograph
        with rel.local_scope():
            rel.edata["absw"] = rel.edata["w"].abs()
            rel.update_all(fn.copy_e("absw", "m"), fn.sum("m", "deg"))
            deg_dst = rel.dstdata["deg"]  # (n_dst,)
        rev = self.dgl.reverse(rel, copy_edata=True)
        with rev.local_scope():
            rev.edata["absw"] = rev.edata["w"].abs()
            rev.update_all(fn.copy_e("absw", "m"), fn.sum("m", "deg"))
            deg_src = rev.dstdata["deg"]  # (n_src,)
        return deg_dst, deg_src

    def _prepare(self, etype: str, norm: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        key = (etype, norm)
        if key in self._coef:
            return self._coef[key]
        fn = self.fn
        rel = self.hg[etype]
        deg_dst, deg_src = self._weighted_degrees(etype)
        with rel.local_scope():
            if norm == "gcn":
                # distinct names: on p2p / v2v srcdata and dstdata are one node frame
                rel.srcdata["r_src"] = torch.rsqrt(deg_src + 1.0)
                rel.dstdata["r_dst"] = torch.rsqrt(deg_dst + 1.0)
                rel.apply_edges(fn.u_mul_v("r_src", "r_dst", "c"))
                coef = rel.edata["w"] * rel.edata["c"]  # (E,)
                self_coef = 1.0 / (deg_dst + 1.0)
            elif norm == "row":
                rel.dstdata["inv"] = 1.0 / deg_dst.clamp_min(torch.finfo(deg_dst.dtype).tiny)
                rel.apply_edges(fn.e_mul_v("w", "inv", "c"))
                coef = rel.edata["c"]  # (E,)
                self_coef = None
            else:
                raise ValueError(f"unknown norm {norm!r}; available: ['gcn', 'row']")
        self._coef[key] = (coef.unsqueeze(1), self_coef)  # (E, 1)
        return self._coef[key]

    def propagate(self, etype: str, norm: str, src_h: torch.Tensor, dst_h: torch.Tensor | None) -> torch.Tensor:
        coef, self_coef = self._prepare(etype, norm)
        fn = self.fn
        rel = self.hg[etype]
        with rel.local_scope():
            rel.srcdata["h"] = src_h
            rel.edata["a"] = coef
            rel.update_all(fn.u_mul_e("h", "a", "m"), fn.sum("m", "z"))
            out = rel.dstdata["z"]  # (n_dst, d)
        if self_coef is not None and dst_h is not None:
            out = out + self_coef.unsqueeze(1) * dst_h
        return out
