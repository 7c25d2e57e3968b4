"""Training: schedule, determinism, what is trained, and the run directory."""

import json

import pytest
import torch
from safetensors.torch import load_file

from hgadapter.config import load_config
from hgadapter.runner import run_experiment
from hgadapter.train import learning_rate


def test_learning_rate_schedule():
    kw = dict(total_steps=10, warmup_steps=2, lr=1e-3, warmup_lr=1e-5)
    assert learning_rate(0, **kw) == pytest.approx(1e-5)
    assert learning_rate(1, **kw) == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)
    assert learning_rate(2, **kw) == pytest.approx(1e-3)  # warmup ends at the peak
    assert learning_rate(6, **kw) == pytest.approx(0.5e-3)  # half way through the cosine
    assert learning_rate(10, **kw) == pytest.approx(0.0, abs=1e-12)


def _metrics_without_time(m):
    return {k: v for k, v in m.items() if k != "train_seconds"}


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
    assert set(weights) == {"projections.0.weight", "projections.1.weight", "projections.2.weight"}
    config_text = (tmp_path / "config.yaml").read_text()
    assert "environment:" in config_text and "torch:" in config_text and "lr: 0.001" in config_text
    assert load_config("full", config_file=tmp_path / "config.yaml") == cfg  # a run's config reloads
    assert json.loads((tmp_path / "classes.json").read_text()) == random_cache.classnames
    assert not list(tmp_path.glob(".*.tmp"))


def test_fixed_alpha_beta_skip_the_search(random_cache):
    cfg = load_config("full", overrides=["train.epochs=1", "eval.alpha=0.5", "eval.beta=3.0"])
    m = run_experiment(cfg, random_cache, shots=4, seed=1, progress=False)
    assert (m["alpha"], m["beta"]) == (0.5, 3.0)
