"""The method registry and every baseline on a small synthetic task (hgadapter/methods/)."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hgadapter.methods import create_method, list_methods, method_class, methods_dir
from hgadapter.methods.graphadapter import query_propagation
from hgadapter.methods.tip_adapter import search_grid
from hgadapter.config import ConfigError, list_variants
from hgadapter.protocol import Fitted, SelectionData, selection_data
from hgadapter.data.synthetic import build_synthetic_task
from hgadapter.train import dassl_lr, step_cosine_lr

NUM_CLASSES = 20
# Fewer epochs and smaller grids, so that every method runs in well under a second here.
QUICK: dict[str, list[str]] = {
    "linear_probe": ["search_steps=2"],
    "tip_adapter": ["search_step=[20, 5]"],
    "tip_adapter_f": ["epochs=3", "search_step=[20, 5]"],
    "taskres": ["epochs=5"],
    "clip_adapter": ["epochs=5"],
    "graphadapter": ["epochs=5"],
    "lp_plus_plus": ["epochs=20"],
    "clap": ["epochs=5"],
    "coop": ["epochs=[2, 2, 2]"],
    "ape": ["search_step=[20, 5, 3]"],
    "ape_t": ["epochs=3", "search_step=[20, 5]"],
    "proto_clip_f": ["epochs=3", "adapter=none"],  # the conv adapter needs hundreds of epochs (tests/test_methods_issue20.py)
    "proto_clip_f_q": ["epochs=3", "adapter=none"],
}
# Methods that run on cached features alone; the others (CoOp) run the cache's CLIP encoder, which a
# synthetic cache has not (tests/test_coop.py runs them on a tiny CLIP's cache).
FEATURE_ONLY: list[str] = [n for n in list_methods() if not method_class(n).needs_encoder]


def quick(name: str) -> list[str]:
    return QUICK.get(name, ["train.epochs=2"] if name.startswith("hegraphadapter") else [])


@functools.lru_cache(maxsize=1)
def small_task():
    return build_synthetic_task(
        num_classes=NUM_CLASSES, dim=64, num_families=5, semantic_rank=32, shots=(1, 4), seeds=(1,), test_per_class=5
    )


@pytest.fixture(scope="module")
def data() -> SelectionData:
    return selection_data(small_task(), shots=4, seed=1)


def test_list_methods_has_the_baselines_and_every_variant():
    names = list_methods()
    baselines = ["zero_shot", "linear_probe", "tip_adapter", "tip_adapter_f", "gda", "taskres", "clip_adapter", "graphadapter"]
    assert names[: len(baselines)] == baselines
    assert "hegraphadapter" in names
    assert {f"hegraphadapter:{v}" for v in list_variants() if v != "full"} <= set(names)
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", FEATURE_ONLY)
def test_every_method_fits_and_predicts_sanely(name, data):
    method = create_method(name, overrides=quick(name))
    fitted = method.fit(data, seed=1, device="cpu", progress=False)
    assert isinstance(fitted, Fitted)
    test = small_task()
    logits = fitted.head(test.test_features)
    assert logits.shape == (test.test_features.shape[0], NUM_CLASSES)
    assert torch.isfinite(logits).all()
    test_acc = 100.0 * float((logits.argmax(dim=1) == test.test_labels).float().mean())
    chance = 100.0 / NUM_CLASSES
    for acc in (fitted.val_acc, test_acc):
        assert math.isfinite(acc) and chance < acc <= 100.0, (name, fitted.val_acc, test_acc)
    json.dumps(fitted.hparams)  # recorded in results.json
    json.dumps(method.config_dict())
    assert fitted.train_seconds >= 0.0 and isinstance(fitted.epochs, int)
    assert str(fitted.device) == "cpu"
    assert fitted.fit_seconds >= fitted.train_seconds + fitted.select_seconds >= 0.0
    assert (fitted.train_seconds > 0.0) == (fitted.epochs > 0)  # only a training loop counts as training


@pytest.mark.parametrize("name", FEATURE_ONLY)
def test_every_method_runs_on_its_thread_policy(name, data):
    method = create_method(name, overrides=quick(name))
    before = torch.get_num_threads()
    fitted = method.fit(data, seed=1, device="cpu")
    assert torch.get_num_threads() == before  # restored afterwards
    assert fitted.threads == (before if method.threads is None else method.threads)
    assert method.threads == (None if name.startswith("hegraphadapter") else 1)


@pytest.mark.parametrize("name", ["tip_adapter_f", "taskres", "clip_adapter", "graphadapter", "linear_probe"])
def test_same_seed_same_predictions(name, data):
    x = small_task().test_features
    a = create_method(name, overrides=quick(name)).fit(data, seed=3, device="cpu").head(x)
    b = create_method(name, overrides=quick(name)).fit(data, seed=3, device="cpu").head(x)
    assert torch.equal(a, b)


def zero_shot_logits(data: SelectionData) -> torch.Tensor:
    return create_method("zero_shot").fit(data, seed=1, device="cpu").head(small_task().test_features)


def test_tip_adapter_with_alpha_zero_is_zero_shot_exactly(data):
    fitted = create_method("tip_adapter", overrides=["alpha=0"]).fit(data, seed=1, device="cpu")
    assert fitted.hparams["alpha"] == 0.0
    assert torch.equal(fitted.head(small_task().test_features), zero_shot_logits(data))


@pytest.mark.parametrize("overrides", [["epochs=0"], ["alpha=0", "epochs=3"]], ids=["no-training", "alpha-0"])
def test_taskres_with_a_zero_residual_is_zero_shot_exactly(overrides, data):
    fitted = create_method("taskres", overrides=overrides).fit(data, seed=1, device="cpu")
    assert torch.equal(fitted.head(small_task().test_features), zero_shot_logits(data))


def test_hegraphadapter_base_variant_is_zero_shot(data):
    base = create_method("hegraphadapter:base").fit(data, seed=1, device="cpu").head(small_task().test_features)
    zero = zero_shot_logits(data)
    torch.testing.assert_close(base, zero, atol=1e-4, rtol=0)
    assert torch.equal(base.argmax(dim=1), zero.argmax(dim=1))


def test_hegraphadapter_full_alias_and_config_file(tmp_path):
    assert create_method("hegraphadapter:full").name == "hegraphadapter"
    exp = tmp_path / "exp.yaml"
    exp.write_text("train: {epochs: 7}\n")
    method = create_method("hegraphadapter:t", config_file=exp, overrides=["train.lr=0.01"])
    assert method.config.variant.name == "t"
    assert method.config.train.epochs == 7 and method.config.train.lr == 0.01


def test_selection_data_has_no_test_split():
    """``fit`` only ever receives SelectionData, and SelectionData cannot carry the test split."""
    names = [f.name for f in dataclasses.fields(SelectionData)]
    assert not [n for n in names if "test" in n]


def test_tip_adapter_grid_is_the_official_one():
    grid = search_grid(7.0, 200)
    assert len(grid) == 200 and grid[0] == pytest.approx(0.1) and grid[-1] == pytest.approx(0.1 + 199 * 6.9 / 200)


def test_chosen_hyper_parameters_come_from_the_search_space(data):
    fitted = create_method("tip_adapter", overrides=quick("tip_adapter")).fit(data, seed=1, device="cpu")
    extended = fitted.hparams.get("grid_extended", {})  # values added past an edge of the grid, recorded
    assert fitted.hparams["alpha"] in (*search_grid(3.0, 5), *extended.get("alpha", ()))
    assert fitted.hparams["beta"] in (*search_grid(7.0, 20), *extended.get("beta", ()))
    fixed = create_method("tip_adapter", overrides=[*quick("tip_adapter"), "extend_rounds=0"]).fit(data, seed=1, device="cpu")
    assert fixed.hparams["alpha"] in search_grid(3.0, 5) and fixed.hparams["beta"] in search_grid(7.0, 20)
    assert "grid_extended" not in fixed.hparams
    probe = create_method("linear_probe", overrides=quick("linear_probe")).fit(data, seed=1, device="cpu")
    assert 1e-7 <= probe.hparams["C"] <= 1e7 and probe.hparams["fits"] >= 7


def test_learning_rate_schedules():
    assert dassl_lr(0, epochs=10, lr=0.1, warmup_epochs=1, warmup_lr=1e-5) == 1e-5
    assert dassl_lr(1, epochs=10, lr=0.1, warmup_epochs=1, warmup_lr=1e-5) == pytest.approx(0.1)
    assert dassl_lr(6, epochs=10, lr=0.1, warmup_epochs=1, warmup_lr=1e-5) == pytest.approx(0.05)
    assert step_cosine_lr(0, total_steps=8, lr=0.2) == pytest.approx(0.2)
    assert step_cosine_lr(4, total_steps=8, lr=0.2) == pytest.approx(0.1)
    assert step_cosine_lr(8, total_steps=8, lr=0.2) == pytest.approx(0.0)


@pytest.mark.parametrize("num_classes, dim", [(7, 24), (5, 3)])
def test_graphadapter_closed_form_equals_building_each_query_graph(num_classes, dim):
    """Row 0 of D^-1/2 (max(cos, 0) + I) D^-1/2 on [q_i; nodes], built densely per query."""
    g = torch.Generator().manual_seed(0)
    queries = torch.randn(num_classes, dim, generator=g, dtype=torch.float64)
    nodes = torch.randn(num_classes, dim, generator=g, dtype=torch.float64)
    self_w, nb_w = query_propagation(queries, nodes)
    for i in range(num_classes):
        x = F.normalize(torch.cat([queries[i : i + 1], nodes]), dim=-1)  # (C + 1, d)
        adj = (x @ x.T).clamp(min=0) + torch.eye(num_classes + 1, dtype=torch.float64)
        inv_sqrt = adj.sum(dim=1).pow(-0.5)
        norm = inv_sqrt[:, None] * adj * inv_sqrt[None, :]
        torch.testing.assert_close(self_w[i], norm[0, 0])
        torch.testing.assert_close(nb_w[i], norm[0, 1:])


def test_graphadapter_runs_without_512_dims_or_a_multiple_of_4_classes():
    task = build_synthetic_task(num_classes=7, dim=24, num_families=3, semantic_rank=8, family_rank=4, shots=(2,), seeds=(1,), test_per_class=2)
    fitted = create_method("graphadapter", overrides=["epochs=2"]).fit(selection_data(task, shots=2, seed=1), seed=1, device="cpu")
    assert fitted.head(task.test_features).shape == (14, 7)


# --------------------------------------------------------------------------------------------
# Registry and config errors


@pytest.mark.parametrize("name", ["nope", "hegraphadapter:nope", "taskres:t"])
def test_unknown_method_lists_the_available_ones(name):
    with pytest.raises(ConfigError, match=rf"unknown method '{name}'; available: \['zero_shot', 'linear_probe'"):
        create_method(name)


@pytest.mark.parametrize(
    "name, overrides, message",
    [
        ("taskres", ["epochz=3"], r"--set epochz: epochz: unknown key; valid keys: \['alpha', 'lr'"),
        ("taskres", ["epochs=-1"], r"--set epochs: epochs: must be >= 0, got -1"),
        ("taskres", ["lr=fast"], r"--set lr: lr: expected a finite number, got 'fast'"),
        ("taskres", ["lr=0"], r"lr: must be > 0"),
        ("taskres", ["checkpoint=sometimes"], r"checkpoint: 'sometimes' is not valid; choose one of \['last', 'best_val'\]"),
        ("taskres", ["train.lr=0.1"], r"--set train.lr: method 'taskres' has a flat config"),
        ("tip_adapter", ["search_step=[10]"], r"search_step: expected a list of 2 values, got 1"),
        ("tip_adapter", ["alpha=true"], r"alpha: expected a finite number, got True"),
        ("clip_adapter", ["ratio=1.5"], r"ratio: must be in \[0, 1\], got 1.5"),
        ("graphadapter", ["epochs=2.5"], r"epochs: expected an integer, got 2.5"),
        ("linear_probe", ["views=some"], r"views: 'some' is not valid; choose one of \['mean', 'all'\]"),
        ("hegraphadapter", ["train.epochz=3"], r"train.epochz: unknown key"),
    ],
)
def test_bad_overrides_name_the_key_and_the_choices(name, overrides, message):
    with pytest.raises(ConfigError, match=message):
        create_method(name, overrides=overrides)


def test_bad_config_file_names_the_file_and_key(tmp_path):
    path = tmp_path / "tip.yaml"
    path.write_text("search_scale: [7.0, 3.0]\nbeta_grid: [1, 2]\n")
    with pytest.raises(ConfigError, match=rf"{path}: beta_grid: unknown key; valid keys: \['search_scale'"):
        create_method("tip_adapter", config_file=path)
    path.write_text("epochs: many\n")
    with pytest.raises(ConfigError, match=rf"{path}: epochs: expected an integer, got 'many'"):
        create_method("taskres", config_file=path)
    with pytest.raises(ConfigError, match="does not exist"):
        create_method("taskres", config_file=tmp_path / "missing.yaml")


def test_a_bad_shipped_yaml_is_named(tmp_path, monkeypatch):
    (tmp_path / "taskres.yaml").write_text("alpha: 0.5\nresidual: 1\n")
    monkeypatch.setenv("HGADAPTER_METHODS", str(tmp_path))
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'taskres.yaml'}: residual: unknown key"):
        create_method("taskres")


def test_precedence_defaults_file_override(tmp_path):
    path = tmp_path / "taskres.yaml"
    path.write_text("epochs: 50\nlr: 0.01\n")
    method = create_method("taskres", config_file=path, overrides=["epochs=7"])
    assert (method.config.epochs, method.config.lr, method.config.alpha) == (7, 0.01, 0.5)


# Documented departures of the shipped YAML from the source's defaults (see the YAML comments).
REDUCTIONS = {"clip_adapter": {"batch_size": 256, "lr": 1.6e-2}}


def test_every_shipped_method_yaml_loads_and_matches_the_source_defaults():
    shipped = sorted(p.stem for p in Path(methods_dir()).glob("*.yaml"))
    registered = {n.partition(":")[0] for n in list_methods()}
    assert set(shipped) == registered
    for name in shipped:
        method = create_method(name)
        if name == "hegraphadapter":
            continue  # a RunConfig: its defaults are hgadapter.config's, checked in tests/test_config.py
        defaults = dataclasses.asdict(type(method.config)())
        resolved = dataclasses.asdict(method.config)
        assert {k: v for k, v in resolved.items() if defaults[k] != v} == REDUCTIONS.get(name, {}), name


def test_gda_classifier_by_hand():
    """W = P mu_c and b = -mu_c^T P mu_c / 2 with P = d ((N - 1) S + tr(S) I)^-1, in float64 by hand."""
    from hgadapter.methods.gda import gda_classifier

    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(12, 5, generator=g, dtype=torch.float64), dim=-1)
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    weight, bias = gda_classifier(x, y, 3)
    mu = torch.stack([x[y == c].mean(0) for c in range(3)])  # (3, 5)
    centred = x - mu[y]
    S = centred.T @ centred / 11
    P = 5 * torch.linalg.inv(11 * S + torch.trace(S) * torch.eye(5, dtype=torch.float64))
    torch.testing.assert_close(weight.double(), mu @ P, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bias.double(), -0.5 * torch.einsum("cd,de,ce->c", mu, P, mu), atol=1e-5, rtol=1e-5)


def test_gda_beats_zero_shot_when_the_text_is_poor():
    """On a task whose text is far from the images, the few-shot Gaussian classifier adds what the
    text lacks; alpha is chosen on validation and recorded."""
    cache = build_synthetic_task(num_classes=20, num_families=4, dim=32, shots=(8,), seeds=(1,), text_bias=0.7, test_per_class=10)
    data = selection_data(cache, shots=8, seed=1)
    gda = create_method("gda").fit(data, seed=1, device="cpu")
    zs = create_method("zero_shot").fit(data, seed=1, device="cpu")
    assert gda.val_acc > zs.val_acc + 5 and gda.hparams["alpha"] > 0
    fixed = create_method("gda", overrides=["alpha=0"]).fit(data, seed=1, device="cpu")
    assert fixed.val_acc == pytest.approx(zs.val_acc)  # alpha 0 is zero-shot CLIP


def test_tip_adapter_f_keeps_the_untrained_keys_when_fine_tuning_only_hurts(data):
    """init_search trains at Tip-Adapter's own alpha/beta; with keep_initial a run whose every epoch
    is worse on validation (a learning rate far too large) returns Tip-Adapter exactly."""
    tip = create_method("tip_adapter", overrides=quick("tip_adapter")).fit(data, seed=1, device="cpu")
    overrides = [*quick("tip_adapter_f"), "init_search=true", "keep_initial=true", "lr=50"]
    tip_f = create_method("tip_adapter_f", overrides=overrides).fit(data, seed=1, device="cpu")
    assert (tip_f.hparams["train_alpha"], tip_f.hparams["train_beta"]) == (tip.hparams["alpha"], tip.hparams["beta"])
    assert all(h["val_acc"] < tip.val_acc for h in tip_f.history)  # the keys were ruined ...
    assert tip_f.hparams["checkpoint_epoch"] == 0 and tip_f.val_acc == tip.val_acc  # ... and not kept
    x = small_task().test_features
    assert torch.allclose(tip_f.head(x), tip.head(x), atol=1e-5)


@pytest.mark.parametrize("max_shots, epochs", [(4, 2), (2, 3)])
def test_taskres_short_epochs_up_to_short_max_shots(data, max_shots, epochs):
    fitted = create_method("taskres", overrides=["epochs=3", "short_epochs=2", f"short_max_shots={max_shots}"]).fit(data, seed=1, device="cpu")
    assert fitted.epochs == epochs == len(fitted.history)  # data has 4 shots


def test_clap_multipliers_are_the_zero_shot_class_performance():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [1.0, 3.0]])
    labels = torch.tensor([0, 0, 1])
    from hgadapter.methods.clap import zero_shot_multipliers

    p = torch.softmax(logits, dim=-1)
    expected = torch.tensor([(p[0, 0] + p[1, 0]) / 2, p[2, 1]])
    torch.testing.assert_close(zero_shot_multipliers(logits, labels, 2), expected)
    assert zero_shot_multipliers(logits, labels, 3)[2] == 0  # a class without samples


def test_clap_constraint_holds_the_prototypes_near_the_text(data):
    """The penalty pulls each w_c back to t_c: the constrained prototypes end closer to zero-shot
    than the unconstrained probe's (ZS-LP), and 0 epochs is zero-shot CLIP exactly."""
    from hgadapter.graph import prompt_ensemble
    from hgadapter.methods.clap import raw_prototype_norms

    r = raw_prototype_norms(data.pos_text, data.pos_text_norm)[:, None]  # (C, 1): the source's scale
    start = prompt_ensemble(data.pos_text) * r  # (C, d): the initial (and target) prototypes
    moved = {}
    for constraint in ("l2", "none"):
        head = create_method("clap", overrides=["epochs=20", "lr=1.0", f"constraint={constraint}"]).fit(data, seed=1, device="cpu").head
        moved[constraint] = ((head.text - start).norm(dim=-1) / r[:, 0]).mean()
    assert 0 < moved["l2"] < 0.9 * moved["none"]
    zero = create_method("clap", overrides=["epochs=0"]).fit(data, seed=1, device="cpu")
    # the prototypes start at r_c t_c, which the logits normalise back to t_c (up to rounding)
    torch.testing.assert_close(zero.head(small_task().test_features), zero_shot_logits(data), atol=1e-4, rtol=1e-5)
    unit = create_method("clap", overrides=["epochs=0", "text_scale=unit"]).fit(data, seed=1, device="cpu")
    assert torch.equal(unit.head(small_task().test_features), zero_shot_logits(data))


def test_lp_plus_plus_step_sizes_by_hand():
    from hgadapter.methods.lp_plus_plus import lp_plus_plus_steps

    x = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 1.0, 0.0], [0.0, 0.6, 0.8]]), dim=-1)
    y = torch.tensor([0, 0, 1, 1])
    t = F.normalize(torch.tensor([[1.0, 0.2, 0.0], [0.0, 1.0, 0.3]]), dim=-1)
    lr_w, lr_alpha, alpha0 = lp_plus_plus_steps(x, y, t, alpha_init_scale=250.0)
    top = torch.linalg.svdvals(x.double())[0] ** 2  # lambda_max(F^T F) = sigma_max(F)^2
    cos = x.double() @ t.double().T
    assert lr_w == pytest.approx(4 * 4 / top.item())
    assert lr_alpha == pytest.approx(4 / (4 * max(cos[:, 0].pow(2).sum().item(), cos[:, 1].pow(2).sum().item())))
    assert alpha0 == pytest.approx(250 * ((cos[0, 0] + cos[1, 0]) / 2 + (cos[2, 1] + cos[3, 1]) / 2).item() / 2)


def test_lp_plus_plus_untrained_head_is_the_initialisation(data):
    """0 epochs: W = class sums of the samples, alpha = alpha_0, b = nn.Linear's init from the seed."""
    from hgadapter.graph import prompt_ensemble
    from hgadapter.methods._common import view_samples
    from hgadapter.methods.lp_plus_plus import lp_plus_plus_steps

    fitted = create_method("lp_plus_plus", overrides=["epochs=0", "views=all"]).fit(data, seed=5, device="cpu")
    x, y = view_samples(data.train_set, "all")
    text = F.normalize(prompt_ensemble(data.pos_text), dim=-1)
    alpha0 = lp_plus_plus_steps(x, y, text)[2]
    sums = torch.zeros(data.num_classes, x.shape[1]).index_add_(0, y, x)
    bias = (torch.rand(data.num_classes, generator=torch.Generator().manual_seed(5)) * 2 - 1) / math.sqrt(x.shape[1])
    f = F.normalize(small_task().test_features.float(), dim=-1)
    expected = f @ sums.T + bias + alpha0 * (f @ text.T)
    torch.testing.assert_close(fitted.head(small_task().test_features), expected, atol=1e-4, rtol=1e-4)


def test_proker_closed_form_equals_a_direct_solve():
    """f(x) = x T^T + k(x, S) (K/lambda + I)^-1 (Y - S T^T), solved densely by hand, times s."""
    from hgadapter.evaluate import cache_keys
    from hgadapter.graph import prompt_ensemble

    cache = build_synthetic_task(num_classes=5, num_families=2, dim=12, semantic_rank=8, shots=(3,), seeds=(1,), test_per_class=4)
    data = selection_data(cache, shots=3, seed=1)
    beta, lmbda = 2.5, 0.3
    fitted = create_method("proker", overrides=[f"beta={beta}", f"lmbda={lmbda}"]).fit(data, seed=1, device="cpu")
    s = cache_keys(data.train_set, device="cpu").double()  # (15, 12)
    t = F.normalize(prompt_ensemble(data.pos_text).double(), dim=-1)
    y = F.one_hot(data.train_set.labels, 5).double()
    k = torch.exp(-beta * (1 - s @ s.T))
    coef = torch.linalg.inv(k / lmbda + torch.eye(15, dtype=torch.float64)) @ (y - s @ t.T)
    x = F.normalize(cache.test_features.double(), dim=-1)
    expected = data.logit_scale * (x @ t.T + torch.exp(-beta * (1 - x @ s.T)) @ coef)
    torch.testing.assert_close(fitted.head(cache.test_features).double(), expected, atol=1e-3, rtol=1e-4)


def test_proker_search_equals_brute_force_and_lambda_zero_limit():
    """The eigendecomposition shortcut scores every (beta, lambda) exactly as a direct solve would."""
    from hgadapter.evaluate import cache_keys
    from hgadapter.graph import prompt_ensemble
    from hgadapter.methods.proker import linspace_grid, proker_coefficients, proker_kernel
    from hgadapter.protocol import accuracy

    cache = build_synthetic_task(num_classes=6, num_families=2, dim=16, semantic_rank=8, shots=(4,), seeds=(1,), test_per_class=4)
    data = selection_data(cache, shots=4, seed=1)
    fitted = create_method("proker", overrides=["beta_steps=4", "lmbda_steps=3", "extend_rounds=0"]).fit(data, seed=1, device="cpu")
    s = cache_keys(data.train_set, device="cpu").double()
    t = F.normalize(prompt_ensemble(data.pos_text).double(), dim=-1)
    r = F.one_hot(data.train_set.labels, 6).double() - s @ t.T
    v = F.normalize(data.val_features.double(), dim=-1)
    best = (-1.0, None)
    for beta in linspace_grid(0.1, 10.0, 4):
        for lmbda in linspace_grid(0.01, 10.0, 3):
            acc = accuracy(v @ t.T + proker_kernel(v, s, beta) @ proker_coefficients(proker_kernel(s, s, beta), r, lmbda), data.val_labels)
            if acc > best[0]:
                best = (acc, (beta, lmbda))
    assert fitted.val_acc == best[0] and (fitted.hparams["beta"], fitted.hparams["lmbda"]) == pytest.approx(best[1])
    tiny = create_method("proker", overrides=["beta=2.0", "lmbda=1e-9"]).fit(data, seed=1, device="cpu")
    assert torch.allclose(tiny.head(cache.test_features), zero_shot_logits_of(data, cache), atol=1e-4)  # lambda -> 0: zero-shot


def zero_shot_logits_of(data: SelectionData, cache) -> torch.Tensor:
    return create_method("zero_shot").fit(data, seed=1, device="cpu").head(cache.test_features)
