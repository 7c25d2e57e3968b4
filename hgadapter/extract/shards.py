"""Sharded extraction: several processes or machines encode a share each, then one merge.

``--shard i/n`` encodes every n-th image (position i mod n) of every image list into
``<out>.shards/shard-i-of-n.safetensors``; ``--merge`` builds the cache from all n files, encoding
anything they lack (substitutes for bad images), exactly as an unsharded run would.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from hgadapter._io import atomic_write
from hgadapter.extract.datasets import DatasetSplits
from hgadapter.extract.encode import BadImage, encode_eval_split, encode_samples, encode_train_set, val_indices
from hgadapter.extract.encoders import Encoder
from hgadapter.extract.identity import identity_diff
from hgadapter.extract.options import ExtractError, ExtractOptions
# The shard file's safetensors metadata key holding its JSON header.
_SHARD_KEY = "hgadapter_shard"


def shard_dir(out: Path) -> Path:
    """The folder the shard files of the cache ``out`` go to: ``<out>.shards``."""
    return out.with_name(out.name + ".shards")


def run_shard(opts: ExtractOptions, encoder: Encoder, splits: DatasetSplits, identity: dict[str, Any]) -> Path:
    """Encode this shard's share of every image list and save it for ``--merge``."""
    i, n = opts.shard
    store: dict[str, dict[int, torch.Tensor | str]] = {}

    def encode(encoder, splits, samples, *, split, positions, **kw):
        mine = [j for j, p in enumerate(positions) if p % n == i]
        feats, bad = encode_samples(
            encoder, splits, [samples[j] for j in mine], split=split, positions=[positions[j] for j in mine], **kw
        )
        errors = {b.index: b.error for b in bad}
        part = store.setdefault(split, {})
        for k, j in enumerate(mine):
            part[positions[j]] = errors.get(positions[j], feats[k])
        # Other shards own the remaining rows; bad images are judged at merge time.
        return torch.zeros(len(samples), kw.get("views", 1), encoder.dim), []

    encode_eval_split(opts, encoder, splits, "val", val_indices(opts, splits), encode)
    encode_eval_split(opts, encoder, splits, "test", list(range(len(splits.test))), encode)
    for shots in opts.shots:
        for seed in opts.seeds:
            encode_train_set(opts, encoder, splits, shots, seed, encode)
    folder = shard_dir(opts.out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"shard-{i}-of-{n}.safetensors"
    # safetensors, not pickles: features as "<split>/<position>" tensors, everything else
    # (identity, shard index, per-image errors) as JSON in the header's metadata.
    tensors = {
        f"{split}/{pos}": value.contiguous()
        for split, part in store.items()
        for pos, value in part.items()
        if not isinstance(value, str)
    }
    errors = {split: {str(pos): v for pos, v in part.items() if isinstance(v, str)} for split, part in store.items()}
    header = {"identity": identity, "shard": [i, n], "errors": errors}
    # atomic: a half-written shard never carries the final name
    atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata={_SHARD_KEY: json.dumps(header)}))
    opts.log(f"wrote shard {i}/{n} to {path}; run the same command with --merge (no --shard) when all are done")
    return path


def _read_shard(file: Path) -> dict[str, Any]:
    """A shard file's header plus ``store``: split -> position -> (V, d) features or error text."""
    try:
        with safetensors.safe_open(str(file), framework="pt") as handle:
            header = json.loads((handle.metadata() or {})[_SHARD_KEY])
            store: dict[str, dict[int, torch.Tensor | str]] = {}
            for key in handle.keys():
                split, _, pos = key.rpartition("/")
                store.setdefault(split, {})[int(pos)] = handle.get_tensor(key)
    except (OSError, ValueError, KeyError, safetensors.SafetensorError) as exc:
        raise ExtractError(f"{file} is not a readable shard file ({exc}); delete it and rerun that shard") from None
    for split, part in header.pop("errors").items():
        for pos, error in part.items():
            store.setdefault(split, {})[int(pos)] = error
    header["store"] = store
    return header


def merged_shards(opts: ExtractOptions, identity: dict[str, Any]) -> Callable:
    """An ``encode_samples`` stand-in that reads features from the shard files."""
    folder = shard_dir(opts.out)
    files = sorted(folder.glob("shard-*-of-*.safetensors"))
    if not files:
        raise ExtractError(f"--merge found no shard files in {folder}; run with --shard i/n first")
    store: dict[str, dict[int, torch.Tensor | str]] = {}
    seen, total = set(), None
    identity = json.loads(json.dumps(identity))  # the JSON form the shards recorded
    for file in files:
        blob = _read_shard(file)
        i, n = blob["shard"]
        if total not in (None, n):
            raise ExtractError(f"{folder} mixes shard counts ({total} and {n}); remove the stale files")
        total = n
        diffs = identity_diff(blob["identity"], identity)
        if diffs:
            raise ExtractError(f"{file} was extracted from different inputs:\n  " + "\n  ".join(diffs[:20]))
        seen.add(i)
        for split, part in blob["store"].items():
            store.setdefault(split, {}).update(part)
    missing = sorted(set(range(total)) - seen)
    if missing:
        raise ExtractError(f"--merge: shards {missing} of {total} are missing in {folder}")

    def encode(encoder, splits, samples, *, split, positions, **kw):
        views = kw.get("views", 1)
        out = torch.zeros(len(samples), views, encoder.dim)
        bad, todo = [], []
        part = store.get(split, {})
        for j, p in enumerate(positions):
            got = part.get(p)
            if got is None:
                todo.append(j)
            elif isinstance(got, str):
                bad.append(BadImage(split, p, samples[j].key, got))
            else:
                out[j] = got
        if todo:  # e.g. substitutes for unreadable training images
            feats, more = encode_samples(
                encoder, splits, [samples[j] for j in todo], split=split, positions=[positions[j] for j in todo], **kw
            )
            out[torch.tensor(todo)] = feats
            bad += more
        return out, bad

    return encode
