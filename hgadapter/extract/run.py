"""``hgadapter extract``: images and prompts -> a feature cache (paper Sec. 4.1: CLIP stays
frozen, so every image view and every prompt is encoded once; training reads the cache).

One run writes, into one cache directory (``hgadapter.features`` format):

- per-prompt positive and negative text features, ``(C, P, d)`` and ``(C, Q, d)``;
- the few-shot validation set (``--val-shots`` per class) and the full test split, once;
- one training set per (shots, seed): K images per class, V augmented views each, ``(N, V, d)``.

Everything that determines the features (encoder id and revision, preprocessing, precision,
dataset spec and split hashes, prompt hashes, validation sampling, augmentation) forms the
cache's *identity*, stored in the sidecar. Rerunning with the same identity skips what is
already there, which is how an interrupted or extended run resumes; a different identity is an
error unless ``--overwrite``. Images load in worker threads while the model encodes the
previous batch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch

from hgadapter.extract import augment as aug
from hgadapter.extract.datasets import DataError, DatasetSplits, Sample, build_dataset, replacement_candidates, sample_per_class
from hgadapter.extract.encoders import DEFAULT_ENCODER, Encoder, EncoderError, create_encoder
from hgadapter.data.cache import CacheError, FeatureCache, FewShotSet, list_train_sets, load_cache, load_sidecar, save_cache
from hgadapter.extract.prompts import PromptError, PromptSet, build_prompt_set

# Bump when a change here alters the features written for the same inputs.
EXTRACT_VERSION = 1


class ExtractError(ValueError):
    """A user error in an extraction request: bad arguments, unreadable images, a cache mismatch."""


@dataclass(frozen=True)
class BadImage:
    """An image that could not be read: its split, index in that split, path and the error."""

    split: str
    index: int
    key: str
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "index": self.index, "key": self.key, "error": self.error}


# --- batched, overlapped image encoding ------------------------------------------------------


def _load_views(
    splits: DatasetSplits,
    sample: Sample,
    pre: aug.Preprocess,
    augment: aug.Augment | None,
    views: int,
    rng: np.random.Generator | None,
) -> np.ndarray | str:
    """``(V, 3, H, W)`` views of one sample, or the error message when it cannot be read."""
    try:
        image = splits.load_image(sample)
        return aug.make_views(image, pre, augment, views, rng)
    except (OSError, ValueError, SyntaxError) as err:  # PIL raises all three for bad files
        return f"{type(err).__name__}: {err}"


def iter_batches(
    load: Callable[[int], np.ndarray | str],
    count: int,
    *,
    batch_size: int,
    workers: int,
) -> Iterator[tuple[list[int], list[np.ndarray | str]]]:
    """Yield ``(positions, loaded)`` batches of ``load(0..count-1)`` in order.

    Loading runs in ``workers`` threads (PIL decodes and resizes without holding the GIL) and
    stays a bounded number of batches ahead of the consumer, so memory is bounded.
    """
    if workers <= 0:
        for start in range(0, count, batch_size):
            pos = list(range(start, min(start + batch_size, count)))
            yield pos, [load(i) for i in pos]
        return
    ahead = batch_size * 3
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hgadapter-load") as pool:
        pending: dict[int, Future] = {}
        nxt = 0
        for start in range(0, count, batch_size):
            stop = min(start + batch_size, count)
            while nxt < min(count, stop + ahead):
                pending[nxt] = pool.submit(load, nxt)
                nxt += 1
            pos = list(range(start, stop))
            yield pos, [pending.pop(i).result() for i in pos]


def encode_samples(
    encoder: Encoder,
    splits: DatasetSplits,
    samples: list[Sample],
    *,
    split: str,
    positions: list[int] | None = None,
    views: int = 1,
    augment: aug.Augment | None = None,
    rng_for: Callable[[int], np.random.Generator] | None = None,
    batch_size: int = 64,
    workers: int = 4,
    progress: bool = True,
) -> tuple[torch.Tensor, list[BadImage]]:
    """Encode ``samples`` (``views`` each) in batches: features ``(N, V, d)`` and the bad images.

    Rows of unreadable images are zero; the caller drops or replaces them. ``positions`` are the
    samples' indices in their split (for the bad-image report and the augmentation seeds).
    """
    from tqdm.auto import tqdm

    positions = list(range(len(samples))) if positions is None else positions
    out = torch.zeros(len(samples), views, encoder.dim)  # (N, V, d)
    bad: list[BadImage] = []
    per_batch = max(1, batch_size // views)

    def load(i: int) -> np.ndarray | str:
        rng = rng_for(positions[i]) if (rng_for is not None and augment is not None) else None
        return _load_views(splits, samples[i], encoder.preprocess, augment, views, rng)

    bar = tqdm(total=len(samples), desc=split, unit="img", disable=not progress, leave=False)
    for pos, loaded in iter_batches(load, len(samples), batch_size=per_batch, workers=workers):
        good = [(i, arr) for i, arr in zip(pos, loaded) if not isinstance(arr, str)]
        for i, arr in zip(pos, loaded):
            if isinstance(arr, str):
                bad.append(BadImage(split, positions[i], samples[i].key, arr))
        if good:
            pixels = torch.from_numpy(np.concatenate([arr for _, arr in good]))  # (B*V, 3, H, W)
            feats = encoder.encode_images(pixels).view(len(good), views, -1)  # (B, V, d)
            out[torch.tensor([i for i, _ in good])] = feats
        bar.update(len(pos))
    bar.close()
    return out, bad


def _bad_error(bad: list[BadImage]) -> ExtractError:
    lines = "\n".join(f"  [{b.split} #{b.index}] {b.key}: {b.error}" for b in bad[:50])
    more = f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else ""
    return ExtractError(
        f"{len(bad)} image(s) could not be read:\n{lines}{more}\n"
        f"Fix or remove them, or pass --skip-bad to leave them out (they are then recorded in the cache)."
    )


# --- the extraction run ----------------------------------------------------------------------


@dataclass(frozen=True)
class ExtractOptions:
    """Everything a run needs, parsed from the command line (or built directly in code)."""

    dataset: str
    data_dir: str | None
    model: str
    out: Path
    shots: tuple[int, ...] = (1, 2, 4, 8, 16)
    seeds: tuple[int, ...] = (1, 2, 3)
    pos_prompts: str = "coop"
    neg_prompts: str = "no"
    description_pad: str = "cycle"
    val_shots: int = 4
    val_seed: int = 1
    split_seed: int = 1
    views: int = 10
    augment: str = "random_resized_crop"
    aug_scale: tuple[float, float] = (0.5, 1.0)
    aug_seed: int = 0
    batch_size: int = 64
    workers: int = 4
    device: str | None = None
    precision: str = "auto"
    revision: str | None = None
    classnames: str | None = None
    image_column: str = "image"
    label_column: str = "label"
    hf_splits: tuple[str, str, str] = ("train", "validation", "test")
    skip_bad: bool = False
    overwrite: bool = False
    progress: bool = True
    shard: tuple[int, int] | None = None
    merge: bool = False


def _canonical_hash(obj: Any) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def build_identity(
    opts: ExtractOptions, encoder: Encoder, splits: DatasetSplits, pos: PromptSet, neg: PromptSet
) -> dict[str, Any]:
    """The inputs that determine every feature in the cache; resuming requires equality."""
    enc = encoder.meta()
    identity = {
        "extract_version": EXTRACT_VERSION,
        "encoder": {k: enc[k] for k in ("id", "revision", "backend", "dim", "preprocess", "context_length", "precision")},
        "dataset": {k: v for k, v in splits.meta.items() if k == "spec" or k.endswith(("_hash", "_size")) or k == "num_classes"},
        "classnames_hash": _canonical_hash(splits.classnames),
        "prompts": {"pos": pos.content_hash, "neg": neg.content_hash},
        "val": {"shots": opts.val_shots, "seed": opts.val_seed},
        "augment": _augment_meta(opts),
        "skip_bad": opts.skip_bad,
    }
    return json.loads(json.dumps(identity))  # tuples -> lists, as the sidecar will read back


def _augment_meta(opts: ExtractOptions) -> dict[str, Any]:
    if opts.augment == "none":
        return {"kind": "none", "views": opts.views}
    a = aug.Augment(scale=opts.aug_scale)
    return {**a.to_dict(), "views": opts.views, "seed": opts.aug_seed}


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix.rstrip('.')}: cache has {a!r}, this run has {b!r}"]


def _check_options(opts: ExtractOptions) -> None:
    if opts.augment not in ("random_resized_crop", "none"):
        raise ExtractError(f"unknown augmentation {opts.augment!r}; available: ['random_resized_crop', 'none']")
    if opts.views < 1:
        raise ExtractError(f"--views must be >= 1, got {opts.views}")
    if opts.augment == "none" and opts.views != 1:
        raise ExtractError("--augment none gives identical views; use --views 1")
    if any(k < 1 for k in opts.shots):
        raise ExtractError(f"--shots must be positive, got {list(opts.shots)}")
    if opts.val_shots < 0:
        raise ExtractError(f"--val-shots must be >= 0, got {opts.val_shots}")
    lo, hi = opts.aug_scale
    if not 0 < lo <= hi <= 1:
        raise ExtractError(f"--aug-scale must satisfy 0 < min <= max <= 1, got {lo} {hi}")
    if opts.batch_size < 1 or opts.workers < 0:
        raise ExtractError("--batch-size must be >= 1 and --workers >= 0")
    if opts.shard is not None and not 0 <= opts.shard[0] < opts.shard[1]:
        raise ExtractError(f"--shard i/n needs 0 <= i < n, got {opts.shard[0]}/{opts.shard[1]}")
    if opts.shard is not None and opts.merge:
        raise ExtractError("--shard and --merge are separate steps: run the shards, then --merge")


def _log(opts: ExtractOptions, msg: str) -> None:
    if opts.progress:
        print(msg, file=sys.stderr, flush=True)


def _read_existing(out: Path, identity: dict[str, Any]) -> tuple[FeatureCache, list[tuple[int, int]]] | None:
    """The shared part of the cache at ``out`` and its training-set keys; None when absent.

    Raises:
        ExtractError: ``out`` holds something else, or a cache built from other inputs.
    """
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return None
    try:
        sidecar = load_sidecar(out)
    except CacheError as err:
        raise ExtractError(
            f"{out} exists but is not a readable feature cache ({err}); choose another --out "
            f"or pass --overwrite to replace it"
        ) from None
    diffs = _diff(sidecar["meta"].get("identity"), identity)
    if diffs:
        raise ExtractError(
            f"{out} holds features from different inputs:\n  " + "\n  ".join(diffs[:20])
            + "\nUse another --out, or --overwrite to replace the cache."
        )
    try:
        return load_cache(out, train_keys=[]), list_train_sets(out)
    except CacheError as err:
        raise ExtractError(f"{out}: {err}; pass --overwrite to rebuild it") from None


def _encode_eval_split(
    opts: ExtractOptions, encoder: Encoder, splits: DatasetSplits, name: str, indices: list[int], encode: Callable
) -> tuple[torch.Tensor, torch.Tensor, list[int], list[BadImage]]:
    source = getattr(splits, "val" if name == "val" else "test")
    samples = [source[i] for i in indices]
    feats, bad = encode(
        encoder, splits, samples, split=name, positions=indices, batch_size=opts.batch_size,
        workers=opts.workers, progress=opts.progress,
    )
    bad_pos = {b.index for b in bad}
    keep = [j for j, i in enumerate(indices) if i not in bad_pos]
    labels = torch.tensor([samples[j].label for j in keep], dtype=torch.int64)
    return feats[keep, 0], labels, [indices[j] for j in keep], bad  # (N, d), (N,)


def _encode_train_set(
    opts: ExtractOptions, encoder: Encoder, splits: DatasetSplits, shots: int, seed: int,
    encode: Callable = encode_samples,
) -> tuple[FewShotSet, list[BadImage]]:
    """Sample K per class, encode V views each; with --skip-bad, replace unreadable images."""
    # The cache format needs exactly K images per class, so short classes repeat images.
    indices = sample_per_class(splits.train, len(splits.classnames), shots, seed, repeat=True)
    augment = None if opts.augment == "none" else aug.Augment(scale=opts.aug_scale)

    def rng_for(i: int) -> np.random.Generator:
        return aug.view_rng(opts.aug_seed, shots, seed, i)

    feats_by_index: dict[int, torch.Tensor] = {}
    all_bad: list[BadImage] = []
    known_bad: set[int] = set()
    todo = list(dict.fromkeys(indices))
    while todo:
        feats, bad = encode(
            encoder, splits, [splits.train[i] for i in todo], split=f"train K={shots} seed={seed}",
            positions=todo, views=opts.views, augment=augment, rng_for=rng_for,
            batch_size=opts.batch_size, workers=opts.workers, progress=opts.progress,
        )
        bad_pos = {b.index for b in bad}
        for j, i in enumerate(todo):
            if i not in bad_pos:
                feats_by_index[i] = feats[j]  # (V, d)
        all_bad += bad
        if bad and not opts.skip_bad:
            raise _bad_error(bad)
        known_bad |= bad_pos
        # Substitutes come from the same class in a seeded order, so a rerun picks the same ones.
        todo = []
        for pos, i in enumerate(indices):
            if i not in known_bad:
                continue
            label = splits.train[i].label
            taken = set(indices) | known_bad
            fresh = replacement_candidates(splits.train, label, taken, seed, shots)
            good = [j for j in indices if splits.train[j].label == label and j not in known_bad]
            if fresh:
                indices[pos] = fresh[0]
                todo.append(fresh[0])
            elif good:
                indices[pos] = good[0]  # no unused image left: repeat a readable one
            else:
                raise ExtractError(
                    f"class {splits.classnames[label]!r} has no readable training image; "
                    f"see the list above:\n{_bad_error(all_bad)}"
                )
        todo = list(dict.fromkeys(todo))
    feats = torch.stack([feats_by_index[i] for i in indices]) if indices else torch.zeros(0, opts.views, encoder.dim)
    labels = torch.tensor([splits.train[i].label for i in indices], dtype=torch.int64)
    return FewShotSet(shots=shots, seed=seed, features=feats, labels=labels, indices=list(indices)), all_bad


def extract(opts: ExtractOptions) -> FeatureCache | None:
    """Run one extraction into ``opts.out``; returns the cache as saved, with the requested
    training sets loaded (others already in the directory stay on disk).

    With ``opts.shard = (i, n)`` it only encodes every n-th image (position i mod n) of every
    list and writes them to ``<out>.shards/``, returning None; ``opts.merge`` then builds the
    cache from all n shard files (encoding anything they lack, such as substitutes for bad
    images), exactly as an unsharded run would.

    Raises:
        ExtractError: bad options, unreadable images (without ``skip_bad``), or an existing
            cache built from different inputs (without ``overwrite``).
    """
    _check_options(opts)
    try:
        splits = build_dataset(
            opts.dataset, opts.data_dir, classnames_file=opts.classnames, split_seed=opts.split_seed,
            image_column=opts.image_column, label_column=opts.label_column, hf_splits=opts.hf_splits,
        )
        pos = build_prompt_set(opts.pos_prompts, splits.classnames, dataset=splits.name, pad=opts.description_pad)
        neg = build_prompt_set(opts.neg_prompts, splits.classnames, dataset=splits.name, pad=opts.description_pad)
        encoder = create_encoder(opts.model, revision=opts.revision, device=opts.device, precision=opts.precision)
    except (DataError, PromptError, EncoderError) as err:
        raise ExtractError(str(err)) from None
    if not splits.train and opts.shots:
        raise ExtractError(f"{opts.dataset} has no training split (test-only dataset); pass --shots with no values")
    identity = build_identity(opts, encoder, splits, pos, neg)
    if opts.shard is not None:
        _run_shard(opts, encoder, splits, identity)
        return None
    encode = _merged_shards(opts, identity) if opts.merge else encode_samples

    existing = None if opts.overwrite else _read_existing(opts.out, identity)
    if existing is not None:
        base, present = existing
        _log(opts, f"resuming {opts.out}: text, val and test present; training sets present: {present}")
    else:
        base = _extract_base(opts, encoder, splits, pos, neg, identity, encode)
        save_cache(opts.out, base, overwrite=opts.overwrite)
        present = []
    done = set(present)

    for shots in opts.shots:
        for seed in opts.seeds:
            if (shots, seed) in done:
                _log(opts, f"skip (shots={shots}, seed={seed}): already in {opts.out}")
                continue
            t0 = time.perf_counter()
            fs, bad = _encode_train_set(opts, encoder, splits, shots, seed, encode)
            save_cache(opts.out, replace(base, train_sets={fs.key: fs}))
            done.add(fs.key)
            if bad:
                _append_report(opts.out, {"train_set": [shots, seed], "skipped": [b.to_dict() for b in bad]})
            _log(opts, f"wrote (shots={shots}, seed={seed}): {len(fs.labels)} images x {opts.views} views "
                       f"in {time.perf_counter() - t0:.1f}s")
    return load_cache(opts.out, train_keys=[k for k in sorted(done) if k[0] in opts.shots and k[1] in opts.seeds])


def _val_indices(opts: ExtractOptions, splits: DatasetSplits) -> list[int]:
    if not (splits.val and opts.val_shots):
        return []
    return sample_per_class(splits.val, len(splits.classnames), opts.val_shots, opts.val_seed)


# --- sharding: several processes or machines, then one merge ---------------------------------


def shard_dir(out: Path) -> Path:
    return out.with_name(out.name + ".shards")


def _run_shard(opts: ExtractOptions, encoder: Encoder, splits: DatasetSplits, identity: dict[str, Any]) -> Path:
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

    _encode_eval_split(opts, encoder, splits, "val", _val_indices(opts, splits), encode)
    _encode_eval_split(opts, encoder, splits, "test", list(range(len(splits.test))), encode)
    for shots in opts.shots:
        for seed in opts.seeds:
            _encode_train_set(opts, encoder, splits, shots, seed, encode)
    folder = shard_dir(opts.out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"shard-{i}-of-{n}.safetensors"
    tmp = path.with_name(path.name + ".tmp")
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
    safetensors.torch.save_file(tensors, str(tmp), metadata={_SHARD_KEY: json.dumps(header)})
    tmp.replace(path)  # atomic: a half-written shard never carries the final name
    _log(opts, f"wrote shard {i}/{n} to {path}; run the same command with --merge (no --shard) when all are done")
    return path


_SHARD_KEY = "hgadapter_shard"


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


def _merged_shards(opts: ExtractOptions, identity: dict[str, Any]) -> Callable:
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
        diffs = _diff(blob["identity"], identity)
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


def _append_report(out: Path, record: dict[str, Any]) -> None:
    """Skipped training images go to ``extract_report.jsonl`` beside the cache files."""
    with open(out / "extract_report.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def _extract_base(
    opts: ExtractOptions,
    encoder: Encoder,
    splits: DatasetSplits,
    pos: PromptSet,
    neg: PromptSet,
    identity: dict[str, Any],
    encode: Callable = encode_samples,
) -> FeatureCache:
    """Text, validation and test features: the part of a cache shared by all training sets."""
    C = len(splits.classnames)
    t0 = time.perf_counter()
    pos_text = encoder.encode_texts([p for ps in pos.prompts for p in ps]).view(C, pos.num_prompts, -1)  # (C, P, d)
    neg_text = encoder.encode_texts([p for ps in neg.prompts for p in ps]).view(C, neg.num_prompts, -1)  # (C, Q, d)
    _log(opts, f"encoded {C} classes x ({pos.num_prompts} + {neg.num_prompts}) prompts in {time.perf_counter() - t0:.1f}s")

    val_idx = _val_indices(opts, splits)
    val_f, val_y, val_idx, val_bad = _encode_eval_split(opts, encoder, splits, "val", val_idx, encode)
    test_f, test_y, _, test_bad = _encode_eval_split(opts, encoder, splits, "test", list(range(len(splits.test))), encode)
    bad = val_bad + test_bad
    if bad and not opts.skip_bad:
        raise _bad_error(bad)
    meta = {
        "identity": identity,
        "identity_hash": _canonical_hash(identity),
        "producer": "hgadapter.extract",
        "encoder": encoder.meta(),
        "dataset": splits.meta,
        "prompts": {"pos": pos.meta(), "neg": neg.meta()},
        "val": {"shots_per_class": opts.val_shots, "seed": opts.val_seed, "indices": val_idx,
                "protocol": "first min(K, 4) per class form CoOp's validation set for K shots"},
        "augment": _augment_meta(opts),
        "sampling": {"protocol": "coop", "rng": "numpy.default_rng([seed, shots]), classes in label order"},
        "bad_images": [b.to_dict() for b in bad],
        "storage": {"dtype": "float32", "normalised": "L2, per feature", "text": "per prompt"},
    }
    return FeatureCache(
        classnames=list(splits.classnames),
        pos_text=pos_text,
        neg_text=neg_text,
        val_features=val_f.reshape(-1, encoder.dim),
        val_labels=val_y,
        test_features=test_f.reshape(-1, encoder.dim),
        test_labels=test_y,
        train_sets={},
        logit_scale=encoder.logit_scale,
        meta=meta,
    )


# --- command line ----------------------------------------------------------------------------


def add_extract_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``hgadapter extract`` (see docs/extraction.md)."""
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", required=True, help="coop:<name>, imagefolder, or hf:<hub id or saved dir>")
    g.add_argument("--data-dir", help="CoOp root folder (coop:) or image folder (imagefolder)")
    g.add_argument("--classnames", help="optional class list (one per line) checked against the dataset")
    g.add_argument("--split-seed", type=int, default=1, help="seed of the carved val/test split when a folder has none")
    g.add_argument("--image-column", default="image", help="hf: image column")
    g.add_argument("--label-column", default="label", help="hf: label column (ClassLabel)")
    g.add_argument("--hf-splits", nargs=3, default=["train", "validation", "test"], metavar=("TRAIN", "VAL", "TEST"),
                   help="hf: split names")
    g = parser.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_ENCODER, help="hub id, local directory, or open_clip:<arch>/<tag>")
    g.add_argument("--revision", help="hub branch, tag or commit")
    g.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="autocast dtype on CUDA; the CPU always runs fp32")
    g = parser.add_argument_group("sets")
    g.add_argument("--shots", type=int, nargs="*", default=[1, 2, 4, 8, 16], help="K values (none: val/test only)")
    g.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="sampling seeds")
    g.add_argument("--val-shots", type=int, default=4, help="validation images per class")
    g.add_argument("--val-seed", type=int, default=1, help="seed of the validation sample")
    g.add_argument("--views", type=int, default=10, help="augmented views per training image (V)")
    g.add_argument("--augment", default="random_resized_crop", choices=["random_resized_crop", "none"])
    g.add_argument("--aug-scale", type=float, nargs=2, default=[0.5, 1.0], metavar=("MIN", "MAX"),
                   help="area range of the random resized crop")
    g.add_argument("--aug-seed", type=int, default=0, help="seed of the augmentation draws")
    g = parser.add_argument_group("prompts")
    g.add_argument("--pos-prompts", default="coop",
                   help="'+'-joined: coop, ensemble7, photo, template:<t>, templates:<file>, descriptions:<json>")
    g.add_argument("--neg-prompts", default="no", help="'+'-joined: no, neg4, template:<t>, templates:<file>")
    g.add_argument("--description-pad", default="cycle", choices=["cycle", "truncate"],
                   help="how classes with fewer descriptions reach the common count")
    g = parser.add_argument_group("run")
    g.add_argument("--out", required=True, help="cache directory")
    g.add_argument("--batch-size", type=int, default=64, help="images (x views) per forward pass")
    g.add_argument("--workers", type=int, default=4, help="image-loading threads (0: load in the main thread)")
    g.add_argument("--skip-bad", action="store_true", help="leave unreadable images out and record them")
    g.add_argument("--overwrite", action="store_true", help="replace a cache built from different inputs")
    g.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    g.add_argument("--shard", metavar="I/N",
                   help="encode only shard I of N (0-based) into OUT.shards/; 'auto' reads RANK and "
                        "WORLD_SIZE as set by `accelerate launch` or torchrun")
    g.add_argument("--merge", action="store_true", help="build the cache from the shard files of a sharded run")


def _parse_shard(text: str | None) -> tuple[tuple[int, int] | None, str | None]:
    """``--shard`` -> ((i, n), device override) ; 'auto' follows the launcher's environment."""
    if text is None:
        return None, None
    if text == "auto":
        try:
            i, n = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        except (KeyError, ValueError):
            raise ExtractError("--shard auto needs RANK and WORLD_SIZE (run under `accelerate launch` or torchrun)") from None
        local = os.environ.get("LOCAL_RANK")
        device = f"cuda:{local}" if local is not None and torch.cuda.is_available() else None
        return (i, n), device
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ExtractError(f"--shard must look like 0/4 or 'auto', got {text!r}") from None
    return (i, n), None


def options_from_args(args: argparse.Namespace) -> ExtractOptions:
    shard, shard_device = _parse_shard(getattr(args, "shard", None))
    return ExtractOptions(
        dataset=args.dataset,
        data_dir=args.data_dir,
        model=args.model,
        out=Path(args.out),
        shots=tuple(args.shots),
        seeds=tuple(args.seeds),
        pos_prompts=args.pos_prompts,
        neg_prompts=args.neg_prompts,
        description_pad=args.description_pad,
        val_shots=args.val_shots,
        val_seed=args.val_seed,
        split_seed=args.split_seed,
        views=args.views,
        augment=args.augment,
        aug_scale=tuple(args.aug_scale),
        aug_seed=args.aug_seed,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device or shard_device,
        precision=args.precision,
        revision=args.revision,
        classnames=args.classnames,
        image_column=args.image_column,
        label_column=args.label_column,
        hf_splits=tuple(args.hf_splits),
        skip_bad=args.skip_bad,
        overwrite=args.overwrite,
        progress=not args.quiet,
        shard=shard,
        merge=getattr(args, "merge", False),
    )


def run_extract(args: argparse.Namespace) -> int:
    """Entry point behind ``hgadapter extract``; returns the exit status."""
    opts = options_from_args(args)
    cache = extract(opts)
    if cache is None:
        return 0
    _log(opts, f"{opts.out}: {cache.num_classes} classes, d={cache.dim}, "
               f"{len(cache.test_labels)} test, {len(cache.val_labels)} val, "
               f"training sets {sorted(cache.train_sets)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hgadapter extract", description=__doc__.split("\n\n")[0])
    add_extract_arguments(parser)
    return run_extract(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
