"""APE / APE-T, TIMO / TIMO-S and PROTO-CLIP-F / -F-Q (issue 20), each against a direct reference.

The references are written the way the official code computes them (loops over pairs, prompts
and grid points), so a vectorised shortcut in hgadapter/methods/ that changes the recipe fails here.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from hgadapter.heads import PrototypeHead, QueryAdapter, build_head, prototype_probabilities
from hgadapter.methods import create_method
from hgadapter.methods.ape import ape_search, channel_criterion, kl_bits, select_channels
from hgadapter.methods.gda import gda_classifier
from hgadapter.methods.proto_clip import info_nce
from hgadapter.methods.timo import image_guided_text, image_prototypes, text_guided_samples
from hgadapter.evaluate import cache_keys
from hgadapter.graph import prompt_ensemble
from hgadapter.protocol import selection_data
from tests.test_methods import small_task


@pytest.fixture(scope="module")
def data():
    return selection_data(small_task(), shots=4, seed=1)


def test_ape_criterion_is_the_official_pair_loop():
    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(3, 5, generator=g), dim=-1)  # (C, d)
    keys = F.normalize(torch.randn(6, 5, generator=g), dim=-1)  # (N, d), 2 shots per class
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    feats = [torch.stack([text[c], *keys[labels == c]]) for c in range(3)]  # class c: its text, then its keys
    total, count = torch.zeros(5, dtype=torch.float64), 0
    for i in range(3):
        for j in range(3):
            for m in range(3):
                for n in range(3):
                    if i != j:
                        total += (feats[i][m] * feats[j][n]).double()
                        count += 1
    expected = -0.7 * total / count + 0.3 * text.double().var(dim=0)
    torch.testing.assert_close(channel_criterion(text, keys, labels, weights=(0.7, 0.3)), expected.float(), atol=1e-6, rtol=0)
    assert select_channels(expected.float(), 0.4).tolist() == torch.topk(expected, 2).indices.tolist()


def test_ape_search_is_the_official_triple_loop():
    g = torch.Generator().manual_seed(1)
    zs, affinity = torch.randn(12, 3, generator=g), torch.rand(12, 6, generator=g)
    labels, div, val_y = torch.tensor([0, 0, 1, 1, 2, 2]), torch.rand(6, generator=g), torch.randint(3, (12,), generator=g)
    alphas, betas, gammas = (0.1, 1.0, 3.0), (0.5, 2.0), (0.0, 0.5, 1.0)
    values = F.one_hot(labels, 3).float()
    best, choice = 0.0, None
    for beta in betas:
        for alpha in alphas:
            for gamma in gammas:
                logits = zs + alpha * torch.exp(-beta * (1 - affinity)) @ (values * torch.exp(gamma * div).unsqueeze(1))
                acc = 100.0 * float((logits.argmax(1) == val_y).float().mean())
                if acc > best:
                    best, choice = acc, (alpha, beta, gamma)
    alpha, beta, gamma, acc = ape_search(zs, affinity, labels, div, val_y, alphas=alphas, betas=betas, gammas=gammas, num_classes=3)
    assert (alpha, beta, gamma) == choice and acc == pytest.approx(best)


def test_ape_head_is_the_formula_on_the_refined_channels(data):
    fitted = create_method("ape", overrides=["alpha=1.5", "beta=3.0", "gamma=0.5"]).fit(data, seed=1, device="cpu")
    text = prompt_ensemble(data.pos_text)  # (C, d)
    keys = cache_keys(data.train_set, device="cpu")  # (N, d)
    labels = data.train_set.labels
    idx = select_channels(channel_criterion(text, keys, labels, weights=(0.7, 0.3)), 500 / 1024)
    k_ref, w_ref = F.normalize(keys[:, idx], dim=-1), F.normalize(text[:, idx], dim=-1)
    values = F.one_hot(labels, data.num_classes).float()
    div = torch.stack([sum(values[n, c] * math.log2((values[n, c] + 1e-6) / (p + 1e-6)) for c, p in enumerate(row)) for n, row in enumerate(F.softmax(k_ref @ w_ref.T, dim=1))])
    torch.testing.assert_close(kl_bits(values, F.softmax(k_ref @ w_ref.T, dim=1)), div.float(), atol=1e-5, rtol=0)
    x = F.normalize(small_task().test_features.float(), dim=-1)
    expected = data.logit_scale * x @ text.T + 1.5 * torch.exp(-3.0 * (1 - F.normalize(x[:, idx], dim=-1) @ k_ref.T)) @ (values * torch.exp(0.5 * div).unsqueeze(1))
    torch.testing.assert_close(fitted.head(x), expected, atol=1e-4, rtol=1e-5)
    assert fitted.hparams["channels"] == idx.numel() == round(500 / 1024 * data.dim)


def test_ape_t_untrained_is_tip_adapter_and_training_moves_only_its_parts(data):
    untrained = create_method("ape_t", overrides=["epochs=0", "alpha=2.0", "beta=1.5"]).fit(data, seed=1, device="cpu")
    tip = create_method("tip_adapter", overrides=["alpha=2.0", "beta=1.5"]).fit(data, seed=1, device="cpu")
    x = small_task().test_features
    torch.testing.assert_close(untrained.head(x), tip.head(x), atol=1e-4, rtol=1e-5)
    trained = create_method("ape_t", overrides=["epochs=3", "lr=1e-2", "checkpoint=last", "alpha=2.0", "beta=1.5"]).fit(data, seed=1, device="cpu")
    linear, cache = trained.head.parts
    text = prompt_ensemble(data.pos_text)
    moved = (linear.weight / data.logit_scale - text).abs().amax(dim=0) > 1e-5  # (d,): channels whose text weight changed
    assert 0 < int(moved.sum()) <= trained.hparams["channels"]  # only the refined channels carry the residual
    assert not torch.equal(cache.values, F.one_hot(data.train_set.labels, data.num_classes).float())  # value weights trained


def test_timo_igt_and_tgi_are_the_official_loops():
    g = torch.Generator().manual_seed(2)
    prompts = F.normalize(torch.randn(2, 3, 4, generator=g), dim=-1)  # (C, P, d)
    protos = F.normalize(torch.randn(2, 4, generator=g), dim=-1)  # (C, d)
    text, scores = image_guided_text(prompts, protos, gamma=50.0)
    for c in range(2):
        s = prompts[c] @ protos[c]  # (P,)
        w = F.softmax(s / s.norm() * 50.0, dim=0)
        torch.testing.assert_close(text[c], F.normalize((w.unsqueeze(1) * prompts[c]).sum(0), dim=0), atol=1e-6, rtol=0)
        torch.testing.assert_close(scores[c], s)
    vecs, labels = text_guided_samples(prompts, scores, beta=5)  # more than P: the sorted list repeats
    assert labels.tolist() == [0] * 5 + [1] * 5
    for c in range(2):
        order = sorted(range(3), key=lambda p: -float(scores[c, p]))
        ref = [scores[c, p] * prompts[c, p] for p in (order + order)[:5]]
        torch.testing.assert_close(vecs[5 * c : 5 * c + 5], torch.stack(ref))


def test_timo_head_is_igt_plus_gda_on_images_and_text_samples(data):
    fitted = create_method("timo", overrides=["alpha=10.0"]).fit(data, seed=1, device="cpu")
    prompts = F.normalize(data.pos_text.float(), dim=-1)
    protos = image_prototypes(cache_keys(data.train_set, device="cpu"), data.train_set.labels, data.num_classes)
    text, scores = image_guided_text(prompts, protos, 50.0)
    vecs, vec_labels = text_guided_samples(prompts, scores, prompts.shape[1])
    views = F.normalize(data.train_set.features.float(), dim=-1)
    images, image_labels = views.reshape(-1, views.shape[-1]), data.train_set.labels.repeat_interleave(views.shape[1])
    w, b = gda_classifier(torch.cat([vecs, images]), torch.cat([vec_labels, image_labels]), data.num_classes, normalize=False)
    x = F.normalize(small_task().test_features.float(), dim=-1)
    torch.testing.assert_close(fitted.head(x), 10.0 * x @ text.T + x @ w.T + b, atol=1e-3, rtol=1e-5)
    assert fitted.hparams == {"gamma": 50.0, "beta": prompts.shape[1], "alpha": 10.0}


def test_timo_s_search_is_the_official_rule(data):
    fitted = create_method("timo_s", overrides=["gamma_grid=[1.0, 50.0]", "beta_searches=3"]).fit(data, seed=1, device="cpu")
    prompts = F.normalize(data.pos_text.float(), dim=-1)
    protos = image_prototypes(cache_keys(data.train_set, device="cpu"), data.train_set.labels, data.num_classes)
    x, y = F.normalize(data.val_features.float(), dim=-1), data.val_labels
    best, gamma = 0.0, 0.0
    for g in (1.0, 50.0):  # image_guide_text_search: the IGT classifier alone, strict >
        acc = float((( x @ image_guided_text(prompts, protos, g)[0].T).argmax(1) == y).float().mean())
        if acc > best:
            best, gamma = acc, g
    text, scores = image_guided_text(prompts, protos, gamma)
    views = F.normalize(data.train_set.features.float(), dim=-1)
    images, image_labels = views.reshape(-1, views.shape[-1]), data.train_set.labels.repeat_interleave(views.shape[1])
    best, choice = 0.0, None
    for beta in [int(t) for t in torch.linspace(1, 2 * prompts.shape[1], 3)]:  # TIMO(grid_search=True, n_quick_search=3)
        vecs, vec_labels = text_guided_samples(prompts, scores, beta)
        w, b = gda_classifier(torch.cat([vecs, images]), torch.cat([vec_labels, image_labels]), data.num_classes, normalize=False)
        for alpha in [10.0**i for i in range(-4, 5)]:  # GDA(alpha_shift=True): strict > within, strict > across beta
            acc = 100.0 * float(((alpha * x @ text.T + x @ w.T + b).argmax(1) == y).float().mean())
            if acc > best:
                best, choice = acc, (beta, alpha)
    assert (fitted.hparams["gamma"], fitted.hparams["beta"]) == (gamma, choice[0])
    assert fitted.hparams["alpha"] == pytest.approx(choice[1]) and fitted.val_acc == pytest.approx(best)


def test_prototype_probabilities_and_info_nce_by_hand():
    q = torch.tensor([[1.0, 0.0]])
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    e = math.exp(-2.0 * 2.0)  # |q - (0, 1)|^2 = 2 at beta 2
    p_image = torch.tensor([1.0, e]) / (1.0 + e)
    p_text = torch.tensor([e, 1.0]) / (1.0 + e)
    torch.testing.assert_close(prototype_probabilities(q, z, t, alpha=0.3, beta=2.0)[0], 0.3 * p_image + 0.7 * p_text)
    # InfoNCE of identical rows: cross-entropy of cos / 0.1 with the diagonal as target
    expected = -math.log(math.exp(10.0) / (math.exp(10.0) + math.exp(0.0)))
    assert float(info_nce(z, z, 0.1)) == pytest.approx(expected, rel=1e-3)  # float32 log-softmax near 0


def test_proto_clip_untrained_is_the_prototype_classifier(data):
    fitted = create_method("proto_clip_f_q", overrides=["epochs=0", "adapter=none", "search=false"]).fit(data, seed=1, device="cpu")
    keys = cache_keys(data.train_set, device="cpu")
    image_proto = image_prototypes(keys, data.train_set.labels, data.num_classes)  # renormalised mean of unit keys
    text_proto = prompt_ensemble(data.pos_text)
    x = F.normalize(small_task().test_features.float(), dim=-1)
    expected = torch.log(prototype_probabilities(x, image_proto, text_proto, alpha=0.5, beta=12.0))
    torch.testing.assert_close(fitted.head(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["conv-3x", "conv-2x", "fc"])
def test_query_adapter_shapes_residual_and_round_trip(kind, tmp_path):
    adapter = QueryAdapter(kind=kind, dim=10)
    x = torch.randn(4, 10)
    assert adapter(x).shape == (4, 10)
    if kind.startswith("conv"):  # a zero branch leaves the identity: LayerNorm of a constant map is its bias, 0
        with torch.no_grad():
            adapter.conv3.weight.zero_()
        torch.testing.assert_close(adapter(x), x)
    protos = F.normalize(torch.randn(2, 3, 10), dim=-1)
    head = PrototypeHead(image_proto=protos[0], text_proto=protos[1], alpha=0.4, beta=5.0, adapter=QueryAdapter(kind=kind, dim=10))
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, tmp_path / "h.safetensors")
    rebuilt = build_head(json.loads(json.dumps(head.spec())), load_file(tmp_path / "h.safetensors"))
    assert torch.equal(rebuilt(x), head(x))


def test_proto_clip_trains_memory_and_adapter_and_freezes_text_memory(data):
    method = create_method("proto_clip_f", overrides=["epochs=2", "adapter=conv-3x"])
    text = prompt_ensemble(data.pos_text)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        module, logits_fn = method.build(data, text, torch.device("cpu"))
    loss = method.loss(module, logits_fn)(cache_keys(data.train_set, device="cpu")[:8], data.train_set.labels[:8])
    loss.backward()
    assert module.visual.grad is not None and module.visual.grad.abs().sum() > 0
    assert all(p.grad is not None for p in module.adapter.parameters())
    assert not module.textual.requires_grad  # train_text_memory: false (ImageNet's train_vis_mem_only)
    trained = create_method("proto_clip_f", overrides=["epochs=2", "train_text_memory=true", "checkpoint=last"]).fit(data, seed=1, device="cpu")
    assert not torch.allclose(trained.head.text_proto, F.normalize(text, dim=-1))
