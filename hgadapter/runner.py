"""One run: (feature cache, variant, shots, seed) -> a run directory with metrics and artefacts.

A run directory holds ``metrics.json``, ``config.yaml`` (resolved config with package versions
and the git commit), ``history.json`` (per-epoch loss and validation accuracy), ``log.txt``,
``classes.json``, ``nodes.safetensors`` (initial and adapted node features, for t-SNE figures
without re-training) and ``adapter.safetensors`` (trained weights). Every file is written
atomically. The test split is read once, after training and selection (:mod:`hgadapter.protocol`).
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from hgadapter._io import atomic_save_tensors, atomic_write_json, atomic_write_text
from hgadapter.config import RunConfig, config_to_dict
from hgadapter.features import FeatureCache
from hgadapter.method import fit_hegraphadapter
from hgadapter.protocol import Fitted, score_on_test, selection_data

__all__ = ["run_experiment", "environment_info", "METHOD"]

METHOD = "hegraphadapter"


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


def _dataset_name(meta: dict[str, Any]) -> str | None:
    dataset = meta.get("dataset")
    return dataset.get("name") if isinstance(dataset, dict) else dataset


def run_experiment(
    cfg: RunConfig,
    cache: FeatureCache,
    *,
    shots: int,
    seed: int,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train and evaluate ``cfg.variant`` on ``cache``'s (shots, seed) training set.

    Returns the metrics record (also written to ``out_dir/metrics.json`` when given).
    """
    log_lines: list[str] = []

    def log(message: str) -> None:
        log_lines.append(f"{time.strftime('%H:%M:%S')} {message}")

    log(f"{METHOD} variant {cfg.variant.name} shots {shots} seed {seed}")
    fitted = fit_hegraphadapter(cfg, selection_data(cache, shots=shots, seed=seed), seed=seed, progress=progress, log=log)
    test_acc = score_on_test(fitted, cache, device=fitted.artifacts["device"])
    log(f"test_acc {test_acc:.2f}")
    metrics = {
        "method": METHOD,
        "variant": cfg.variant.name,
        "classifier": cfg.variant.classifier,
        "engine": fitted.artifacts["engine"],
        "shots": shots,
        "seed": seed,
        "val_acc": round(fitted.val_acc, 4),
        "test_acc": round(test_acc, 4),
        "alpha": fitted.hparams["alpha"],
        "beta": fitted.hparams["beta"],
        "train_seconds": round(fitted.train_seconds, 3),
        "epochs": fitted.epochs,
        "dataset": _dataset_name(cache.meta),
        "synthetic": bool(cache.meta.get("synthetic", False)),
    }
    if out_dir is not None:
        _write_run(Path(out_dir), cfg, metrics, fitted, cache, log_lines)
    return metrics


def _write_run(out: Path, cfg: RunConfig, metrics: dict, fitted: Fitted, cache: FeatureCache, log_lines: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    resolved = {**config_to_dict(cfg), "run": {k: metrics[k] for k in ("shots", "seed", "engine")}, "environment": environment_info()}
    atomic_write_text(out / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    atomic_write_json(out / "classes.json", list(cache.classnames))
    atomic_write_json(out / "history.json", fitted.history)
    nodes = {f"initial.{k}": v for k, v in fitted.artifacts["feat_dict"].items()}
    for key, value in fitted.artifacts["adapted"].items():
        nodes[key if key == "vis_bias" else f"adapted.{key}"] = value
    atomic_save_tensors(out / "nodes.safetensors", nodes)
    if fitted.artifacts["adapter"] is not None:
        atomic_save_tensors(out / "adapter.safetensors", fitted.artifacts["adapter"].state_dict())
    atomic_write_text(out / "log.txt", "\n".join(log_lines) + "\n")
    atomic_write_json(out / "metrics.json", metrics)
