"""Configuration: YAML -> frozen dataclasses. The only module that parses YAML.

Precedence, lowest first: dataclass defaults < meta-path variant file (``metapaths/NAME.yaml``)
< the experiment file's ``_base_`` files < experiment config file (``--config``) < command-line
overrides (``--set train.lr=0.01``). Any YAML file may name ``_base_: path`` (or a list of
paths, relative to the file); the bases are merged first, mappings key by key and lists as a
whole, so a per-dataset experiment file states only what differs from its base. An experiment
file's ``sweep`` section (:class:`SweepConfig`) describes a grid of runs for ``hgadapter sweep``.
Every error is a :class:`ConfigError` naming the file (or ``--set``), the key path and the
valid choices; nothing is asserted.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hgadapter._resources import resource_path
from hgadapter.metapaths import (
    ACTIVATIONS,
    CANONICAL_ETYPES,
    CONTRAST_MODES,
    DEFAULT_WEIGHT_KIND,
    ETYPES,
    NORMS,
    NTYPES,
    STAGE_MODES,
    WEIGHT_KINDS,
    MetaPath,
)

__all__ = [
    "ConfigError",
    "GraphConfig",
    "StageConfig",
    "VariantConfig",
    "TrainConfig",
    "EvalConfig",
    "RunConfig",
    "load_config",
    "load_variant",
    "list_variants",
    "variant_path",
    "metapaths_dir",
    "config_to_dict",
    "SweepConfig",
    "ExperimentConfig",
    "load_experiment",
    "read_config_layers",
    "backbone_slug",
]

CLASSIFIERS: tuple[str, ...] = ("zero_shot", "text", "text_cache")
ENGINES: tuple[str, ...] = ("auto", "torch", "dgl")
INITS: tuple[str, ...] = ("identity", "zeros", "xavier")
VARIANT_KEYS: tuple[str, ...] = ("name", "description", "classifier", "graph", "stages")
# Keys a run's config.yaml records beside the config; ignored when it is loaded back as --config.
RECORD_KEYS: tuple[str, ...] = ("run", "environment")
# An experiment file's grid of runs (hgadapter sweep); load_config skips it.
SWEEP_KEY = "sweep"
# Names the files a YAML file inherits from (merged before it).
BASE_KEY = "_base_"


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or impossible."""


# --------------------------------------------------------------------------------------------
# Dataclasses. One field per line, each with its meaning and unit.


@dataclass(frozen=True)
class GraphConfig:
    """How the heterograph's edges and weights are built from the initial node features."""

    relations: tuple[str, ...] = ETYPES  # relations present in the graph
    weights: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_WEIGHT_KIND))  # relation -> cosine|contrast
    contrast: str = "one_minus_cos"  # same-class contrast weight: one_minus_cos (1 - cos) | neg_cos (-cos)
    topk: int | None = None  # keep each destination's top-k sources by weight; None = dense (all C sources)
    topk_by_relation: dict[str, int | None] = field(default_factory=dict)  # relation -> its own top-k (None = dense), over topk
    self_loops: bool = False  # keep the i -> i edge on p2p and v2v
    clamp_negative: bool = False  # clamp negative edge weights to 0 (GraphAdapter does)


@dataclass(frozen=True)
class StageConfig:
    """One stage of the hierarchical aggregation (negative -> positive -> visual)."""

    target: str  # node type renewed (residual) or biased (bias) by this stage
    metapaths: tuple[MetaPath, ...]  # meta-paths aggregated into the target, fused by their betas
    mode: str = "residual"  # residual: h' = h + sum beta z ; bias: b = gamma * sum beta z
    norm: str = "gcn"  # per-destination normalisation of incoming weights: gcn | row
    activation: str = "tanh"  # applied to each meta-path's aggregate before fusion
    gamma: float = 1.0  # scale of the visual bias (bias mode only)


@dataclass(frozen=True)
class VariantConfig:
    """A meta-path variant: the graph, its aggregation stages and the classifier used."""

    name: str  # registry name (file stem under metapaths/)
    description: str = ""  # one line shown by `hgadapter variants`
    classifier: str = "text_cache"  # zero_shot | text | text_cache
    graph: GraphConfig = field(default_factory=GraphConfig)  # edge construction
    stages: tuple[StageConfig, ...] = ()  # in order; node features are renewed between stages


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of the stage projections (AdamW, warmup, cosine decay)."""

    lr: float = 1e-3  # peak learning rate after warmup
    epochs: int = 30  # passes over the C x K training images
    batch_size: int = 256  # training images per step
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_epochs: int = 1  # linear warmup length, in epochs
    warmup_lr: float = 1e-5  # learning rate at the first warmup step
    cache_loss_weight: float = 0.1  # lambda in CE_text + lambda * CE_cache
    cache_beta: float = 5.5  # cache sharpness used during training
    init: str = "identity"  # initial stage projections: identity | zeros | xavier
    learn_betas: bool = False  # learn every fusion weight, starting at its beta (paper Table 3, "learn"); beta_test unused
    classwise_bias: bool = False  # a learnable, zero-initialised C x d term per meta-path inside its activation (METHOD.md)


@dataclass(frozen=True)
class EvalConfig:
    """Choice of the cache weight alpha and sharpness beta on the validation split."""

    alpha_grid: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0)  # candidate alphas
    beta_grid: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.5, 7.0, 9.0, 12.0)  # candidate cache sharpness values
    alpha: float | None = None  # fix alpha instead of searching
    beta: float | None = None  # fix beta instead of searching


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one training run besides the data."""

    variant: VariantConfig  # graph, stages and classifier
    train: TrainConfig = field(default_factory=TrainConfig)  # optimisation
    eval: EvalConfig = field(default_factory=EvalConfig)  # alpha/beta selection on validation
    engine: str = "auto"  # message-passing engine: auto | torch | dgl
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass(frozen=True)
class SweepConfig:
    """The grid of runs an experiment file describes (its ``sweep`` section; ``hgadapter sweep``)."""

    name: str  # experiment name; its runs go to OUT/<name>/<method>/...
    dataset: str  # dataset id recorded with every run: imagenet, caltech101, ..., synthetic
    features: str  # feature cache folder; {dataset} and {backbone} are filled in; relative to the features root
    backbone: str | None = None  # CLIP backbone recorded with every run: RN50, RN101, ViT-B/32, ViT-B/16
    methods: tuple[str, ...] = ("hegraphadapter",)  # registry names (`hgadapter compare --help`)
    shots: tuple[int, ...] = (1, 2, 4, 8, 16)  # K, images per class
    seeds: tuple[int, ...] = (1, 2, 3)  # few-shot sampling seeds
    grid: tuple[dict[str, tuple[Any, ...]], ...] = ()  # union of products: dotted config key -> values (HeGraphAdapter only)
    targets: dict[str, str] = field(default_factory=dict)  # domain-generalisation dataset -> feature cache folder
    method_overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)  # method -> key=value for its config


@dataclass(frozen=True)
class ExperimentConfig:
    """An experiment file: a run config (train / eval / graph / ...) plus its ``sweep`` grid."""

    path: Path  # the experiment YAML; HeGraphAdapter runs resolve their RunConfig from it
    sweep: SweepConfig  # the grid of runs


def backbone_slug(backbone: str | None) -> str:
    """A backbone name as a path component: ``ViT-B/16`` -> ``ViT-B-16``; ``None`` -> ``none``."""
    return "none" if backbone is None else backbone.replace("/", "-").replace(" ", "_")


# --------------------------------------------------------------------------------------------
# Variant registry: metapaths/*.yaml


def metapaths_dir() -> Path:
    """The directory of shipped variants: ``$HGADAPTER_METAPATHS``, ``<repo>/metapaths`` or the installed copy."""
    return resource_path("metapaths", "HGADAPTER_METAPATHS")


def list_variants() -> list[str]:
    """Names of the shipped meta-path variants (the values ``--variant`` takes)."""
    root = metapaths_dir()
    if not root.is_dir():
        return []
    return sorted(p.stem for p in root.glob("*.yaml"))


def variant_path(name_or_path: str | os.PathLike) -> Path:
    """Resolve a variant name (``full``) or a YAML path to a file; unknown names list the choices."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"variant file {text} does not exist")
        return path
    path = metapaths_dir() / f"{text}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown variant {text!r}; available: {list_variants()}")
    return path


# --------------------------------------------------------------------------------------------
# Raw-tree loading with provenance, so that errors can name the file that set a key.


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def read_config_layers(path: str | os.PathLike, _chain: tuple[Path, ...] = ()) -> list[tuple[dict[str, Any], str]]:
    """A YAML file and the files it inherits from, as ``(data, source)`` layers, bases first.

    ``_base_: FILE`` (or a list of files) names bases relative to the file's own folder; bases
    may have bases of their own. Merging the layers in order gives the file's content.

    Raises:
        ConfigError: an unreadable or invalid file, a missing base or a cycle of bases.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, resolved))
        raise ConfigError(f"{path}: {BASE_KEY} files form a cycle: {cycle}")
    data = _read_yaml(path)
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"{path}: {BASE_KEY}: expected a file path or a list of file paths, got {bases!r}")
    layers: list[tuple[dict[str, Any], str]] = []
    for base in bases:
        base_path = Path(base) if Path(base).is_absolute() else path.parent / base
        if not base_path.is_file():
            raise ConfigError(f"{path}: {BASE_KEY}: {base} does not exist (relative paths start at {path.parent})")
        layers.extend(read_config_layers(base_path, (*_chain, resolved)))
    layers.append((data, str(path)))
    return layers


def _read_merged(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML file merged over its ``_base_`` files (plain data, no provenance)."""
    tree = _Tree()
    for data, source in read_config_layers(path):
        tree.merge(data, source)
    return tree.data


class _Tree:
    """A merged raw config tree plus, for every key path set, the source that set it."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.source: dict[tuple[str, ...], str] = {}

    def merge(self, layer: dict[str, Any], source: str) -> None:
        self._merge(self.data, layer, source, ())

    def _merge(self, base: dict[str, Any], layer: dict[str, Any], source: str, path: tuple[str, ...]) -> None:
        for key, value in layer.items():
            key_path = (*path, str(key))
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                self._merge(base[key], value, source, key_path)
            else:
                base[key] = copy.deepcopy(value)
                self._forget(key_path)
                self.source[key_path] = source

    def _forget(self, prefix: tuple[str, ...]) -> None:
        for key in [k for k in self.source if k[: len(prefix)] == prefix and k != prefix]:
            del self.source[key]

    def set_path(self, dotted: str, value: Any, source: str) -> None:
        parts = dotted.split(".")
        node: Any = self.data
        for i, part in enumerate(parts[:-1]):
            node = self._child(node, part, parts[: i + 1], source, create=True)
        last = parts[-1]
        if isinstance(node, list):
            index = self._index(node, last, parts, source)
            node[index] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"{source}: {dotted}: {'.'.join(parts[:-1])} is not a mapping or list")
        self._forget(tuple(parts))
        self.source[tuple(parts)] = source

    def _child(self, node: Any, part: str, parts: list[str], source: str, *, create: bool) -> Any:
        if isinstance(node, list):
            return node[self._index(node, part, parts, source)]
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: {'.'.join(parts)}: parent is not a mapping or list")
        if part not in node and create:
            node[part] = {}
        return node[part]

    @staticmethod
    def _index(node: list, part: str, parts: list[str], source: str) -> int:
        try:
            index = int(part)
        except ValueError:
            raise ConfigError(f"{source}: {'.'.join(parts)}: {part!r} is not a list index") from None
        if not -len(node) <= index < len(node):
            raise ConfigError(f"{source}: {'.'.join(parts)}: index {index} out of range (list has {len(node)} items)")
        return index

    def where(self, path: tuple[str, ...]) -> str:
        for n in range(len(path), 0, -1):
            if path[:n] in self.source:
                return self.source[path[:n]]
        return "defaults"


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. train.lr=0.01")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


# --------------------------------------------------------------------------------------------
# Typed parsing with precise errors.


class _Parser:
    def __init__(self, tree: _Tree) -> None:
        self.tree = tree

    def fail(self, path: tuple[str, ...], message: str) -> ConfigError:
        return ConfigError(f"{self.tree.where(path)}: {'.'.join(path) or '<top level>'}: {message}")

    def mapping(self, value: Any, path: tuple[str, ...], allowed: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping with keys {list(allowed)}, got {type(value).__name__}")
        for key in value:
            if key not in allowed:
                raise self.fail((*path, str(key)), f"unknown key; valid keys: {list(allowed)}")
        return value

    def choice(self, value: Any, path: tuple[str, ...], choices: tuple[str, ...]) -> str:
        if not isinstance(value, str) or value not in choices:
            raise self.fail(path, f"{value!r} is not valid; choose one of {list(choices)}")
        return value

    def number(self, value: Any, path: tuple[str, ...], *, low: float | None = 0.0, positive: bool = False) -> float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(path, f"expected a finite number, got {value!r}")
        if positive and value <= 0:
            raise self.fail(path, f"must be > 0, got {value}")
        if low is not None and value < low:
            raise self.fail(path, f"must be >= {low}, got {value}")
        return float(value)

    def integer(self, value: Any, path: tuple[str, ...], *, low: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, f"expected an integer, got {value!r}")
        if value < low:
            raise self.fail(path, f"must be >= {low}, got {value}")
        return value

    def boolean(self, value: Any, path: tuple[str, ...]) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"expected true or false, got {value!r}")
        return value

    def string(self, value: Any, path: tuple[str, ...]) -> str:
        if not isinstance(value, str):
            raise self.fail(path, f"expected a string, got {value!r}")
        return value

    def number_list(self, value: Any, path: tuple[str, ...]) -> tuple[float, ...]:
        if not isinstance(value, (list, tuple)) or not value:
            raise self.fail(path, f"expected a non-empty list of numbers, got {value!r}")
        return tuple(self.number(v, (*path, str(i))) for i, v in enumerate(value))

    # -- sections ----------------------------------------------------------------------------

    def graph(self, raw: Any, path: tuple[str, ...]) -> GraphConfig:
        names = tuple(f.name for f in dataclasses.fields(GraphConfig))
        raw = self.mapping(raw, path, names)
        kwargs: dict[str, Any] = {}
        if "relations" in raw:
            rels = raw["relations"]
            if not isinstance(rels, list):
                raise self.fail((*path, "relations"), f"expected a list of relations from {list(ETYPES)}")
            seen = []
            for i, r in enumerate(rels):
                name = self.choice(r, (*path, "relations", str(i)), ETYPES)
                if name in seen:
                    raise self.fail((*path, "relations", str(i)), f"relation {name!r} listed twice")
                seen.append(name)
            kwargs["relations"] = tuple(seen)
        if "weights" in raw:
            weights = dict(DEFAULT_WEIGHT_KIND)
            given = self.mapping(raw["weights"], (*path, "weights"), ETYPES)
            for k, v in given.items():
                weights[k] = self.choice(v, (*path, "weights", k), WEIGHT_KINDS)
            kwargs["weights"] = weights
        if "contrast" in raw:
            kwargs["contrast"] = self.choice(raw["contrast"], (*path, "contrast"), CONTRAST_MODES)
        if "topk" in raw and raw["topk"] is not None:
            kwargs["topk"] = self.integer(raw["topk"], (*path, "topk"))
        if raw.get("topk_by_relation") is not None:
            given = self.mapping(raw["topk_by_relation"], (*path, "topk_by_relation"), ETYPES)
            relations = kwargs.get("relations", GraphConfig.relations)
            per_relation: dict[str, int | None] = {}
            for etype, k in given.items():
                kpath = (*path, "topk_by_relation", etype)
                if etype not in relations:
                    raise self.fail(kpath, f"relation {etype!r} is not in graph.relations {list(relations)}")
                per_relation[etype] = None if k is None else self.integer(k, kpath)
            kwargs["topk_by_relation"] = per_relation
        for key in ("self_loops", "clamp_negative"):
            if key in raw:
                kwargs[key] = self.boolean(raw[key], (*path, key))
        return GraphConfig(**kwargs)

    def metapath(self, raw: Any, path: tuple[str, ...], target: str, relations: tuple[str, ...]) -> MetaPath:
        raw = self.mapping(raw, path, ("path", "beta", "beta_test"))
        if "path" not in raw:
            raise self.fail((*path, "path"), "missing; give a list of relations, e.g. [v2p]")
        hops = raw["path"]
        if isinstance(hops, str):
            hops = [hops]
        if not isinstance(hops, list) or not hops:
            raise self.fail((*path, "path"), f"expected a non-empty list of relations from {list(ETYPES)}")
        for i, hop in enumerate(hops):
            self.choice(hop, (*path, "path", str(i)), ETYPES)
            if hop not in relations:
                raise self.fail((*path, "path", str(i)), f"relation {hop!r} is not in graph.relations {list(relations)}")
        for i in range(1, len(hops)):
            if CANONICAL_ETYPES[hops[i - 1]][2] != CANONICAL_ETYPES[hops[i]][0]:
                raise self.fail(
                    (*path, "path", str(i)),
                    f"hops do not chain: {hops[i - 1]} ends at {CANONICAL_ETYPES[hops[i - 1]][2]!r} but "
                    f"{hops[i]} starts at {CANONICAL_ETYPES[hops[i]][0]!r}",
                )
        end = CANONICAL_ETYPES[hops[-1]][2]
        if end != target:
            raise self.fail((*path, "path"), f"ends at {end!r} but the stage's target is {target!r}")
        if "beta" not in raw:
            raise self.fail((*path, "beta"), "missing; give the fusion weight (a number >= 0)")
        beta = self.number(raw["beta"], (*path, "beta"))
        beta_test = None
        if raw.get("beta_test") is not None:
            beta_test = self.number(raw["beta_test"], (*path, "beta_test"))
        return MetaPath(relations=tuple(hops), beta=beta, beta_test=beta_test)

    def stage(self, raw: Any, path: tuple[str, ...], relations: tuple[str, ...]) -> StageConfig:
        names = tuple(f.name for f in dataclasses.fields(StageConfig))
        raw = self.mapping(raw, path, names)
        if "target" not in raw:
            raise self.fail((*path, "target"), f"missing; choose one of {list(NTYPES)}")
        target = self.choice(raw["target"], (*path, "target"), NTYPES)
        mps = raw.get("metapaths")
        if not isinstance(mps, list) or not mps:
            raise self.fail((*path, "metapaths"), "expected a non-empty list of {path: [...], beta: ...}")
        metapaths = tuple(
            self.metapath(m, (*path, "metapaths", str(i)), target, relations) for i, m in enumerate(mps)
        )
        kwargs: dict[str, Any] = {"target": target, "metapaths": metapaths}
        if "mode" in raw:
            kwargs["mode"] = self.choice(raw["mode"], (*path, "mode"), STAGE_MODES)
        if "norm" in raw:
            kwargs["norm"] = self.choice(raw["norm"], (*path, "norm"), NORMS)
        if "activation" in raw:
            kwargs["activation"] = self.choice(raw["activation"], (*path, "activation"), ACTIVATIONS)
        if "gamma" in raw:
            kwargs["gamma"] = self.number(raw["gamma"], (*path, "gamma"))
        if kwargs.get("mode") == "bias" and target != "vis":
            raise self.fail((*path, "mode"), f"bias stages shift image features, so their target must be 'vis', not {target!r}")
        return StageConfig(**kwargs)

    def variant(self, raw: dict[str, Any], default_name: str) -> VariantConfig:
        name = self.string(raw.get("name", default_name), ("name",))
        description = self.string(raw.get("description", ""), ("description",))
        classifier = self.choice(raw.get("classifier", "text_cache"), ("classifier",), CLASSIFIERS)
        graph = self.graph(raw.get("graph"), ("graph",))
        stages_raw = raw.get("stages") or []
        if not isinstance(stages_raw, list):
            raise self.fail(("stages",), "expected a list of stages")
        stages = tuple(self.stage(s, ("stages", str(i)), graph.relations) for i, s in enumerate(stages_raw))
        if classifier != "zero_shot" and not stages:
            raise self.fail(("stages",), f"classifier {classifier!r} needs at least one stage; use 'zero_shot' for none")
        if classifier == "text_cache" and not any(s.mode == "bias" for s in stages):
            raise self.fail(("classifier",), "'text_cache' needs a bias stage (mode: bias, target: vis) to adapt the cache keys")
        return VariantConfig(name=name, description=description, classifier=classifier, graph=graph, stages=stages)

    def simple(self, cls: type, raw: Any, path: tuple[str, ...]) -> Any:
        """Parse a flat dataclass section whose fields are numbers, ints, strings or number lists."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        raw = self.mapping(raw, path, tuple(fields))
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            kpath = (*path, key)
            default = getattr(cls(), key) if cls is not RunConfig else None
            ftype = str(fields[key].type)
            if key == "init":
                kwargs[key] = self.choice(value, kpath, INITS)
            elif ftype == "bool":
                kwargs[key] = self.boolean(value, kpath)
            elif ftype.startswith("tuple"):
                kwargs[key] = self.number_list(value, kpath)
            elif ftype == "int":
                kwargs[key] = self.integer(value, kpath, low=0 if key == "warmup_epochs" else 1)
            elif "None" in ftype:
                kwargs[key] = None if value is None else self.number(value, kpath)
            elif isinstance(default, float):
                positive = key in ("lr", "warmup_lr", "cache_beta")
                kwargs[key] = self.number(value, kpath, positive=positive)
            else:  # pragma: no cover - every field is covered above
                raise self.fail(kpath, "unsupported field")
        return cls(**kwargs)


def load_variant(name_or_path: str | os.PathLike) -> VariantConfig:
    """Load and validate one meta-path variant file (a registry name or a path)."""
    path = variant_path(name_or_path)
    tree = _Tree()
    for data, source in read_config_layers(path):
        tree.merge(data, source)
    parser = _Parser(tree)
    parser.mapping(tree.data, (), VARIANT_KEYS)
    return parser.variant(tree.data, path.stem)


def load_config(
    variant: str | os.PathLike | None = None,
    *,
    config_file: str | os.PathLike | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> RunConfig:
    """Resolve a :class:`RunConfig` from a variant, an experiment file and ``key=value`` overrides.

    Args:
        variant: a name from :func:`list_variants` or a YAML path; overrides the experiment
            file's ``variant`` key. Defaults to ``full``.
        config_file: experiment YAML with sections ``train``, ``eval``, ``engine``, ``device``,
            optionally ``variant`` and any variant key (``graph``, ``stages``, ...) to override.
        overrides: ``dotted.key=value`` strings (values parsed as YAML), applied last.
    """
    tree = _Tree()
    layers: list[tuple[dict[str, Any], str]] = []
    if config_file is not None:
        layers = read_config_layers(config_file)
    if variant is None:
        variant = "full"
        for data, source in layers:  # the last file that names a variant wins
            if "variant" in data:
                variant = data["variant"]
                if not isinstance(variant, str):
                    raise ConfigError(f"{source}: variant: expected a variant name or path, got {variant!r}")
    vpath = variant_path(variant)
    tree.merge(_read_yaml(vpath), str(vpath))
    _Parser(tree).mapping(tree.data, (), VARIANT_KEYS)
    skipped = ("variant", SWEEP_KEY, *RECORD_KEYS)
    for data, source in layers:
        tree.merge({k: v for k, v in data.items() if k not in skipped}, source)
    for text in overrides:
        key, value = _parse_override(text)
        tree.set_path(key, value, f"--set {key}")
    parser = _Parser(tree)
    run_keys = ("train", "eval", "engine", "device")
    parser.mapping(tree.data, (), VARIANT_KEYS + run_keys)
    variant_cfg = parser.variant({k: tree.data[k] for k in VARIANT_KEYS if k in tree.data}, vpath.stem)
    train = parser.simple(TrainConfig, tree.data.get("train"), ("train",))
    eval_cfg = parser.simple(EvalConfig, tree.data.get("eval"), ("eval",))
    engine = parser.choice(tree.data.get("engine", "auto"), ("engine",), ENGINES)
    device = parser.string(tree.data.get("device", "auto"), ("device",))
    if device != "auto" and device != "cpu" and not device.startswith("cuda"):
        raise parser.fail(("device",), f"{device!r} is not valid; choose auto, cpu, cuda or cuda:N")
    return RunConfig(variant=variant_cfg, train=train, eval=eval_cfg, engine=engine, device=device)


def _grid_value(parser: "_Parser", value: Any, path: tuple[str, ...]) -> Any:
    if isinstance(value, (dict, list)):
        raise parser.fail(path, f"grid values must be numbers, strings, booleans or null, got {value!r}")
    return value


def _parse_sweep(parser: "_Parser", raw: Any, path: Path) -> SweepConfig:
    names = tuple(f.name for f in dataclasses.fields(SweepConfig))
    at = (SWEEP_KEY,)
    if raw is None:
        raise ConfigError(f"{path}: no '{SWEEP_KEY}' section; an experiment file needs one with keys {list(names)}")
    raw = parser.mapping(raw, at, names)
    for key in ("dataset", "features"):
        if key not in raw:
            raise parser.fail((*at, key), "missing; every sweep names its dataset and its feature cache folder")
    kwargs: dict[str, Any] = {
        "name": parser.string(raw.get("name", f"{path.parent.name}/{path.stem}"), (*at, "name")),
        "dataset": parser.string(raw["dataset"], (*at, "dataset")),
        "features": parser.string(raw["features"], (*at, "features")),
    }
    if raw.get("backbone") is not None:
        kwargs["backbone"] = parser.string(raw["backbone"], (*at, "backbone"))
    if "methods" in raw:
        methods = raw["methods"]
        if isinstance(methods, str):
            methods = [methods]
        if not isinstance(methods, list) or not methods:
            raise parser.fail((*at, "methods"), "expected a non-empty list of method names, e.g. [hegraphadapter, tip_adapter]")
        kwargs["methods"] = tuple(parser.string(m, (*at, "methods", str(i))) for i, m in enumerate(methods))
        if len(set(kwargs["methods"])) != len(kwargs["methods"]):
            raise parser.fail((*at, "methods"), f"a method is listed twice: {list(kwargs['methods'])}")
    for key in ("shots", "seeds"):
        if key in raw:
            values = raw[key]
            if isinstance(values, int) and not isinstance(values, bool):
                values = [values]
            if not isinstance(values, list) or not values:
                raise parser.fail((*at, key), "expected a non-empty list of integers, e.g. [1, 2, 4, 8, 16]")
            kwargs[key] = tuple(parser.integer(v, (*at, key, str(i)), low=0 if key == "seeds" else 1) for i, v in enumerate(values))
    if raw.get("grid") is not None:
        grids = raw["grid"]
        if isinstance(grids, dict):
            grids = [grids]
        if not isinstance(grids, list) or not grids:
            raise parser.fail((*at, "grid"), "expected a mapping {dotted.key: [values]} or a list of such mappings")
        parsed = []
        for i, grid in enumerate(grids):
            gpath = (*at, "grid", str(i))
            if not isinstance(grid, dict) or not grid:
                raise parser.fail(gpath, "expected a non-empty mapping {dotted.key: [values]}")
            axes = {}
            for key, values in grid.items():
                if not isinstance(values, list) or not values:
                    raise parser.fail((*gpath, str(key)), f"expected a non-empty list of values, got {values!r}")
                axes[str(key)] = tuple(_grid_value(parser, v, (*gpath, str(key), str(j))) for j, v in enumerate(values))
            parsed.append(axes)
        kwargs["grid"] = tuple(parsed)
    if raw.get("targets") is not None:
        targets = raw["targets"]
        if not isinstance(targets, dict):
            raise parser.fail((*at, "targets"), "expected a mapping {target dataset: feature cache folder}, e.g. {imagenetv2: imagenetv2-RN50}")
        kwargs["targets"] = {str(k): parser.string(v, (*at, "targets", str(k))) for k, v in targets.items()}
    if raw.get("method_overrides") is not None:
        given = raw["method_overrides"]
        allowed = kwargs.get("methods", SweepConfig.methods)
        given = parser.mapping(given, (*at, "method_overrides"), allowed)
        out = {}
        for method, sets in given.items():
            mpath = (*at, "method_overrides", str(method))
            if isinstance(sets, dict):
                sets = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}" for k, v in sets.items()]
            if not isinstance(sets, list) or not all(isinstance(x, str) and "=" in x for x in sets):
                raise parser.fail(mpath, "expected a mapping {key: value} or a list of 'key=value' strings")
            out[str(method)] = tuple(sets)
        kwargs["method_overrides"] = out
    return SweepConfig(**kwargs)


def load_experiment(path: str | os.PathLike) -> ExperimentConfig:
    """Load an experiment file (``_base_`` files merged) and validate its ``sweep`` section.

    The run-config part (``train``, ``eval``, ``graph``, ...) is resolved per method when the
    sweep expands (:func:`hgadapter.sweep.expand_experiment`), since each HeGraphAdapter variant
    merges it over its own meta-path file.
    """
    path = Path(path)
    tree = _Tree()
    for data, source in read_config_layers(path):
        tree.merge(data, source)
    parser = _Parser(tree)
    sweep = _parse_sweep(parser, tree.data.get(SWEEP_KEY), path)
    return ExperimentConfig(path=path, sweep=sweep)


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """A plain, YAML-serialisable view of a resolved config (the form runs write to config.yaml)."""

    def plain(obj: Any) -> Any:
        if isinstance(obj, MetaPath):
            out: dict[str, Any] = {"path": list(obj.relations), "beta": obj.beta}
            if obj.beta_test is not None:
                out["beta_test"] = obj.beta_test
            return out
        if dataclasses.is_dataclass(obj):
            return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, (list, tuple)):
            return [plain(v) for v in obj]
        if isinstance(obj, dict):
            return {k: plain(v) for k, v in obj.items()}
        return obj

    data = plain(cfg)
    variant = data.pop("variant")
    return {**variant, **data}
