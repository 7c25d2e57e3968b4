"""What a run is: its spec, its folder, and the two hashes that identify it.

- :class:`RunSpec`: one run of an experiment file's grid, as plain data a worker process can take;
  :func:`expand_experiment` turns an experiment file's ``sweep`` section into them (methods x
  shots x seeds x grid points), reading nothing but YAML.
- :func:`run_path`: the run's folder below an output root.
- :func:`run_hash`: everything that determines a run's result (method config, shots, seed,
  dataset, backbone, grid point, the caches it reads). A sweep skips a run whose folder holds a
  record with this hash.
- :func:`config_id`: the same without the seed (and without the seed's own training set): the
  run's *configuration*. Runs with one ``config_id`` differ only in seed, so they are what a
  mean +- std over seeds may average (``hgadapter report`` groups by it), and a run folder that
  holds a finished run of another configuration is not silently replaced (:mod:`hgadapter.rundir`).

:mod:`hgadapter.sweep` runs what this module plans and :mod:`hgadapter.check` checks caches against
it; neither is imported here, so imports run one way (check -> runspec <- sweep).
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hgadapter._io import json_digest
from hgadapter.config import ConfigError, ExperimentConfig, backbone_slug, load_experiment

__all__ = [
    "RunSpec",
    "FEATURES_ENV",
    "HASH_VERSION",
    "expand_experiment",
    "run_path",
    "method_digest",
    "run_hash",
    "config_id",
    "memory_fingerprint",
]

FEATURES_ENV = "HGADAPTER_FEATURES"  # default root of the feature caches an experiment names
HASH_VERSION = 1  # bump when what a run's hash covers changes


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: everything a worker process needs, as plain data."""

    experiment: str  # the sweep's name
    method: str  # registry name (hegraphadapter, hegraphadapter:t, tip_adapter, ...)
    dataset: str  # dataset id recorded with the run
    backbone: str | None  # CLIP backbone recorded with the run
    shots: int  # K, images per class
    seed: int  # few-shot sampling seed, also the training seed
    features: str  # feature cache folder
    targets: dict[str, str]  # domain-generalisation dataset -> feature cache folder
    config_file: str | None  # experiment file a HeGraphAdapter method resolves its RunConfig from
    overrides: tuple[str, ...]  # key=value strings applied to the method's config
    params: dict[str, Any]  # the grid point (dotted config key -> value); {} without a grid
    out_dir: str  # the run directory
    config_digest: str  # hash of the method's resolved config (the cache part is added by plan_runs)
    config_hash: str = ""  # hash of everything that determines the result; set by plan_runs

    def label(self) -> str:
        point = " ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.experiment} {self.method} {self.shots}-shot seed {self.seed}" + (f" [{point}]" if point else "")


# --------------------------------------------------------------------------------------------
# Expansion


def _fill(template: str, *, dataset: str, backbone: str | None, where: str) -> str:
    fields = {"dataset": dataset, "backbone": backbone_slug(backbone)}
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ConfigError(f"{where}: {template!r} is not a valid path template ({exc})") from None
    unknown = [n for n in names if n not in fields]
    if unknown:
        raise ConfigError(f"{where}: unknown placeholder {{{unknown[0]}}} in {template!r}; use {{dataset}} or {{backbone}}")
    return template.format(**fields)


def _resolve_path(path: str, features_root: Path) -> str:
    p = Path(os.path.expanduser(path))
    return str(p if p.is_absolute() else features_root / p)


def _grid_points(grid: Sequence[dict[str, tuple[Any, ...]]]) -> list[dict[str, Any]]:
    """A union of products: each mapping contributes every combination of its axes."""
    if not grid:
        return [{}]
    points: list[dict[str, Any]] = []
    for axes in grid:
        combos: list[dict[str, Any]] = [{}]
        for key, values in axes.items():
            combos = [{**c, key: v} for c in combos for v in values]
        points.extend(c for c in combos if c not in points)
    return points


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"  # JSON is valid YAML: the config parser reads it back exactly


def _slug(method: str) -> str:
    return method.replace(":", "-")


def _point_slug(point: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in point.items()).replace("/", "-")


def run_path(root: str | os.PathLike, method: str, shots: int, seed: int, params: dict[str, Any] | None = None) -> Path:
    """The directory of one run below ``root``: ``<method>/[<grid point>/]<shots>shot-seed<seed>``.

    ``:`` in a method name becomes ``-`` (``hegraphadapter:t`` -> ``hegraphadapter-t``).
    """
    parts = [_slug(method)] + ([_point_slug(params)] if params else []) + [f"{shots}shot-seed{seed}"]
    return Path(root, *parts)


def method_digest(method: Any) -> str:
    """Hash of a resolved method's name and config (:class:`hgadapter.methods.Method`)."""
    return json_digest({"method": method.name, "config": method.config_dict()})


def expand_experiment(
    experiment: ExperimentConfig | str | os.PathLike,
    *,
    out_root: str | os.PathLike = "runs",
    features_root: str | os.PathLike | None = None,
) -> list[RunSpec]:
    """The runs an experiment file describes, with every method config resolved and checked.

    Nothing is read but YAML: caches need not exist yet (:func:`plan_runs` reads their sidecars).

    Args:
        experiment: an :class:`~hgadapter.config.ExperimentConfig` or the path of its file.
        out_root: the folder run directories go under.
        features_root: where relative feature cache folders start; default ``$HGADAPTER_FEATURES``
            or ``features``.

    Raises:
        ConfigError: an unknown method, a grid given for a method without a dotted config, or any
            invalid config value (the message names the file and key).
    """
    from hgadapter.methods import create_method, method_class

    if not isinstance(experiment, ExperimentConfig):
        experiment = load_experiment(experiment)
    sweep = experiment.sweep
    where = f"{experiment.path}: sweep"
    root = Path(features_root if features_root is not None else os.environ.get(FEATURES_ENV, "features"))
    features = _resolve_path(_fill(sweep.features, dataset=sweep.dataset, backbone=sweep.backbone, where=f"{where}.features"), root)
    targets = {
        name: _resolve_path(_fill(path, dataset=name, backbone=sweep.backbone, where=f"{where}.targets.{name}"), root)
        for name, path in sweep.targets.items()
    }
    points = _grid_points(sweep.grid)
    specs: dict[str, RunSpec] = {}
    for method_name in sweep.methods:
        # A method whose config is a run config (train/eval/graph sections) reads it from the
        # experiment file itself; every other method reads its shipped method config.
        config_file = experiment.path if method_class(method_name).reads_experiment_file else None
        extra = sweep.method_overrides.get(method_name, ())
        for point in points:
            overrides = (*extra, *(_override(k, v) for k, v in point.items()))  # grid keys are keys of each method's config
            try:
                method = create_method(method_name, config_file=config_file, overrides=overrides)
            except ConfigError as exc:
                if not point:
                    raise
                raise ConfigError(f"{where}.grid {dict(point)}: method {method_name!r}: {exc} (grid keys apply to every method of the file; sweep other methods in their own file)") from None
            digest = method_digest(method)
            for shots in sweep.shots:
                for seed in sweep.seeds:
                    out_dir = str(run_path(Path(out_root, sweep.name), method.name, shots, seed, point))
                    specs.setdefault(
                        out_dir,
                        RunSpec(
                            experiment=sweep.name,
                            method=method.name,
                            dataset=sweep.dataset,
                            backbone=sweep.backbone,
                            shots=shots,
                            seed=seed,
                            features=features,
                            targets=dict(targets),
                            config_file=None if config_file is None else str(config_file),
                            overrides=tuple(overrides),
                            params=dict(point),
                            out_dir=out_dir,
                            config_digest=digest,
                        ),
                    )
    return list(specs.values())


# --------------------------------------------------------------------------------------------
# Identity


def _identity(
    *, config_digest: str, shots: int, dataset: str | None, backbone: str | None, params: Mapping[str, Any], cache_fp: str, target_fps: Mapping[str, str]
) -> dict[str, Any]:
    """What a run's configuration is made of: both hashes below start from this."""
    return {
        "version": HASH_VERSION,
        "config": config_digest,
        "shots": shots,
        "dataset": dataset,
        "backbone": backbone,
        "params": dict(params),
        "cache": cache_fp,
        "targets": dict(target_fps),
    }


def run_hash(spec: RunSpec, cache_fp: str, target_fps: dict[str, str]) -> str:
    """The hash of everything that determines ``spec``'s result, given its caches' fingerprints
    (``cache_fp`` covers the run's own training set)."""
    fields = _identity(
        config_digest=spec.config_digest, shots=spec.shots, dataset=spec.dataset, backbone=spec.backbone,
        params=spec.params, cache_fp=cache_fp, target_fps=target_fps,
    )
    return json_digest({**fields, "seed": spec.seed})


def config_id(
    *, config_digest: str, shots: int, dataset: str | None, backbone: str | None, params: Mapping[str, Any], cache_fp: str, target_fps: Mapping[str, str]
) -> str:
    """:func:`run_hash` without the seed: the identity of a run's configuration.

    ``cache_fp`` must not cover the seed's own training set (:func:`memory_fingerprint` with no
    ``train_key``), so the runs of one configuration with seeds 1, 2, 3 share this id.
    """
    fields = _identity(config_digest=config_digest, shots=shots, dataset=dataset, backbone=backbone,
                       params=params, cache_fp=cache_fp, target_fps=target_fps)
    return json_digest({**fields, "identity": "config"})  # never equal to a run hash


def memory_fingerprint(cache: Any, train_key: tuple[int, int] | None = None) -> str:
    """Fingerprint of a :class:`~hgadapter.data.cache.FeatureCache` held in memory, for one training set.

    What a sidecar records for a cache on disk, as far as a cache in memory knows it: class
    names, dimension, logit scale, the extraction's ``meta`` and, with ``train_key``, the shape of
    that training set. Without ``train_key``: the part every seed shares (for :func:`config_id`).
    """
    data: dict[str, Any] = {
        "memory": {"classnames": list(cache.classnames), "dim": cache.dim, "logit_scale": cache.logit_scale, "meta": cache.meta},
    }
    if train_key is not None:
        train = cache.train_set(*train_key)
        data["train"] = {"shots": train_key[0], "seed": train_key[1], "shape": list(train.features.shape)}
    return json_digest(data)
