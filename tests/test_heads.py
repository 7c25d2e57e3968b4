"""Heads (hgadapter/heads.py): hand-computed logits, and every method's fitted head survives a save and load."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from hgadapter.heads import CacheHead, FeatureMLPHead, HeadError, LinearHead, SumHead, TextHead, build_head, list_heads
from hgadapter.methods import create_method, list_methods
from hgadapter.protocol import selection_data

from test_methods import FEATURE_ONLY, quick, small_task


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_text_head_is_scaled_cosine():
    text = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    x = torch.tensor([[3.0, 4.0]])
    logits = TextHead(text=text, logit_scale=10.0)(x)
    assert torch.allclose(logits, torch.tensor([[6.0, 8.0]]))


def test_linear_head_with_and_without_normalisation():
    weight, bias = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([0.5, -0.5])
    x = torch.tensor([[3.0, 4.0]])
    assert torch.allclose(LinearHead(weight=weight, bias=bias)(x), torch.tensor([[3.5, 7.5]]))
    assert torch.allclose(LinearHead(weight=weight, bias=bias, normalize=True)(x), torch.tensor([[1.1, 1.1]]))


def test_cache_head_matches_tip_adapter_by_hand():
    # one key per class, the query equal to key 0: affinity 1 to it and 0 to key 1
    text = torch.eye(2)
    keys = torch.eye(2)
    x = torch.tensor([[1.0, 0.0]])
    head = CacheHead(text=text, keys=keys, values=torch.eye(2), alpha=2.0, beta=3.0, logit_scale=10.0)
    expected = torch.tensor([[10.0 + 2.0 * 1.0, 0.0 + 2.0 * torch.exp(torch.tensor(-3.0)).item()]])
    assert torch.allclose(head(x), expected)
    # integer labels give the same logits as one-hot values
    by_label = CacheHead(text=text, keys=keys, values=torch.tensor([0, 1]), alpha=2.0, beta=3.0, logit_scale=10.0)
    assert torch.allclose(by_label(x), expected)


def test_feature_mlp_head_by_hand():
    w1, w2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0], [0.0]])  # (h=1, d=2), (d, h)
    x = torch.tensor([[1.0, 1.0]])
    # relu(relu(x w1^T) w2^T) = [2, 0]; mixed with ratio 0.5: [1.5, 0.5]; text = identity classes
    head = FeatureMLPHead(w1=w1, w2=w2, ratio=0.5, text=torch.eye(2), logit_scale=1.0)
    assert torch.allclose(head(x), F.normalize(torch.tensor([[1.5, 0.5]]), dim=-1))


def test_sum_head_weights_its_parts():
    text, weight = unit(3, 4, seed=1), unit(3, 4, seed=2)
    x = unit(5, 4, seed=3)
    a, b = TextHead(text=text, logit_scale=50.0), LinearHead(weight=weight)
    assert torch.allclose(SumHead(parts=[a, b], weights=[1.0, 0.25])(x), a(x) + 0.25 * b(x))
    with pytest.raises(HeadError, match="one weight per part"):
        SumHead(parts=[a, b], weights=[1.0])


def test_unknown_kind_and_missing_tensor_are_one_line_errors():
    with pytest.raises(HeadError, match=r"unknown head kind 'nope'; available: \["):
        build_head({"kind": "nope"}, {})
    with pytest.raises(HeadError, match="head 'text' needs tensor 'text'"):
        build_head({"kind": "text", "logit_scale": 1.0}, {})


def test_every_head_kind_is_exercised_by_a_method_or_a_test():
    assert set(list_heads()) >= {"text", "linear", "cache", "feature_mlp", "sum"}


@pytest.mark.parametrize("name", FEATURE_ONLY)
def test_every_methods_head_round_trips_through_json_and_safetensors(name, tmp_path):
    """What ``hgadapter export`` relies on: spec (JSON) + state_dict (safetensors) rebuild the same predictor."""
    task = small_task()
    fitted = create_method(name, overrides=quick(name)).fit(selection_data(task, shots=4, seed=1), seed=1, device="cpu")
    head = fitted.head
    spec = json.loads(json.dumps(head.spec()))
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, tmp_path / "head.safetensors")
    rebuilt = build_head(spec, load_file(tmp_path / "head.safetensors"))
    assert type(rebuilt) is type(head)
    x = task.test_features
    assert torch.equal(rebuilt(x), head(x))
    assert not any(t.requires_grad for t in head.state_dict().values())
