"""Many runs: experiment files -> a grid of runs -> run directories, resumable and parallel.

``hgadapter sweep FILE [FILE ...]`` expands every experiment file's ``sweep`` section
(:class:`~hgadapter.config.SweepConfig`: methods x shots x seeds x grid points) into runs
(:class:`~hgadapter.runspec.RunSpec`, :func:`~hgadapter.runspec.expand_experiment`), skips the
runs already finished and runs the rest, one after another, in parallel worker processes on this
machine (``--jobs N``), or on a Ray cluster (``--backend ray``; ``pip install 'hgadapter[ray]'``).
Each run holds its folder's lock while it runs, so two sweeps into one ``--out`` share the runs
(:func:`execute_run`).

A run is identified by a hash of everything that determines its result: the method and its fully
resolved config, shots, seed, dataset, backbone, grid point and a fingerprint of every feature
cache it reads (the sidecar, with only the run's own training set). A run counts as finished
when its directory holds a ``metrics.json`` with that hash (``metrics.json`` is the last file a
run writes). An interrupted sweep therefore resumes where it stopped, and a sweep whose config
changed re-runs exactly the runs the change touches.

Run directories: ``OUT/<experiment name>/`` + :func:`run_path` (``<method>/[<grid point>/]<shots>shot-seed<seed>``),
each as :mod:`hgadapter.runner` writes it; ``hgadapter report OUT`` and ``hgadapter figures OUT``
read them back. ``hgadapter compare`` is a sweep over one cache held in memory: it names, hashes,
skips and executes its runs with the same functions (:func:`run_path`, :func:`run_hash`,
:func:`is_finished`, :func:`execute_run`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hgadapter._cli import output_path
from hgadapter._io import check_output_dir, json_digest, strict_json_loads
from hgadapter.config import ConfigError
from hgadapter._lock import FolderBusy, folder_lock
from hgadapter.records import METRICS_FILE, backbone_of_encoder, encoder_id, format_accuracy
from hgadapter.runspec import FEATURES_ENV, RunSpec, expand_experiment, memory_fingerprint, method_digest, run_hash, run_path
from hgadapter.tracking import TrackingConfig, add_tracking_arguments, tracking_from_args

__all__ = [
    "RunSpec",
    "SweepResult",
    "RunLeft",
    "FEATURES_ENV",
    "expand_experiment",
    "run_path",
    "method_digest",
    "run_hash",
    "memory_fingerprint",
    "is_finished",
    "plan_runs",
    "execute_run",
    "run_sweep",
    "spread_device",
    "add_sweep_arguments",
    "run_sweep_command",
]

BACKENDS = ("local", "ray")


@dataclass
class SweepResult:
    """What a sweep did: finished records, runs skipped as already done (by an earlier sweep or,
    meanwhile, by another process), runs left to another process that is running them, and failures."""

    finished: list[dict] = field(default_factory=list)
    skipped: list[RunSpec] = field(default_factory=list)
    failed: list[tuple[RunSpec, str]] = field(default_factory=list)
    interrupted: bool = False
    left: list[tuple[RunSpec, str]] = field(default_factory=list)


class RunLeft(Exception):
    """:func:`execute_run` did not run its spec: another process holds the run folder (``finished``
    is ``False``) or finished that run after this sweep planned it (``True``)."""

    def __init__(self, message: str, finished: bool) -> None:
        super().__init__(message, finished)

    @property
    def message(self) -> str:
        return str(self.args[0])

    @property
    def finished(self) -> bool:
        return bool(self.args[1])

    def __str__(self) -> str:
        return self.message


# --------------------------------------------------------------------------------------------
# Planning: which runs are finished


def _cache_fingerprint(path: str, train_key: tuple[int, int] | None, sidecars: dict[str, dict], backbone: str | None) -> str:
    from hgadapter.data.cache import CacheError
    from hgadapter.data.io import load_sidecar

    if path not in sidecars:
        try:
            sidecars[path] = load_sidecar(path)
        except CacheError as exc:
            raise CacheError(f"{exc} (write it with `hgadapter extract --out {path} ...` or point --features-root at the caches)") from None
    sidecar = sidecars[path]
    if backbone is not None:
        encoder = encoder_id(sidecar.get("meta"))
        extracted = backbone_of_encoder(encoder)
        if extracted is not None and extracted != backbone:
            raise CacheError(f"{path}: features were extracted with {encoder} ({extracted}), but the experiment says backbone {backbone}; fix sweep.backbone or the cache folder")
    shared = {k: v for k, v in sidecar.items() if k not in ("train_sets", "files")}
    files = {name: v for name, v in sidecar.get("files", {}).items() if not str(name).startswith("train_")}
    own = None
    if train_key is not None:
        own = [t for t in sidecar.get("train_sets", []) if (t.get("shots"), t.get("seed")) == train_key]
        if not own:
            have = sorted((t.get("shots"), t.get("seed")) for t in sidecar.get("train_sets", []))
            raise CacheError(f"{path}: no training set for (shots={train_key[0]}, seed={train_key[1]}); present: {have}")
    return json_digest({"shared": shared, "files": files, "train": own})


def plan_runs(specs: Iterable[RunSpec]) -> tuple[list[RunSpec], list[RunSpec]]:
    """Split runs into (pending, done), each with its full ``config_hash`` set.

    Raises:
        CacheError: a feature cache is missing or lacks a run's training set (before anything runs).
    """
    sidecars: dict[str, dict] = {}
    pending, done = [], []
    for spec in specs:
        cache_fp = _cache_fingerprint(spec.features, (spec.shots, spec.seed), sidecars, spec.backbone)
        target_fps = {name: _cache_fingerprint(path, None, sidecars, spec.backbone) for name, path in spec.targets.items()}
        spec = dataclasses.replace(spec, config_hash=run_hash(spec, cache_fp, target_fps))
        (done if is_finished(spec.out_dir, spec.config_hash) else pending).append(spec)
    # Consecutive runs on the same training set reuse the loaded cache in a worker.
    pending.sort(key=lambda s: (s.features, s.shots, s.seed))
    return pending, done


def is_finished(run_dir: str | os.PathLike, config_hash: str) -> bool:
    """Whether ``run_dir`` holds a finished run with this hash (its ``metrics.json``, written last)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return False
    try:
        record = strict_json_loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):  # unreadable, not JSON, or numbers too long to read
        return False
    return isinstance(record, dict) and record.get("config_hash") == config_hash


# --------------------------------------------------------------------------------------------
# Execution (runs in the worker process)

# A worker keeps the training cache of its current (features, shots, seed), which plan_runs
# orders consecutively, and every domain-generalisation target it has read (they serve every run).
# Keys carry the sidecar's modification time, so a cache rewritten between two sweeps of one
# process is read again.
_TRAIN_MEMO: dict[tuple[str, int, int, int], Any] = {}
_TARGET_MEMO: dict[tuple[str, int], Any] = {}


def _stamp(path: str) -> int:
    from hgadapter.data.cache import SIDECAR_NAME

    try:
        return os.stat(Path(path) / SIDECAR_NAME).st_mtime_ns
    except OSError:
        return 0  # load_cache will say what is missing


def _training_cache(path: str, shots: int, seed: int) -> Any:
    from hgadapter.data.io import load_cache

    key = (path, shots, seed, _stamp(path))
    if key not in _TRAIN_MEMO:
        _TRAIN_MEMO.clear()
        _TRAIN_MEMO[key] = load_cache(path, train_keys=[(shots, seed)])
    return _TRAIN_MEMO[key]


def _target_cache(path: str) -> Any:
    from hgadapter.data.io import load_cache

    key = (path, _stamp(path))
    if key not in _TARGET_MEMO:
        for old in [k for k in _TARGET_MEMO if k[0] == path]:
            del _TARGET_MEMO[old]
        _TARGET_MEMO[key] = load_cache(path, train_keys=[])
    return _TARGET_MEMO[key]


def execute_run(spec: RunSpec, *, cache: Any = None, device: str | None = None, progress: bool = False, tracking: TrackingConfig | None = None) -> dict:
    """Fit, select and test one run and write its directory; returns its record.

    ``cache`` is the run's feature cache when the caller holds it in memory (``hgadapter
    compare``); by default it is loaded from ``spec.features``. ``tracking``
    (:class:`hgadapter.tracking.TrackingConfig`) watches the run under the name
    ``<experiment>/`` + :func:`run_path`'s parts; it is not part of the run's hash.

    The run folder is locked for the whole run (:func:`hgadapter._lock.folder_lock`): two sweeps
    into one ``--out`` share the work instead of repeating it, and their files never mix. A run
    of another config in the folder is replaced (a sweep re-runs what its config change touched).

    Raises:
        RunLeft: another process holds the run folder, or finished this run (same hash) since
            the sweep planned it; nothing was run or written.
    """
    from hgadapter.methods import create_method
    from hgadapter.runner import run_method

    try:
        with folder_lock(spec.out_dir):
            if spec.config_hash and is_finished(spec.out_dir, spec.config_hash):
                raise RunLeft(f"{spec.out_dir}: finished by another process meanwhile", True)
            method = create_method(spec.method, config_file=spec.config_file, overrides=spec.overrides)
            if cache is None:
                cache = _training_cache(spec.features, spec.shots, spec.seed)
            targets = {name: _target_cache(path) for name, path in spec.targets.items()}
            extra = {"experiment": spec.experiment, "dataset": spec.dataset, "params": spec.params, "config_hash": spec.config_hash}
            if spec.backbone is not None:  # else the runner names it from the cache's encoder id, if it can
                extra["backbone"] = spec.backbone
            track_name = run_path(spec.experiment, spec.method, spec.shots, spec.seed, spec.params).as_posix()
            return run_method(
                method, cache, shots=spec.shots, seed=spec.seed, out_dir=spec.out_dir, targets=targets, extra=extra, device=device,
                progress=progress, tracking=tracking, track_name=track_name, overwrite=True,
            )
    except FolderBusy as busy:
        raise RunLeft(f"{busy}; left to it", False) from None


def _die_with_parent(parent: int) -> None:
    """Worker initializer: end this worker when the sweep that started it dies (SIGKILL and SIGTERM
    included, which skip the pool's own shutdown), so no orphan goes on writing runs.

    On Linux the kernel delivers SIGKILL on the parent's death (``PR_SET_PDEATHSIG``); elsewhere,
    and as a backstop, a daemon thread checks once a second whether the worker was re-parented.
    """
    import signal
    import threading

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _execute_payload(payload: dict) -> dict:
    """Process-pool / Ray entry point: plain dicts in and out."""
    spec = RunSpec(**{**payload["spec"], "overrides": tuple(payload["spec"]["overrides"])})
    if payload.get("threads"):
        _worker_init(payload["threads"])
    tracking = None
    if payload.get("tracking"):
        tracking = TrackingConfig(**payload["tracking"])
    return execute_run(spec, device=payload.get("device"), progress=False, tracking=tracking)


# --------------------------------------------------------------------------------------------
# Driver


def run_sweep(
    files: Sequence[str | os.PathLike],
    *,
    out_root: str | os.PathLike = "runs",
    features_root: str | os.PathLike | None = None,
    jobs: int = 1,
    backend: str = "local",
    ray_address: str | None = None,
    device: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    tracking: TrackingConfig | None = None,
) -> SweepResult:
    """Expand ``files``, skip finished runs and run the rest.

    Args:
        files: experiment files.
        out_root: the folder run directories go under.
        features_root: where relative feature cache folders start (``$HGADAPTER_FEATURES``,
            else ``features``).
        jobs: runs at once; ``1`` runs in this process, more start worker processes (local) or
            bounds the concurrent Ray tasks (ray). Locally, ``device="cuda"`` with several GPUs
            deals the runs round-robin over them (:func:`spread_device`).
        backend: ``local`` or ``ray``.
        ray_address: Ray cluster address (``auto`` for a running cluster); ``None`` starts a local one.
        device: ``auto``, ``cpu``, ``cuda[:N]`` for every run; ``None`` keeps each config's.
        progress: a progress bar over runs (and per-run bars when ``jobs == 1``).
        log: called with one line per run.
        tracking: a :class:`hgadapter.tracking.TrackingConfig` that watches every run executed
            (not those skipped as finished); no part of any run's hash.

    Returns:
        A :class:`SweepResult`. A failing run is recorded and the others go on; an interrupt
        (Ctrl-C) stops after the runs in flight, keeping every finished run.
    """
    log = log or (lambda line: None)
    check_output_dir(out_root)  # before any planning or run: every run folder goes below it
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs must be an integer >= 1, got {jobs!r}")
    specs: list[RunSpec] = []
    seen: set[str] = set()
    for file in files:
        for spec in expand_experiment(file, out_root=out_root, features_root=features_root):
            if spec.out_dir in seen:
                raise ConfigError(f"{file}: run directory {spec.out_dir} is also produced by an earlier file; give the sweeps different names")
            seen.add(spec.out_dir)
            specs.append(spec)
    pending, done = plan_runs(specs)
    result = SweepResult(skipped=done)
    log(f"sweep: {len(specs)} runs, {len(done)} finished before, {len(pending)} to run ({backend}, jobs={jobs})")
    if not pending:
        return result
    _log_cache_check(pending, log)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(pending), desc="sweep", unit="run", disable=None if progress else True, dynamic_ncols=True)

    def emit(line: str) -> None:
        if bar.disable:
            log(line)
        else:
            bar.write(line)  # above the progress bar, not through it

    def finish(spec: RunSpec, record: dict | None, error: str | BaseException | None) -> None:
        bar.update(1)
        if isinstance(error, RunLeft):  # another process ran it or runs it: say so, count it apart
            if error.finished:
                result.skipped.append(spec)
            else:
                result.left.append((spec, error.message))
            emit(f"  {spec.label()}: {error.message}")
            return
        if error is not None:
            result.failed.append((spec, str(error)))
            emit(f"  FAILED {spec.label()}: {error}")
            return
        result.finished.append(record)
        line = f"  {spec.label()}: val {format_accuracy(record['val_acc'], 6)}  test {format_accuracy(record['test_acc'], 6)}"
        if record.get("targets"):
            line += "  " + " ".join(f"{k} {format_accuracy(v)}" for k, v in record["targets"].items())
        emit(line)

    try:
        if backend == "ray":
            _run_ray(pending, finish, jobs=jobs, address=ray_address, device=device, tracking=tracking)
        elif jobs == 1:
            for spec in pending:
                try:
                    record = execute_run(spec, device=device, progress=progress, tracking=tracking)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except RunLeft as left:
                    finish(spec, None, left)
                except Exception as exc:  # noqa: BLE001 - one failing run must not stop the sweep
                    finish(spec, None, _describe(exc))
                else:
                    finish(spec, record, None)
        else:
            _run_local_pool(pending, finish, jobs=jobs, device=device, tracking=tracking)
    except KeyboardInterrupt:
        result.interrupted = True
        log(f"sweep interrupted: {len(result.finished)} runs finished now, {len(done)} before; run the same command again to resume")
    finally:
        bar.close()
    return result


def _log_cache_check(pending: Sequence[RunSpec], log: Callable[[str], None]) -> None:
    """``hgadapter check`` on the caches the pending runs read, as one block of warnings (docs/check.md)."""
    from hgadapter.check import sweep_warnings

    lines = sweep_warnings(pending)
    if lines:
        log(f"cache check: {len(lines)} warning(s) (details: hgadapter check CACHE):")
        for line in lines[:20]:
            log(f"  ! {line}")
        if len(lines) > 20:
            log(f"  ! ... and {len(lines) - 20} more")


def _describe(exc: BaseException) -> str:
    message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return f"{type(exc).__name__}: {message.splitlines()[0] if message else ''}"


def _payload(spec: RunSpec, *, device: str | None, threads: int | None, tracking: TrackingConfig | None = None) -> dict:
    return {"spec": dataclasses.asdict(spec), "device": device, "threads": threads, "tracking": None if tracking is None else dataclasses.asdict(tracking)}


def spread_device(device: str | None, index: int, gpus: int) -> str | None:
    """The device of the ``index``-th run: plain ``cuda`` (or ``auto`` with GPUs) goes round-robin
    over ``cuda:0 .. cuda:gpus-1``; anything else (``cpu``, ``cuda:1``, ``None``) is kept."""
    if gpus > 1 and device in ("cuda", "auto"):
        return f"cuda:{index % gpus}"
    return device


def _run_local_pool(pending: list[RunSpec], finish: Callable, *, jobs: int, device: str | None, tracking: TrackingConfig | None = None) -> None:
    import torch

    threads = max(1, (os.cpu_count() or 1) // jobs)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    context = multiprocessing.get_context("spawn")  # no fork after torch has started threads
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=jobs, mp_context=context, initializer=_die_with_parent, initargs=(os.getpid(),)
    ) as pool:
        futures = {
            pool.submit(_execute_payload, _payload(s, device=spread_device(device, i, gpus), threads=threads, tracking=tracking)): s
            for i, s in enumerate(pending)
        }
        try:
            for future in concurrent.futures.as_completed(futures):
                spec = futures[future]
                try:
                    finish(spec, future.result(), None)
                except RunLeft as left:
                    finish(spec, None, left)
                except concurrent.futures.process.BrokenProcessPool as exc:
                    finish(spec, None, f"worker process died ({exc})")
                except Exception as exc:  # noqa: BLE001
                    finish(spec, None, _describe(exc))
        except KeyboardInterrupt:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _run_ray(pending: list[RunSpec], finish: Callable, *, jobs: int, address: str | None, device: str | None, tracking: TrackingConfig | None = None) -> None:
    try:
        import ray
    except ImportError:
        raise ConfigError("--backend ray needs Ray: pip install 'hgadapter[ray]' (or pip install ray)") from None
    started = False
    if not ray.is_initialized():
        # A local instance sized to `jobs` when no cluster address is given.
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address is None:
            kwargs["num_cpus"] = jobs
        ray.init(address=address, **kwargs)
        started = True
    try:
        gpus = 1 if device is not None and device.startswith("cuda") else 0
        task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(_execute_payload)
        queue = list(pending)
        in_flight: dict[Any, RunSpec] = {}
        while queue or in_flight:
            while queue and len(in_flight) < jobs:
                spec = queue.pop(0)
                in_flight[task.remote(_payload(spec, device=device, threads=1, tracking=tracking))] = spec
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                spec = in_flight.pop(ref)
                try:
                    finish(spec, ray.get(ref), None)
                except Exception as exc:  # noqa: BLE001 - Ray wraps the task's exception
                    cause = getattr(exc, "cause", None) or exc
                    finish(spec, None, cause if isinstance(cause, RunLeft) else _describe(cause))
    finally:
        if started:
            ray.shutdown()


# --------------------------------------------------------------------------------------------
# Command line


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="experiment YAML files (experiments/fewshot/imagenet.yaml, ...)")
    parser.add_argument("--out", type=output_path, default="runs", help="folder the run directories go under (default: runs)")
    parser.add_argument("--features-root", default=None, help=f"where the experiments' feature cache folders are (default: ${FEATURES_ENV} or ./features)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (default 1: in this process)")
    parser.add_argument("--backend", choices=BACKENDS, default="local", help="local processes or a Ray cluster (default: local)")
    parser.add_argument("--ray-address", default=None, help="Ray cluster address, e.g. auto; default: start a local Ray instance")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N for every run (default: each config's)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and whether they are finished; run nothing")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_tracking_arguments(parser)


def run_sweep_command(args: argparse.Namespace) -> int:
    if args.dry_run:
        from hgadapter.data.cache import CacheError

        specs = [s for f in args.files for s in expand_experiment(f, out_root=args.out, features_root=args.features_root)]
        try:
            pending, done = plan_runs(specs)
        except CacheError as exc:  # show the plan anyway: a dry run is how one learns what to extract
            for spec in specs:
                print(f"planned  {spec.out_dir}")
            print(f"{len(specs)} runs; cannot tell which are finished: {exc}")
            return 0
        for spec in done:
            print(f"done     {spec.out_dir}")
        for spec in pending:
            print(f"pending  {spec.out_dir}")
        print(f"{len(specs)} runs: {len(done)} finished, {len(pending)} to run")
        return 0
    tracking = tracking_from_args(args, args.out)  # a missing tracker package stops here, before any run
    result = run_sweep(
        args.files,
        out_root=args.out,
        features_root=args.features_root,
        jobs=args.jobs,
        backend=args.backend,
        ray_address=args.ray_address,
        device=args.device,
        progress=not args.quiet,
        tracking=tracking,
    )
    left = f", {len(result.left)} left to another process running them" if result.left else ""
    print(f"sweep: {len(result.finished)} runs finished, {len(result.skipped)} already done{left}, {len(result.failed)} failed -> {args.out}")
    for spec, error in result.failed:
        print(f"  failed: {spec.out_dir}: {error}", file=sys.stderr)
    if result.interrupted:
        return 130
    return 1 if result.failed else 0
