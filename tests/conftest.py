"""Shared test setup: offline hub, headless plotting, and small random feature caches."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch
import torch.nn.functional as F

from hgadapter.data.cache import FeatureCache, FewShotSet


def make_random_cache(
    *, num_classes: int = 6, dim: int = 16, shots: int = 4, views: int = 2, seed: int = 0, pos_prompts: int = 3, neg_prompts: int = 2
) -> FeatureCache:
    """A small clustered cache: images near their class centre, prompts near a biased copy of it."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(num_classes, dim, generator=g), dim=-1)  # (C, d)
    text = F.normalize(centres + 0.7 * F.normalize(torch.randn(num_classes, dim, generator=g), dim=-1), dim=-1)

    def images(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(num_classes).repeat_interleave(per_class)  # (N,)
        noise = torch.randn(labels.numel(), dim, generator=g) / dim**0.5
        return F.normalize(centres[labels] + 0.8 * noise, dim=-1), labels

    train, train_y = images(shots)
    train_views = F.normalize(train[:, None, :] + 0.05 * torch.randn(train.shape[0], views, dim, generator=g), dim=-1)  # (N, V, d)
    val, val_y = images(2)
    test, test_y = images(5)
    pos = F.normalize(text[:, None, :] + 0.1 * torch.randn(num_classes, pos_prompts, dim, generator=g), dim=-1)  # (C, P, d)
    negation = F.normalize(torch.randn(dim, generator=g), dim=0)
    neg = F.normalize(text[:, None, :] + 0.4 * negation + 0.05 * torch.randn(num_classes, neg_prompts, dim, generator=g), dim=-1)
    return FeatureCache(
        classnames=[f"class{i}" for i in range(num_classes)],
        pos_text=pos,
        neg_text=neg,
        val_features=val,
        val_labels=val_y,
        test_features=test,
        test_labels=test_y,
        train_sets={(shots, 1): FewShotSet(shots=shots, seed=1, features=train_views, labels=train_y)},
        meta={"dataset": {"name": "random-test"}, "synthetic": True},
    )


@pytest.fixture
def random_cache() -> FeatureCache:
    return make_random_cache()
