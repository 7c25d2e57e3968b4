"""CoOp's cost per training epoch on the CPU, from a few timed steps (docs/benchmarks.md).

One CoOp step (:class:`hgadapter.methods.coop.PromptLearner`, the method's own module) encodes
all C prompts of 77 tokens through the frozen text transformer, takes the cross-entropy of a
batch of 32 image features against them, back-propagates to the context and takes an SGD step;
an epoch at K shots is ``C K / 32`` such steps (Dassl drops the partial batch) plus one
validation forward over the C prompts. Both are linear in C, so the epoch grows as C^2.

The text towers are random ``CLIPModel`` text configs: ``tiny`` (the tests' fixture: width 32,
2 layers, 2 heads) and ``vit-b16`` (openai/clip-vit-base-patch16's text tower: width 512, 12
layers, 8 heads, vocab 49408, projection 512). Image features are random (they cost nothing
here: the cache holds them). The script times ``--steps`` steps after one warm-up step and one
validation forward, and extrapolates: ``epoch_s = steps_per_epoch x step_s + val_s``. Where C
is at least ``--extrapolate-from`` for the big tower, it times C = ``--base-classes`` instead
and scales the step and the forward by C / base (both are linear in C); such rows say so.

    python experiments/bench_coop.py                   # tiny and vit-b16 at C = 100 and 1000, ~10 min on a loaded 2-core machine
    python experiments/bench_coop.py --towers tiny --threads 2
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

TOWERS = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=320, projection=24),
    "vit-b16": dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8, vocab_size=49408, projection=512),
}
CONTEXT, N_CTX, NAME_TOKENS, BATCH = 77, 16, 4, 32


def build_tower(name: str):
    from transformers import CLIPConfig, CLIPModel

    from hgadapter.methods.coop import ClipTextTower

    spec = dict(TOWERS[name])
    projection = spec.pop("projection")
    config = CLIPConfig(
        text_config=dict(**spec, max_position_embeddings=CONTEXT, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=16),
        projection_dim=projection,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval().requires_grad_(False)
    return ClipTextTower(model), projection


def prompt_tokens(num_classes: int):
    """C prompts laid out as CoOp's defaults lay them out: SOS, 16 context slots, a 4-token name, '.', EOS."""
    from hgadapter.methods.coop import PromptTokens

    g = torch.Generator().manual_seed(0)
    ids = torch.full((num_classes, CONTEXT), 1)
    ids[:, 0] = 0
    ids[:, 1 + N_CTX : 2 + N_CTX + NAME_TOKENS] = torch.randint(2, 300, (num_classes, NAME_TOKENS + 1), generator=g)
    eos = 2 + N_CTX + NAME_TOKENS
    return PromptTokens(
        ids=ids, ctx_index=torch.arange(1, 1 + N_CTX).expand(num_classes, -1).clone(), eos=torch.full((num_classes,), eos), init_ids=None
    )


def measure(tower_name: str, num_classes: int, shots: int, steps: int) -> dict:
    from hgadapter.methods.coop import PromptLearner

    tower, dim = build_tower(tower_name)
    learner = PromptLearner(tower, prompt_tokens(num_classes), csc=False, init_std=0.02)
    opt = torch.optim.SGD([learner.ctx], lr=2e-3, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(1)
    x = F.normalize(torch.randn(BATCH, dim, generator=g), dim=-1)
    y = torch.randint(num_classes, (BATCH,), generator=g)

    def step() -> None:
        loss = F.cross_entropy(100.0 * x @ F.normalize(learner(), dim=-1).T, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    step_s = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    with torch.no_grad():
        learner()
    val_s = time.perf_counter() - start
    return {"tower": tower_name, "classes": num_classes, "step_s": step_s, "val_s": val_s}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--towers", nargs="+", default=list(TOWERS), choices=list(TOWERS))
    p.add_argument("--classes", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (CoOp fits on 1 by default, as every baseline)")
    p.add_argument("--base-classes", type=int, default=100, help="C timed for big-tower rows that are extrapolated")
    p.add_argument("--extrapolate-from", type=int, default=1000, help="big-tower C from which the step is scaled from --base-classes")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for tower in args.towers:
        for c in args.classes:
            scaled = tower != "tiny" and c >= args.extrapolate_from
            timed = measure(tower, args.base_classes if scaled else c, args.shots, args.steps)
            factor = c / timed["classes"]
            steps_per_epoch = (c * args.shots) // BATCH if c * args.shots >= BATCH else 1
            row = {
                "tower": tower, "classes": c, "shots": args.shots, "threads": args.threads, "timed_classes": timed["classes"],
                "step_s": timed["step_s"] * factor, "val_s": timed["val_s"] * factor, "steps_per_epoch": steps_per_epoch,
            }
            row["epoch_s"] = row["steps_per_epoch"] * row["step_s"] + row["val_s"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print("| text tower | C | steps / epoch | s / step | s / epoch | h / 200 epochs | timed at C |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['tower']} | {r['classes']} | {r['steps_per_epoch']} | {r['step_s']:.3g} | {r['epoch_s']:.3g} | "
            f"{200 * r['epoch_s'] / 3600:.3g} | {r['timed_classes']}{' (x' + format(r['classes'] / r['timed_classes'], 'g') + ')' if r['timed_classes'] != r['classes'] else ''} |"
        )
    if args.out:
        from hgadapter._io import atomic_write_json

        atomic_write_json(args.out, rows)
    return 0 if all(math.isfinite(r["epoch_s"]) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
