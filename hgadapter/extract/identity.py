"""The identity of a feature cache: every input that determines its features (STYLE "Caches").

Encoder id, revision and family, image processor and text recipe, precision, dataset spec and split hashes, prompt hashes,
validation sampling and source (``--val-source``) and augmentation are stored in the sidecar's ``meta["identity"]``; resuming
an extraction or merging shards requires equal identities.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from hgadapter.extract import augment as aug
from hgadapter.extract.datasets import DatasetSplits
from hgadapter.extract.encoders import Encoder
from hgadapter.extract.options import ExtractOptions
from hgadapter.extract.prompts import PromptSet

# Bump when a change here alters the features written for the same inputs.
# 2: encoder families; images go through the checkpoint's own image processor, recorded with
#    the family and text recipe (caches of version 1 load and train as before, but are not extended).
EXTRACT_VERSION = 2



def canonical_hash(obj: Any) -> str:
    """``"sha256:<hex>"`` of ``obj`` as canonical JSON."""
    return "sha256:" + hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def build_identity(
    opts: ExtractOptions, encoder: Encoder, splits: DatasetSplits, pos: PromptSet, neg: PromptSet
) -> dict[str, Any]:
    """The inputs that determine every feature in the cache; resuming requires equality."""
    enc = encoder.meta()
    identity = {
        "extract_version": EXTRACT_VERSION,
        "encoder": {
            k: enc[k] for k in ("id", "revision", "backend", "family", "dim", "processor", "text", "context_length", "precision")
        },
        "dataset": {k: v for k, v in splits.meta.items() if k == "spec" or k.endswith(("_hash", "_size")) or k == "num_classes"},
        "classnames_hash": canonical_hash(splits.classnames),
        "prompts": {"pos": pos.content_hash, "neg": neg.content_hash},
        # where validation comes from (--val-source, resolved): another source is another cache
        "val": {"shots": opts.val_shots, "seed": opts.val_seed, "source": splits.val_origin if splits.val else None},
        "augment": augment_meta(opts),
        "skip_bad": opts.skip_bad,
    }
    return json.loads(json.dumps(identity))  # tuples -> lists, as the sidecar will read back


def augment_meta(opts: ExtractOptions) -> dict[str, Any]:
    """The augmentation part of the identity and of the sidecar's meta."""
    if opts.augment == "none":
        return {"kind": "none", "views": opts.views}
    a = aug.Augment(scale=opts.aug_scale)
    return {**a.to_dict(), "views": opts.views, "seed": opts.aug_seed}


def identity_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """One line per differing leaf of two identities: ``"<key path>: cache has X, this run has Y"``."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in identity_diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix.rstrip('.')}: cache has {a!r}, this run has {b!r}"]
