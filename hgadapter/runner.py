"""One run: (feature cache, method, shots, seed) -> a run directory with metrics and artefacts.

A run directory holds ``metrics.json`` (the record :mod:`hgadapter.records` documents),
``config.yaml`` (resolved config with package versions and the git commit), ``history.json``
(per-epoch loss and validation accuracy), ``log.txt`` and ``classes.json``, plus one
``<stem>.safetensors`` per entry of the method's ``Fitted.tensors`` (e.g. node features and
trained weights). Every method runs the same path: :meth:`hgadapter.methods.Method.fit` on the
selection data, then the test split; what only one method records travels in its ``Fitted``
(``record`` keys, ``tensors``), so nothing here asks which method it runs. Every file is written
atomically and ``metrics.json`` last, so a run directory with a ``metrics.json`` is a finished
run. Before anything is fitted the folder is claimed (:mod:`hgadapter.rundir`): checked for
writing, locked against other processes for the whole run, refused when it holds a finished run
of another configuration (without ``overwrite``), and cleared of an older run's files. The test
split is read once, after training and selection (:mod:`hgadapter.protocol`); a
domain-generalisation target's test split is read once too, by the same fitted model. Trackers
(:mod:`hgadapter.tracking`, off by default) watch a run from here: its resolved config, each
training epoch (through the method's ``FitContext``) and its record, without changing either.
"""

from __future__ import annotations

import importlib.metadata
import math
import platform
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from hgadapter._io import atomic_save_tensors, atomic_write_json, atomic_write_text, json_safe
from hgadapter.data.cache import FeatureCache, dataset_name, val_source
from hgadapter.methods import Method, method_from_config
from hgadapter.protocol import Fitted, score_on_target, score_on_test, selection_data
from hgadapter.records import HEAD_FILE, HEAD_SPEC_FILE
from hgadapter.records import CLASSES_FILE, CONFIG_FILE, HISTORY_FILE, LOG_FILE, METRICS_FILE, backbone_of_encoder, encoder_id
from hgadapter.rundir import claim_run_folder
from hgadapter.runspec import config_id, memory_fingerprint, method_digest
from hgadapter.tracking import RunTracker, TrackingConfig, track_name_for

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


def _percent(value: float) -> float | None:
    value = float(value)
    return round(value, 4) if math.isfinite(value) else None


def run_experiment(
    cfg: Any,
    cache: FeatureCache,
    *,
    shots: int,
    seed: int,
    out_dir: str | Path | None = None,
    progress: bool = True,
    tracking: TrackingConfig | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """:func:`run_method` for the registered method that the resolved config ``cfg`` configures.

    A convenience for a config resolved beforehand (e.g. :func:`hgadapter.config.load_config`'s
    ``RunConfig``); see :func:`hgadapter.methods.method_from_config`. Returns the metrics record
    (also written to ``out_dir/metrics.json`` when given).
    """
    return run_method(
        method_from_config(cfg), cache, shots=shots, seed=seed, out_dir=out_dir, progress=progress, tracking=tracking, overwrite=overwrite
    )


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
    tracking: TrackingConfig | None = None,
    track_name: str | None = None,
    overwrite: bool = False,
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
        device: ``auto``, ``cpu``, ``cuda[:N]``; ``None``: the method's default
            (:meth:`~hgadapter.methods.Method.default_device`).
        progress: show a progress bar while training.
        tracking: trackers that watch the run (:mod:`hgadapter.tracking`): its resolved config,
            every training epoch and the final record; ``None`` or no backends: off. It changes
            nothing in the results or the record.
        track_name: a readable name of the run there (default ``out_dir``'s folder name, else
            ``<method>/<shots>shot-seed<seed>``); a run with an ``out_dir`` is tracked as this name
            plus a hash of the folder (:func:`hgadapter.tracking.track_name_for`), so that two runs
            never share tracking files.
        overwrite: replace a finished run of another configuration in ``out_dir``; without it such
            a folder is refused (:func:`hgadapter.rundir.claim_run_folder`). The same run again
            (same config and seed) always replaces the old one.

    Returns:
        The metrics record (see :mod:`hgadapter.records`); it holds ``config_id``, the identity of
        the run's configuration (:func:`hgadapter.runspec.config_id`).

    Raises:
        RunBusyError: another process is writing ``out_dir``.
        RunFolderError: ``out_dir`` holds a finished run of another configuration.
        OutputError: ``out_dir`` cannot be created or written (before any fitting).
    """
    extra = dict(extra or {})
    dataset = extra.get("dataset", dataset_name(cache.meta))
    backbone = extra.get("backbone", backbone_of_encoder(encoder_id(cache.meta)))
    params = extra.get("params") or {}
    extra["config_id"] = config_id(  # what the run is, but its seed
        config_digest=method_digest(method),
        shots=shots,
        dataset=dataset,
        backbone=backbone,
        params=params,
        cache_fp=memory_fingerprint(cache),
        target_fps={name: memory_fingerprint(target) for name, target in sorted((targets or {}).items())},
    )
    if out_dir is None:
        return _tracked(method, cache, shots, seed, None, targets, extra, device, progress, tracking, track_name)
    run = {"method": method.name, "shots": shots, "seed": seed, "dataset": dataset, "backbone": backbone, "params": params, "config_id": extra["config_id"]}
    with claim_run_folder(out_dir, run, overwrite=overwrite):
        return _tracked(method, cache, shots, seed, out_dir, targets, extra, device, progress, tracking, track_name)


def _tracked(
    method: Method,
    cache: FeatureCache,
    shots: int,
    seed: int,
    out_dir: str | Path | None,
    targets: Mapping[str, FeatureCache] | None,
    extra: Mapping[str, Any],
    device: str | None,
    progress: bool,
    tracking: TrackingConfig | None,
    track_name: str | None,
) -> dict[str, Any]:
    if tracking is None or not tracking.enabled:
        return _run_method(method, cache, shots=shots, seed=seed, out_dir=out_dir, targets=targets, extra=extra, device=device, progress=progress, tracker=None)
    if track_name is None:
        track_name = Path(out_dir).name if out_dir is not None else f"{method.name}/{shots}shot-seed{seed}"
    name = track_name_for(track_name, out_dir)
    run_info = {"method": method.name, "shots": shots, "seed": seed, **dict(extra)}
    with tracking.start(name, json_safe({**method.config_dict(), "run": run_info})) as tracker:
        record = _run_method(method, cache, shots=shots, seed=seed, out_dir=out_dir, targets=targets, extra=extra, device=device, progress=progress, tracker=tracker)
        tracker.log_final(record)
    return record


def _run_method(
    method: Method,
    cache: FeatureCache,
    *,
    shots: int,
    seed: int,
    out_dir: str | Path | None,
    targets: Mapping[str, FeatureCache] | None,
    extra: Mapping[str, Any] | None,
    device: str | None,
    progress: bool,
    tracker: RunTracker | None,
) -> dict[str, Any]:
    log_lines: list[str] = []

    def log(message: str) -> None:
        log_lines.append(f"{time.strftime('%H:%M:%S')} {message}")

    log(f"{method.name} shots {shots} seed {seed}")
    # out_dir was claimed by run_method: locked, checked and cleared of an older run's files
    data = selection_data(cache, shots=shots, seed=seed)
    fitted = method.fit(data, seed=seed, device=device, progress=progress, log=log, tracker=tracker)
    used = fitted.device
    test_acc = score_on_test(fitted, cache, device=used)
    # accuracy() is NaN only on an empty split; the test split is not read again to find out
    empty = {"validation": len(data.val_labels) == 0, "test": not math.isfinite(test_acc)}
    notes = [f"the {split} split is empty: no {split} accuracy" for split, is_empty in empty.items() if is_empty]
    for note in notes:
        log(note)
    log(f"val_acc {fitted.val_acc:.2f} test_acc {test_acc:.2f}")
    target_acc = {}
    for name, target in (targets or {}).items():
        target_acc[name] = round(score_on_target(fitted, list(cache.classnames), target, device=used), 4)
        log(f"target {name}: test_acc {target_acc[name]:.2f}")
    record: dict[str, Any] = {"method": method.name, **json_safe(dict(fitted.record))}
    record.update(
        shots=shots,
        seed=seed,
        val_acc=_percent(fitted.val_acc),  # None (null) for an empty split, with a note
        test_acc=_percent(test_acc),
    )
    if notes:
        record["notes"] = notes
    if targets:
        record["targets"] = target_acc
    if fitted.trainable_params is not None:  # methods trained by gradient descent report it
        record["trainable_params"] = int(fitted.trainable_params)
    record.update(
        hparams=json_safe(fitted.hparams),
        train_seconds=round(float(fitted.train_seconds), 3),  # the training loop (per-epoch validation included)
        select_seconds=round(float(fitted.select_seconds), 3),  # choosing hyper-parameters after training
        fit_seconds=round(float(fitted.fit_seconds), 3),  # the whole fit
        threads=fitted.threads,
        epochs=int(fitted.epochs),
        dataset=dataset_name(cache.meta),
        backbone=backbone_of_encoder(encoder_id(cache.meta)),
        synthetic=bool(cache.meta.get("synthetic", False)),
        device=str(used),
    )
    if val_source(cache.meta) == "test":  # CoOp's ImageNet protocol: reports flag these runs
        record["val_from_test"] = True
    record.update(json_safe(dict(extra or {})))
    if out_dir is not None:
        _write_run(Path(out_dir), method, record, fitted, cache, log_lines)
    return record


def _write_run(out: Path, method: Method, record: dict, fitted: Fitted, cache: FeatureCache, log_lines: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # config.yaml minus its `run` and `environment` sections is the method's config: it reloads
    # as the method's config file (`hgadapter run --config` for a dotted RunConfig).
    run_keys = ("method", "shots", "seed", "engine", "dataset", "backbone", "experiment", "params", "config_hash", "config_id")
    resolved = {
        **json_safe(method.config_dict()),
        "run": {k: record[k] for k in run_keys if k in record},
        "environment": environment_info(),
    }
    atomic_write_text(out / CONFIG_FILE, yaml.safe_dump(resolved, sort_keys=False))
    atomic_write_json(out / CLASSES_FILE, list(cache.classnames))
    atomic_write_json(out / HISTORY_FILE, fitted.history)  # atomic_write_json makes it JSON-safe
    for stem, tensors in fitted.tensors.items():
        atomic_save_tensors(out / f"{stem}.safetensors", tensors)
    # The fitted head (its tensors, its spec and where its features came from): `hgadapter
    # export` turns any finished run into a classifier from these, without fitting again.
    atomic_save_tensors(out / HEAD_FILE, fitted.head.state_dict())
    atomic_write_json(out / HEAD_SPEC_FILE, {"spec": fitted.head.spec(), "features": _feature_source(cache)})
    atomic_write_text(out / LOG_FILE, "\n".join(log_lines) + "\n")
    atomic_write_json(out / METRICS_FILE, record)  # last: its presence marks a finished run


def _feature_source(cache: FeatureCache) -> dict[str, Any]:
    """What produced the features the head reads, from the cache's sidecar: the encoder (id,
    revision, preprocessing, precision), the prompts and the logit scale, so that an exported
    classifier encodes new images as extraction encoded the test split."""
    meta = cache.meta
    synthetic = bool(meta.get("synthetic", False))
    return {
        "dim": int(cache.dim),
        "logit_scale": float(cache.logit_scale),
        "synthetic": synthetic,
        # A synthetic cache's "encoder" only names the generator: there is no model to load.
        "encoder": None if synthetic else json_safe(meta.get("encoder")),
        "prompts": json_safe(meta.get("prompts")),
        "dataset": dataset_name(meta),
        "identity_hash": meta.get("identity_hash"),
    }
