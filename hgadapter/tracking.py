"""Watching runs live: per-epoch loss, learning rate and validation accuracy, and each run's final
metrics and resolved config, sent to TensorBoard, Weights & Biases or MLflow. Off by default.

One small interface serves every method and every command: :class:`TrackingConfig` (plain data,
so it travels to sweep worker processes) names the backends and the folder; the runner
(:func:`hgadapter.runner.run_method`) opens one :class:`RunTracker` per run, logs the resolved
config, hands the tracker to the method through :class:`~hgadapter.protocol.FitContext`, whose
training loop (:func:`hgadapter.train.train_loop`) reports every epoch's history record, and
finally logs the run's record. Nothing asks which method runs; methods without a training loop
report their final metrics only.

Tracking only observes: it draws no random numbers and changes no setting, results are the same
with it on or off, and it is part of no run hash (a sweep rerun with tracking on skips the runs
it finished without). Backends:

Each run is tracked under its readable name (the run folder's name, or a sweep's
``<experiment>/<method>/<shots>shot-seed<seed>``) plus ``-`` and 8 hex digits of its folder's
absolute path (:func:`track_name_for`), so two runs never share a name even when two experiments'
folders end alike (``expA/run``, ``expB/run``) and one ``--track-dir`` serves both.

- ``tensorboard``: ``torch.utils.tensorboard`` event files in ``DIR/<run name>/``
  (``pip install 'hgadapter[tensorboard]'``; ``tensorboard --logdir DIR``);
- ``wandb``: one W&B run per run, files under ``DIR/wandb/`` (``pip install 'hgadapter[wandb]'``;
  ``WANDB_MODE=offline`` to log without an account, ``wandb sync`` later);
- ``mlflow``: one MLflow run per run in experiment ``project``, at ``$MLFLOW_TRACKING_URI`` or
  else in a file store ``DIR/mlruns`` (``pip install 'hgadapter[mlflow]'``; ``mlflow ui
  --backend-store-uri DIR/mlruns``).

See docs/tracking.md.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hgadapter._cli import output_path
from hgadapter._io import check_output_dir
from hgadapter.errors import UserError

__all__ = [
    "TrackingError",
    "TrackingConfig",
    "RunTracker",
    "list_trackers",
    "parse_track",
    "track_name_for",
    "final_metrics",
    "add_tracking_arguments",
    "tracking_from_args",
]

DEFAULT_DIR_NAME = "tracking"  # the CLI's default: OUT/tracking
DEFAULT_PROJECT = "hgadapter"
EPOCH_SCALARS = {"loss": "train/loss", "lr": "train/lr", "val_acc": "val/acc"}  # history key -> tag
# Numbers of a run's record (hgadapter.records) logged as its final metrics.
FINAL_KEYS = ("val_acc", "test_acc", "train_seconds", "select_seconds", "fit_seconds", "epochs", "trainable_params")


class TrackingError(UserError):
    """An unknown tracker name, or a tracker whose package is not installed."""


# --------------------------------------------------------------------------------------------
# Backends: one class per tracker, the same four calls


class _Backend:
    """What a tracker does with one run; ``step`` is the epoch (1-based), 0 before training."""

    package: str = ""  # the module to import; its pip extra is the tracker's name

    def __init__(self, *, name: str, config: Mapping[str, Any], directory: Path, project: str) -> None:
        raise NotImplementedError

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        raise NotImplementedError

    def log_summary(self, values: Mapping[str, float], step: int) -> None:
        self.log_scalars(values, step)

    def close(self, failed: bool) -> None:
        raise NotImplementedError


class _TensorBoard(_Backend):
    package = "tensorboard"

    def __init__(self, *, name: str, config: Mapping[str, Any], directory: Path, project: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = directory / name
        # A run executed again (a rerun, a resumed sweep) replaces its curves instead of drawing
        # a second line over the first, as the runner replaces its metrics.json.
        for old in log_dir.glob("events.out.tfevents.*") if log_dir.is_dir() else ():
            old.unlink()
        self.writer = SummaryWriter(log_dir=str(log_dir))
        # Four leading spaces: TensorBoard's text tab renders markdown, and this keeps the YAML verbatim.
        self.writer.add_text("config", "\n".join("    " + line for line in _yaml(config).splitlines()), 0)

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def close(self, failed: bool) -> None:
        self.writer.close()


class _Wandb(_Backend):
    package = "wandb"

    def __init__(self, *, name: str, config: Mapping[str, Any], directory: Path, project: str) -> None:
        import wandb

        directory.mkdir(parents=True, exist_ok=True)
        # create_new: a sweep in one process opens one W&B run after another, each its own.
        self.run = wandb.init(project=project, name=name, dir=str(directory), config=dict(config), reinit="create_new")

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def log_summary(self, values: Mapping[str, float], step: int) -> None:
        self.run.summary.update(dict(values))

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class _Mlflow(_Backend):
    package = "mlflow"
    PARAM_CHARS = 500  # MLflow caps a parameter's value; the whole config is kept as config.yaml
    BATCH = 100  # MLflow's limit of parameters per log_batch call

    def __init__(self, *, name: str, config: Mapping[str, Any], directory: Path, project: str) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = (directory / "mlruns").resolve().as_uri()
            # MLflow 3 keeps its file store for existing users only unless told otherwise; it is
            # the store that needs no server, which is what a folder beside the runs is for.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(project)
        if experiment is None:
            try:
                experiment_id = self.client.create_experiment(project)
            except Exception:  # noqa: BLE001 - a parallel worker created it first
                experiment_id = self.client.get_experiment_by_name(project).experiment_id
        else:
            experiment_id = experiment.experiment_id
        self.run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
        # MLflow refuses parameter names outside [A-Za-z0-9_-. /]; a bad name must not stop the run
        named = {re.sub(r"[^A-Za-z0-9_\-. /]", "_", k): str(v)[: self.PARAM_CHARS] for k, v in _flatten(config).items()}
        params = [Param(k, v) for k, v in named.items()]
        for begin in range(0, len(params), self.BATCH):
            self.client.log_batch(self.run_id, params=params[begin : begin + self.BATCH])
        self.client.log_text(self.run_id, _yaml(config), "config.yaml")

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        for key, value in values.items():
            self.client.log_metric(self.run_id, key, float(value), step=step)

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


_BACKENDS: dict[str, type[_Backend]] = {"tensorboard": _TensorBoard, "wandb": _Wandb, "mlflow": _Mlflow}


def _yaml(config: Mapping[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(dict(config), sort_keys=False)


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (``train.lr``); lists stay values."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def list_trackers() -> list[str]:
    """The tracker names ``--track`` takes."""
    return list(_BACKENDS)


def parse_track(text: str | None) -> tuple[str, ...]:
    """``"tensorboard,wandb"`` -> ``("tensorboard", "wandb")``; ``None`` or ``""`` -> ``()`` (off).

    Raises:
        TrackingError: an unknown name.
    """
    names = tuple(dict.fromkeys(part.strip() for part in (text or "").split(",") if part.strip()))
    for name in names:
        if name not in _BACKENDS:
            raise TrackingError(f"--track: unknown tracker {name!r}; available: {list_trackers()} (comma-separated)")
    return names


# --------------------------------------------------------------------------------------------
# The interface


@dataclass(frozen=True)
class TrackingConfig:
    """Which trackers receive the runs, and where their files go. Plain data (pickles to workers)."""

    backends: tuple[str, ...] = ()  # tracker names (list_trackers()); () is off
    dir: str = DEFAULT_DIR_NAME  # folder of TensorBoard event files, W&B run files and MLflow's file store
    project: str = DEFAULT_PROJECT  # W&B project and MLflow experiment name

    def __post_init__(self) -> None:
        names = self.backends if isinstance(self.backends, str) else ",".join(self.backends)
        object.__setattr__(self, "backends", parse_track(names))
        if not str(self.dir).strip():  # "" would put tracker files in the current directory
            raise TrackingError("--track-dir: expected a folder path, got an empty string")

    @property
    def enabled(self) -> bool:
        return bool(self.backends)

    def check(self) -> None:
        """Import every backend's package now, so a missing one stops a sweep before its first run.

        Raises:
            TrackingError: a package is not installed (names the pip extra that installs it).
        """
        for name in self.backends:
            package = _BACKENDS[name].package
            try:
                importlib.import_module(package)
            except ImportError:
                raise TrackingError(f"--track {name} needs the {package} package: pip install 'hgadapter[{name}]'") from None

    def start(self, name: str, config: Mapping[str, Any]) -> "RunTracker":
        """Open one run called ``name`` (a relative path, e.g. ``sweep/method/16shot-seed1``) on
        every backend and log its resolved ``config``."""
        self.check()
        directory = Path(self.dir)
        opened: list[_Backend] = []
        try:
            for backend in self.backends:
                opened.append(_BACKENDS[backend](name=name, config=config, directory=directory, project=self.project))
        except BaseException:
            for backend in opened:
                backend.close(failed=True)
            raise
        return RunTracker(opened)


class RunTracker:
    """One run on every chosen backend: :meth:`log_epoch` per epoch, :meth:`log_final` once, :meth:`close`.

    Made by :meth:`TrackingConfig.start`; a context manager that closes itself (marking the run
    failed when an exception leaves the block).
    """

    def __init__(self, backends: list[_Backend]) -> None:
        self.backends = backends
        self.last_step = 0
        self.closed = False

    def _each(self, call: Callable[[_Backend], None]) -> None:
        for backend in self.backends:
            call(backend)

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        """One :func:`hgadapter.train.train_loop` history record (``epoch``, ``loss``, ``lr``, ``val_acc``)
        as scalars ``train/loss``, ``train/lr``, ``val/acc`` at step ``epoch``."""
        step = int(record["epoch"])
        values = {tag: float(record[key]) for key, tag in EPOCH_SCALARS.items() if _finite(record.get(key))}
        self.last_step = max(self.last_step, step)
        self._each(lambda b: b.log_scalars(values, step))

    def log_final(self, record: Mapping[str, Any]) -> None:
        """A run's record (:mod:`hgadapter.records`): :func:`final_metrics` at the last epoch's step."""
        values = final_metrics(record)
        self._each(lambda b: b.log_summary(values, self.last_step))

    def close(self, failed: bool = False) -> None:
        if not self.closed:
            self.closed = True
            self._each(lambda b: b.close(failed))

    def __enter__(self) -> "RunTracker":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.close(failed=kind is not None)


def track_name_for(label: str, run_dir: str | os.PathLike | None) -> str:
    """The name a run is tracked under: ``label`` plus ``-`` and 8 hex digits of ``run_dir``'s
    absolute path, so distinct run folders never collide (one folder always gets the same name,
    and a rerun replaces its curves). Without a folder, ``label`` alone."""
    if run_dir is None:
        return label
    digest = hashlib.sha256(str(Path(run_dir).resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{label}-{digest}"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) != float("inf")


def final_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """``final/<key>`` for the record's numbers (:data:`FINAL_KEYS`) and ``final/target/<name>``
    for each domain-generalisation target's accuracy; empty splits (``None``) are left out."""
    out = {f"final/{key}": float(record[key]) for key in FINAL_KEYS if _finite(record.get(key))}
    for name, acc in (record.get("targets") or {}).items():
        if _finite(acc):
            out[f"final/target/{name}"] = float(acc)
    return out


# --------------------------------------------------------------------------------------------
# Command line: `--track` and `--track-dir` on run, sweep and compare


def add_tracking_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--track``, ``--track-dir`` and ``--track-project`` to a command that trains."""
    parser.add_argument(
        "--track", default=None, metavar="NAMES",
        help=f"send per-epoch loss, lr and val accuracy and final metrics to trackers, comma-separated: {','.join(list_trackers())} (default: off)",
    )
    parser.add_argument("--track-dir", type=output_path, default=None, metavar="DIR", help=f"tracker files (TensorBoard logdir, ...); default: OUT/{DEFAULT_DIR_NAME}")
    parser.add_argument("--track-project", default=DEFAULT_PROJECT, metavar="NAME", help=f"W&B project / MLflow experiment (default: {DEFAULT_PROJECT})")


def tracking_from_args(args: argparse.Namespace, out: str | os.PathLike) -> TrackingConfig | None:
    """The :class:`TrackingConfig` the arguments ask for (its packages checked), or ``None`` when off."""
    backends = parse_track(getattr(args, "track", None))
    if not backends:
        return None
    directory = args.track_dir if args.track_dir is not None else str(Path(out) / DEFAULT_DIR_NAME)
    check_output_dir(directory, what="--track-dir")
    config = TrackingConfig(backends=backends, dir=directory, project=args.track_project)
    config.check()
    return config
