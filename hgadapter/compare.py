"""Every method on the same feature cache, under one protocol, in one table (docs/baselines.md).

A comparison is a sweep over one cache held in memory (:mod:`hgadapter.sweep`): for each
(method, shots, seed) the method fits and chooses its hyper-parameters on
:func:`~hgadapter.protocol.selection_data` (few-shot training set + validation split), then
:func:`~hgadapter.protocol.score_on_test` reads the test split once. ``out_dir`` receives:

- one run directory per (method, shots, seed), ``<method>/<shots>shot-seed<seed>``, exactly as a
  sweep writes it (:func:`hgadapter.sweep.run_path`, :mod:`hgadapter.runner`). A run whose
  directory holds a ``metrics.json`` with the same hash (method config, shots, seed, cache) is
  finished and skipped (:func:`hgadapter.sweep.is_finished`), so an interrupted or extended
  comparison resumes where it stopped and a changed config re-runs only that method.
- ``results.md``: :mod:`hgadapter.report`'s tables of every run in ``out_dir`` (mean ± sample
  standard deviation over seeds), with a table of validation accuracy and time per run.
- ``results.tex``: the same tables in LaTeX (booktabs, :mod:`hgadapter.report_tex`).
- ``results.json`` / ``results.csv``: the same tables, machine-readable (one row per cell:
  method, shots, mean, std, n, ...; the layout of ``hgadapter report``'s ``report.json``/``.csv``),
  and in ``results.json`` also one entry per run (method, shots, seed, val/test accuracy, seconds).
- ``results.png`` / ``results.pdf``: grouped bars of test accuracy with ± std error bars
  (:func:`viz.bars.plot_accuracy_bars`).

The directory accumulates: the table and the chart cover every run below ``out_dir``, and
``hgadapter report`` / ``hgadapter figures`` read it like any folder of runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hgadapter._cli import output_path
from hgadapter._io import atomic_write_json, atomic_write_text, check_output_dir
from hgadapter.config import ConfigError
from hgadapter.data.cache import FeatureCache, dataset_name
from hgadapter.methods import Method, create_method, list_methods
from hgadapter.records import format_accuracy, load_record, load_records
from hgadapter.sweep import RunLeft, RunSpec, execute_run, is_finished, memory_fingerprint, method_digest, run_hash, run_path
from hgadapter.tracking import TrackingConfig, add_tracking_arguments, tracking_from_args

__all__ = [
    "DEFAULT_METHODS",
    "RECORD_KEYS",
    "EXPERIMENT",
    "compare",
    "format_table",
    "write_outputs",
    "add_compare_arguments",
    "run_compare",
]

# The baselines of the issue plus the full method; `--methods` adds the variants.
DEFAULT_METHODS: tuple[str, ...] = (
    "zero_shot",
    "linear_probe",
    "tip_adapter",
    "tip_adapter_f",
    "gda",
    "lp_plus_plus",
    "clap",
    "proker",
    "proto_clip_f_q",  # the paper's PROTO-CLIP row; proto_clip_f with --methods
    "ape",
    "ape_t",
    "timo",
    "timo_s",
    "taskres",
    "clip_adapter",
    "graphadapter",
    "coop",  # runs the cache's CLIP text encoder: skipped, with a line, on a cache without one (the synthetic demo)
    "hegraphadapter",
)
# Keys every record of a comparison has (those of hgadapter.runner's record plus the sweep's);
# HeGraphAdapter runs add variant, classifier, engine, alpha, beta, trained ones trainable_params.
RECORD_KEYS: tuple[str, ...] = (
    "method",
    "shots",
    "seed",
    "val_acc",
    "test_acc",
    "train_seconds",
    "epochs",
    "hparams",
    "dataset",
    "backbone",
    "synthetic",
    "device",
    "experiment",
    "params",
    "config_hash",
)
EXPERIMENT = "compare"  # the `experiment` key of a comparison's records
RESULTS_MD = "results.md"
RESULTS_TEX = "results.tex"
RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
# A run's entry in results.json: what identifies it and what it measured.
_RUN_KEYS: tuple[str, ...] = ("method", "dataset", "backbone", "shots", "seed", "val_acc", "test_acc", "train_seconds", "run_dir")
CHART_STEM = "results"


# --------------------------------------------------------------------------------------------
# Running


def _resolve_methods(
    methods: Sequence[str],
    config_files: Mapping[str, str | Path] | None,
    overrides: Mapping[str, Sequence[str]] | None,
) -> list[Method]:
    if not methods:
        raise ConfigError(f"no methods to compare; available: {list_methods()}")
    config_files, overrides = dict(config_files or {}), dict(overrides or {})
    for name in [*config_files, *overrides]:
        if name not in methods:
            raise ConfigError(f"a config or override is given for method {name!r}, which is not among the methods compared {list(methods)}")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"methods listed twice: {sorted({m for m in methods if list(methods).count(m) > 1})}")
    resolved = [create_method(name, config_file=config_files.get(name), overrides=overrides.get(name, ())) for name in methods]
    names = [m.name for m in resolved]  # `hegraphadapter:full` resolves to `hegraphadapter`
    if len(set(names)) != len(names):
        raise ConfigError(f"methods resolve to the same name twice: {names}")
    return resolved


def compare(
    cache: FeatureCache,
    methods: Sequence[str],
    shots: Sequence[int],
    seeds: Sequence[int],
    out_dir: str | Path,
    *,
    progress: bool = True,
    device: str = "auto",
    config_files: Mapping[str, str | Path] | None = None,
    overrides: Mapping[str, Sequence[str]] | None = None,
    log: Any = print,
    tracking: TrackingConfig | None = None,
) -> list[dict]:
    """Fit every method on every (shots, seed) training set of ``cache``, test once, write the outputs.

    Args:
        cache: the features; it must hold a training set for every (shots, seed).
        methods: names from :func:`hgadapter.methods.list_methods`.
        shots / seeds: the few-shot sets to run.
        out_dir: where the run directories, results.md and the chart go (created if missing).
        progress: show training progress bars.
        device: ``auto`` (CUDA if present), ``cpu``, ``cuda`` or ``cuda:N``.
        config_files: method name -> YAML overriding its shipped config.
        overrides: method name -> ``key=value`` strings.
        log: called with one line per run (``None`` for silence).
        tracking: a :class:`hgadapter.tracking.TrackingConfig` that watches every run executed.

    A method that needs what the cache lacks (:meth:`~hgadapter.methods.Method.unmet_need`:
    CoOp needs the CLIP encoder that a synthetic cache has not) is skipped with one logged line.

    Returns:
        The records of the requested (method, shots, seed) grid, in that order, as their
        ``metrics.json`` files hold them (none for a skipped method); a run that another
        process is running into the same folder is left to it (logged) and missing here.

    Raises:
        ConfigError: an unknown method, or a bad method config (before anything runs).
        CacheError: a (shots, seed) training set missing from ``cache`` (before anything runs).
    """
    log = log or (lambda line: None)
    config_files, overrides = dict(config_files or {}), dict(overrides or {})
    resolved = _resolve_methods(methods, config_files, overrides)
    for k in shots:
        for s in seeds:
            cache.train_set(k, s)  # fail before the first run, not after an hour
    out = check_output_dir(out_dir)
    grid: list[dict] = []
    for requested, method in zip(methods, resolved):
        unmet = method.unmet_need(cache.meta)
        if unmet is not None:  # e.g. CoOp on a synthetic cache: the other methods still run
            log(f"  {method.name:22s} skipped: {unmet}")
            continue
        spec = RunSpec(
            experiment=EXPERIMENT,
            method=method.name,
            dataset=dataset_name(cache.meta),
            backbone=None,  # the runner names it from the cache's encoder id
            shots=0,
            seed=0,
            features="",  # in memory: handed to execute_run
            targets={},
            config_file=None if config_files.get(requested) is None else str(config_files[requested]),
            overrides=tuple(overrides.get(requested, ())),
            params={},
            out_dir="",
            config_digest=method_digest(method),
        )
        for k in shots:
            for s in seeds:
                run = dataclasses.replace(spec, shots=k, seed=s, out_dir=str(run_path(out, method.name, k, s)))
                run = dataclasses.replace(run, config_hash=run_hash(run, memory_fingerprint(cache, (k, s)), {}))
                where = f"  {method.name:22s} shots {k:2d} seed {s}"
                if is_finished(run.out_dir, run.config_hash):
                    record = load_record(run.out_dir)
                    log(f"{where}: done before (test {format_accuracy(record['test_acc'])}), skipped")
                else:
                    try:
                        # the same fit -> select on validation -> test once path as `hgadapter run` and sweeps
                        record = execute_run(run, cache=cache, device=device, progress=progress, tracking=tracking)
                    except RunLeft as left:  # another process runs it (or just ran it) into the same folder
                        log(f"{where}: {left.message}")
                        if not left.finished:
                            continue
                        record = load_record(run.out_dir)
                    else:
                        log(f"{where}: val {format_accuracy(record['val_acc'], 6)}  test {format_accuracy(record['test_acc'], 6)}  ({record['train_seconds']:.1f} s)")
                grid.append(record)
    write_outputs(out)
    return grid


# --------------------------------------------------------------------------------------------
# Reporting


def format_table(records: Sequence[dict], *, title: str | None = None, paper: Mapping[str, Any] | None = None) -> str:
    """Markdown tables of ``records``: :mod:`hgadapter.report`'s layout plus the selection table.

    Each cell is the mean ± sample standard deviation (n - 1) over the seeds present, ``n=``
    when fewer than three; ``paper`` (:func:`hgadapter.paper_results.load_paper_results`) puts
    the paper's value beside the cells it reports.
    """
    from hgadapter.report import build_report, format_markdown

    if not records:
        return f"# {title or 'Comparison'}\n\n(no results)\n"
    return format_markdown(build_report(records, paper, selection=True), title=title or "Comparison")


def write_outputs(out_dir: str | Path) -> list[Path]:
    """Write ``results.md``, ``results.tex``, ``results.json``, ``results.csv`` and the bar chart of every run below ``out_dir``; returns their paths."""
    from hgadapter.paper_results import ReportError, load_paper_results
    from viz.bars import plot_accuracy_bars

    out = Path(out_dir)
    records = load_records(out)
    try:
        paper = load_paper_results()
    except ReportError:  # the runs are done and stay valid; only the paper's values are missing
        paper = None
    title = f"Comparison: {out.name}"
    if not records:
        written = [atomic_write_text(out / RESULTS_MD, format_table(records, title=title, paper=paper))]
    else:  # one report, four renderings: markdown, LaTeX (booktabs; docs/reports.md), JSON and CSV
        from hgadapter.report import build_report, format_csv, format_markdown, report_payload
        from hgadapter.report_tex import format_latex

        report = build_report(records, paper, selection=True)
        runs = [{k: r.get(k) for k in _RUN_KEYS} for r in records]
        written = [
            atomic_write_text(out / RESULTS_MD, format_markdown(report, title=title)),
            atomic_write_text(out / RESULTS_TEX, format_latex(report, title=title)),
            atomic_write_json(out / RESULTS_JSON, {**report_payload(report), "run_records": runs}),
            atomic_write_text(out / RESULTS_CSV, format_csv(report)),
        ]
    plot_accuracy_bars(records, out / CHART_STEM, formats=("png", "pdf"))
    return [*written, out / f"{CHART_STEM}.png", out / f"{CHART_STEM}.pdf"]


# --------------------------------------------------------------------------------------------
# Command line: `hgadapter compare`


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``hgadapter compare``'s arguments to ``parser``."""
    parser.add_argument("--features", required=True, help="feature cache directory (docs/feature-cache.md)")
    parser.add_argument(
        "--methods", "--method", dest="methods", nargs="+", default=list(DEFAULT_METHODS), metavar="METHOD",
        help=f"methods to compare (default: {' '.join(DEFAULT_METHODS)}); available: {' '.join(list_methods())}",
    )
    parser.add_argument("--shots", type=int, nargs="+", default=None, help="K values (default: every K the cache holds for the seeds)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="few-shot sampling seeds (default: 1 2 3)")
    parser.add_argument("--out", type=output_path, required=True, help="output directory (one run directory per method, shots and seed; results.md, results.png/.pdf)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto, CUDA when available)")
    parser.add_argument(
        "--config", dest="method_configs", action="append", default=[], metavar="[METHOD=]YAML",
        help="a YAML file overriding METHOD's experiments/methods config (repeatable; METHOD= may be left out when one method is compared)",
    )
    parser.add_argument(
        "--set", dest="method_overrides", action="append", default=[], metavar="[METHOD.]KEY=VALUE",
        help="override one method's config key, e.g. taskres.epochs=100 or hegraphadapter:t.train.lr=0.01 "
             "(repeatable; METHOD. may be left out when one method is compared)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_tracking_arguments(parser)


def _split_overrides(items: Sequence[str], methods: Sequence[str]) -> dict[str, list[str]]:
    """``METHOD.KEY=VALUE`` -> ``{METHOD: ["KEY=VALUE"]}``; METHOD is the longest matching name."""
    out: dict[str, list[str]] = {}
    for item in items:
        target, sep, _ = item.partition("=")
        matches = [m for m in methods if target.startswith(m + ".")]
        if sep and not matches and len(methods) == 1:  # one method: `--set KEY=VALUE`, as `run` takes it
            out.setdefault(methods[0], []).append(item)
            continue
        if not sep or not matches:
            raise ConfigError(f"--set {item!r}: expected METHOD.KEY=VALUE with METHOD one of the compared methods {list(methods)}")
        method = max(matches, key=len)
        out.setdefault(method, []).append(item[len(method) + 1 :])
    return out


def _split_configs(items: Sequence[str], methods: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        if len(methods) == 1 and (Path(item).is_file() or "=" not in item):  # one method: `--config FILE`, as `run` takes it
            out[methods[0]] = item
            continue
        method, sep, path = item.partition("=")
        if not sep or not method or not path:
            raise ConfigError(f"--config {item!r}: expected METHOD=PATH, e.g. taskres=my_taskres.yaml")
        out[method] = path
    return out


def run_compare(args: argparse.Namespace) -> int:
    """Run ``hgadapter compare`` from parsed arguments; prints the table and the output paths."""
    from hgadapter.data.cache import CacheError
    from hgadapter.data.io import list_train_sets, load_cache

    methods = list(dict.fromkeys(args.methods))
    overrides = _split_overrides(args.method_overrides, methods)
    configs = _split_configs(args.method_configs, methods)
    seeds = list(dict.fromkeys(args.seeds))
    if args.shots is None:
        present = list_train_sets(args.features)
        shots = sorted({k for k, s in present if all((k, s2) in present for s2 in seeds)})
        if not shots:
            raise CacheError(f"{args.features}: no K has training sets for every seed {seeds}; present: {present}")
    else:
        shots = list(dict.fromkeys(args.shots))
    tracking = tracking_from_args(args, args.out)  # a missing tracker package stops here, before any run
    cache = load_cache(args.features, train_keys=[(k, s) for k in shots for s in seeds])
    tag = " (SYNTHETIC task: says nothing about real CLIP)" if cache.meta.get("synthetic") else ""
    print(f"compare {len(methods)} methods x shots {shots} x seeds {seeds} on {dataset_name(cache.meta)}{tag}")
    start = time.perf_counter()
    compare(
        cache, methods, shots, seeds, args.out,
        progress=not args.quiet, device=args.device, config_files=configs, overrides=overrides, tracking=tracking,
    )
    out = Path(args.out)
    print()
    print((out / RESULTS_MD).read_text(encoding="utf-8"))
    print(f"{time.perf_counter() - start:.0f} s; wrote run directories under {out}, {out / RESULTS_MD} (.json, .csv, .tex), {out / CHART_STEM}.png/.pdf")
    return 0
