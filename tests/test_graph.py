"""Heterograph construction: hand-computed edge weights and one hand-computed aggregation step."""

import math

import pytest
import torch

from hgadapter.config import StageConfig
from hgadapter.engines import create_engine
from hgadapter.engines.dgl_engine import build_heterograph
from hgadapter.graph import RelationGraph, build_edge_weights, build_node_features, build_relation_graph
from hgadapter.metapaths import CANONICAL_ETYPES, ETYPES, MetaPath
from hgadapter.adapter import HeteroGraphAdapter

# Two classes in 2-D, chosen so every cosine is a short decimal.
FEATS = {
    "pos": torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
    "neg": torch.tensor([[0.6, 0.8], [0.8, 0.6]]),
    "vis": torch.tensor([[1.0, 0.0], [0.6, 0.8]]),
}


def test_contrast_weights_by_hand():
    # dst pos i, src neg j: cos = [[0.6, 0.8], [0.8, 0.6]]; the diagonal is the class and its negation.
    w = build_edge_weights(FEATS, "n2p", contrast="one_minus_cos")
    torch.testing.assert_close(w, torch.tensor([[0.4, 0.8], [0.8, 0.4]]))
    w = build_edge_weights(FEATS, "n2p", contrast="neg_cos")
    torch.testing.assert_close(w, torch.tensor([[-0.6, 0.8], [0.8, -0.6]]))
    w = build_edge_weights(FEATS, "n2p", contrast="neg_cos", clamp_negative=True)
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.8], [0.8, 0.0]]))


def test_cosine_weights_by_hand():
    torch.testing.assert_close(build_edge_weights(FEATS, "v2p"), torch.tensor([[1.0, 0.6], [0.0, 0.8]]))
    # p2p / v2v drop the diagonal unless self-loops are asked for.
    w = build_edge_weights(FEATS, "v2v")
    assert math.isnan(w[0, 0]) and math.isnan(w[1, 1])
    assert w[0, 1] == pytest.approx(0.6) and w[1, 0] == pytest.approx(0.6)
    torch.testing.assert_close(build_edge_weights(FEATS, "v2v", self_loops=True), torch.tensor([[1.0, 0.6], [0.6, 1.0]]))


def test_relation_graph_edges_and_topk():
    g = build_relation_graph(FEATS, relations=ETYPES)
    assert g.num_edges("v2p") == 4 and g.num_edges("p2p") == 2 and g.num_edges("v2v") == 2
    torch.testing.assert_close(g.dense_weights("v2p"), torch.tensor([[1.0, 0.6], [0.0, 0.8]]))
    top1 = build_relation_graph(FEATS, relations=("v2p", "n2p"), topk=1)
    # each destination keeps its single most similar source ...
    torch.testing.assert_close(top1.dense_weights("v2p"), torch.tensor([[1.0, 0.0], [0.0, 0.8]]))
    # ... except in a contrast relation, whose same-class edge is always kept (with its 1 - cos weight)
    torch.testing.assert_close(top1.dense_weights("n2p"), torch.tensor([[0.4, 0.0], [0.0, 0.4]]))


def test_dgl_heterograph_schema():
    hg = build_heterograph(build_relation_graph(FEATS, relations=ETYPES))
    assert sorted(hg.ntypes) == ["neg", "pos", "vis"]
    assert sorted(hg.canonical_etypes) == sorted(CANONICAL_ETYPES.values())
    for etype in ETYPES:
        assert hg.num_nodes(CANONICAL_ETYPES[etype][0]) == 2
    src, dst = hg.edges(etype="v2p")
    torch.testing.assert_close(hg.edges["v2p"].data["w"], build_edge_weights(FEATS, "v2p")[dst, src])


# One hop of v2p by hand. In-degrees of pos (row sums of |w|): 1.6, 0.8; out-degrees of vis
# (column sums): 1.0, 1.4.
GCN_V2P = torch.tensor(
    [
        [1.0 / math.sqrt(2.6 * 2.0) * 1.0 + 0.6 / math.sqrt(2.6 * 2.4) * 0.6 + 1.0 / 2.6, 0.6 / math.sqrt(2.6 * 2.4) * 0.8],
        [0.8 / math.sqrt(1.8 * 2.4) * 0.6, 0.8 / math.sqrt(1.8 * 2.4) * 0.8 + 1.0 / 1.8],
    ]
)
ROW_V2P = torch.tensor([[(1.0 + 0.6 * 0.6) / 1.6, 0.6 * 0.8 / 1.6], [0.6, 0.8]])


@pytest.mark.parametrize("engine", ["torch", "dgl"])
def test_one_hop_by_hand(engine):
    graph = create_engine(engine, build_relation_graph(FEATS, relations=ETYPES))
    torch.testing.assert_close(graph.propagate("v2p", "gcn", FEATS["vis"], FEATS["pos"]), GCN_V2P)
    torch.testing.assert_close(graph.propagate("v2p", "row", FEATS["vis"], None), ROW_V2P)
    assert GCN_V2P[0, 0] == pytest.approx(0.967259, abs=1e-6)  # the decimal worked on paper


@pytest.mark.parametrize("engine", ["torch", "dgl"])
def test_one_stage_by_hand(engine):
    # pos' = pos + 0.5 * row(v2p) + 0.25 * row(p2p); p2p weights are cos(pos0, pos1) = 0 -> zero degree -> 0.
    stage = StageConfig(
        target="pos",
        metapaths=(MetaPath(("v2p",), 0.5), MetaPath(("p2p",), 0.25)),
        norm="row",
        activation="identity",
    )
    adapter = HeteroGraphAdapter(dim=2, stages=[stage], init="identity")
    graph = create_engine(engine, build_relation_graph(FEATS, relations=ETYPES))
    out = adapter(graph, FEATS, training=True)
    torch.testing.assert_close(out.feat_dict["pos"], FEATS["pos"] + 0.5 * ROW_V2P)
    torch.testing.assert_close(out.feat_dict["neg"], FEATS["neg"])
    assert out.vis_bias is None


def test_node_features_are_normalised_class_means(random_cache):
    train = random_cache.train_set(4, 1)
    feats = build_node_features(pos_text=random_cache.pos_text, neg_text=random_cache.neg_text, train_set=train)
    for ntype in ("pos", "neg", "vis"):
        assert feats[ntype].shape == (random_cache.num_classes, random_cache.dim)
        torch.testing.assert_close(feats[ntype].norm(dim=-1), torch.ones(random_cache.num_classes))
    mean0 = torch.nn.functional.normalize(train.features[train.labels == 0].mean(dim=(0, 1)), dim=0)
    torch.testing.assert_close(feats["vis"][0], mean0, atol=1e-5, rtol=1e-5)


def test_edgeless_relation_graph():
    empty = torch.zeros(0, dtype=torch.long)
    g = RelationGraph({"pos": 2, "neg": 2, "vis": 2}, {"v2n": (empty, empty, torch.zeros(0))})
    hg = build_heterograph(g)
    assert hg.num_edges("v2n") == 0


def test_a_relation_can_have_its_own_topk():
    g = build_relation_graph(FEATS, relations=("v2p", "n2p"), topk=1, topk_by_relation={"n2p": None})
    torch.testing.assert_close(g.dense_weights("v2p"), torch.tensor([[1.0, 0.0], [0.0, 0.8]]))  # topk=1
    torch.testing.assert_close(g.dense_weights("n2p"), torch.tensor([[0.4, 0.8], [0.8, 0.4]]))  # its own: dense
    g = build_relation_graph(FEATS, relations=("v2p", "n2p"), topk_by_relation={"v2p": 1})
    assert g.num_edges("v2p") == 2 and g.num_edges("n2p") == 4


def test_topk_by_relation_config():
    from hgadapter.config import ConfigError, load_config

    cfg = load_config("t", overrides=["graph.topk_by_relation={v2p: 1, n2p: null}"])
    assert cfg.variant.graph.topk_by_relation == {"v2p": 1, "n2p": None} and cfg.variant.graph.topk == 8
    with pytest.raises(ConfigError, match=r"graph\.topk_by_relation\.v2v: relation 'v2v' is not in graph\.relations"):
        load_config("t", overrides=["graph.topk_by_relation={v2v: 1}"])
    with pytest.raises(ConfigError, match=r"graph\.topk_by_relation\.x2y: unknown key; valid keys"):
        load_config("t", overrides=["graph.topk_by_relation={x2y: 1}"])
    with pytest.raises(ConfigError, match=r"graph\.topk_by_relation\.v2p: must be >= 1, got 0"):
        load_config("t", overrides=["graph.topk_by_relation={v2p: 0}"])


# Three classes in 3-D for the contrast edges. Each class's negation is its least similar
# negative node (cos 0.1), so choosing neighbours by weight or by similarity alone would drop it.
FEATS3 = {
    "pos": torch.eye(3),
    "neg": torch.nn.functional.normalize(torch.tensor([[0.1, 0.9, 0.3], [0.3, 0.1, 0.9], [0.9, 0.3, 0.1]]), dim=-1),
    "vis": torch.nn.functional.normalize(torch.tensor([[0.2, 0.7, 0.5], [0.5, 0.2, 0.7], [0.7, 0.5, 0.2]]), dim=-1),
}
CONTRAST = ("n2p", "p2n", "v2n")


def _same_class_cos(etype):
    src_t, _, dst_t = CANONICAL_ETYPES[etype]
    return (torch.nn.functional.normalize(FEATS3[dst_t], dim=-1) * torch.nn.functional.normalize(FEATS3[src_t], dim=-1)).sum(-1)


@pytest.mark.parametrize("contrast", ["one_minus_cos", "neg_cos"])
@pytest.mark.parametrize("topk", [None, 1, 2])
def test_contrast_relations_keep_the_same_class_edge(contrast, topk):
    g = build_relation_graph(FEATS3, relations=ETYPES, contrast=contrast, topk=topk)
    for etype in CONTRAST:
        same = _same_class_cos(etype)  # (3,)
        expected = 1.0 - same if contrast == "one_minus_cos" else -same
        dense = g.dense_weights(etype)  # (3, 3), 0 where no edge
        torch.testing.assert_close(torch.diagonal(dense), expected)
        src, dst, _ = g.edges_dict[etype]
        assert ((src == dst).sum() == 3), f"{etype}: every same-class edge is present"
        assert g.num_edges(etype) == 3 * (topk or 3)
        # the other edges are each destination's most similar other-class sources, weighted by cosine
        if topk == 2:
            cos = build_edge_weights(FEATS3, etype, kind="cosine")
            off = cos.clone().fill_diagonal_(float("-inf"))
            best = off.argmax(dim=1)
            for i in range(3):
                assert dense[i, best[i]] == pytest.approx(float(cos[i, best[i]]))
    # cosine relations choose by similarity: v2p top-1 keeps each class's most similar visual node
    if topk == 1:
        cos = build_edge_weights(FEATS3, "v2p")
        assert torch.equal(torch.nonzero(g.dense_weights("v2p"))[:, 1], cos.argmax(dim=1))


@pytest.mark.parametrize("engine", ["torch", "dgl"])
@pytest.mark.parametrize("topk", [None, 1])
def test_engines_carry_the_same_class_contrast_edge(engine, topk):
    """Both engines propagate over the same-class edge: a one-hot source on class i's negative
    node reaches class i's positive node with the gcn coefficient of that edge."""
    g = build_relation_graph(FEATS3, relations=ETYPES, contrast="neg_cos", topk=topk)
    prop = create_engine(engine, g)
    for etype in CONTRAST:
        src_t, _, dst_t = CANONICAL_ETYPES[etype]
        w = g.dense_weights(etype)  # (n_dst, n_src)
        deg_dst, deg_src = w.abs().sum(1), w.abs().sum(0)
        out = prop.propagate(etype, "gcn", torch.eye(3), None)  # (n_dst, n_src): the coefficients
        expected = torch.diagonal(w) / torch.sqrt((deg_dst + 1) * (deg_src + 1))
        torch.testing.assert_close(torch.diagonal(out), expected)
        assert bool((torch.diagonal(out) < 0).all()), f"{etype}: the -cos contrast weight reaches the engine"
