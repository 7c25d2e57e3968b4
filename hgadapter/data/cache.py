"""Feature caches: the frozen CLIP features every adapter trains on (docs/feature-cache.md).

The paper initialises its text nodes from CLIP features of positive and negative prompts, its
visual nodes from the features of the few-shot images, and keys its cache classifier on every
training feature (HeGraphAdapter Sec. 3.1.1 "Nodes" and Sec. 3.2). CLIP stays frozen, so these
features are computed once and stored here.

A cache is a directory holding a JSON sidecar (``cache.json``) and safetensors files. It is the
only interface between feature extraction (real CLIP or the synthetic task) and training, so
anyone can write one from their own features with :func:`hgadapter.data.io.save_cache`::

    cache.json                           sidecar: version, classnames, dim, file table, meta
    text.safetensors                     pos_text (C, P, d), neg_text (C, Q, d); optionally
                                         pos_text_norm (C, P), neg_text_norm (C, Q)
    val.safetensors                      features (N_val, d), labels (N_val,)
    test.safetensors                     features (N_test, d), labels (N_test,)
    train_k{shots}_s{seed}.safetensors   features (N, V, d), labels (N,); one per few-shot set

This module holds what a cache *is*: the file names, what each file holds, the format version,
the in-memory :class:`FeatureCache` and :class:`CacheError`. Reading and writing live in
:mod:`hgadapter.data.io`, the checks both share in :mod:`hgadapter.data.validate`, and adding
training sets to a cache on disk in :mod:`hgadapter.data.merge`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import torch
from hgadapter.errors import UserError

FORMAT_VERSION = 1

SIDECAR_NAME = "cache.json"
TEXT_FILE = "text.safetensors"
VAL_FILE = "val.safetensors"
TEST_FILE = "test.safetensors"

# What each kind of file holds: tensor key -> (role, rank, shape as documented).
FILE_KINDS: dict[str, dict[str, tuple[str, int, str]]] = {
    "text": {
        "pos_text": ("features", 3, "(C, P, d)"),
        "neg_text": ("features", 3, "(C, Q, d)"),
    },
    "split": {
        "features": ("features", 2, "(N, d)"),
        "labels": ("labels", 1, "(N,)"),
    },
    "train": {
        "features": ("features", 3, "(N, V, d)"),
        "labels": ("labels", 1, "(N,)"),
    },
}


# Tensors a file may hold beside FILE_KINDS' (caches written before them load without them):
# the raw L2 norm of each prompt's text feature before normalisation, which CLAP starts from.
# key -> (role, rank, shape as documented, the features tensor whose first two dims it matches).
OPTIONAL_KINDS: dict[str, dict[str, tuple[str, int, str, str]]] = {
    "text": {
        "pos_text_norm": ("norms", 2, "(C, P)", "pos_text"),
        "neg_text_norm": ("norms", 2, "(C, Q)", "neg_text"),
    },
}


def file_keys(kind: str, present) -> tuple[str, ...]:
    """The tensors a file of ``kind`` holds: every required one, then the optional ones in ``present``."""
    return (*FILE_KINDS[kind], *(k for k in OPTIONAL_KINDS.get(kind, {}) if k in present))


class CacheError(UserError):
    """A feature cache is missing, malformed or does not match the request."""


@dataclass(frozen=True)
class FewShotSet:
    """One few-shot training set, identified by ``(shots, seed)``.

    Attributes:
        shots: images per class (K).
        seed: sampling seed.
        features: L2-normalised image features of every augmented view, shape ``(N, V, d)``.
        labels: class index of each image, shape ``(N,)``, int64.
        indices: index of each image in the source train split (recorded for reproducibility),
            or ``None`` when the images have no source list (synthetic task).
    """

    shots: int
    seed: int
    features: torch.Tensor
    labels: torch.Tensor
    indices: list[int] | None = None

    @property
    def key(self) -> tuple[int, int]:
        return (self.shots, self.seed)


class ClassTextShapes:
    """``num_classes`` and ``dim`` of any dataclass with ``classnames`` and ``pos_text`` ``(C, P, d)``.

    Shared by :class:`FeatureCache` and the views of it that methods see, so the two answers
    cannot diverge.
    """

    classnames: list[str]
    pos_text: torch.Tensor

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def dim(self) -> int:
        return int(self.pos_text.shape[-1])


@dataclass(frozen=True)
class FeatureCache(ClassTextShapes):
    """Everything one (dataset, encoder) pair contributes to training and evaluation.

    Attributes:
        classnames: the C class names, in label order.
        pos_text: per-prompt L2-normalised positive text features, ``(C, P, d)``.
        neg_text: per-prompt L2-normalised negative text features, ``(C, Q, d)``.
        val_features / val_labels: ``(N_val, d)`` / ``(N_val,)``.
        test_features / test_labels: ``(N_test, d)`` / ``(N_test,)``.
        train_sets: few-shot training sets keyed by ``(shots, seed)``.
        logit_scale: CLIP's logit scale s (100 for OpenAI CLIP).
        meta: sidecar metadata recording everything that determined the features (encoder id and
            revision, prompt sets, dataset and split source, augmentation, synthetic flag, ...).
        pos_text_norm / neg_text_norm: the raw L2 norm of each prompt's text feature before
            normalisation, ``(C, P)`` / ``(C, Q)``, finite and positive; ``None`` in caches written
            before they were recorded (both or neither).
    """

    classnames: list[str]
    pos_text: torch.Tensor
    neg_text: torch.Tensor
    val_features: torch.Tensor
    val_labels: torch.Tensor
    test_features: torch.Tensor
    test_labels: torch.Tensor
    train_sets: dict[tuple[int, int], FewShotSet] = field(default_factory=dict)
    logit_scale: float = 100.0
    meta: dict[str, Any] = field(default_factory=dict)
    pos_text_norm: torch.Tensor | None = None
    neg_text_norm: torch.Tensor | None = None

    def train_set(self, shots: int, seed: int) -> FewShotSet:
        """The training set for ``(shots, seed)``; a :class:`CacheError` lists the ones present."""
        try:
            return self.train_sets[(shots, seed)]
        except KeyError:
            have = ", ".join(f"(shots={k}, seed={s})" for k, s in sorted(self.train_sets)) or "none"
            raise CacheError(
                f"no training set for (shots={shots}, seed={seed}) in this cache; present: {have}"
            ) from None


def dataset_name(meta: dict[str, Any]) -> str | None:
    """The dataset a cache's sidecar ``meta`` names (``meta["dataset"]["name"]`` or a plain string).

    A cache extracted before ``name`` was recorded is named by its spec: ``coop:dtd`` -> ``dtd``,
    ``hf:org/set`` -> ``set``, ``imagefolder`` -> the folder's name.
    """
    dataset = meta.get("dataset")
    if not isinstance(dataset, dict):
        return dataset
    if dataset.get("name"):
        return dataset["name"]
    spec, root = dataset.get("spec"), dataset.get("root")
    if not isinstance(spec, str):
        return None
    kind, _, rest = spec.partition(":")
    if kind in ("coop", "hf") and rest:
        return rest.rstrip("/").rsplit("/", 1)[-1]
    if spec == "imagefolder" and isinstance(root, str) and root.strip("/"):
        return PurePath(root).name
    return None


def train_file_name(shots: int, seed: int) -> str:
    """The file :func:`~hgadapter.data.io.save_cache` writes the ``(shots, seed)`` training set to."""
    return f"train_k{shots}_s{seed}.safetensors"


def val_source(meta: dict[str, Any]) -> str | None:
    """Where a cache's validation images come from, by the sidecar's ``meta["dataset"]["val_source"]``:
    ``"val"`` (the dataset's own split), ``"train"`` (held out of every training set), ``"test"``
    (CoOp's ImageNet protocol: validation drawn from the test images), or ``None`` when not recorded."""
    dataset = meta.get("dataset")
    text = dataset.get("val_source") if isinstance(dataset, dict) else None
    return text.split()[0] if isinstance(text, str) and text.strip() else None
