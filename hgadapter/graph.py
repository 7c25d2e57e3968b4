"""Building the heterograph (paper Sec. 3.1.1): node features and typed, weighted edges.

Pure ``build_*`` functions: (node features, graph options) -> graph. Edge weights are computed
once from the initial node features (they are frozen CLIP features), so a graph is built once per
run and only the message passing is recomputed at every training step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from hgadapter.data.cache import FewShotSet
from hgadapter.metapaths import CANONICAL_ETYPES, DEFAULT_WEIGHT_KIND, NTYPES

if TYPE_CHECKING:
    from hgadapter.config import GraphConfig

__all__ = ["RelationGraph", "prompt_ensemble", "class_means", "build_node_features", "build_edge_weights", "build_relation_graph", "build_relation_graph_from_config"]


@dataclass(frozen=True)
class RelationGraph:
    """Engine-independent heterograph: per relation, the edge list and its weights.

    Attributes:
        num_nodes_dict: number of nodes per node type (C for each).
        edges_dict: relation name -> ``(src, dst, weight)``; int64 ``(E,)``, int64 ``(E,)``,
            float ``(E,)``. A relation with no edges has empty tensors.
    """

    num_nodes_dict: dict[str, int]
    edges_dict: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]

    @property
    def etypes(self) -> tuple[str, ...]:
        return tuple(self.edges_dict)

    def num_edges(self, etype: str) -> int:
        return int(self.edges_dict[etype][0].numel())

    def dense_weights(self, etype: str) -> torch.Tensor:
        """The weighted adjacency of one relation as a dense ``(n_dst, n_src)`` matrix."""
        src_t, _, dst_t = CANONICAL_ETYPES[etype]
        src, dst, w = self.edges_dict[etype]
        out = w.new_zeros(self.num_nodes_dict[dst_t], self.num_nodes_dict[src_t])
        return out.index_put_((dst, src), w, accumulate=True)

    def to(self, device: torch.device | str) -> "RelationGraph":
        return RelationGraph(
            num_nodes_dict=dict(self.num_nodes_dict),
            edges_dict={k: tuple(t.to(device) for t in v) for k, v in self.edges_dict.items()},  # type: ignore[misc]
        )


def prompt_ensemble(prompts: torch.Tensor) -> torch.Tensor:
    """Renormalised mean of each class's normalised prompt features: ``(C, P, d) -> (C, d)``.

    CLIP's prompt ensemble (CLIP Sec. 3.1.4), Tip-Adapter's zero-shot classifier, and the ``pos``
    and ``neg`` nodes of HeGraphAdapter.
    """
    return F.normalize(F.normalize(prompts.float(), dim=-1).mean(dim=1), dim=-1)


def class_means(views: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Renormalised mean of each class's images over all their views: ``(N, V, d) -> (C, d)``."""
    per_image = F.normalize(views.float(), dim=-1).mean(dim=1)  # (N, d)
    sums = per_image.new_zeros(num_classes, per_image.shape[1]).index_add_(0, labels, per_image)  # (C, d)
    return F.normalize(sums, dim=-1)


def build_node_features(
    *, pos_text: torch.Tensor, neg_text: torch.Tensor, train_set: FewShotSet
) -> dict[str, torch.Tensor]:
    """Initial node features (METHOD.md "Nodes"): per-class mean directions, each ``(C, d)``.

    ``pos``/``neg``: mean of the class's normalised prompt features ``(C, P, d)`` / ``(C, Q, d)``,
    renormalised. ``vis``: mean of the class's normalised few-shot image features over all images
    and views.
    """
    num_classes = int(pos_text.shape[0])
    counts = torch.bincount(train_set.labels, minlength=num_classes)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten().tolist()[:5]
        raise ValueError(f"training set (shots={train_set.shots}, seed={train_set.seed}) has no image of classes {missing}")
    return {
        "pos": prompt_ensemble(pos_text),
        "neg": prompt_ensemble(neg_text),
        "vis": class_means(train_set.features, train_set.labels, num_classes),
    }


def _cosine(feat_dict: dict[str, torch.Tensor], etype: str) -> torch.Tensor:
    """Cosine similarity of every destination to every source of ``etype``: ``(n_dst, n_src)``."""
    src_t, _, dst_t = CANONICAL_ETYPES[etype]
    src = F.normalize(feat_dict[src_t].float(), dim=-1)
    dst = F.normalize(feat_dict[dst_t].float(), dim=-1)
    return dst @ src.T  # (n_dst, n_src)


def build_edge_weights(
    feat_dict: dict[str, torch.Tensor],
    etype: str,
    *,
    kind: str | None = None,
    contrast: str = "one_minus_cos",
    self_loops: bool = False,
    clamp_negative: bool = False,
) -> torch.Tensor:
    """Dense edge weights of one relation, ``(n_dst, n_src)``, row i = destination node i.

    cosine: ``w_ij = cos(x_i, x_j)``. contrast: the same-class edge (i == j) gets ``1 - cos``
    (``one_minus_cos``) or ``-cos`` (``neg_cos``), other edges ``cos``. On p2p/v2v the diagonal
    is removed unless ``self_loops``; entries that are not edges are returned as NaN.
    """
    return _weights_from_cosine(
        _cosine(feat_dict, etype), etype, kind=kind, contrast=contrast, self_loops=self_loops, clamp_negative=clamp_negative
    )


def _weights_from_cosine(
    cos: torch.Tensor, etype: str, *, kind: str | None, contrast: str, self_loops: bool, clamp_negative: bool
) -> torch.Tensor:
    """:func:`build_edge_weights` from the relation's cosine matrix ``(n_dst, n_src)``."""
    src_t, _, dst_t = CANONICAL_ETYPES[etype]
    kind = kind or DEFAULT_WEIGHT_KIND[etype]
    weights = cos.clone()
    n = min(weights.shape)
    diag = torch.arange(n, device=weights.device)
    if kind == "contrast":
        same = cos[diag, diag]
        weights[diag, diag] = 1.0 - same if contrast == "one_minus_cos" else -same
    if clamp_negative:
        weights = weights.clamp_min(0.0)
    if src_t == dst_t and not self_loops:
        weights[diag, diag] = float("nan")
    return weights


def build_relation_graph(
    feat_dict: dict[str, torch.Tensor],
    *,
    relations: tuple[str, ...],
    weights: dict[str, str] | None = None,
    contrast: str = "one_minus_cos",
    topk: int | None = None,
    topk_by_relation: dict[str, int | None] | None = None,
    self_loops: bool = False,
    clamp_negative: bool = False,
) -> RelationGraph:
    """Build the typed, weighted edge lists of every relation in ``relations``.

    Dense by default (every source -> every destination). With ``topk`` each destination keeps
    ``topk`` sources; ``topk_by_relation`` gives a relation its own k (``None``: dense) instead.
    Neighbours are chosen by cosine similarity, and the relation's weight (cosine or contrast) is
    then applied to the edges chosen. In a contrast relation between two node types (p2n, v2n,
    n2p) the same-class edge, "from each positive text/visual node to its corresponding negative
    text node" (paper Sec. 3.1.1), is always kept and counts as one of the k: choosing by the
    contrast weight would drop exactly that edge, whose weight is the smallest of its row.
    All inputs are frozen, so nothing here needs gradients.
    """
    topk_by_relation = topk_by_relation or {}
    weights = weights or DEFAULT_WEIGHT_KIND
    num_nodes_dict = {ntype: int(feat_dict[ntype].shape[0]) for ntype in NTYPES if ntype in feat_dict}
    edges_dict = {}
    with torch.no_grad():
        for etype in relations:
            kind = weights.get(etype) or DEFAULT_WEIGHT_KIND[etype]
            cos = _cosine(feat_dict, etype)  # (n_dst, n_src): chooses the neighbours and gives the weights
            w = _weights_from_cosine(
                cos, etype, kind=kind, contrast=contrast, self_loops=self_loops, clamp_negative=clamp_negative
            )  # (n_dst, n_src), NaN where no edge may exist
            valid = ~torch.isnan(w)
            k = topk_by_relation.get(etype, topk)
            if k is not None and k < w.shape[1]:
                scores = cos.masked_fill(~valid, float("-inf"))  # (n_dst, n_src)
                src_t, _, dst_t = CANONICAL_ETYPES[etype]
                if kind == "contrast" and src_t != dst_t:
                    diag = torch.arange(min(scores.shape), device=scores.device)
                    scores[diag, diag] = float("inf")  # the same-class edge is always chosen
                keep = torch.zeros_like(valid)
                idx = scores.topk(k, dim=1).indices  # (n_dst, k)
                keep.scatter_(1, idx, True)
                valid = valid & keep
            dst, src = torch.nonzero(valid, as_tuple=True)
            edges_dict[etype] = (src, dst, w[dst, src])
    return RelationGraph(num_nodes_dict=num_nodes_dict, edges_dict=edges_dict)


def build_relation_graph_from_config(feat_dict: dict[str, torch.Tensor], graph_cfg: "GraphConfig") -> RelationGraph:
    """:func:`build_relation_graph` with every option taken from a variant's ``graph`` section."""
    options = {f.name: getattr(graph_cfg, f.name) for f in dataclasses.fields(graph_cfg)}
    return build_relation_graph(feat_dict, **options)
