"""Config loading: shipped YAML, precedence, precise errors, and fuzzed malformed variants."""

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hgadapter.config import (
    ConfigError,
    RunConfig,
    config_to_dict,
    list_variants,
    load_config,
    load_variant,
    metapaths_dir,
)

ROOT = Path(__file__).resolve().parent.parent
METHOD_YAMLS = sorted((ROOT / "experiments" / "methods").glob("*.yaml"))
# paper_results.yaml and the suite's task list are data, not configs
DATA_YAMLS = {ROOT / "experiments" / "paper_results.yaml", ROOT / "experiments" / "published_zero_shot.yaml", ROOT / "experiments" / "suite" / "tasks.yaml"}
EXPERIMENT_YAMLS = sorted(set((ROOT / "experiments").rglob("*.yaml")) - set(METHOD_YAMLS) - DATA_YAMLS)


def test_shipped_variants():
    assert set(list_variants()) >= {"full", "t", "t_n", "t_p", "base"}
    full = load_variant("full")
    assert [s.target for s in full.stages] == ["neg", "pos", "vis"]
    assert full.stages[1].metapaths[0].relations == ("n2p",)
    assert full.stages[1].metapaths[0].weight(training=True) == 0.2
    assert full.stages[1].metapaths[0].weight(training=False) == 0.1
    assert load_variant("t_p").graph.relations == ("v2p", "p2p")
    assert "neg" not in {m.src_ntype for s in load_variant("t_p").stages for m in s.metapaths}
    assert load_variant("base").classifier == "zero_shot"


@pytest.mark.parametrize("path", sorted(metapaths_dir().glob("*.yaml")), ids=lambda p: p.name)
def test_every_metapath_yaml_loads(path):
    assert load_variant(path).name == path.stem


@pytest.mark.parametrize("path", EXPERIMENT_YAMLS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_experiment_yaml_loads(path):
    assert isinstance(load_config("full", config_file=path), RunConfig)


@pytest.mark.parametrize("path", METHOD_YAMLS, ids=lambda p: p.name)
def test_every_method_yaml_loads(path):
    from hgadapter.methods import create_method

    assert create_method(path.stem, config_file=path).name == path.stem


def test_precedence_defaults_variant_file_cli(tmp_path):
    assert load_config("full").train.lr == 1e-3  # dataclass default
    exp = tmp_path / "exp.yaml"
    exp.write_text("train: {lr: 0.02, epochs: 7}\ngraph: {topk: 8}\n")
    cfg = load_config("full", config_file=exp)
    assert (cfg.train.lr, cfg.train.epochs, cfg.variant.graph.topk) == (0.02, 7, 8)
    assert cfg.variant.graph.relations == load_variant("full").graph.relations  # untouched keys survive
    cfg = load_config("full", config_file=exp, overrides=["train.lr=0.5", "stages.1.metapaths.1.beta=0.3"])
    assert cfg.train.lr == 0.5 and cfg.train.epochs == 7
    assert cfg.variant.stages[1].metapaths[1].beta == 0.3


def test_scientific_notation_without_a_dot(tmp_path):
    assert load_config("full", overrides=["train.lr=1e-4"]).train.lr == 1e-4
    exp = tmp_path / "exp.yaml"
    exp.write_text("train: {warmup_lr: 1e-6}\n")
    assert load_config("full", config_file=exp).train.warmup_lr == 1e-6


def test_config_file_may_name_the_variant(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text("variant: t_p\n")
    assert load_config(config_file=exp).variant.name == "t_p"
    assert load_config("t", config_file=exp).variant.name == "t"  # the command line wins


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("full", overrides=["train.lr=0.003", "graph.topk=4", "eval.alpha=1.0"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    assert load_config("full", config_file=path) == cfg


@pytest.mark.parametrize(
    "override, match",
    [
        ("train.lrr=1", r"--set train\.lrr: train\.lrr: unknown key; valid keys: \['lr'"),
        ("stages.0.target=foo", r"stages\.0\.target: 'foo' is not valid; choose one of \['pos', 'neg', 'vis'\]"),
        ("stages.1.metapaths.0.path=[v2n]", r"ends at 'neg' but the stage's target is 'pos'"),
        ("stages.1.metapaths.0.path=[v2p, n2p]", r"hops do not chain: v2p ends at 'pos' but n2p starts at 'neg'"),
        ("stages.0.norm=sym", r"'sym' is not valid; choose one of \['gcn', 'row'\]"),
        ("stages.0.metapaths.0.beta=-1", r"beta: must be >= 0.0, got -1"),
        ("stages.0.metapaths.0.beta=lots", r"beta: expected a finite number, got 'lots'"),
        ("stages.0.metapaths.0.path=[x2y]", r"'x2y' is not valid; choose one of \['n2p', 'v2p'"),
        ("graph.relations=[n2p, v2p]", r"relation 'p2n' is not in graph.relations \['n2p', 'v2p'\]"),
        ("train.epochs=0", r"train\.epochs: must be >= 1, got 0"),
        ("engine=cuda", r"engine: 'cuda' is not valid; choose one of \['auto', 'torch', 'dgl'\]"),
        ("stages.9.target=pos", r"index 9 out of range"),
        ("train", r"expected key=value"),
    ],
)
def test_bad_values_raise_config_error_naming_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("full", overrides=[override])


def test_errors_name_the_file(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("name: mine\nclassifier: text\nstages:\n  - target: pos\n    metapaths: [{path: [v2p], beta: 0.1}]\n    activation: gelu\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: stages\.0\.activation: 'gelu' is not valid"):
        load_variant(bad)
    with pytest.raises(ConfigError, match=r"unknown variant 'nope'; available: \['base'"):
        load_variant("nope")
    broken = tmp_path / "broken.yaml"
    broken.write_text("stages: [\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_variant(broken)


def test_new_variant_is_a_new_file(tmp_path):
    path = tmp_path / "vnp.yaml"
    path.write_text(
        "name: vnp\nclassifier: text\ngraph: {relations: [v2n, n2p, p2p]}\n"
        "stages:\n  - target: pos\n    metapaths:\n      - {path: [v2n, n2p], beta: 0.2}\n      - {path: [p2p], beta: 0.05}\n"
    )
    variant = load_variant(path)
    assert variant.stages[0].metapaths[0].relations == ("v2n", "n2p")
    assert variant.stages[0].metapaths[0].src_ntype == "vis"


def test_text_cache_needs_a_bias_stage():
    with pytest.raises(ConfigError, match=r"classifier: 'text_cache' needs a bias stage"):
        load_config("t", overrides=["classifier=text_cache"])


# ---- fuzzing: any malformed variant file raises ConfigError and nothing else -----------------

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["pos", "neg", "vis", "n2p", "v2p", "p2p", "p2n", "v2n", "v2v", "gcn", "row", "tanh", "bias", "x"]),
)
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["path", "beta", "target", "metapaths", "norm", "zzz"]), inner, max_size=3)), max_leaves=6)


def _paths(data, prefix=()):
    yield prefix
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _paths(v, (*prefix, i))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_variant_files_raise_only_config_error(tmp_path, data):
    raw = yaml.safe_load((metapaths_dir() / "full.yaml").read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(raw) if p]
        path = data.draw(st.sampled_from(paths))
        parent = raw
        for key in path[:-1]:
            parent = parent[key]
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = data.draw(_values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(st.sampled_from(["extra", "beta", "gamma", "mode"]))] = data.draw(_values)
    file = tmp_path / "fuzz.yaml"
    file.write_text(yaml.safe_dump(raw))
    try:
        load_variant(file)
    except ConfigError:
        pass


# ---- _base_ in every file kind --------------------------------------------------------------


def test_a_variant_with_a_base_loads_through_load_config(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text(f"_base_: {metapaths_dir() / 't.yaml'}\nname: mine\ngraph: {{topk: 4}}\n")
    cfg = load_config(mine, overrides=["train.epochs=2"])
    assert cfg.variant.name == "mine" and cfg.variant.graph.topk == 4
    assert cfg.variant.stages == load_variant("t").stages
    assert load_variant(mine) == cfg.variant


def test_a_method_yaml_with_a_base(tmp_path, monkeypatch):
    from hgadapter.methods import create_method

    (tmp_path / "shared.yaml").write_text("epochs: 3\nlr: 0.01\n")
    (tmp_path / "taskres.yaml").write_text("_base_: shared.yaml\nalpha: 0.25\n")
    monkeypatch.setenv("HGADAPTER_METHODS", str(tmp_path))
    cfg = create_method("taskres").config
    assert (cfg.epochs, cfg.lr, cfg.alpha) == (3, 0.01, 0.25)
    (tmp_path / "shared.yaml").write_text("epochz: 3\n")
    with pytest.raises(ConfigError, match=r"shared\.yaml: epochz: unknown key"):
        create_method("taskres")


def test_method_and_run_configs_share_one_field_rule():
    """A field's rule lives in its hparam metadata, for the run config as for a method's."""
    import dataclasses

    from hgadapter.config import TrainConfig
    from hgadapter.methods.taskres import TaskResConfig

    meta = {f.name: f.metadata for f in dataclasses.fields(TrainConfig)}
    assert meta["warmup_epochs"]["low"] == 0 and meta["lr"]["positive"] and meta["init"]["choices"] == ("identity", "zeros", "xavier")
    assert {f.name: f.metadata for f in dataclasses.fields(TaskResConfig)}["warmup_epochs"]["low"] == 0
    assert load_config("full", overrides=["train.warmup_epochs=0"]).train.warmup_epochs == 0
    with pytest.raises(ConfigError, match=r"train\.warmup_epochs: must be >= 0, got -1"):
        load_config("full", overrides=["train.warmup_epochs=-1"])


def test_a_missing_required_field_names_its_choices(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("classifier: text\nstages:\n  - metapaths: [{path: [v2p], beta: 0.1}]\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: stages\.0\.target: missing; choose one of \['pos', 'neg', 'vis'\]"):
        load_variant(bad)


# ---- hostile input: one short ConfigError, never an overflow, a recursion or a huge message ----


def _one_short_line(exc_info, limit=600):
    message = str(exc_info.value)
    assert "\n" not in message and len(message) < limit, message[:1000]
    return message


def test_a_huge_integer_is_not_an_overflow():
    with pytest.raises(ConfigError, match=r"stages\.0\.metapaths\.0\.beta: expected a finite number") as info:
        load_config("full", overrides=["stages.0.metapaths.0.beta=1" + "0" * 400])
    _one_short_line(info)
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer") as info:  # past Python's int digit limit
        load_config("full", overrides=["train.epochs=1" + "0" * 5000])
    _one_short_line(info)


def test_deep_nesting_is_not_a_recursion_error(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("graph: " + "[" * 500 + "]" * 500 + "\n")
    with pytest.raises(ConfigError, match=r"deep\.yaml: nested more than 64 levels deep") as info:
        load_variant(deep)
    _one_short_line(info)
    with pytest.raises(ConfigError, match=r"--set graph: value nested more than 64 levels deep"):
        load_config("full", overrides=["graph=" + "[" * 500 + "]" * 500])


def test_a_long_base_chain_is_not_a_recursion_error(tmp_path):
    for i in range(1000):
        (tmp_path / f"b{i}.yaml").write_text(f"_base_: b{i + 1}.yaml\n" if i < 999 else "name: last\n")
    with pytest.raises(ConfigError, match=r"b0\.yaml: _base_ files chain more than 32 deep") as info:
        load_variant(tmp_path / "b0.yaml")
    _one_short_line(info)


def test_nested_aliases_give_a_short_message(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    levels = ["&a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        levels.append(f"&{name} [" + ", ".join(f"*{prev}" for _ in range(9)) + "]")
    bomb.write_text("description: [" + ", ".join(levels) + "]\n")
    assert len(bomb.read_bytes()) < 400
    with pytest.raises(ConfigError, match=r"bomb\.yaml: description: expected a string, got \[\[") as info:
        load_variant(bomb)
    _one_short_line(info, limit=300)


def test_a_long_value_is_cut_in_the_message():
    with pytest.raises(ConfigError, match=r"engine: 'xxxx.*' is not valid; choose one of") as info:
        load_config("full", overrides=["engine=" + "x" * 100_000])
    _one_short_line(info, limit=300)


def test_merging_many_keys_is_linear_and_keeps_provenance(monkeypatch):
    """8,000 keys took 3.2 s when every key set scanned every recorded key path (issue 14 item
    16): now only replacing a mapping or list scans for the paths below it."""
    from hgadapter.config import ConfigTree

    tree = ConfigTree()
    scans = []
    original = ConfigTree._forget
    monkeypatch.setattr(ConfigTree, "_forget", lambda self, prefix: (scans.append(prefix), original(self, prefix)))
    tree.merge({f"k{i}": i for i in range(8000)}, "a.yaml")
    tree.merge({f"k{i}": -i for i in range(0, 8000, 2)}, "b.yaml")
    for i in range(0, 8000, 4):
        tree.set_path(f"k{i}", 0, f"--set k{i}")
    assert scans == []  # scalars over scalars: no scan at all
    assert tree.data["k3"] == 3 and tree.data["k2"] == -2 and tree.data["k4"] == 0
    assert tree.where(("k3",)) == "a.yaml" and tree.where(("k2",)) == "b.yaml" and tree.where(("k4",)) == "--set k4"
    # replacing a mapping still forgets what was recorded below it
    tree.merge({"m": {"x": 1, "y": 2}}, "c.yaml")
    tree.merge({"m": 5}, "d.yaml")
    assert scans == [("m",)]
    assert tree.where(("m",)) == "d.yaml" and tree.where(("m", "x")) == "d.yaml"  # not the stale c.yaml
