"""Two engines, one answer: dgl == torch == a dense reference, in outputs and gradients."""

import pytest
import torch
import torch.nn.functional as F

from hgadapter.adapter import HeteroGraphAdapter
from hgadapter.config import StageConfig
from hgadapter.engines import create_engine, resolve_engine
from hgadapter.graph import RelationGraph, build_relation_graph
from hgadapter.metapaths import CANONICAL_ETYPES, ETYPES, MetaPath

C, D = 7, 5


def _features(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: F.normalize(torch.randn(C, D, generator=g), dim=-1) for k in ("pos", "neg", "vis")}


def dense_reference(weights: torch.Tensor, src_h, dst_h, norm):
    """The hop written straight from the formula on a dense (n_dst, n_src) weight matrix."""
    absw = weights.abs()
    d_dst, d_src = absw.sum(1), absw.sum(0)
    if norm == "gcn":
        a = weights / torch.sqrt(torch.outer(d_dst + 1, d_src + 1))
        return a @ src_h + dst_h / (d_dst + 1).unsqueeze(1)
    inv = torch.where(d_dst > 0, 1.0 / d_dst, torch.zeros_like(d_dst))
    return (weights * inv.unsqueeze(1)) @ src_h


def _edgeless(graph: RelationGraph, etype: str) -> RelationGraph:
    edges = dict(graph.edges_dict)
    empty = torch.zeros(0, dtype=torch.long)
    edges[etype] = (empty, empty, torch.zeros(0))
    return RelationGraph(dict(graph.num_nodes_dict), edges)


GRAPHS = {
    "dense": lambda f: build_relation_graph(f, relations=ETYPES),
    "topk": lambda f: build_relation_graph(f, relations=ETYPES, topk=3),
    "edgeless_v2n": lambda f: _edgeless(build_relation_graph(f, relations=ETYPES), "v2n"),
    "selfloops_clamped": lambda f: build_relation_graph(f, relations=ETYPES, self_loops=True, clamp_negative=True, contrast="neg_cos"),
}


@pytest.mark.parametrize("graph_kind", list(GRAPHS))
@pytest.mark.parametrize("norm", ["gcn", "row"])
@pytest.mark.parametrize("etype", ETYPES)
def test_hop_outputs_and_gradients_match(graph_kind, norm, etype):
    feats = _features()
    rel = GRAPHS[graph_kind](feats)
    dense_w = rel.dense_weights(etype)
    g = torch.Generator().manual_seed(1)
    src0, dst0, probe = (torch.randn(C, D, generator=g) for _ in range(3))
    results = []
    for name in ("reference", "torch", "dgl"):
        src = src0.clone().requires_grad_(True)
        dst = dst0.clone().requires_grad_(True)
        if name == "reference":
            out = dense_reference(dense_w, src, dst, norm)
        else:
            out = create_engine(name, rel).propagate(etype, norm, src, dst)
        (out * probe).sum().backward()
        results.append((out.detach(), src.grad, dst.grad if norm == "gcn" else None))
    ref = results[0]
    for out, gsrc, gdst in results[1:]:
        torch.testing.assert_close(out, ref[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(gsrc, ref[1], atol=1e-5, rtol=1e-5)
        if norm == "gcn":
            torch.testing.assert_close(gdst, ref[2], atol=1e-5, rtol=1e-5)
    if graph_kind == "edgeless_v2n" and etype == "v2n":
        expected = dst0 / 1.0 if norm == "gcn" else torch.zeros(C, D)
        torch.testing.assert_close(results[1][0], expected)


def _multi_hop_stages():
    return [
        StageConfig(target="neg", metapaths=(MetaPath(("p2n",), 0.5), MetaPath(("v2n",), 0.5))),
        StageConfig(
            target="pos",
            norm="gcn",
            metapaths=(MetaPath(("n2p",), 0.2, 0.1), MetaPath(("v2n", "n2p"), 0.3), MetaPath(("v2p",), 0.24), MetaPath(("p2p",), 0.06)),
        ),
        StageConfig(target="vis", mode="bias", gamma=0.5, norm="row", metapaths=(MetaPath(("v2v",), 1.0),)),
    ]


@pytest.mark.parametrize("graph_kind", ["dense", "topk", "edgeless_v2n"])
def test_adapter_with_multi_hop_path_matches_across_engines(graph_kind):
    feats = _features(3)
    rel = GRAPHS[graph_kind](feats)
    outputs, grads = [], []
    for engine in ("torch", "dgl"):
        torch.manual_seed(0)
        adapter = HeteroGraphAdapter(dim=D, stages=_multi_hop_stages(), init="xavier")
        out = adapter(create_engine(engine, rel), feats, training=True)
        loss = out.feat_dict["pos"].square().sum() + out.feat_dict["neg"].sin().sum() + out.vis_bias.square().sum()
        loss.backward()
        outputs.append((out.feat_dict["pos"].detach(), out.feat_dict["neg"].detach(), out.vis_bias.detach()))
        grads.append([p.grad.clone() for p in adapter.parameters()])
    for a, b in zip(outputs[0], outputs[1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads[0], grads[1]):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_test_time_beta_changes_the_output():
    feats = _features(4)
    graph = create_engine("torch", GRAPHS["dense"](feats))
    adapter = HeteroGraphAdapter(dim=D, stages=_multi_hop_stages()[:2])
    train_out = adapter(graph, feats, training=True).feat_dict["pos"]
    test_out = adapter(graph, feats, training=False).feat_dict["pos"]
    assert not torch.allclose(train_out, test_out)


def test_auto_engine_rule():
    assert resolve_engine("auto") == "torch"  # docs/benchmarks.md: dgl is faster nowhere measured
    assert resolve_engine("dgl") == "dgl" and resolve_engine("torch") == "torch"
    with pytest.raises(ValueError, match="unknown engine 'x'; available"):
        resolve_engine("x")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU machine may carry a CUDA build of DGL")
def test_dgl_engine_on_cuda_needs_a_cuda_build_of_dgl():
    from hgadapter._dgl import DGLUnavailableError

    rel = GRAPHS["dense"](_features())
    with pytest.raises(DGLUnavailableError, match=r"installed dgl 2\.\d.* cannot use cuda.*CUDA build of DGL.*engine 'torch'"):
        create_engine("dgl", rel, device="cuda")


def test_dgl_engine_builds_its_heterograph_on_the_run_device():
    rel = GRAPHS["topk"](_features())
    prop = create_engine("dgl", rel, device="cpu")
    assert prop.hg.device == torch.device("cpu")
    assert all(prop.hg.edges[e].data["w"].device == torch.device("cpu") for e in prop.hg.etypes)


def test_canonical_etypes_are_the_paper_relations():
    assert CANONICAL_ETYPES == {
        "n2p": ("neg", "n2p", "pos"),
        "v2p": ("vis", "v2p", "pos"),
        "p2p": ("pos", "p2p", "pos"),
        "p2n": ("pos", "p2n", "neg"),
        "v2n": ("vis", "v2n", "neg"),
        "v2v": ("vis", "v2v", "vis"),
    }


def test_memoised_static_paths_equal_recomputation():
    feats = _features(5)
    graph = create_engine("torch", GRAPHS["dense"](feats))
    torch.manual_seed(0)
    adapter = HeteroGraphAdapter(dim=D, stages=_multi_hop_stages(), init="xavier")
    first = adapter(graph, feats, training=True).feat_dict["pos"]
    assert adapter._memo  # v2p, p2p, p2n, v2n, v2v read only frozen inputs
    again = adapter(graph, feats, training=True).feat_dict["pos"]
    torch.testing.assert_close(first, again)
    fresh = HeteroGraphAdapter(dim=D, stages=_multi_hop_stages(), init="xavier")
    fresh.load_state_dict(adapter.state_dict())
    torch.testing.assert_close(fresh(graph, feats, training=True).feat_dict["pos"], first)
    # an in-place change of an input invalidates the memo
    feats["vis"].mul_(0.5)
    changed = adapter(graph, feats, training=True).feat_dict["pos"]
    fresh._memo.clear()
    torch.testing.assert_close(changed, fresh(graph, feats, training=True).feat_dict["pos"])
    assert not torch.allclose(changed, first)
