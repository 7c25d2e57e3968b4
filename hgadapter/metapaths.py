"""The heterograph schema: node types, the six typed relations and meta-paths (paper Sec. 3.1).

Node types (C nodes each; node i is class i):
    ``pos``  positive text nodes, ``neg`` negative text nodes, ``vis`` visual class nodes.

Relations, canonical ``(src_ntype, etype, dst_ntype)``, with the edge weight each uses by default
(``cosine``: cos(x_i, x_j); ``contrast``: a dissimilarity on the same-class edge, cosine elsewhere):

    n2p  neg -> pos  contrast        p2n  pos -> neg  contrast
    v2p  vis -> pos  cosine          v2n  vis -> neg  contrast
    p2p  pos -> pos  cosine          v2v  vis -> vis  cosine

A meta-path is a chain of relations, applied hop by hop, whose last hop ends at the stage's
target node type. This module is pure schema: no tensors, no YAML.
"""

from __future__ import annotations

from dataclasses import dataclass

NTYPES: tuple[str, ...] = ("pos", "neg", "vis")

CANONICAL_ETYPES: dict[str, tuple[str, str, str]] = {
    "n2p": ("neg", "n2p", "pos"),
    "v2p": ("vis", "v2p", "pos"),
    "p2p": ("pos", "p2p", "pos"),
    "p2n": ("pos", "p2n", "neg"),
    "v2n": ("vis", "v2n", "neg"),
    "v2v": ("vis", "v2v", "vis"),
}
ETYPES: tuple[str, ...] = tuple(CANONICAL_ETYPES)

WEIGHT_KINDS: tuple[str, ...] = ("cosine", "contrast")
DEFAULT_WEIGHT_KIND: dict[str, str] = {
    "n2p": "contrast",
    "v2p": "cosine",
    "p2p": "cosine",
    "p2n": "contrast",
    "v2n": "contrast",
    "v2v": "cosine",
}

# How the same-class edge of a contrast relation is weighted: 1 - cos (METHOD.md) or -cos (the
# public re-implementation negates the diagonal).
CONTRAST_MODES: tuple[str, ...] = ("one_minus_cos", "neg_cos")
NORMS: tuple[str, ...] = ("gcn", "row")
ACTIVATIONS: tuple[str, ...] = ("tanh", "relu", "identity")
STAGE_MODES: tuple[str, ...] = ("residual", "bias")


def canonical_etype(etype: str) -> tuple[str, str, str]:
    """``(src_ntype, etype, dst_ntype)`` of a relation name; ``KeyError`` lists the valid names."""
    try:
        return CANONICAL_ETYPES[etype]
    except KeyError:
        raise KeyError(f"unknown relation {etype!r}; available: {list(ETYPES)}") from None


@dataclass(frozen=True)
class MetaPath:
    """A chain of relations aggregated into one destination type, with its fusion weights.

    Attributes:
        relations: relation names, first hop first (e.g. ``("v2n", "n2p")`` is vis -> neg -> pos).
        beta: fusion weight during training.
        beta_test: fusion weight at evaluation time; ``None`` means the same as ``beta``.
    """

    relations: tuple[str, ...]
    beta: float
    beta_test: float | None = None

    def __post_init__(self) -> None:
        if not self.relations:
            raise ValueError("a meta-path needs at least one relation")
        for etype in self.relations:
            canonical_etype(etype)
        for prev, nxt in zip(self.relations, self.relations[1:]):
            if CANONICAL_ETYPES[prev][2] != CANONICAL_ETYPES[nxt][0]:
                raise ValueError(
                    f"meta-path {'->'.join(self.relations)} does not chain: {prev} ends at "
                    f"{CANONICAL_ETYPES[prev][2]!r} but {nxt} starts at {CANONICAL_ETYPES[nxt][0]!r}"
                )

    @property
    def src_ntype(self) -> str:
        return CANONICAL_ETYPES[self.relations[0]][0]

    @property
    def dst_ntype(self) -> str:
        return CANONICAL_ETYPES[self.relations[-1]][2]

    @property
    def name(self) -> str:
        return "-".join(self.relations)

    def weight(self, *, training: bool) -> float:
        """The fusion weight in force: ``beta`` in training, ``beta_test`` (if set) otherwise."""
        if training or self.beta_test is None:
            return self.beta
        return self.beta_test
