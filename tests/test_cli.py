"""`hgadapter` command line: smoke runs on a small synthetic task and one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import torch

from hgadapter.cli import main

SMALL = ["--classes", "12", "--dim", "32", "--families", "4", "--shots", "2", "--seeds", "1"]


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    out = tmp_path_factory.mktemp("cache")
    assert main(["synth", "--out", str(out), *SMALL]) == 0
    return out


def test_synth_writes_a_loadable_cache(small_cache, capsys):
    from hgadapter.data.io import load_cache

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
    from hgadapter.data.io import load_cache

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


# ---- _base_ in every file kind, from the command line ----------------------------------------


def test_run_a_variant_file_with_a_base(small_cache, tmp_path, capsys):
    from hgadapter.config import metapaths_dir

    mine = tmp_path / "mine.yaml"
    mine.write_text(f"_base_: {metapaths_dir() / 'full.yaml'}\nname: mine\ngraph: {{topk: 4}}\n")
    run = tmp_path / "run"
    argv = ["run", "--features", str(small_cache), "--variant", str(mine), "--shots", "2", "--seed", "1", "--out", str(run), "--set", "train.epochs=1", "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    assert json.loads((run / "metrics.json").read_text())["variant"] == "mine"
    import yaml

    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert recorded["graph"]["topk"] == 4 and [s["target"] for s in recorded["stages"]] == ["neg", "pos", "vis"]  # from full.yaml


def test_compare_a_method_yaml_with_a_base(small_cache, tmp_path, monkeypatch, capsys):
    shipped = tmp_path / "methods"
    shipped.mkdir()
    (tmp_path / "common.yaml").write_text("epochs: 2\nlr: 0.004\n")
    (shipped / "taskres.yaml").write_text("_base_: ../common.yaml\nalpha: 0.25\n")  # the shipped file of a method
    mine = tmp_path / "mine.yaml"
    (tmp_path / "tip_base.yaml").write_text("search_step: [10, 5]\nalpha: 1.0\n")
    mine.write_text("_base_: tip_base.yaml\nalpha: 2.0\n")  # a --config METHOD=FILE
    monkeypatch.setenv("HGADAPTER_METHODS", str(shipped))
    out = tmp_path / "cmp"
    argv = ["compare", "--features", str(small_cache), "--methods", "taskres", "tip_adapter", "--shots", "2", "--seeds", "1",
            "--out", str(out), "--device", "cpu", "--config", f"tip_adapter={mine}", "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    configs = {m: yaml.safe_load((out / m / "2shot-seed1" / "config.yaml").read_text()) for m in ("taskres", "tip_adapter")}  # each run's resolved config
    assert (configs["taskres"]["alpha"], configs["taskres"]["epochs"], configs["taskres"]["lr"]) == (0.25, 2, 0.004)
    assert (configs["tip_adapter"]["search_step"], configs["tip_adapter"]["alpha"]) == ([10, 5], 2.0)


def test_a_base_error_in_a_method_yaml_names_the_file(small_cache, tmp_path, monkeypatch, capsys):
    (tmp_path / "taskres.yaml").write_text("_base_: nowhere.yaml\n")
    monkeypatch.setenv("HGADAPTER_METHODS", str(tmp_path))
    argv = ["compare", "--features", str(small_cache), "--methods", "taskres", "--shots", "2", "--seeds", "1", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "taskres.yaml: _base_: nowhere.yaml does not exist" in err


# ---- user errors are one line; bugs keep their traceback -------------------------------------


def test_a_bug_shows_its_traceback(small_cache, tmp_path, monkeypatch):
    import hgadapter.cli as cli

    def broken(*args, **kwargs):
        raise KeyError("a bug, not the user's input")

    monkeypatch.setattr(cli, "load_config", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["run", "--features", str(small_cache), "--shots", "2", "--seed", "1", "--out", str(tmp_path / "run")])


def test_debug_variable_shows_the_traceback_of_a_user_error(monkeypatch):
    from hgadapter.config import ConfigError

    monkeypatch.setenv("HGADAPTER_DEBUG", "1")
    with pytest.raises(ConfigError, match="unknown variant 'nope'"):
        main(["run", "--features", "x", "--variant", "nope", "--shots", "2", "--seed", "1", "--out", "x"])


def test_a_broken_command_module_is_an_error_not_a_missing_command(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "hgadapter.extract.run", None)  # importing it now raises ImportError
    with pytest.raises(ImportError):
        main(["extract", "--help"])


def test_every_command_is_registered(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("synth", "run", "variants", "demo", "compare", "sweep", "report", "figures", "tsne", "extract"):
        assert command in out, command


@pytest.mark.parametrize(
    "sets, message",
    [
        (["seed=["], "synthetic task: SyntheticTaskConfig.seed='[' is invalid"),  # not YAML: read as text, then rejected
        (["image_noise=-1"], "synthetic task: SyntheticTaskConfig.image_noise=-1"),
        (["seed"], "--set 'seed': expected key=value"),
    ],
)
def test_synth_set_errors_are_one_line(tmp_path, capsys, sets, message):
    argv = ["synth", "--out", str(tmp_path / "c"), *SMALL]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("hgadapter synth: error:") and message in err, err


@pytest.mark.parametrize("command", [
    ["run", "--features", "x", "--shots", "1", "--seed", "1", "--out", ""],
    ["synth", "--out", " "],
    ["compare", "--features", "x", "--out", ""],
    ["sweep", "exp.yaml", "--out", ""],
])
def test_an_empty_output_folder_is_refused(command, capsys):
    with pytest.raises(SystemExit) as info:
        main(command)
    assert info.value.code == 2 and "expected a folder path, got an empty string" in capsys.readouterr().err


# ---- start-up: `hgadapter --help` and argparse errors import no torch ------------------------

HEAVY = ("torch", "transformers", "dgl", "matplotlib", "sklearn", "huggingface_hub")


def _imported(argv: list[str]) -> tuple[set[str], subprocess.CompletedProcess]:
    """The top-level packages `python -X importtime -m hgadapter ARGV` imports, and the process."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "hgadapter", *argv], capture_output=True, text=True, env=env, cwd=root)
    names = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return names, proc


@pytest.mark.parametrize("argv, code", [
    (["--help"], 0),
    (["nope"], 2),  # an unknown command
    (["run", "--features", "x", "--shots", "1", "--seeds"], 2),  # an argparse error of a command
    (["demo", "--help"], 0),
    (["sweep", "--help"], 0),
    (["predict", "--help"], 0),
])
def test_help_and_argparse_errors_import_no_torch(argv, code):
    names, proc = _imported(argv)
    assert proc.returncode == code, proc.stderr[-2000:]
    assert "hgadapter" in names  # the measurement saw the package itself
    heavy = sorted(set(HEAVY) & names)
    assert not heavy, f"`hgadapter {' '.join(argv)}` imported {heavy}"


def test_version(capsys):
    from hgadapter import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"hgadapter {__version__}"


# ---- one grammar: every new spelling and the old ones -----------------------------------------


def test_methods_lists_every_method_with_its_display_name(capsys):
    from hgadapter.methods import list_methods

    assert main(["methods"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert list(rows) == list_methods()
    assert "Tip-Adapter " in rows["tip_adapter"] and "HeGraphAdapter(T-N)" in rows["hegraphadapter:t_n"]
    assert "demo, compare" in rows["hegraphadapter"] and "compare" in rows["zero_shot"] and "demo" not in rows["zero_shot"]


def _run_argv(cache, out, *extra):
    return ["run", "--features", str(cache), "--shots", "2", "--out", str(out), "--set", "train.epochs=1", "--quiet", *extra]


@pytest.mark.parametrize("spelling", [
    ["--seed", "1", "--variant", "t"],  # the old spelling
    ["--seeds", "1", "--variant", "t"],
    ["--seeds", "1", "--method", "hegraphadapter:t"],  # compare's spelling of the same variant
])
def test_run_spellings_of_seed_and_method_are_one_run(small_cache, tmp_path, capsys, spelling):
    assert main(_run_argv(small_cache, tmp_path / "run", *spelling)) == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (metrics["method"], metrics["variant"], metrics["seed"], metrics["epochs"]) == ("hegraphadapter:t", "t", 1, 1)


def test_run_any_registered_method(small_cache, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "--features", str(small_cache), "--method", "tip_adapter", "--shots", "2", "--seeds", "1",
            "--out", str(out), "--set", "search_step=[10, 5]", "--device", "cpu", "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "tip_adapter" and metrics["seed"] == 1 and (out / "head.safetensors").is_file()
    assert "tip_adapter shots=2 seed=1: val" in capsys.readouterr().out


def test_run_config_takes_compares_method_prefix(small_cache, tmp_path, capsys):
    exp = tmp_path / "exp.yaml"
    exp.write_text("train: {epochs: 1, lr: 0.005}\n")
    run = tmp_path / "run"
    assert main(_run_argv(small_cache, run, "--seeds", "1", "--variant", "t", "--config", f"hegraphadapter:t={exp}")) == 0
    assert "lr: 0.005" in (run / "config.yaml").read_text()
    assert main(_run_argv(small_cache, tmp_path / "r2", "--seeds", "1", "--config", f"tip_adapter={exp}")) == 2
    assert "this run's method is 'hegraphadapter'; give --config FILE or --config hegraphadapter=FILE" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--seeds", "1", "2"], "--seeds 1 2: a run is one seed; for several use `hgadapter compare"),
    (["--seeds", "1", "--method", "tip_adapter", "--engine", "dgl"], "--engine dgl: only HeGraphAdapter passes messages on a graph"),
])
def test_run_grammar_errors_are_one_line(small_cache, tmp_path, capsys, extra, message):
    argv = ["run", "--features", str(small_cache), "--shots", "2", "--out", str(tmp_path / "run"), "--quiet", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("hgadapter run: error:") and message in err, err


def test_run_method_and_variant_exclude_each_other(small_cache, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(_run_argv(small_cache, tmp_path / "run", "--seeds", "1", "--variant", "t", "--method", "tip_adapter"))
    assert info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_compare_method_singular_and_config_file_without_method(small_cache, tmp_path, capsys):
    mine = tmp_path / "tip.yaml"
    mine.write_text("search_step: [10, 5]\nalpha: 2.0\n")
    out = tmp_path / "cmp"
    argv = ["compare", "--features", str(small_cache), "--method", "tip_adapter", "--shots", "2", "--seeds", "1",
            "--out", str(out), "--device", "cpu", "--config", str(mine), "--set", "beta=3.0", "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    config = yaml.safe_load((out / "tip_adapter" / "2shot-seed1" / "config.yaml").read_text())
    assert (config["search_step"], config["alpha"], config["beta"]) == ([10, 5], 2.0, 3.0)
    assert (out / "results.json").is_file() and (out / "results.csv").is_file()


@pytest.mark.parametrize("form", ["positional", "option"])
def test_check_takes_the_cache_either_way(small_cache, capsys, form):
    argv = ["check", str(small_cache)] if form == "positional" else ["check", "--features", str(small_cache)]
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cache"] == str(small_cache)


@pytest.mark.parametrize("argv, message", [
    (["check"], "the following arguments are required: CACHE (or --features CACHE)"),
    (["check", "a", "--features", "b"], "CACHE given twice ('a' and 'b'); give it once"),
    (["tsne", "--out", "x.png"], "the following arguments are required: RUN (or --run RUN)"),
])
def test_positional_or_option_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


@pytest.fixture(scope="module")
def full_run(small_cache, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "hegraphadapter" / "2shot-seed1"
    assert main(_run_argv(small_cache, run, "--seeds", "1")) == 0
    return run


@pytest.mark.parametrize("form", ["positional", "option"])
def test_tsne_takes_the_run_either_way(full_run, tmp_path, capsys, form):
    fig = tmp_path / "t.png"
    argv = ["tsne", str(full_run)] if form == "positional" else ["tsne", "--run", str(full_run)]
    assert main([*argv, "--out", str(fig), "--formats", "png"]) == 0, capsys.readouterr().err
    assert fig.stat().st_size > 0


def test_report_without_paper_shows_display_names(full_run, tmp_path, capsys):
    assert main(["report", str(full_run.parent.parent), "--out", str(tmp_path / "rep"), "--no-paper"]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "| HeGraphAdapter |" in text and "| hegraphadapter |" not in text


def test_export_of_a_cache_says_it_is_a_cache(small_cache, full_run, tmp_path, capsys):
    assert main(["export", str(small_cache), "--out", str(tmp_path / "clf")]) == 2
    err = capsys.readouterr().err
    assert f"{small_cache} is a feature cache, not a run" in err and len(err.strip().splitlines()) == 1
    assert main(["export", str(full_run.parent.parent), "--out", str(tmp_path / "clf")]) == 2
    assert "is a folder of runs, not a run: export one of them, e.g." in capsys.readouterr().err


def test_a_variant_file_may_start_from_a_shipped_name(small_cache, tmp_path, capsys):
    mine = tmp_path / "mine.yaml"
    mine.write_text("_base_: full\nname: mine\ngraph: {topk: 4}\n")
    run = tmp_path / "run"
    assert main(_run_argv(small_cache, run, "--seeds", "1", "--variant", str(mine))) == 0, capsys.readouterr().err
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert recorded["graph"]["topk"] == 4 and [s["target"] for s in recorded["stages"]] == ["neg", "pos", "vis"]
    (tmp_path / "bad.yaml").write_text("_base_: fulll\n")
    assert main(_run_argv(small_cache, tmp_path / "r2", "--seeds", "1", "--variant", str(tmp_path / "bad.yaml"))) == 2
    assert "or a shipped name: ['base', 'full', 't', 't_n', 't_p']" in capsys.readouterr().err


# flags whose help must say what leaving them out means
DEFAULTED = ("--shots", "--seeds", "--seed", "--views", "--workers", "--batch-size", "--engine", "--device")


def test_help_states_the_defaults():
    from hgadapter._cli import fill_all
    from hgadapter.cli import build_parser

    missing = []
    for name, parser in fill_all(build_parser()).items():
        for action in parser._actions:
            if set(action.option_strings) & set(DEFAULTED) and not action.required and "default" not in (action.help or ""):
                missing.append(f"{name} {'/'.join(action.option_strings)}")
    assert not missing, missing
