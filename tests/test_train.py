"""Training: the one loop, schedules, determinism, what is trained, and the run directory."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from hgadapter.heads import LinearHead
from hgadapter.config import ConfigError, load_config
from hgadapter.methods import Method, create_method, list_methods, method_from_config
from hgadapter.protocol import FitContext, Fitted, selection_data
from hgadapter.runner import run_experiment, run_method
from hgadapter.train import dassl_lr, dassl_schedule, learning_rate, step_cosine, step_cosine_lr, train_loop, warmup_cosine


def test_learning_rate_schedule():
    kw = dict(total_steps=10, warmup_steps=2, lr=1e-3, warmup_lr=1e-5)
    assert learning_rate(0, **kw) == pytest.approx(1e-5)
    assert learning_rate(1, **kw) == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)
    assert learning_rate(2, **kw) == pytest.approx(1e-3)  # warmup ends at the peak
    assert learning_rate(6, **kw) == pytest.approx(0.5e-3)  # half way through the cosine
    assert learning_rate(10, **kw) == pytest.approx(0.0, abs=1e-12)


def _metrics_without_time(m):
    return {k: v for k, v in m.items() if not k.endswith("_seconds")}


@pytest.mark.parametrize("engine", ["torch", "dgl"])
def test_same_seed_same_metrics(random_cache, engine):
    cfg = load_config("full", overrides=["train.epochs=3", f"engine={engine}"])
    a = run_experiment(cfg, random_cache, shots=4, seed=1, progress=False)
    b = run_experiment(cfg, random_cache, shots=4, seed=1, progress=False)
    assert _metrics_without_time(a) == _metrics_without_time(b)
    assert a["engine"] == engine


def test_engines_give_the_same_run(random_cache):
    runs = [
        run_experiment(load_config("full", overrides=["train.epochs=2", f"engine={e}"]), random_cache, shots=4, seed=1, progress=False)
        for e in ("torch", "dgl")
    ]
    for key in ("val_acc", "test_acc", "alpha", "beta"):
        assert runs[0][key] == runs[1][key]


def test_zero_shot_trains_nothing(random_cache):
    m = run_experiment(load_config("base"), random_cache, shots=4, seed=1, progress=False)
    assert m["epochs"] == 0 and m["engine"] == "none" and m["alpha"] is None


def test_run_directory(random_cache, tmp_path):
    cfg = load_config("full", overrides=["train.epochs=2"])
    m = run_experiment(cfg, random_cache, shots=4, seed=1, out_dir=tmp_path, progress=False)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == m
    for key in ("method", "variant", "engine", "shots", "seed", "val_acc", "test_acc", "alpha", "beta", "train_seconds", "epochs"):
        assert key in saved
    assert 0.0 <= saved["test_acc"] <= 100.0 and saved["alpha"] in cfg.eval.alpha_grid
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    nodes = load_file(tmp_path / "nodes.safetensors")
    assert set(nodes) == {"initial.pos", "initial.neg", "initial.vis", "adapted.neg", "adapted.pos", "vis_bias"}
    assert not torch.allclose(nodes["initial.pos"], nodes["adapted.pos"])
    weights = load_file(tmp_path / "adapter.safetensors")
    assert set(weights) == {"projections.0.weight", "projections.1.weight", "projections.2.weight", "classwise.0", "classwise.1", "classwise.2"}
    assert weights["classwise.1"].shape == (3, random_cache.num_classes, random_cache.dim)  # pos stage: n2p, v2p, p2p
    config_text = (tmp_path / "config.yaml").read_text()
    assert "environment:" in config_text and "torch:" in config_text and "lr: 0.001" in config_text
    assert load_config("full", config_file=tmp_path / "config.yaml") == cfg  # a run's config reloads
    assert json.loads((tmp_path / "classes.json").read_text()) == random_cache.classnames
    assert not list(tmp_path.glob(".*.tmp"))


def test_fixed_alpha_beta_skip_the_search(random_cache):
    cfg = load_config("full", overrides=["train.epochs=1", "eval.alpha=0.5", "eval.beta=3.0"])
    m = run_experiment(cfg, random_cache, shots=4, seed=1, progress=False)
    assert (m["alpha"], m["beta"]) == (0.5, 3.0)


def test_schedules_are_the_per_step_forms_of_the_formulas():
    spe = 3  # steps per epoch
    dassl = dassl_schedule(epochs=4, lr=0.1, warmup_epochs=1, warmup_lr=1e-5)
    cosine = step_cosine(epochs=4, lr=0.1)
    warm = warmup_cosine(epochs=4, warmup_epochs=1, lr=0.1, warmup_lr=1e-5)
    for step in range(4 * spe):
        assert dassl(step, spe) == dassl_lr(step // spe, epochs=4, lr=0.1, warmup_epochs=1, warmup_lr=1e-5)
        assert cosine(step, spe) == step_cosine_lr(step, total_steps=12, lr=0.1)
        assert warm(step, spe) == learning_rate(step, total_steps=12, warmup_steps=3, lr=0.1, warmup_lr=1e-5)
    assert warmup_cosine(epochs=2, warmup_epochs=5, lr=0.1, warmup_lr=0.0)(3, 2) == pytest.approx(0.075)  # warmup capped at the run


def _reference_loop(module, optimizer, lr_of_step, views, labels, val_x, val_y, *, epochs, batch_size, seed):
    """The loop written out by hand (what HeGraphAdapter's and the baselines' loops each did before)."""
    generator = torch.Generator().manual_seed(seed)
    views = F.normalize(views, dim=-1)
    step, history = 0, []
    for epoch in range(epochs):
        order = torch.randperm(views.shape[0], generator=generator)
        view_idx = torch.randint(views.shape[1], (views.shape[0],), generator=generator)
        total = 0.0
        for begin in range(0, views.shape[0], batch_size):
            lr = lr_of_step(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = order[begin : begin + batch_size]
            loss = F.cross_entropy(module(views[idx, view_idx[idx]]), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * idx.numel()
            step += 1
        with torch.no_grad():
            val = 100.0 * float((module(val_x).argmax(dim=1) == val_y).float().mean())
        history.append({"epoch": epoch + 1, "loss": total / views.shape[0], "lr": lr, "val_acc": val})
    return history


def test_train_loop_equals_the_loop_written_out(random_cache):
    train_set = random_cache.train_set(4, 1)
    runs = []
    for loop in ("shared", "reference"):
        torch.manual_seed(0)
        module = torch.nn.Linear(random_cache.dim, random_cache.num_classes)
        optimizer = torch.optim.SGD(module.parameters(), lr=0.0, momentum=0.9)
        schedule = warmup_cosine(epochs=3, warmup_epochs=1, lr=0.5, warmup_lr=0.01)
        if loop == "shared":
            data, ctx = selection_data(random_cache, shots=4, seed=1), FitContext(seed=7, device=torch.device("cpu"))
            history = train_loop(module, optimizer, schedule, data, ctx, logits_fn=module, epochs=3, batch_size=5).history
        else:
            history = _reference_loop(
                module, optimizer, lambda step: schedule(step, math.ceil(24 / 5)), train_set.features, train_set.labels,
                random_cache.val_features, random_cache.val_labels, epochs=3, batch_size=5, seed=7,
            )
        runs.append((history, module.weight.detach().clone()))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])


def test_best_val_checkpoint_restores_the_best_epoch(random_cache):
    torch.manual_seed(0)
    module = torch.nn.Linear(random_cache.dim, random_cache.num_classes)
    states = []

    def loss_fn(x, y):
        states.append(module.weight.detach().clone())
        return F.cross_entropy(module(x), y)

    result = train_loop(
        module, torch.optim.SGD(module.parameters(), lr=0.0), lambda step, spe: 50.0,
        selection_data(random_cache, shots=4, seed=1), FitContext(seed=1, device=torch.device("cpu")),
        logits_fn=module, loss_fn=loss_fn, epochs=4, batch_size=24, checkpoint="best_val",
    )
    accs = [h["val_acc"] for h in result.history]
    assert result.epoch == accs.index(max(accs)) + 1 and result.val_acc == max(accs)
    assert result.epoch < 4 and max(accs) > accs[-1]  # the big steps overshoot: the last epoch is not the best
    # one step per epoch: the weights after epoch e are the ones the loss saw at epoch e + 1
    assert torch.equal(module.weight, states[result.epoch])


def test_method_from_config_goes_through_the_registry():
    method = method_from_config(load_config("t"))
    assert method.name == "hegraphadapter:t" and type(method) is type(create_method("hegraphadapter:t"))
    assert method_from_config(load_config("full")).name == "hegraphadapter"
    with pytest.raises(ConfigError, match="no registered method takes a dict"):
        method_from_config({"lr": 1})


class _Constant(Method):
    """A method the registry does not know: the runner must need nothing more than its Fitted."""

    config_cls = dict

    def _fit(self, data, ctx):
        ctx.note("constant fit")
        weight = torch.zeros(data.num_classes, data.dim)
        return Fitted(head=LinearHead(weight=weight).to(ctx.device), val_acc=1.0, record={"flavour": "plain"}, tensors={"weights": {"w": weight}})


def test_the_runner_writes_what_fitted_carries(random_cache, tmp_path):
    m = run_method(_Constant(name="constant", config={}), random_cache, shots=4, seed=1, out_dir=tmp_path, device="cpu", progress=False)
    assert m["flavour"] == "plain" and m["device"] == "cpu" and m["threads"] == 1
    assert torch.equal(load_file(tmp_path / "weights.safetensors")["w"], torch.zeros(random_cache.num_classes, random_cache.dim))
    assert "constant fit" in (tmp_path / "log.txt").read_text()
    assert "trainable_params" not in m and m["epochs"] == 0


@pytest.mark.parametrize("name", [n for n in list_methods() if n in ("zero_shot", "tip_adapter", "taskres", "hegraphadapter", "hegraphadapter:base")])
def test_every_record_has_the_same_timings(random_cache, name):
    quick = {"taskres": ["epochs=2"], "hegraphadapter": ["train.epochs=2"], "tip_adapter": ["search_step=[4, 2]"]}
    m = run_method(create_method(name, overrides=quick.get(name, [])), random_cache, shots=4, seed=1, device="cpu", progress=False)
    for key in ("train_seconds", "select_seconds", "fit_seconds"):
        assert isinstance(m[key], float) and m[key] >= 0.0, key
    assert m["fit_seconds"] >= m["train_seconds"] and m["device"] == "cpu"
    assert m["threads"] == (torch.get_num_threads() if name.startswith("hegraphadapter") else 1)
    assert (m["train_seconds"] > 0.0) == (m["epochs"] > 0)


def test_the_runner_names_no_method():
    source = (Path(__file__).resolve().parents[1] / "hgadapter" / "runner.py").read_text().lower()
    assert "hegraphadapter" not in source and "isinstance" not in source


def test_drop_last_skips_the_partial_batch_and_keeps_the_draws(random_cache):
    data, ctx = selection_data(random_cache, shots=4, seed=1), FitContext(seed=3, device=torch.device("cpu"))  # 24 images
    seen: dict[bool, list[torch.Tensor]] = {}
    for drop in (False, True):
        module = torch.nn.Linear(random_cache.dim, random_cache.num_classes)
        batches = seen.setdefault(drop, [])

        def loss_fn(x, y, batches=batches, module=module):
            batches.append(x.detach().clone())
            return F.cross_entropy(module(x), y)

        result = train_loop(module, torch.optim.SGD(module.parameters(), lr=0.0), lambda s, spe: 0.0, data, ctx,
                            logits_fn=module, loss_fn=loss_fn, epochs=2, batch_size=5, drop_last=drop)
        assert len(result.history) == 2
    assert [b.shape[0] for b in seen[False]] == [5, 5, 5, 5, 4] * 2
    assert [b.shape[0] for b in seen[True]] == [5, 5, 5, 5] * 2  # Dassl: the 4 left over are skipped
    kept = [b for i, b in enumerate(seen[False]) if i % 5 != 4]  # the same images in the same order, minus the tail
    assert all(torch.equal(a, b) for a, b in zip(kept, seen[True]))


def test_drop_last_keeps_a_lone_short_batch(random_cache):
    data, ctx = selection_data(random_cache, shots=4, seed=1), FitContext(seed=3, device=torch.device("cpu"))
    sizes = []
    module = torch.nn.Linear(random_cache.dim, random_cache.num_classes)

    def loss_fn(x, y):
        sizes.append(x.shape[0])
        return F.cross_entropy(module(x), y)

    train_loop(module, torch.optim.SGD(module.parameters(), lr=0.0), lambda s, spe: 0.0, data, ctx,
               logits_fn=module, loss_fn=loss_fn, epochs=1, batch_size=30, drop_last=True)
    assert sizes == [24]  # fewer images than a batch: Dassl's loader does not drop (drop_last needs N >= batch)

