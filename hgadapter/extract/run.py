"""``hgadapter extract``: images and prompts -> a feature cache (paper Sec. 4.1: CLIP stays
frozen, so every image view and every prompt is encoded once; training reads the cache).

One run writes, into one cache directory (:mod:`hgadapter.data.cache` format):

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
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from hgadapter._io import check_output_dir, remove_stale_temp_files
from hgadapter.data.cache import SIDECAR_NAME, TEST_FILE, TEXT_FILE, VAL_FILE, CacheError, FeatureCache
from hgadapter.data.io import list_train_sets, load_cache, load_sidecar, save_cache
from hgadapter.extract.datasets import DataError, DatasetSplits, build_dataset, choose_validation
from hgadapter.extract.encode import bad_images_error, encode_eval_split, encode_samples, encode_train_set, val_indices
from hgadapter.extract.encoders import Encoder, EncoderError, create_encoder
from hgadapter.extract.identity import augment_meta, build_identity, canonical_hash, identity_diff
from hgadapter.extract.options import ExtractError, ExtractOptions, add_extract_arguments, check_options, options_from_args
from hgadapter.extract.prompts import PromptError, PromptSet, build_prompt_set
from hgadapter.extract.shards import merged_shards, run_shard


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
    check_options(opts)
    try:
        splits = build_dataset(
            opts.dataset, opts.data_dir, classnames_file=opts.classnames, split_seed=opts.split_seed,
            image_column=opts.image_column, label_column=opts.label_column, hf_splits=opts.hf_splits,
        )
        splits = choose_validation(splits, opts.val_source, per_class=opts.val_shots, seed=opts.val_seed)
        pos = build_prompt_set(opts.pos_prompts, splits.classnames, dataset=splits.name, pad=opts.description_pad)
        neg = build_prompt_set(opts.neg_prompts, splits.classnames, dataset=splits.name, pad=opts.description_pad)
        encoder = create_encoder(opts.model, revision=opts.revision, device=opts.device, precision=opts.precision)
    except (DataError, PromptError, EncoderError) as err:
        raise ExtractError(str(err)) from None
    if not splits.train and opts.shots:
        raise ExtractError(f"{opts.dataset} has no training split (test-only dataset); pass --shots with no values")
    note = short_classes_note(splits, opts.shots)
    if note is not None:  # said once per extraction, even with --quiet: the cache is not what K suggests
        print(f"hgadapter extract: warning: {note}", file=sys.stderr, flush=True)
    identity = build_identity(opts, encoder, splits, pos, neg)
    if opts.shard is not None:
        run_shard(opts, encoder, splits, identity)
        return None
    encode = merged_shards(opts, identity) if opts.merge else encode_samples

    existing = None if opts.overwrite else _read_existing(opts.out, identity)
    if existing is not None:
        base, present = existing
        opts.log(f"resuming {opts.out}: text, val and test present; training sets present: {present}")
    else:
        base = _extract_base(opts, encoder, splits, pos, neg, identity, encode)
        save_cache(opts.out, base, overwrite=opts.overwrite)
        present = []
    done = set(present)

    for shots in opts.shots:
        for seed in opts.seeds:
            if (shots, seed) in done:
                opts.log(f"skip (shots={shots}, seed={seed}): already in {opts.out}")
                continue
            t0 = time.perf_counter()
            fs, bad = encode_train_set(opts, encoder, splits, shots, seed, encode)
            save_cache(opts.out, replace(base, train_sets={fs.key: fs}))
            done.add(fs.key)
            if bad:
                _append_report(opts.out, {"train_set": [shots, seed], "skipped": [b.to_dict() for b in bad]})
            opts.log(f"wrote (shots={shots}, seed={seed}): {len(fs.labels)} images x {opts.views} views "
                     f"in {time.perf_counter() - t0:.1f}s")
    return load_cache(opts.out, train_keys=[k for k in sorted(done) if k[0] in opts.shots and k[1] in opts.seeds])


def short_classes_note(splits: DatasetSplits, shots: Sequence[int]) -> str | None:
    """A one-line note when some class has fewer training images than a requested K, else ``None``.

    Such a class's K-shot sets hold all its images and repeat some of them to fill K (CoOp's
    ``generate_fewshot_dataset(repeat=True)``), which nothing else would tell the user.
    """
    if not shots or not splits.train:
        return None
    held = set(splits.held_out)  # validation images held out of training (--val-source train)
    counts = [0] * len(splits.classnames)
    for i, sample in enumerate(splits.train):
        if i not in held:
            counts[sample.label] += 1
    over = sorted(k for k in set(shots) if k > min(counts))
    if not over:
        return None
    short = [c for c, n in enumerate(counts) if n < max(over)]
    fewest = min(short, key=counts.__getitem__)
    ks = ", ".join(f"K={k}" for k in over)
    return (
        f"{len(short)} of {len(counts)} classes have fewer than {max(over)} training images (fewest: "
        f"{splits.classnames[fewest]!r} with {counts[fewest]}); for {ks} their training sets repeat images to fill K "
        "(CoOp's protocol), so they hold fewer distinct images than K"
    )


def _extractor_file(name: str) -> bool:
    """Whether ``name`` is a file extraction writes into a cache folder (a split or a training set)."""
    return name in (TEXT_FILE, VAL_FILE, TEST_FILE) or (name.startswith("train_k") and name.endswith(".safetensors"))


def _read_existing(out: Path, identity: dict[str, Any]) -> tuple[FeatureCache, list[tuple[int, int]]] | None:
    """The shared part of the cache at ``out`` and its training-set keys; None when absent.

    Raises:
        ExtractError: ``out`` holds something else, or a cache built from other inputs.
    """
    if out.is_dir():
        remove_stale_temp_files(out)  # left by an extraction killed while writing
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return None
    if out.is_dir() and not (out / SIDECAR_NAME).exists() and all(_extractor_file(p.name) for p in out.iterdir()):
        return None  # killed before cache.json, which is written last: the files are written again
    try:
        sidecar = load_sidecar(out)
    except CacheError as err:
        raise ExtractError(
            f"{out} exists but is not a readable feature cache ({err}); choose another --out "
            f"or pass --overwrite to replace it"
        ) from None
    diffs = identity_diff(sidecar["meta"].get("identity"), identity)
    if diffs:
        raise ExtractError(
            f"{out} holds features from different inputs:\n  " + "\n  ".join(diffs[:20])
            + "\nUse another --out, or --overwrite to replace the cache."
        )
    try:
        return load_cache(out, train_keys=[]), list_train_sets(out)
    except CacheError as err:
        raise ExtractError(f"{out}: {err}; pass --overwrite to rebuild it") from None


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
    pos_text, pos_norm = encoder.encode_texts([p for ps in pos.prompts for p in ps], return_norms=True)
    neg_text, neg_norm = encoder.encode_texts([p for ps in neg.prompts for p in ps], return_norms=True)
    pos_text, pos_norm = pos_text.view(C, pos.num_prompts, -1), pos_norm.view(C, pos.num_prompts)  # (C, P, d), (C, P)
    neg_text, neg_norm = neg_text.view(C, neg.num_prompts, -1), neg_norm.view(C, neg.num_prompts)  # (C, Q, d), (C, Q)
    opts.log(f"encoded {C} classes x ({pos.num_prompts} + {neg.num_prompts}) prompts in {time.perf_counter() - t0:.1f}s")

    val_idx = val_indices(opts, splits)
    val_f, val_y, val_idx, val_bad = encode_eval_split(opts, encoder, splits, "val", val_idx, encode)
    test_f, test_y, _, test_bad = encode_eval_split(opts, encoder, splits, "test", list(range(len(splits.test))), encode)
    bad = val_bad + test_bad
    if bad and not opts.skip_bad:
        raise bad_images_error(bad)
    meta = {
        "identity": identity,
        "identity_hash": canonical_hash(identity),
        "producer": "hgadapter.extract",
        "encoder": encoder.meta(),
        "dataset": splits.meta,
        "prompts": {"pos": pos.meta(), "neg": neg.meta()},
        "val": {"shots_per_class": opts.val_shots, "seed": opts.val_seed, "indices": val_idx,
                "protocol": "first min(K, 4) per class form CoOp's validation set for K shots",
                # the list each validation image comes from and its position there: what
                # `hgadapter check` compares with the training sets and the test split
                "source": {"split": splits.val_origin, "indices": splits.val_source_positions(val_idx)}},
        "augment": augment_meta(opts),
        "sampling": {"protocol": "coop", "rng": "numpy.default_rng([seed, shots]), classes in label order"},
        "bad_images": [b.to_dict() for b in bad],
        "storage": {"dtype": "float32", "normalised": "L2, per feature", "text": "per prompt"},
    }
    return FeatureCache(
        classnames=list(splits.classnames),
        pos_text=pos_text,
        neg_text=neg_text,
        pos_text_norm=pos_norm,
        neg_text_norm=neg_norm,
        val_features=val_f.reshape(-1, encoder.dim),
        val_labels=val_y,
        test_features=test_f.reshape(-1, encoder.dim),
        test_labels=test_y,
        train_sets={},
        logit_scale=encoder.logit_scale,
        meta=meta,
    )


def run_extract(args: argparse.Namespace) -> int:
    """Entry point behind ``hgadapter extract``; returns the exit status."""
    opts = options_from_args(args)
    check_output_dir(opts.out)  # before any image is read
    cache = extract(opts)
    if cache is None:
        return 0
    opts.log(f"{opts.out}: {cache.num_classes} classes, d={cache.dim}, "
             f"{len(cache.test_labels)} test, {len(cache.val_labels)} val, "
             f"training sets {sorted(cache.train_sets)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hgadapter extract", description=__doc__.split("\n\n")[0])
    add_extract_arguments(parser)
    return run_extract(parser.parse_args(argv))
