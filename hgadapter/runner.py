"""One run: (feature cache, variant, shots, seed) -> a run directory with metrics and artefacts.

A run directory holds ``metrics.json``, ``config.yaml`` (resolved config with package versions
and the git commit), ``history.json`` (per-epoch loss and validation accuracy), ``log.txt``,
``classes.json``, ``nodes.safetensors`` (initial and adapted node features, for t-SNE figures
without re-training) and ``adapter.safetensors`` (trained weights). Every file is written
atomically.
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from hgadapter._io import atomic_save_tensors, atomic_write_json, atomic_write_text
from hgadapter.config import RunConfig, config_to_dict
from hgadapter.engines import create_engine, resolve_engine
from hgadapter.evaluate import evaluate
from hgadapter.features import FeatureCache
from hgadapter.graph import build_node_features, build_relation_graph
from hgadapter.train import fit

__all__ = ["resolve_device", "run_experiment", "environment_info"]

METHOD = "hegraphadapter"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the first CUDA device if present, else CPU; a clear error for missing CUDA."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available here; use device=cpu or auto")
    return device


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


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
    """Train and evaluate ``cfg.variant`` on ``cache``'s (shots, seed) training set.

    Returns the metrics record (also written to ``out_dir/metrics.json`` when given).
    """
    train_set = cache.train_set(shots, seed)
    device = resolve_device(cfg.device)
    variant = cfg.variant
    log_lines: list[str] = []

    def log(message: str) -> None:
        log_lines.append(f"{time.strftime('%H:%M:%S')} {message}")

    feat_dict = {k: v.to(device) for k, v in build_node_features(cache, train_set).items()}
    graph = None
    engine = "none"
    if variant.stages:
        engine = resolve_engine(cfg.engine, device=device, topk=variant.graph.topk)
        g = variant.graph
        relation_graph = build_relation_graph(
            feat_dict,
            relations=g.relations,
            weights=g.weights,
            contrast=g.contrast,
            topk=g.topk,
            self_loops=g.self_loops,
            clamp_negative=g.clamp_negative,
        )
        graph = create_engine(engine, relation_graph, device=device)
        log(f"graph: {', '.join(f'{e}={relation_graph.num_edges(e)}' for e in relation_graph.etypes)} edges; engine {engine}")
    log(f"variant {variant.name} classifier {variant.classifier} shots {shots} seed {seed} device {device}")

    result = fit(
        cfg,
        graph=graph,
        feat_dict=feat_dict,
        train_set=train_set,
        val_features=cache.val_features,
        val_labels=cache.val_labels,
        logit_scale=cache.logit_scale,
        seed=seed,
        device=device,
        progress=progress,
        log=log,
    )
    ev = evaluate(
        variant,
        cfg.eval,
        adapter=result.adapter,
        graph=graph,
        feat_dict=feat_dict,
        cache=cache,
        train_set=train_set,
        device=device,
    )
    metrics = {
        "method": METHOD,
        "variant": variant.name,
        "classifier": variant.classifier,
        "engine": engine,
        "shots": shots,
        "seed": seed,
        "val_acc": round(ev.val_acc, 4),
        "test_acc": round(ev.test_acc, 4),
        "alpha": ev.alpha,
        "beta": ev.beta,
        "train_seconds": round(result.train_seconds, 3),
        "epochs": result.epochs,
        "dataset": (cache.meta.get("dataset") or {}).get("name") if isinstance(cache.meta.get("dataset"), dict) else cache.meta.get("dataset"),
        "synthetic": bool(cache.meta.get("synthetic", False)),
    }
    log(f"val_acc {ev.val_acc:.2f} test_acc {ev.test_acc:.2f} alpha {ev.alpha} beta {ev.beta}")
    if out_dir is not None:
        _write_run(Path(out_dir), cfg, metrics, result, feat_dict, graph, cache, log_lines)
    return metrics


def _write_run(out, cfg, metrics, result, feat_dict, graph, cache, log_lines) -> None:
    out.mkdir(parents=True, exist_ok=True)
    resolved = {**config_to_dict(cfg), "run": {k: metrics[k] for k in ("shots", "seed", "engine")}, "environment": environment_info()}
    atomic_write_text(out / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    atomic_write_json(out / "classes.json", list(cache.classnames))
    atomic_write_json(out / "history.json", result.history)
    nodes = {f"initial.{k}": v for k, v in feat_dict.items()}
    if result.adapter is not None:
        result.adapter.eval()
        with torch.no_grad():
            adapted = result.adapter(graph, feat_dict, training=False)
        for stage in cfg.variant.stages:
            if stage.mode == "residual":
                nodes[f"adapted.{stage.target}"] = adapted.feat_dict[stage.target]
        if adapted.vis_bias is not None:
            nodes["vis_bias"] = adapted.vis_bias
        atomic_save_tensors(out / "adapter.safetensors", result.adapter.state_dict())
    atomic_save_tensors(out / "nodes.safetensors", nodes)
    atomic_write_text(out / "log.txt", "\n".join(log_lines) + "\n")
    atomic_write_json(out / "metrics.json", metrics)
