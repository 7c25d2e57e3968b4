"""Every method on the same feature cache, under one protocol, in one table (docs/baselines.md).

For each (method, shots, seed): the method fits and chooses its hyper-parameters on
:func:`~hgadapter.protocol.selection_data` (few-shot training set + validation split), then
:func:`~hgadapter.protocol.score_on_test` reads the test split once. ``out_dir`` receives:

- ``results.json``: one record per (method, shots, seed), rewritten atomically after each run,
  with val/test accuracy (%), train and fit seconds, chosen hyper-parameters and the resolved
  method config. A record whose method config and cache match is reused, so an interrupted or
  extended comparison resumes where it stopped.
- ``results.md``: mean ± sample standard deviation over seeds per method and shots.
- ``results.png`` / ``results.pdf``: grouped bars of test accuracy with ± std error bars.

The directory accumulates: the table and the chart cover every record in ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hgadapter._io import atomic_write, atomic_write_json, atomic_write_text, json_digest, json_safe
from hgadapter.methods import Method, create_method, list_methods
from hgadapter.config import ConfigError
from hgadapter.data.cache import FeatureCache, dataset_name
from hgadapter.runner import run_method

__all__ = [
    "DEFAULT_METHODS",
    "RECORD_KEYS",
    "compare",
    "format_table",
    "plot_results",
    "load_results",
    "add_compare_arguments",
    "run_compare",
]

# The baselines of the issue plus the full method; `--methods` adds the variants.
DEFAULT_METHODS: tuple[str, ...] = (
    "zero_shot",
    "linear_probe",
    "tip_adapter",
    "tip_adapter_f",
    "taskres",
    "clip_adapter",
    "graphadapter",
    "hegraphadapter",
)
RECORD_KEYS: tuple[str, ...] = (
    "method",
    "shots",
    "seed",
    "val_acc",
    "test_acc",
    "train_seconds",
    "fit_seconds",
    "epochs",
    "hparams",
    "dataset",
    "synthetic",
    "device",
    "config_hash",
    "cache_key",
    "config",
)
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
CHART_STEM = "results"

# Okabe & Ito's colour-blind-safe palette, with grey in place of black (black error bars must
# stay visible); hatches tell methods apart beyond eight.
_PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442", "#999999")
_HATCHES = ("", "//", "..", "xx", "\\\\")


# --------------------------------------------------------------------------------------------
# Running


def _cache_key(cache: FeatureCache) -> str:
    """Fingerprint of what determines the features: class names, dim, logit scale and sidecar meta."""
    return json_digest({"classnames": list(cache.classnames), "dim": cache.dim, "logit_scale": cache.logit_scale, "meta": cache.meta})


def load_results(out_dir: str | Path) -> list[dict]:
    """The records of ``out_dir/results.json`` (``[]`` if there is none)."""
    path = Path(out_dir) / RESULTS_JSON
    if not path.is_file():
        return []
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read previous results ({exc}); move it away to start afresh") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) and {"method", "shots", "seed"} <= set(r) for r in records):
        raise ValueError(f"{path}: not a list of result records; move it away to start afresh")
    return records


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
) -> list[dict]:
    """Fit every method on every (shots, seed) training set of ``cache``, test once, write the outputs.

    Args:
        cache: the features; it must hold a training set for every (shots, seed).
        methods: names from :func:`hgadapter.methods.list_methods`.
        shots / seeds: the few-shot sets to run.
        out_dir: where results.json, results.md and the chart go (created if missing).
        progress: show training progress bars.
        device: ``auto`` (CUDA if present), ``cpu``, ``cuda`` or ``cuda:N``.
        config_files: method name -> YAML overriding its shipped config.
        overrides: method name -> ``key=value`` strings.
        log: called with one line per run (``None`` for silence).

    Returns:
        The records of the requested (method, shots, seed) grid, in that order.

    Raises:
        ConfigError: an unknown method, or a bad method config (before anything runs).
        CacheError: a (shots, seed) training set missing from ``cache`` (before anything runs).
    """
    log = log or (lambda line: None)
    resolved = _resolve_methods(methods, config_files, overrides)
    for k in shots:
        for s in seeds:
            cache.train_set(k, s)  # fail before the first run, not after an hour
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = load_results(out)
    index = {(r["method"], r["shots"], r["seed"]): i for i, r in enumerate(records)}
    cache_key = _cache_key(cache)
    dataset = dataset_name(cache.meta)
    synthetic = bool(cache.meta.get("synthetic", False))
    grid: list[dict] = []
    for method in resolved:
        config = json_safe(method.config_dict())
        config_hash = json_digest({"method": method.name, "config": config})
        for k in shots:
            for s in seeds:
                key = (method.name, k, s)
                old = records[index[key]] if key in index else None
                if old is not None and old.get("config_hash") == config_hash and old.get("cache_key") == cache_key:
                    log(f"  {method.name:22s} shots {k:2d} seed {s}: done before (test {old['test_acc']:.2f}), skipped")
                    grid.append(old)
                    continue
                start = time.perf_counter()
                # the same fit -> select on validation -> test once path as `hgadapter run` and sweeps
                run = run_method(method, cache, shots=k, seed=s, device=device, progress=progress)
                fit_seconds = time.perf_counter() - start
                record = {
                    "method": method.name,
                    "shots": k,
                    "seed": s,
                    **{key_: run[key_] for key_ in ("val_acc", "test_acc", "train_seconds")},
                    "fit_seconds": round(fit_seconds, 3),
                    **{key_: run[key_] for key_ in ("epochs", "hparams")},
                    "dataset": dataset,
                    "synthetic": synthetic,
                    "device": run["device"],
                    "config_hash": config_hash,
                    "cache_key": cache_key,
                    "config": config,
                }
                if old is not None:
                    records[index[key]] = record
                else:
                    index[key] = len(records)
                    records.append(record)
                atomic_write_json(out / RESULTS_JSON, records)
                grid.append(record)
                log(f"  {method.name:22s} shots {k:2d} seed {s}: val {record['val_acc']:6.2f}  test {record['test_acc']:6.2f}  ({fit_seconds:.1f} s)")
    title = _title(records)
    atomic_write_text(out / RESULTS_MD, format_table(records, title=title))
    plot_results(records, out / CHART_STEM, title=title)
    return grid


# --------------------------------------------------------------------------------------------
# Reporting


def _title(records: Sequence[dict]) -> str:
    datasets = sorted({str(r.get("dataset")) for r in records}) or ["?"]
    synthetic = any(r.get("synthetic") for r in records)
    return f"{', '.join(datasets)}: test accuracy, mean ± std over seeds" + (" (synthetic task)" if synthetic else "")


def _groups(records: Sequence[dict]) -> tuple[list[str], list[int], dict[tuple[str, int], list[dict]]]:
    methods: list[str] = []
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in records:
        if r["method"] not in methods:
            methods.append(r["method"])
        groups.setdefault((r["method"], r["shots"]), []).append(r)
    shots = sorted({r["shots"] for r in records})
    return methods, shots, groups


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 denominator; 0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def format_table(records: Sequence[dict], *, title: str | None = None) -> str:
    """Markdown tables of ``records``: test accuracy per method x shots, then the details.

    Each cell is the mean ± sample standard deviation (n - 1) over the seeds present; ``(n)``
    follows when fewer than three seeds are in. Methods keep their first-seen order.
    """
    methods, shots, groups = _groups(records)
    lines = []
    if title:
        lines += [f"### {title}", ""]
    if not records:
        return "\n".join([*lines, "(no results)"]) + "\n"
    header = ["method", *[f"{k} shot" + ("s" if k != 1 else "") for k in shots]]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in methods:
        cells = [m]
        for k in shots:
            rows = groups.get((m, k), [])
            if not rows:
                cells.append("–")
                continue
            mean, std = _mean_std([r["test_acc"] for r in rows])
            cells.append(f"{mean:.2f} ± {std:.2f}" + (f" ({len(rows)})" if len(rows) < 3 else ""))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| method | shots | seeds | val acc (%) | test acc (%) | fit s / run |",
        "|---|---|---|---|---|---|",
    ]
    for m in methods:
        for k in shots:
            rows = groups.get((m, k), [])
            if not rows:
                continue
            val, val_sd = _mean_std([r["val_acc"] for r in rows])
            test, test_sd = _mean_std([r["test_acc"] for r in rows])
            secs = statistics.fmean([r.get("fit_seconds", r.get("train_seconds", 0.0)) for r in rows])
            seeds = ",".join(str(r["seed"]) for r in sorted(rows, key=lambda r: r["seed"]))
            lines.append(f"| {m} | {k} | {seeds} | {val:.2f} ± {val_sd:.2f} | {test:.2f} ± {test_sd:.2f} | {secs:.1f} |")
    return "\n".join(lines) + "\n"


def plot_results(records: Sequence[dict], stem: str | Path, *, title: str | None = None) -> list[Path]:
    """Grouped bar chart of test accuracy (mean ± sample std) per shots and method.

    Writes ``stem.png`` and ``stem.pdf`` (atomically) and returns their paths. Uses
    matplotlib's object API, so it needs no display and leaves pyplot's state alone.
    """
    from matplotlib.figure import Figure

    methods, shots, groups = _groups(records)
    stem = Path(stem)
    fig = Figure(figsize=(max(6.0, 1.2 + 0.35 * len(methods) * max(len(shots), 1)), 4.2), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(len(methods), 1)
    for i, m in enumerate(methods):
        xs, means, stds = [], [], []
        for j, k in enumerate(shots):
            rows = groups.get((m, k), [])
            if rows:
                mean, std = _mean_std([r["test_acc"] for r in rows])
                xs.append(j - 0.4 + width * (i + 0.5))
                means.append(mean)
                stds.append(std)
        ax.bar(
            xs, means, width, yerr=stds, capsize=2, label=m,
            color=_PALETTE[i % len(_PALETTE)], hatch=_HATCHES[(i // len(_PALETTE)) % len(_HATCHES)],
            edgecolor="white", linewidth=0.5, error_kw={"elinewidth": 0.8},
        )
    ax.set_xticks(range(len(shots)), [f"{k} shot" + ("s" if k != 1 else "") for k in shots])
    ax.set_ylabel("test accuracy (%)")
    finite = [r["test_acc"] for r in records if math.isfinite(r["test_acc"])]
    if finite:
        low = max(0.0, 5.0 * math.floor((min(finite) - 5.0) / 5.0))
        ax.set_ylim(low, min(100.0, max(finite) + 5.0))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title(title or _title(records), fontsize=10)
    ax.legend(fontsize=8, ncols=min(4, max(len(methods), 1)), loc="lower center", bbox_to_anchor=(0.5, 1.08), frameon=False)
    paths = []
    for suffix in (".png", ".pdf"):
        path = stem.with_suffix(suffix)
        atomic_write(path, lambda tmp, s=suffix: fig.savefig(tmp, format=s[1:], dpi=150))
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------
# Command line: `hgadapter compare`


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``hgadapter compare``'s arguments to ``parser``."""
    parser.add_argument("--features", required=True, help="feature cache directory (docs/feature-cache.md)")
    parser.add_argument(
        "--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="METHOD",
        help=f"methods to compare (default: {' '.join(DEFAULT_METHODS)}); available: {' '.join(list_methods())}",
    )
    parser.add_argument("--shots", type=int, nargs="+", default=None, help="K values (default: every K the cache holds for the seeds)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="few-shot sampling seeds (default: 1 2 3)")
    parser.add_argument("--out", required=True, help="output directory (results.json, results.md, results.png/.pdf)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--config", dest="method_configs", action="append", default=[], metavar="METHOD=YAML",
        help="a YAML file overriding METHOD's experiments/methods config (repeatable)",
    )
    parser.add_argument(
        "--set", dest="method_overrides", action="append", default=[], metavar="METHOD.KEY=VALUE",
        help="override one method's config key, e.g. taskres.epochs=100 or hegraphadapter:t.train.lr=0.01 (repeatable)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _split_overrides(items: Sequence[str], methods: Sequence[str]) -> dict[str, list[str]]:
    """``METHOD.KEY=VALUE`` -> ``{METHOD: ["KEY=VALUE"]}``; METHOD is the longest matching name."""
    out: dict[str, list[str]] = {}
    for item in items:
        target, sep, _ = item.partition("=")
        matches = [m for m in methods if target.startswith(m + ".")]
        if not sep or not matches:
            raise ConfigError(f"--set {item!r}: expected METHOD.KEY=VALUE with METHOD one of the compared methods {list(methods)}")
        method = max(matches, key=len)
        out.setdefault(method, []).append(item[len(method) + 1 :])
    return out


def _split_configs(items: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
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
    configs = _split_configs(args.method_configs)
    seeds = list(dict.fromkeys(args.seeds))
    if args.shots is None:
        present = list_train_sets(args.features)
        shots = sorted({k for k, s in present if all((k, s2) in present for s2 in seeds)})
        if not shots:
            raise CacheError(f"{args.features}: no K has training sets for every seed {seeds}; present: {present}")
    else:
        shots = list(dict.fromkeys(args.shots))
    cache = load_cache(args.features, train_keys=[(k, s) for k in shots for s in seeds])
    tag = " (SYNTHETIC task: says nothing about real CLIP)" if cache.meta.get("synthetic") else ""
    print(f"compare {len(methods)} methods x shots {shots} x seeds {seeds} on {dataset_name(cache.meta)}{tag}")
    start = time.perf_counter()
    compare(
        cache, methods, shots, seeds, args.out,
        progress=not args.quiet, device=args.device, config_files=configs, overrides=overrides,
    )
    out = Path(args.out)
    print()
    print((out / RESULTS_MD).read_text(encoding="utf-8"))
    print(f"{time.perf_counter() - start:.0f} s; wrote {out / RESULTS_JSON}, {out / RESULTS_MD}, {out / CHART_STEM}.png/.pdf")
    return 0
