"""Encoding images into features: batched, with loading overlapped in threads (paper Sec. 4.1).

:func:`encode_samples` encodes one list of images; :func:`encode_eval_split` and
:func:`encode_train_set` build a cache's val/test features and one few-shot training set from
it, replacing unreadable images when the run allows it. Shards and merges
(:mod:`hgadapter.extract.shards`) pass their own ``encode`` with the same signature.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from hgadapter.data.cache import FewShotSet
from hgadapter.extract import augment as aug
from hgadapter.extract.datasets import DatasetSplits, Sample, replacement_candidates, sample_per_class
from hgadapter.extract.encoders import Encoder
from hgadapter.extract.images import ImageProcessing
from hgadapter.extract.options import ExtractError, ExtractOptions


@dataclass(frozen=True)
class BadImage:
    """An image that could not be read: its split, index in that split, path and the error."""

    split: str
    index: int
    key: str
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "index": self.index, "key": self.key, "error": self.error}



def _load_views(
    splits: DatasetSplits,
    sample: Sample,
    pre: ImageProcessing,
    augment: aug.Augment | None,
    views: int,
    rng: np.random.Generator | None,
) -> dict[str, np.ndarray] | str:
    """The model inputs of ``V`` views of one sample (``pixel_values`` ``(V, 3, H, W)``, ...), or
    the error message when it cannot be read."""
    try:
        image = splits.load_image(sample)
        return aug.make_views(image, pre, augment, views, rng)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        # PIL raises the first three for bad files, and the last for one that declares more
        # pixels than it will decode (e.g. a 30000 x 30000 PNG): unreadable images alike
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

    def load(i: int) -> dict[str, np.ndarray] | str:
        rng = rng_for(positions[i]) if (rng_for is not None and augment is not None) else None
        return _load_views(splits, samples[i], encoder.preprocess, augment, views, rng)

    bar = tqdm(total=len(samples), desc=split, unit="img", disable=not progress, leave=False)
    for pos, loaded in iter_batches(load, len(samples), batch_size=per_batch, workers=workers):
        good = [(i, arr) for i, arr in zip(pos, loaded) if not isinstance(arr, str)]
        for i, arr in zip(pos, loaded):
            if isinstance(arr, str):
                bad.append(BadImage(split, positions[i], samples[i].key, arr))
        if good:
            inputs = {  # pixel_values (B*V, 3, H, W) (NaFlex: (B*V, N, p*p*3), with its mask and shapes)
                key: torch.from_numpy(np.concatenate([arr[key] for _, arr in good])) for key in good[0][1]
            }
            feats = encoder.encode_images(inputs).view(len(good), views, -1)  # (B, V, d)
            out[torch.tensor([i for i, _ in good])] = feats
        bar.update(len(pos))
    bar.close()
    return out, bad


def bad_images_error(bad: list[BadImage]) -> ExtractError:
    """One error listing the unreadable images (the first 50) and how to proceed."""
    lines = "\n".join(f"  [{b.split} #{b.index}] {b.key}: {b.error}" for b in bad[:50])
    more = f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else ""
    return ExtractError(
        f"{len(bad)} image(s) could not be read:\n{lines}{more}\n"
        f"Fix or remove them, or pass --skip-bad to leave them out (they are then recorded in the cache)."
    )


def val_indices(opts: ExtractOptions, splits: DatasetSplits) -> list[int]:
    """The validation images of the cache: ``val_shots`` per class, in CoOp's order."""
    if not (splits.val and opts.val_shots):
        return []
    return sample_per_class(splits.val, len(splits.classnames), opts.val_shots, opts.val_seed)


def encode_eval_split(
    opts: ExtractOptions, encoder: Encoder, splits: DatasetSplits, name: str, indices: list[int], encode: Callable
) -> tuple[torch.Tensor, torch.Tensor, list[int], list[BadImage]]:
    """Features ``(N, d)``, labels, kept indices and bad images of the ``val`` or ``test`` images at ``indices``."""
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


def encode_train_set(
    opts: ExtractOptions, encoder: Encoder, splits: DatasetSplits, shots: int, seed: int,
    encode: Callable = encode_samples,
) -> tuple[FewShotSet, list[BadImage]]:
    """Sample K per class, encode V views each; with --skip-bad, replace unreadable images."""
    # The cache format needs exactly K images per class, so short classes repeat images.
    # Held-out validation images (--val-source train) are never training images.
    held = set(splits.held_out)
    indices = sample_per_class(splits.train, len(splits.classnames), shots, seed, repeat=True, exclude=held)
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
            raise bad_images_error(bad)
        known_bad |= bad_pos
        # Substitutes come from the same class in a seeded order, so a rerun picks the same ones.
        todo = []
        for pos, i in enumerate(indices):
            if i not in known_bad:
                continue
            label = splits.train[i].label
            taken = set(indices) | known_bad | held
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
                    f"see the list above:\n{bad_images_error(all_bad)}"
                )
        todo = list(dict.fromkeys(todo))
    feats = torch.stack([feats_by_index[i] for i in indices]) if indices else torch.zeros(0, opts.views, encoder.dim)
    labels = torch.tensor([splits.train[i].label for i in indices], dtype=torch.int64)
    return FewShotSet(shots=shots, seed=seed, features=feats, labels=labels, indices=list(indices)), all_bad
