"""One run: (feature cache, method, shots, seed) -> a run directory with metrics and artefacts.

A run directory holds ``metrics.json`` (the record :mod:`hgadapter.records` documents),
``config.yaml`` (resolved config with package versions and the git commit), ``history.json``
(per-epoch loss and validation accuracy), ``log.txt`` and ``classes.json``; HeGraphAdapter runs
add ``nodes.safetensors`` (initial and adapted node features, for t-SNE figures without
re-training) and ``adapter.safetensors`` (trained weights). Every file is written atomically and
``metrics.json`` last, so a run directory with a ``metrics.json`` is a finished run. The test
split is read once, after training and selection (:mod:`hgadapter.protocol`); a
domain-generalisation target's test split is read once too, by the same fitted model.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import platform
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from hgadapter._io import atomic_save_tensors, atomic_write_json, atomic_write_text, json_safe
from hgadapter.methods import Method
from hgadapter.methods.hegraphadapter import HeGraphAdapter
from hgadapter.config import RunConfig
from hgadapter.data.cache import FeatureCache, dataset_name
from hgadapter.method import fit_hegraphadapter, resolve_device
from hgadapter.protocol import Fitted, score_on_target, score_on_test, selection_data
from hgadapter.records import backbone_of_encoder

__all__ = ["run_experiment", "run_method", "environment_info"]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def environment_info() -> dict[str, Any]:
    """Package versions and git commit recorded beside every run."""
    versions = {}
    for pkg in ("hgadapter", "torch", "dgl", "transformers", "numpy", "safetensors"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"python": platform.python_version(), "packages": versions, "git_commit": _git_commit()}


def run_experiment(
    cfg: RunConfig,
    cache: FeatureCache,
    *,
    shots: int,
    seed: int,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train and evaluate HeGraphAdapter variant ``cfg.variant`` on ``cache``'s (shots, seed) set.

    Returns the metrics record (also written to ``out_dir/metrics.json`` when given).
    """
    name = "hegraphadapter" if cfg.variant.name == "full" else f"hegraphadapter:{cfg.variant.name}"
    return run_method(HeGraphAdapter(name=name, config=cfg), cache, shots=shots, seed=seed, out_dir=out_dir, progress=progress)


def run_method(
    method: Method,
    cache: FeatureCache,
    *,
    shots: int,
    seed: int,
    out_dir: str | Path | None = None,
    targets: Mapping[str, FeatureCache] | None = None,
    extra: Mapping[str, Any] | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit ``method`` on ``cache``'s (shots, seed) training set, select on validation, test once.

    Args:
        method: a resolved method (:func:`hgadapter.methods.create_method`).
        cache: the features to train, select and test on.
        shots / seed: the few-shot training set (the seed also seeds training).
        out_dir: the run directory to write (nothing is written when ``None``).
        targets: domain-generalisation datasets (name -> cache with the same class list) whose
            test split the fitted model is also scored on; the scores go to ``record["targets"]``.
        extra: keys added to the record (``experiment``, ``params``, ``backbone``, ``config_hash``);
            ``dataset`` here replaces the cache's own name.
        device: ``auto``, ``cpu``, ``cuda[:N]``; ``None`` keeps the method's config (HeGraphAdapter)
            or picks ``auto``.
        progress: show a progress bar while training.

    Returns:
        The metrics record (see :mod:`hgadapter.records`).
    """
    log_lines: list[str] = []

    def log(message: str) -> None:
        log_lines.append(f"{time.strftime('%H:%M:%S')} {message}")

    log(f"{method.name} shots {shots} seed {seed}")
    data = selection_data(cache, shots=shots, seed=seed)
    if isinstance(method, HeGraphAdapter):
        cfg = method.config if device is None else dataclasses.replace(method.config, device=device)
        fitted = fit_hegraphadapter(cfg, data, seed=seed, progress=progress, log=log)
    else:
        fitted = method.fit(data, seed=seed, device=device, progress=progress)
    used = fitted.artifacts.get("device") or resolve_device(device or "auto")
    test_acc = score_on_test(fitted, cache, device=used)
    log(f"val_acc {fitted.val_acc:.2f} test_acc {test_acc:.2f}")
    target_acc = {}
    for name, target in (targets or {}).items():
        target_acc[name] = round(score_on_target(fitted, list(cache.classnames), target, device=used), 4)
        log(f"target {name}: test_acc {target_acc[name]:.2f}")
    record: dict[str, Any] = {"method": method.name}
    if isinstance(method, HeGraphAdapter):
        cfg = method.config
        record.update(variant=cfg.variant.name, classifier=cfg.variant.classifier, engine=fitted.artifacts["engine"])
        record.update(alpha=fitted.hparams.get("alpha"), beta=fitted.hparams.get("beta"))  # the cache classifier's pair
    record.update(
        shots=shots,
        seed=seed,
        val_acc=round(float(fitted.val_acc), 4),
        test_acc=round(float(test_acc), 4),
    )
    if targets:
        record["targets"] = target_acc
    if "trainable_params" in fitted.artifacts:  # methods trained by gradient descent report it
        record["trainable_params"] = int(fitted.artifacts["trainable_params"])
    record.update(
        hparams=json_safe(fitted.hparams),
        train_seconds=round(float(fitted.train_seconds), 3),
        epochs=int(fitted.epochs),
        dataset=dataset_name(cache.meta),
        backbone=backbone_of_encoder((cache.meta.get("encoder") or {}).get("id")),
        synthetic=bool(cache.meta.get("synthetic", False)),
        device=str(used),
    )
    record.update(json_safe(dict(extra or {})))
    if out_dir is not None:
        _write_run(Path(out_dir), method, record, fitted, cache, log_lines)
    return record


def _write_run(out: Path, method: Method, record: dict, fitted: Fitted, cache: FeatureCache, log_lines: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # config.yaml minus its `run` and `environment` sections is the method's config: for
    # HeGraphAdapter it reloads as `hgadapter run --config`, for a baseline as a method config.
    run_keys = ("method", "shots", "seed", "engine", "dataset", "backbone", "experiment", "params", "config_hash")
    resolved = {
        **json_safe(method.config_dict()),
        "run": {k: record[k] for k in run_keys if k in record},
        "environment": environment_info(),
    }
    atomic_write_text(out / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    atomic_write_json(out / "classes.json", list(cache.classnames))
    atomic_write_json(out / "history.json", json_safe(fitted.history))
    if "feat_dict" in fitted.artifacts:
        nodes = {f"initial.{k}": v for k, v in fitted.artifacts["feat_dict"].items()}
        for key, value in fitted.artifacts.get("adapted", {}).items():
            nodes[key if key == "vis_bias" else f"adapted.{key}"] = value
        atomic_save_tensors(out / "nodes.safetensors", nodes)
    if fitted.artifacts.get("adapter") is not None:
        atomic_save_tensors(out / "adapter.safetensors", fitted.artifacts["adapter"].state_dict())
    atomic_write_text(out / "log.txt", "\n".join(log_lines) + "\n")
    atomic_write_json(out / "metrics.json", record)  # last: its presence marks a finished run
