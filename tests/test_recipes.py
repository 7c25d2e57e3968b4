"""Each baseline's recipe pinned against its source (issue 18): initial scale, sampling, grids.

A baseline is only as good as its agreement with its authors' code, so what the sources fix is
written out here by hand (or solved directly) and compared with what the methods do; a change of
recipe then fails a test instead of drifting silently. Sources: docs/baselines.md.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hgadapter.config import load_experiment
from hgadapter.data.synthetic import build_synthetic_task
from hgadapter.graph import prompt_ensemble
from hgadapter.methods import create_method
from hgadapter.protocol import FitContext, selection_data
from hgadapter.train import train_loop

ROOT = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def _task():
    return build_synthetic_task(num_classes=6, dim=16, num_families=2, semantic_rank=8, shots=(2, 4), seeds=(1,), test_per_class=4)


@pytest.fixture
def data():
    return selection_data(_task(), shots=4, seed=1)


# --- LP++ (FereshteShakeri/FewShot-CLIP-Strong-Baseline, methods/linear_probe_p2.py) -------------


def test_lp_plus_plus_default_is_one_view_per_image_drawn_once(data):
    """The source extracts one augmented pass: N samples, W_0 = their class sums (norm <= K)."""
    from hgadapter.methods.lp_plus_plus import lp_plus_plus_samples, lp_plus_plus_steps

    assert create_method("lp_plus_plus").config.views == "one"
    x, y = lp_plus_plus_samples(data.train_set, "one", 7)
    views = F.normalize(data.train_set.features.float(), dim=-1)  # (N, V, d)
    pick = torch.randint(views.shape[1], (views.shape[0],), generator=torch.Generator().manual_seed(7))
    assert torch.equal(x, views[torch.arange(views.shape[0]), pick]) and torch.equal(y, data.train_set.labels)
    assert x.shape[0] == data.train_set.features.shape[0]  # N samples, not N V

    fitted = create_method("lp_plus_plus", overrides=["epochs=0"]).fit(data, seed=7, device="cpu")
    text = F.normalize(prompt_ensemble(data.pos_text), dim=-1)
    sums = torch.zeros(data.num_classes, x.shape[1]).index_add_(0, y, x)  # (C, d)
    assert float(sums.norm(dim=-1).max()) <= 4 + 1e-5  # K = 4 unit samples per class
    alpha0 = lp_plus_plus_steps(x, y, text)[2]
    bias = (torch.rand(data.num_classes, generator=torch.Generator().manual_seed(7)) * 2 - 1) / math.sqrt(x.shape[1])
    f = F.normalize(_task().test_features.float(), dim=-1)
    torch.testing.assert_close(fitted.head(_task().test_features), f @ sums.T + bias + alpha0 * (f @ text.T), atol=1e-4, rtol=1e-4)


def test_lp_plus_plus_training_equals_its_block_coordinate_loop_written_out(data):
    """Through train.train_loop, LP++ is the source's loop: full-batch SGD (momentum) on W, b at
    4N / lambda_max, a plain step on alpha every 10 epochs with the current gradient, the best
    validation epoch kept (later epochs win ties)."""
    from hgadapter.methods.lp_plus_plus import lp_plus_plus_samples, lp_plus_plus_steps

    epochs = 25
    fitted = create_method("lp_plus_plus", overrides=[f"epochs={epochs}"]).fit(data, seed=3, device="cpu")
    x, y = lp_plus_plus_samples(data.train_set, "one", 3)
    text = F.normalize(prompt_ensemble(data.pos_text).float(), dim=-1)
    lr_w, lr_alpha, alpha0 = lp_plus_plus_steps(x, y, text)
    w = torch.zeros(data.num_classes, x.shape[1]).index_add_(0, y, x).requires_grad_()
    b = ((torch.rand(data.num_classes, generator=torch.Generator().manual_seed(3)) * 2 - 1) / math.sqrt(x.shape[1])).requires_grad_()
    a = torch.full((data.num_classes,), alpha0, requires_grad=True)
    opt = torch.optim.SGD([w, b], lr=lr_w, momentum=0.9)
    val_x = F.normalize(data.val_features.float(), dim=-1)
    best = (-1.0, None)
    for epoch in range(epochs):
        opt.zero_grad()
        a.grad = None
        F.cross_entropy(x @ w.T + b + a * (x @ text.T), y).backward()
        opt.step()
        if (epoch + 1) % 10 == 0:
            with torch.no_grad():
                a -= lr_alpha * a.grad
        with torch.no_grad():
            acc = 100.0 * float(((val_x @ w.T + b + a * (val_x @ text.T)).argmax(1) == data.val_labels).float().mean())
        if acc >= best[0]:
            best = (acc, (w.detach().clone(), b.detach().clone(), a.detach().clone()), epoch + 1)
    bw, bb, ba = best[1]
    assert fitted.hparams["checkpoint_epoch"] == best[2] and fitted.val_acc == pytest.approx(best[0])
    torch.testing.assert_close(fitted.head.weight, bw + ba[:, None] * text, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fitted.head.bias, bb)


# --- CLAP (jusiro/CLAP, trainers/adapters.py) ------------------------------------------------------


def test_clap_prototypes_start_at_the_raw_prompt_mean_norm():
    """r_c = || mean_p n_cp u_cp || by hand on two classes of two prompts."""
    from hgadapter.methods.clap import raw_prototype_norms

    u = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [0.6, 0.8]]])  # (C=2, P=2, d=2) unit rows
    n = torch.tensor([[6.0, 8.0], [10.0, 12.0]])  # (C, P) raw norms
    # class 0: mean of (6, 0) and (0, 8) = (3, 4), norm 5; class 1: 11 (0.6, 0.8), norm 11
    torch.testing.assert_close(raw_prototype_norms(u, n), torch.tensor([5.0, 11.0]))


def test_clap_initial_prototypes_are_r_times_the_ensemble_and_fall_back_once(data, monkeypatch):
    import hgadapter.methods.clap as clap
    from hgadapter.methods.clap import raw_prototype_norms

    text = prompt_ensemble(data.pos_text)
    r = raw_prototype_norms(data.pos_text, data.pos_text_norm)
    assert 5.0 < float(r.mean()) < 15.0  # the synthetic task's stated raw norm is 10
    head = create_method("clap", overrides=["epochs=0"]).fit(data, seed=1, device="cpu").head
    torch.testing.assert_close(head.text, text * r[:, None])
    unit = create_method("clap", overrides=["epochs=0", "text_scale=unit"]).fit(data, seed=1, device="cpu").head
    torch.testing.assert_close(unit.text, text)

    old = dataclasses.replace(data, pos_text_norm=None, neg_text_norm=None)  # a cache from before the norms
    monkeypatch.setattr(clap, "_warned_fallback", False)
    with pytest.warns(UserWarning, match=r"no raw text norms .*fallback_text_norm=10"):
        fitted = create_method("clap", overrides=["epochs=0"]).fit(old, seed=1, device="cpu")
    torch.testing.assert_close(fitted.head.text, text * 10.0)
    assert fitted.hparams["text_norm_source"] == "fallback"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the note is given once per process
        create_method("clap", overrides=["epochs=0"]).fit(old, seed=1, device="cpu")


class _Recorder(nn.Module):
    """Records every batch a training loop feeds it."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.batches: list[torch.Tensor] = []

    def loss(self, query: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.batches.append(query.detach().clone())
        return self.w * query.sum()


@pytest.mark.parametrize(("shots", "batch", "steps"), [(2, 64, 1), (4, 5, 4)])  # N = 12 or 24 images, V = 4
def test_clap_pool_sampling_cuts_the_shuffled_pool_of_views_into_full_batches(shots, batch, steps):
    """The source shuffles all N V pooled views each epoch and takes len(image loader) batches of
    B rows (a batch may hold one image twice): one randperm(N V) per epoch from the seed."""
    data = selection_data(_task(), shots=shots, seed=1)
    module = _Recorder()
    train_loop(
        module, torch.optim.SGD(module.parameters(), lr=0.0), lambda s, n: 0.0, data, FitContext(seed=5, device=torch.device("cpu")),
        logits_fn=lambda f: f @ torch.zeros(f.shape[1], data.num_classes), loss_fn=module.loss,
        epochs=2, batch_size=batch, drop_last=True, sampling="pool",
    )
    pool = F.normalize(data.train_set.features.float(), dim=-1).reshape(-1, data.dim)  # (N V, d)
    g = torch.Generator().manual_seed(5)
    expected = []
    for _ in range(2):
        order = torch.randperm(pool.shape[0], generator=g)
        expected += [pool[order[i * batch : (i + 1) * batch]] for i in range(steps)]
    assert len(module.batches) == len(expected) == 2 * steps
    for got, want in zip(module.batches, expected):
        assert torch.equal(got, want)
    assert all(b.shape[0] == min(batch, pool.shape[0]) for b in module.batches)  # every batch full
    assert create_method("clap").config.sampling == "pool"


# --- ProKeR (BReg-Adapter, configs/RN50/configs_proker/<dataset>.yaml: [low, high, steps]) -----------

# Typed from the source's files (commit c89ce54 of github.com/omarnust/BReg-Adapter); its trainer
# searches torch.linspace(low, high, steps) of each.
PROKER_SOURCE = {
    "caltech101": ((0.5, 3, 20), (0.001, 1, 10)),
    "dtd": ((0.1, 10, 20), (0.001, 10, 100)),
    "eurosat": ((0.5, 3, 20), (0.001, 1, 100)),
    "fgvc_aircraft": ((0.5, 3, 20), (0.001, 1, 10)),  # the source's fgvc.yaml
    "food101": ((0.5, 3, 20), (0.001, 1, 10)),
    "imagenet": ((1.5, 3, 10), (0.05, 0.25, 10)),
    "oxford_flowers": ((0.1, 10, 20), (0.001, 10, 100)),
    "oxford_pets": ((0.01, 5, 40), (0.01, 0.3, 20)),
    "stanford_cars": ((0.1, 10, 5), (0.01, 1, 5)),
    "sun397": ((0.1, 10, 20), (0.01, 10, 10)),
    "ucf101": ((0.5, 3, 20), (0.001, 1, 10)),
}


def test_every_fewshot_dataset_applies_the_sources_proker_grid():
    files = sorted((ROOT / "experiments" / "fewshot").glob("*.yaml"))
    assert {f.stem for f in files} == set(PROKER_SOURCE)
    for file in files:
        sweep = load_experiment(file).sweep
        method = create_method("proker", overrides=list(sweep.method_overrides["proker"]))
        cfg = method.config
        (b_lo, b_hi, b_n), (l_lo, l_hi, l_n) = PROKER_SOURCE[file.stem]
        assert (tuple(cfg.beta_range), cfg.beta_steps) == ((b_lo, b_hi), b_n), file.stem
        assert (tuple(cfg.lmbda_range), cfg.lmbda_steps) == ((l_lo, l_hi), l_n), file.stem


# --- GDA (the source's grid: 1e-4 ... 1e2, one per decade; ours two per decade, docs/baselines.md) -----


def test_gda_alpha_grid_is_the_sources_decades_plus_their_half_decades():
    grid = create_method("gda").config.alpha_grid
    source = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)
    assert set(source) <= set(grid) and len(grid) == 13
    halves = sorted(set(grid) - set(source))
    assert halves == pytest.approx([10 ** (e + 0.5) for e in range(-4, 2)], rel=1e-2)


def test_files_based_on_imagenet_drop_its_proker_grid_and_keep_the_rest():
    """`method: null` in method_overrides drops an inherited recipe (ProKeR runs in no backbone or
    domain-generalisation file), while TaskRes keeps its ImageNet learning rate."""
    for file in sorted((ROOT / "experiments").glob("*/*.yaml")):
        if file.parent.name in ("backbones", "dg"):
            overrides = load_experiment(file).sweep.method_overrides
            assert "proker" not in overrides and "lr=0.0002" in overrides["taskres"], file
