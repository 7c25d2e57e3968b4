"""Every shipped variant: shapes, finiteness, and a gradient for every trainable parameter."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from hgadapter.adapter import HeteroGraphAdapter, cache_affinity, cache_logits, shift_features, shifted_cache_affinity, text_logits
from hgadapter.config import list_variants, load_variant
from hgadapter.engines import create_engine
from hgadapter.graph import build_node_features, build_relation_graph_from_config


def _setup(cache, variant_name, engine="torch"):
    variant = load_variant(variant_name)
    train = cache.train_set(4, 1)
    feats = build_node_features(pos_text=cache.pos_text, neg_text=cache.neg_text, train_set=train)
    g = variant.graph
    graph = None
    if variant.stages:
        rel = build_relation_graph_from_config(feats, g)
        graph = create_engine(engine, rel)
    return variant, train, feats, graph


@pytest.mark.parametrize("engine", ["torch", "dgl"])
@pytest.mark.parametrize("name", list_variants())
def test_variant_forward_backward(random_cache, name, engine):
    variant, train, feats, graph = _setup(random_cache, name, engine)
    C, d = random_cache.num_classes, random_cache.dim
    adapter = HeteroGraphAdapter.from_config(variant, dim=d)
    params = list(adapter.parameters())
    assert len(params) == len(variant.stages)
    if not variant.stages:
        assert variant.classifier == "zero_shot"
        return
    out = adapter(graph, feats, training=True)
    for ntype, h in out.feat_dict.items():
        assert h.shape == (C, d) and torch.isfinite(h).all()
    query = train.features[:, 0]  # (N, d)
    loss = F.cross_entropy(text_logits(query, out.feat_dict["pos"], 100.0), train.labels)
    if variant.classifier == "text_cache":
        assert out.vis_bias is not None and out.vis_bias.shape == (C, d)
        keys = shift_features(train.features.mean(1), train.labels, out.vis_bias)
        logits = cache_logits(cache_affinity(query, keys), F.one_hot(train.labels, C).float(), 5.5)
        assert logits.shape == (query.shape[0], C)
        loss = loss + 0.1 * F.cross_entropy(logits, train.labels)
    else:
        assert out.vis_bias is None
    loss.backward()
    for name_, p in adapter.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} {name_} got no gradient"
    # CLIP features are inputs, never parameters
    for h in feats.values():
        assert h.grad is None and not h.requires_grad


def test_identity_init_with_zero_betas_is_zero_shot(random_cache):
    variant, train, feats, graph = _setup(random_cache, "t")
    stages = [replace(s, metapaths=tuple(replace(m, beta=0.0, beta_test=0.0) for m in s.metapaths)) for s in variant.stages]
    adapter = HeteroGraphAdapter(dim=random_cache.dim, stages=stages)
    out = adapter(graph, feats, training=False)
    torch.testing.assert_close(out.feat_dict["pos"], feats["pos"])


def test_cache_logits_formula():
    aff = torch.tensor([[1.0, 0.5], [0.0, 1.0]])
    values = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = torch.tensor([[1.0, torch.exp(torch.tensor(-1.0))], [torch.exp(torch.tensor(-2.0)), 1.0]])
    torch.testing.assert_close(cache_logits(aff, values, 2.0), expected)


def test_cache_logits_from_labels_equals_one_hot_product():
    g = torch.Generator().manual_seed(0)
    aff = torch.rand(5, 9, generator=g) * 2 - 1
    labels = torch.tensor([0, 0, 1, 2, 2, 2, 3, 1, 0])
    dense = cache_logits(aff, F.one_hot(labels, 4).float(), 3.0)
    torch.testing.assert_close(cache_logits(aff, labels, 3.0, num_classes=4), dense)
    with pytest.raises(ValueError, match="needs num_classes"):
        cache_logits(aff, labels, 3.0)


def test_shifted_cache_affinity_equals_materialised_keys():
    g = torch.Generator().manual_seed(0)
    keys = F.normalize(torch.randn(12, 8, generator=g), dim=-1)
    query = torch.randn(5, 8, generator=g)
    for labels in (torch.tensor([0, 1, 2] * 4), torch.arange(3).repeat_interleave(4)):  # gather and grouped paths
        _check_shifted_affinity(query, keys, labels)


def _check_shifted_affinity(query, keys, labels):
    results = []
    for fast in (True, False):
        bias = (0.3 * torch.randn(3, 8, generator=torch.Generator().manual_seed(1))).requires_grad_(True)
        aff = shifted_cache_affinity(query, keys, labels, bias) if fast else cache_affinity(query, shift_features(keys, labels, bias))
        (aff * torch.arange(12.0)).sum().backward()
        results.append((aff.detach(), bias.grad))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    torch.testing.assert_close(shifted_cache_affinity(query, keys, labels, None), cache_affinity(query, keys))


def test_learned_betas_start_at_the_configured_weights_and_get_gradients(random_cache):
    variant, train, feats, graph = _setup(random_cache, "full")
    fixed = HeteroGraphAdapter.from_config(variant, dim=random_cache.dim)
    learned = HeteroGraphAdapter.from_config(variant, dim=random_cache.dim, learn_betas=True)
    for b, s in zip(learned.betas, variant.stages):
        assert b.tolist() == pytest.approx([m.beta for m in s.metapaths])
    out_fixed, out_learned = fixed(graph, feats, training=True), learned(graph, feats, training=True)
    torch.testing.assert_close(out_learned.feat_dict["pos"], out_fixed.feat_dict["pos"])  # same start
    # at test time the learned weights stay: beta_test (0.1 for n2p in `full`) no longer applies
    assert not torch.allclose(learned(graph, feats, training=False).feat_dict["pos"], fixed(graph, feats, training=False).feat_dict["pos"])
    query = train.features[:, 0]  # (N, d)
    F.cross_entropy(text_logits(query, out_learned.feat_dict["pos"], 100.0), train.labels).backward()
    pos_stage = [s.target for s in variant.stages].index("pos")
    assert learned.betas[pos_stage].grad is not None and learned.betas[pos_stage].grad.abs().sum() > 0


def test_learn_betas_config_key(tmp_path):
    from hgadapter.config import ConfigError, load_config

    assert load_config("t", overrides=["train.learn_betas=true"]).train.learn_betas is True
    assert load_config("t").train.learn_betas is False
    with pytest.raises(ConfigError, match=r"train\.learn_betas: expected true or false, got 'yes please'"):
        load_config("t", overrides=["train.learn_betas=yes please"])


@pytest.mark.parametrize("name", [v for v in list_variants() if v != "base"])
def test_classwise_bias_starts_at_zero_trains_and_is_counted(random_cache, name):
    """The class-wise term B_P (METHOD.md "Open question") is zero at the start, so the first
    forward equals the plain adapter's; it adds C x d parameters per meta-path; each gets a gradient."""
    variant, train, feats, graph = _setup(random_cache, name)
    C, d = random_cache.num_classes, random_cache.dim
    plain = HeteroGraphAdapter.from_config(variant, dim=d)
    cw = HeteroGraphAdapter.from_config(variant, dim=d, num_classes=C, classwise_bias=True)
    num_paths = sum(len(s.metapaths) for s in variant.stages)
    assert sum(p.numel() for p in cw.parameters()) == len(variant.stages) * d * d + num_paths * C * d
    a, b = plain(graph, feats, training=True), cw(graph, feats, training=True)
    for ntype in a.feat_dict:
        torch.testing.assert_close(a.feat_dict[ntype], b.feat_dict[ntype])
    loss = F.cross_entropy(text_logits(train.features[:, 0], b.feat_dict["pos"], 100.0), train.labels)
    if b.vis_bias is not None:
        loss = loss + b.vis_bias.square().sum()
    loss.backward()
    for stage_terms in cw.classwise:
        assert stage_terms.shape[1:] == (C, d) and stage_terms.grad is not None and stage_terms.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="classwise_bias needs num_classes"):
        HeteroGraphAdapter.from_config(variant, dim=d, classwise_bias=True)
