"""`hgadapter` command line: smoke runs on a small synthetic task and one-line errors."""

import json

import pytest
import torch

from hgadapter.cli import main

SMALL = ["--classes", "12", "--dim", "32", "--families", "4", "--shots", "2", "--seeds", "1"]


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    out = tmp_path_factory.mktemp("cache")
    assert main(["synth", "--out", str(out), *SMALL]) == 0
    return out


def test_synth_writes_a_loadable_cache(small_cache, capsys):
    from hgadapter.features import load_cache

    cache = load_cache(small_cache)
    assert cache.num_classes == 12 and cache.dim == 32 and set(cache.train_sets) == {(2, 1)}
    assert cache.meta["synthetic"] is True


@pytest.mark.parametrize("variant", ["full", "t", "base"])
def test_run_writes_metrics(small_cache, tmp_path, capsys, variant):
    run = tmp_path / "run"
    rc = main(["run", "--features", str(small_cache), "--variant", variant, "--shots", "2", "--seed", "1", "--out", str(run), "--set", "train.epochs=2", "--quiet"])
    assert rc == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["variant"] == variant and metrics["shots"] == 2 and metrics["seed"] == 1
    assert 0.0 <= metrics["test_acc"] <= 100.0
    out = capsys.readouterr().out
    assert "(synthetic task)" in out and f"{variant} shots=2 seed=1" in out


def test_command_line_overrides_config_file(small_cache, tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text("train: {epochs: 3, lr: 0.005}\n")
    run = tmp_path / "run"
    args = ["run", "--features", str(small_cache), "--shots", "2", "--seed", "1", "--out", str(run), "--quiet"]
    assert main([*args, "--config", str(exp), "--set", "train.epochs=1", "--engine", "dgl"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["engine"] == "dgl"
    assert "lr: 0.005" in (run / "config.yaml").read_text()


def test_variants_lists_the_shipped_files(capsys):
    assert main(["variants"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["base", "full", "t", "t_n", "t_p"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--features", "/no/such/cache", "--shots", "2", "--seed", "1", "--out", "x"], "/no/such/cache"),
        (["run", "--features", "{cache}", "--shots", "16", "--seed", "1", "--out", "x"], r"(shots=16, seed=1)"),
        (["run", "--features", "{cache}", "--variant", "nope", "--shots", "2", "--seed", "1", "--out", "x"], "unknown variant 'nope'; available"),
        (["run", "--features", "{cache}", "--shots", "2", "--seed", "1", "--out", "x", "--set", "train.lr=-1"], "train.lr: must be > 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(small_cache, tmp_path, capsys, argv, message):
    argv = [a.replace("{cache}", str(small_cache)) for a in argv]
    argv[argv.index("--out") + 1] = str(tmp_path / "run")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("hgadapter run: error:")
    assert message in err
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_synth_set_changes_images_but_not_classes_or_prompts(tmp_path, capsys):
    from hgadapter.cli import main
    from hgadapter.features import load_cache

    base = ["synth", "--classes", "12", "--families", "3", "--dim", "24", "--shots", "1", "--seeds", "1"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert main([*base, "--out", str(tmp_path / "b"), "--set", "image_noise=2.6", "--set", "image_gap=3.0"]) == 0
    a, b = load_cache(tmp_path / "a"), load_cache(tmp_path / "b")
    assert a.classnames == b.classnames and torch.equal(a.pos_text, b.pos_text)  # a valid domain-generalisation target
    assert not torch.equal(a.test_features, b.test_features)
    assert b.meta["config"]["image_noise"] == 2.6
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "c"), "--set", "imagenoise=2"]) == 2
    assert "expected FIELD=VALUE with FIELD one of" in capsys.readouterr().err
