"""Message-passing engines: one semantics, two implementations (``torch`` and ``dgl``).

An engine turns a :class:`~hgadapter.graph.RelationGraph` into a :class:`Propagator`, whose
``propagate`` runs one hop of one relation with a per-destination normalisation:

    gcn:  out_i = sum_j w_ij / sqrt((d_i + 1)(d_j + 1)) * src_j  +  dst_i / (d_i + 1)
    row:  out_i = sum_j w_ij / d_i * src_j                         (0 when d_i = 0)

with d_i = sum_j |w_ij| (weighted in-degree of destination i in that relation) and
d_j = sum_i |w_ij| (weighted out-degree of source j). ``torch`` uses dense or gather/scatter
matmuls and runs on any device; ``dgl`` runs DGL's built-in ``u_mul_e``/``sum`` kernels on the
DGL heterograph, on the CPU or, with a CUDA build of DGL, on the GPU (PyPI's dgl wheels are
CPU-only; :func:`hgadapter._dgl.check_dgl_device` says which build is installed).
"""

from __future__ import annotations

from typing import Protocol

import torch

from hgadapter.graph import RelationGraph

__all__ = ["Propagator", "list_engines", "create_engine", "resolve_engine"]

# `auto` = torch: experiments/bench_engines.py found dgl faster nowhere (docs/benchmarks.md has
# the numbers). The dgl engine stays the independent implementation the tests hold torch to.


class Propagator(Protocol):
    """A prepared graph that runs single-hop message passing."""

    engine: str

    def propagate(
        self, etype: str, norm: str, src_h: torch.Tensor, dst_h: torch.Tensor | None
    ) -> torch.Tensor:
        """One hop of ``etype``: ``src_h`` ``(n_src, d)`` -> ``(n_dst, d)``; ``dst_h`` is the
        destination's own (projected) feature for the gcn self term, ignored by ``row``."""
        ...


def list_engines() -> list[str]:
    return ["auto", "dgl", "torch"]


def resolve_engine(name: str) -> str:
    """The concrete engine for ``name``: ``auto`` is ``torch`` (the measured rule above)."""
    if name not in list_engines():
        raise ValueError(f"unknown engine {name!r}; available: {list_engines()}")
    return "torch" if name == "auto" else name


def create_engine(name: str, graph: RelationGraph, *, device: torch.device | str = "cpu") -> Propagator:
    """Prepare ``graph`` for message passing with engine ``name`` (``torch`` or ``dgl``)."""
    device = torch.device(device)
    if name == "torch":
        from hgadapter.engines.torch_engine import TorchPropagator

        return TorchPropagator(graph, device=device)
    if name == "dgl":
        from hgadapter.engines.dgl_engine import DGLPropagator

        return DGLPropagator(graph, device=device)
    raise ValueError(f"unknown engine {name!r}; available: ['dgl', 'torch'] (or 'auto')")
