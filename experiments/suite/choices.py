"""Measure one configuration choice on the development suite (issue 10), validation first.

Runs the given methods on every suite task (``experiments/suite/tasks.yaml``) at the given shots
and seeds, in memory, through the same fit -> select on val -> test once path as ``hgadapter run``,
and prints val and test accuracy per task and their means over the suite. Defaults are chosen on
the *val* mean; the test column is printed only to be reported beside it.

    python experiments/suite/choices.py --methods hegraphadapter hegraphadapter:t \
        --set graph.contrast=neg_cos --label neg_cos --out runs/choices.jsonl

With ``--nested`` the question is how well a *selection rule* generalises, under the real
protocol's validation size: each task is built with ``4 + HELD`` validation images per class; a run
selects on the first min(K, 4) per class (CoOp's protocol: 1 image per class at one shot) and is
scored on the other HELD per class, which the run never saw. The printed ``test`` column is then
that held-out validation accuracy, not the task's test split, so a default chosen on it is still
chosen without test.

SYNTHETIC tasks: the numbers say nothing about real CLIP accuracy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import dataclasses

import torch

from hgadapter.data.cache import FeatureCache
from hgadapter.methods import create_method
from hgadapter.runner import run_method
from hgadapter.data.synthetic import SyntheticTaskConfig, build_synthetic_task, list_presets, preset_config



def suite_configs(names: list[str] | None = None) -> dict[str, SyntheticTaskConfig]:
    """The suite's task configs (``hgadapter synth --preset``'s), in file order; ``names`` picks some."""
    tasks = list_presets()
    unknown = sorted(set(names or ()) - set(tasks))
    if unknown:
        raise SystemExit(f"unknown task(s) {unknown}; available: {tasks}")
    return {n: preset_config(n) for n in tasks if not names or n in names}


HELD = 8  # held-out validation images per class in --nested mode


def nested_view(cache: FeatureCache, *, shots: int, per_class: int) -> FeatureCache:
    """``cache`` with validation = the first min(shots, 4) images per class and test = the last
    HELD validation images per class (``per_class`` = 4 + HELD validation images per class)."""
    labels = cache.val_labels
    rank = torch.arange(len(labels)) - torch.searchsorted(labels, labels)  # position within its class
    select, held = rank < min(shots, 4), rank >= per_class - HELD
    return dataclasses.replace(
        cache,
        val_features=cache.val_features[select], val_labels=labels[select],
        test_features=cache.val_features[held], test_labels=labels[held],
    )


def summarize(paths: list[str], *, method: str, tasks: list[str] | None = None) -> str:
    """Markdown: one row per choice (label) of ``method``: val / test per task (mean over the
    shots run), the suite mean per shots and overall, over ``tasks`` (all when ``None``). The rows
    are in first-seen order."""
    rows = [json.loads(line) for path in paths for line in Path(path).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["method"] == method and (tasks is None or r["task"] in tasks)]
    labels = list(dict.fromkeys(r["label"] for r in rows))
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    shots = sorted({r["shots"] for r in rows})

    def mean(sel: list[dict], key: str) -> str:
        return f"{sum(r[key] for r in sel) / len(sel):.2f}" if sel else "-"

    head = ["choice", *tasks, *(f"K={k}" for k in shots), "mean"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in labels:
        mine = [r for r in rows if r["label"] == label]
        cells = [f"{mean([r for r in mine if r['task'] == t], 'val')} / {mean([r for r in mine if r['task'] == t], 'test')}" for t in tasks]
        cells += [f"{mean([r for r in mine if r['shots'] == k], 'val')} / {mean([r for r in mine if r['shots'] == k], 'test')}" for k in shots]
        cells.append(f"**{mean(mine, 'val')}** / {mean(mine, 'test')}")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--summarize", nargs="+", default=None, metavar="JSONL",
                   help="print the markdown table of earlier runs (val / test per task) for --methods[0] and exit")
    p.add_argument("--methods", nargs="+", default=["hegraphadapter"])
    p.add_argument("--tasks", nargs="+", default=None)
    p.add_argument("--shots", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--seeds", type=int, nargs="+", default=[1])
    p.add_argument("--set", dest="sets", action="append", default=[], help="key=value for every method")
    p.add_argument("--label", default="default")
    p.add_argument("--out", default=None, help="append one JSON line per run here")
    p.add_argument("--nested", action="store_true",
                   help="select on min(K, 4) validation images per class, score on HELD others (the 'test' column)")
    args = p.parse_args()
    if args.summarize:
        print(summarize(args.summarize, method=args.methods[0], tasks=args.tasks))
        return
    rows = []
    for task, cfg in suite_configs(args.tasks).items():
        if args.nested:
            cfg = dataclasses.replace(cfg, val_per_class=4 + HELD)
        full = build_synthetic_task(cfg)
        for method_name in args.methods:
            method = create_method(method_name, overrides=args.sets)
            for shots in args.shots:
                for seed in args.seeds:
                    t = time.perf_counter()
                    cache = nested_view(full, shots=shots, per_class=cfg.val_per_class) if args.nested else full
                    rec = run_method(method, cache, shots=shots, seed=seed, progress=False)
                    row = {"label": args.label, "nested": args.nested, "task": task, "method": method_name, "shots": shots, "seed": seed,
                           "val": rec["val_acc"], "test": rec["test_acc"], "seconds": round(time.perf_counter() - t, 1)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if args.out:
                        with open(args.out, "a") as f:
                            f.write(json.dumps(row) + "\n")
    for method_name in args.methods:
        for shots in args.shots:
            sel = [r for r in rows if r["method"] == method_name and r["shots"] == shots]
            val = sum(r["val"] for r in sel) / len(sel)
            test = sum(r["test"] for r in sel) / len(sel)
            print(f"SUMMARY {args.label} {method_name} K={shots}: val {val:.2f} test {test:.2f} ({len(sel)} runs)")


if __name__ == "__main__":
    main()
