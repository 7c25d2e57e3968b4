"""``hgadapter check CACHE``: what to look at in a feature cache before spending GPU hours on it.

Nobody can run real CLIP where this project is built, so a user's first real cache is the first
one anyone sees. The check reads the cache (every file its sidecar lists) and reports, in
docs/check.md's order:

- **zero-shot**: CLIP's zero-shot accuracy on validation and test (the positive prompt ensemble
  as the classifier, Radford et al. 2021 Sec. 3.1.4), beside the published value for the
  dataset, backbone and prompt set when one is known (``experiments/published_zero_shot.yaml``,
  each value with its source). A gap of more than :data:`GAP_POINTS` points is a warning that
  says what to check: preprocessing, class names and prompts, checkpoint.
- **features**: L2 norms; the matched image-text cosine against the unmatched one and the
  distance between the image and text centroids (CLIP's modality gap, Liang et al., "Mind the
  Gap", NeurIPS 2022); the positive/negative prompt cosine; class balance and images per split.
- **leaks**: any image in two of {a training set, validation, test}, by the source positions the
  sidecar records (``meta.val.source``, each training set's ``indices``, the test split minus its
  bad images) and the image files two source lists share (``meta.dataset.duplicates``). Validation
  drawn from the test images (``--val-source test``) is reported as such.
- **experiments**: what the experiment files that use this cache need and it lacks (shots,
  seeds, domain-generalisation target caches); by default the shipped files under
  ``experiments/`` whose dataset and backbone are the cache's.
- **files**: every file the sidecar lists is read and checked as ``hgadapter run`` reads it
  (checksums, tensors against the sidecar, finite unit-norm features, labels in range): text,
  validation and test first (a damaged one is an error, exit 2), then each training set, one at a
  time (a damaged one is a warning naming the set and what is wrong).

Synthetic caches (``hgadapter synth``) say so; their splits are generated independently, so
there is nothing to leak. ``--json`` prints the report as JSON (:data:`SCHEMA`); ``--strict``
exits 1 on any warning. ``hgadapter sweep`` runs the same check first (:func:`sweep_warnings`)
and prints its warnings in one block.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hgadapter._io import read_yaml
from hgadapter._resources import resource_path
from hgadapter.data.cache import CacheError, FeatureCache, val_source
from hgadapter.data.io import load_cache, load_sidecar, verify_train_sets
from hgadapter.errors import UserError
from hgadapter.protocol import accuracy
from hgadapter.records import backbone_of_encoder, encoder_id
from hgadapter.runspec import RunSpec, expand_experiment

__all__ = [
    "SCHEMA",
    "GAP_POINTS",
    "CheckError",
    "Finding",
    "Need",
    "CheckReport",
    "needs_of",
    "published_path",
    "load_published",
    "check_cache",
    "format_check",
    "sweep_warnings",
    "add_check_arguments",
    "run_check",
]

SCHEMA = "hgadapter.check/1"  # the "schema" key of --json; bump when a key changes meaning
GAP_POINTS = 3.0  # |zero-shot test - published| above this (points) is a warning
PUBLISHED_ENV = "HGADAPTER_PUBLISHED_ZERO_SHOT"
_NORM_TOL = 1e-3  # stored features are L2-normalised; load_cache already refuses 1e-2 off

_GAP_HINT = (
    "a gap this size almost always means one of: (1) preprocessing: the encoder family's own image "
    "processor (CLIP: bicubic resize of the short side, centre crop; SigLIP: resize to the square; "
    "meta.encoder.processor) and text recipe (SigLIP: padded to the maximum length; meta.encoder.text) "
    "on RGB images; "
    "(2) class names or prompts: CoOp's cleaned class names in label order and the dataset's CoOp "
    "template (--pos-prompts coop; meta.prompts.pos); (3) checkpoint: OpenAI's weights for this "
    "backbone (meta.encoder.id and revision), not another pretraining; and that the test split is the "
    "standard one"
)


class CheckError(UserError):
    """The published-values file or an experiment file given to ``hgadapter check`` is unusable."""


@dataclass(frozen=True)
class Finding:
    """One line of the report: its section, ``info`` or ``warning``, and the message."""

    section: str
    level: str
    message: str


@dataclass(frozen=True)
class Need:
    """What one experiment file needs of a cache: its (shots, seed) sets and target caches."""

    source: str  # the experiment file (or "sweep")
    train_keys: tuple[tuple[int, int], ...]  # (shots, seed) training sets
    targets: dict[str, str] = field(default_factory=dict)  # target dataset -> cache folder


@dataclass
class CheckReport:
    """Everything :func:`check_cache` found; :meth:`to_json` is the ``--json`` form."""

    cache: str
    synthetic: bool
    dataset: str | None
    backbone: str | None
    prompts: str | None
    splits: dict[str, Any]
    zero_shot: dict[str, Any]
    features: dict[str, Any]
    leaks: dict[str, Any]
    experiments: list[dict[str, Any]]
    findings: list[Finding]
    files: dict[str, Any] = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        return [f"{f.section}: {f.message}" for f in self.findings if f.level == "warning"]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "cache": self.cache,
            "synthetic": self.synthetic,
            "dataset": self.dataset,
            "backbone": self.backbone,
            "prompts": self.prompts,
            "splits": self.splits,
            "zero_shot": self.zero_shot,
            "features": self.features,
            "leaks": self.leaks,
            "experiments": self.experiments,
            "files": self.files,
            "findings": [f.__dict__ for f in self.findings],
            "warnings": self.warnings,
            "ok": not self.warnings,
        }


# --------------------------------------------------------------------------------------------
# Published zero-shot values


def published_path() -> Path:
    """``$HGADAPTER_PUBLISHED_ZERO_SHOT`` or ``<repo>/experiments/published_zero_shot.yaml``."""
    return resource_path("experiments/published_zero_shot.yaml", PUBLISHED_ENV)


def published_backbone(model_id: str | None) -> str | None:
    """The ``backbone`` the published values of an encoder are filed under.

    Entries named by a paper's backbone (``RN50``, ``ViT-B/16``) report OpenAI's CLIP weights, so
    only OpenAI's checkpoints (``openai/...`` hub ids, ``open_clip:<arch>/openai``) map to them;
    any other hub or open_clip id (SigLIP, MetaCLIP 2, a LAION ViT-B/16, ...) is filed under its
    own id, never compared with OpenAI's numbers. A local folder gives ``None``.
    """
    if not isinstance(model_id, str) or model_id.startswith((".", "/", "~")) or Path(model_id).is_absolute():
        return None
    if model_id.startswith("openai/") or (model_id.startswith("open_clip:") and model_id.endswith("/openai")):
        return backbone_of_encoder(model_id)
    return model_id if ("/" in model_id or model_id.startswith("open_clip:")) else None


def load_published(path: str | Path | None = None) -> dict[tuple[str, str, str], tuple[float, str]]:
    """(dataset, backbone, prompts) -> (accuracy in percent, source text) from the YAML file.

    Raises:
        CheckError: the file is missing or malformed (names the entry and key).
    """
    path = Path(path) if path is not None else published_path()
    data = read_yaml(path, CheckError, what="the published zero-shot values", hint="pass --published PATH")
    if not isinstance(data, dict) or not isinstance(data.get("sources"), dict) or not isinstance(data.get("entries"), list):
        raise CheckError(f"{path}: expected a mapping with 'sources' (name -> citation) and 'entries' (a list)")
    out: dict[tuple[str, str, str], tuple[float, str]] = {}
    for n, entry in enumerate(data["entries"]):
        at = f"{path}: entries[{n}]"
        if not isinstance(entry, dict) or set(entry) != {"backbone", "prompts", "source", "values"}:
            raise CheckError(f"{at}: expected exactly the keys backbone, prompts, source, values")
        if entry["source"] not in data["sources"]:
            raise CheckError(f"{at}.source: unknown source {entry['source']!r}; available: {sorted(data['sources'])}")
        if not isinstance(entry["values"], dict):
            raise CheckError(f"{at}.values: expected dataset -> accuracy (%)")
        for dataset, value in entry["values"].items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
                raise CheckError(f"{at}.values.{dataset}: expected an accuracy in [0, 100], got {value!r}")
            key = (str(dataset), str(entry["backbone"]), str(entry["prompts"]))
            if key in out:
                raise CheckError(f"{at}.values.{dataset}: a second value for {key}")
            out[key] = (float(value), " ".join(str(data["sources"][entry["source"]]).split()))
    return out


# --------------------------------------------------------------------------------------------
# The sections


def _dataset_id(meta: Mapping[str, Any]) -> str | None:
    """The dataset id of a cache: ``meta.dataset.name``, else the name in its spec (``coop:dtd`` -> ``dtd``)."""
    dataset = meta.get("dataset")
    if not isinstance(dataset, dict):
        return dataset if isinstance(dataset, str) else None
    if dataset.get("name"):
        return str(dataset["name"])
    spec = dataset.get("spec")
    return str(spec).split(":", 1)[-1] if isinstance(spec, str) and spec.startswith("coop:") else None


def _classifier(cache: FeatureCache) -> torch.Tensor:
    """CLIP's zero-shot classifier: the normalised mean of each class's positive prompts, ``(C, d)``."""
    return torch.nn.functional.normalize(cache.pos_text.float().mean(dim=1), dim=-1)  # (C, d)


def _zero_shot_acc(cache: FeatureCache, features: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Accuracy (%) of the zero-shot classifier; over ``meta.class_subset`` when the cache has one
    (ImageNet-A and -R, as CoOp scores them); ``None`` for an empty split."""
    if labels.numel() == 0:
        return None
    logits = features.float() @ _classifier(cache).T  # (N, C)
    subset = cache.meta.get("class_subset")
    if subset:
        index = torch.as_tensor(subset, dtype=torch.long)
        return float((index[logits[:, index].argmax(dim=1)] == labels).float().mean()) * 100.0
    return accuracy(logits, labels)


def _zero_shot(cache: FeatureCache, dataset: str | None, backbone: str | None, prompts: str | None,
               published: Mapping[tuple[str, str, str], tuple[float, str]], synthetic: bool) -> tuple[dict, list[Finding]]:
    val = _zero_shot_acc(cache, cache.val_features, cache.val_labels)
    test = _zero_shot_acc(cache, cache.test_features, cache.test_labels)
    out: dict[str, Any] = {"val": _round(val), "test": _round(test), "published": None, "source": None, "gap": None}
    findings: list[Finding] = []
    known = published.get((dataset or "", backbone or "", prompts or "")) if not synthetic else None
    if known is not None:
        out["published"], out["source"] = known
        if test is not None:
            out["gap"] = round(test - known[0], 2)
            if abs(test - known[0]) > GAP_POINTS:
                findings.append(Finding("zero_shot", "warning",
                    f"test accuracy {test:.2f} is {abs(test - known[0]):.2f} points "
                    f"{'below' if test < known[0] else 'above'} the published {known[0]:.2f} ({known[1]}); {_GAP_HINT}"))
    elif synthetic:
        findings.append(Finding("zero_shot", "info", "synthetic features: no published value to compare with"))
    else:
        findings.append(Finding("zero_shot", "info",
            f"no published value for dataset {dataset}, backbone {backbone}, prompts {prompts} "
            f"(add one with its source to {published_path().name})"))
    return out, findings


def _stats(x: torch.Tensor) -> dict[str, float] | None:
    if x.numel() == 0:
        return None
    return {"mean": round(float(x.mean()), 4), "min": round(float(x.min()), 4), "max": round(float(x.max()), 4)}


def _counts(labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    counts = torch.bincount(labels, minlength=num_classes) if labels.numel() else torch.zeros(num_classes, dtype=torch.long)
    return {"images": int(labels.numel()), "per_class_min": int(counts.min()) if num_classes else 0,
            "per_class_max": int(counts.max()) if num_classes else 0,
            "empty_classes": [int(c) for c in torch.nonzero(counts == 0).flatten()]}


def _features(cache: FeatureCache) -> tuple[dict, list[Finding]]:
    C = cache.num_classes
    images = torch.cat([cache.val_features, cache.test_features]).float()  # (N, d)
    labels = torch.cat([cache.val_labels, cache.test_labels])
    text = _classifier(cache)  # (C, d)
    norms = {
        "val": _stats(cache.val_features.float().norm(dim=-1)),
        "test": _stats(cache.test_features.float().norm(dim=-1)),
        "pos_text": _stats(cache.pos_text.float().norm(dim=-1)),
        "neg_text": _stats(cache.neg_text.float().norm(dim=-1)),
    }
    out: dict[str, Any] = {"norms": norms}
    findings: list[Finding] = []
    off = [k for k, s in norms.items() if s and max(abs(s["min"] - 1), abs(s["max"] - 1)) > _NORM_TOL]
    if off:
        findings.append(Finding("features", "warning", f"features not L2-normalised: {off} (every stored feature should have norm 1)"))
    if labels.numel():
        cos = images @ text.T  # (N, C)
        matched = cos.gather(1, labels[:, None]).squeeze(1)  # (N,)
        out["matched_cosine"] = round(float(matched.mean()), 4)
        # the mean over the N (C - 1) other-class pairs, without an (N, C) mask
        out["unmatched_cosine"] = round(float((cos.sum() - matched.sum()) / (cos.numel() - len(matched))), 4) if C > 1 else None
        out["modality_gap"] = round(float((images.mean(0) - text.mean(0)).norm()), 4)  # centroid distance
        if out["unmatched_cosine"] is not None and out["matched_cosine"] <= out["unmatched_cosine"]:
            findings.append(Finding("features", "warning",
                f"images are no closer to their own class's text ({out['matched_cosine']:.3f}) than to other classes' "
                f"({out['unmatched_cosine']:.3f}): image and text features do not belong together (wrong checkpoint, "
                "class order or prompts)"))
    neg = torch.nn.functional.normalize(cache.neg_text.float().mean(dim=1), dim=-1)  # (C, d)
    out["pos_neg_cosine"] = round(float((text * neg).sum(-1).mean()), 4)  # a class's positive vs its negative prompts
    if C > 1:
        pp = text @ text.T  # (C, C)
        out["pos_pos_cosine_other_classes"] = round(float(pp[~torch.eye(C, dtype=torch.bool)].mean()), 4)
    return out, findings


def _val_source_text(meta: Mapping[str, Any]) -> str | None:
    dataset = meta.get("dataset")
    return dataset.get("val_source") if isinstance(dataset, dict) else None


def _splits(cache: FeatureCache, sidecar: Mapping[str, Any], synthetic: bool) -> tuple[dict, list[Finding]]:
    C = cache.num_classes
    entries = sorted(sidecar["train_sets"], key=lambda e: (e["shots"], e["seed"]))
    out: dict[str, Any] = {
        "classes": C,
        "dim": cache.dim,
        "prompts_per_class": {"pos": int(cache.pos_text.shape[1]), "neg": int(cache.neg_text.shape[1])},
        "val": _counts(cache.val_labels, C),
        "test": _counts(cache.test_labels, C),
        "val_source": "generated (synthetic)" if synthetic else _val_source_text(cache.meta),
        "train_sets": [[e["shots"], e["seed"]] for e in entries],
    }
    findings: list[Finding] = []
    subset = set(cache.meta.get("class_subset") or range(C))
    empty_test = [c for c in out["test"]["empty_classes"] if c in subset]
    if out["test"]["images"] == 0:
        findings.append(Finding("splits", "warning", "the test split is empty"))
    elif empty_test:
        findings.append(Finding("splits", "warning", f"{len(empty_test)} classes have no test image (labels {empty_test[:10]})"))
    if out["val"]["images"] == 0:
        findings.append(Finding("splits", "warning" if entries else "info",
            "no validation images: hyper-parameter selection is impossible (extract with --val-shots > 0)"
            if entries else "no validation images (a test-only cache: a domain-generalisation target)"))
    elif out["val"]["empty_classes"]:
        findings.append(Finding("splits", "warning", f"{len(out['val']['empty_classes'])} classes have no validation image"))
    return out, findings


def _files(path: Path, keys: Iterable[tuple[int, int]] | None) -> tuple[dict, list[Finding]]:
    """Every training set read and checked as ``run`` would read it (text, validation and test
    were read already): checksum, tensors against the sidecar, finite values, labels in range."""
    verdicts = verify_train_sets(path, keys)
    damaged = [{"train_set": [k, s], "error": error} for (k, s), error in verdicts.items() if error is not None]
    findings = [
        Finding("files", "warning", f"training set (shots={d['train_set'][0]}, seed={d['train_set'][1]}) cannot be used "
                f"(`hgadapter run` refuses it): {d['error']}")
        for d in damaged
    ]
    return {"checked": len(verdicts), "damaged": damaged}, findings


def _leaks(meta: Mapping[str, Any], sidecar: Mapping[str, Any], synthetic: bool) -> tuple[dict, list[Finding]]:
    """Images used in two roles, by the source positions and shared files the sidecar records."""
    if synthetic:
        return {"checked": False, "reason": "synthetic: every split is generated independently; no image is shared", "found": []}, []
    dataset = meta.get("dataset") if isinstance(meta.get("dataset"), dict) else {}
    val_meta = meta.get("val") if isinstance(meta.get("val"), dict) else {}
    source = val_meta.get("source")
    if not isinstance(source, dict):  # extracted before the source was recorded: its val list is the source
        kind = val_source(meta)
        source = {"split": kind if kind in ("test", "train") else "val", "indices": val_meta.get("indices")}
        if kind == "train" or source["indices"] is None:
            source = None
    train_sets = {(e["shots"], e["seed"]): e.get("indices") for e in sidecar["train_sets"]}
    test_size = dataset.get("test_size")
    # the test list holds the test images kept plus those left out as unreadable; a larger count is
    # not a source position (and a huge one must not become a set of that many positions)
    bad_images = meta.get("bad_images") if isinstance(meta.get("bad_images"), list) else []
    listed = int(sidecar["files"]["test.safetensors"]["labels"]["shape"][0]) + len(bad_images)
    if not isinstance(test_size, int) or isinstance(test_size, bool) or not 0 <= test_size <= listed:
        test_size = None
    if source is None or any(v is None for v in train_sets.values()) or test_size is None:
        why = "the sidecar records no source position of every image (meta.val.source, training-set indices, meta.dataset.test_size)"
        return {"checked": False, "reason": why, "found": []}, [Finding("leaks", "info", f"not checked: {why}")]
    bad_test = {b.get("index") for b in bad_images if isinstance(b, dict) and b.get("split") == "test"}
    # source list -> role -> positions in that list the role uses
    used: dict[str, dict[str, set[int]]] = {
        "train": {f"training set (shots={k}, seed={s})": set(ix) for (k, s), ix in sorted(train_sets.items())},
    }
    used.setdefault(source["split"], {})["validation"] = set(source["indices"])
    used.setdefault("test", {})["test"] = set(range(test_size)) - bad_test
    found: list[dict[str, Any]] = []

    def add(a: str, b: str, positions: Iterable[Any], how: str) -> None:
        positions = sorted(positions)
        if positions:
            found.append({"a": a, "b": b, "by": how, "count": len(positions), "examples": positions[:5]})

    # Two roles drawing from the same source list: shared positions are shared images.
    for split, roles in used.items():
        names = sorted(roles)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                if a.startswith("training set") and b.startswith("training set"):
                    continue  # training sets of different (shots, seed) may share images by design
                add(a, b, roles[a] & roles[b], f"position in the {split} list")
    # The same file in two source lists (recorded at extraction).
    for a_split, i, b_split, j in dataset.get("duplicates") or []:
        for a, pa in used.get(a_split, {}).items():
            for b, pb in used.get(b_split, {}).items():
                if i in pa and j in pb:
                    add(a, b, [f"{a_split}#{i}={b_split}#{j}"], "the same file in two source lists")
    findings = []
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    for f in found:  # one line per pair of roles
        key = (f["a"], f["b"], f["by"])
        if key in merged:
            merged[key]["count"] += f["count"]
            merged[key]["examples"] = (merged[key]["examples"] + f["examples"])[:5]
        else:
            merged[key] = dict(f)
    found = list(merged.values())
    for f in found:
        if source["split"] == "test" and {f["a"], f["b"]} == {"test", "validation"}:
            text = (f"validation is drawn from the test images ({f['count']} images; --val-source test, CoOp's ImageNet "
                    "protocol): model selection sees test images. Re-extract without --val-source test to hold "
                    "validation out of train")
        else:
            text = f"{f['count']} image(s) in both {f['a']} and {f['b']} (by {f['by']}; e.g. {f['examples']})"
        findings.append(Finding("leaks", "warning", text))
    return {"checked": True, "by": ["source position", "file path (meta.dataset.duplicates)"],
            "val_split": source["split"], "found": found}, findings


# --------------------------------------------------------------------------------------------
# Experiment files


def _experiment_files() -> list[Path]:
    root = resource_path("experiments", "HGADAPTER_EXPERIMENTS")
    skip = {"_base_", "methods", "configs"}
    return sorted(p for p in root.rglob("*.yaml") if not skip & set(p.relative_to(root).parts) and p.name != "published_zero_shot.yaml"
                  and p.name != "paper_results.yaml")


def needs_of(files: Sequence[str | os.PathLike], *, features_root: str | os.PathLike, dataset: str | None = None,
             backbone: str | None = None, explicit: bool = True) -> list[Need]:
    """What each experiment file needs of a cache. With ``explicit=False`` (discovered files), only
    files whose sweep names ``dataset`` and ``backbone`` count, and unreadable ones are skipped."""
    from hgadapter.config import ConfigError, load_experiment

    needs = []
    for file in files:
        try:
            experiment = load_experiment(file)
            if not explicit and (experiment.sweep.dataset != dataset or experiment.sweep.backbone != backbone):
                continue
            specs = expand_experiment(experiment, features_root=features_root)
        except ConfigError:
            if explicit:
                raise
            continue
        if specs:
            needs.append(Need(str(file), tuple(sorted({(s.shots, s.seed) for s in specs})), dict(specs[0].targets)))
    return needs


def _experiments(cache: FeatureCache, sidecar: Mapping[str, Any], needs: Sequence[Need]) -> tuple[list[dict], list[Finding]]:
    have = {(e["shots"], e["seed"]) for e in sidecar["train_sets"]}
    out, findings = [], []
    for need in needs:
        missing = sorted(set(need.train_keys) - have)
        targets_missing, targets_mismatched = [], []
        for name, path in sorted(need.targets.items()):
            try:
                target = load_sidecar(path)
            except CacheError:
                targets_missing.append(f"{name} ({path})")
                continue
            if list(target["classnames"]) != list(cache.classnames):
                targets_mismatched.append(f"{name} ({path})")
        entry = {
            "file": need.source,
            "missing_train_sets": [list(k) for k in missing],
            "missing_shots": sorted({k for k, _ in missing}),
            "missing_seeds": sorted({s for _, s in missing}),
            "missing_targets": targets_missing,
            "mismatched_targets": targets_mismatched,
        }
        out.append(entry)
        if missing:
            findings.append(Finding("experiments", "warning",
                f"{need.source} needs training sets the cache lacks: {_keys_text(missing)} (extract them with "
                f"--shots {' '.join(map(str, entry['missing_shots']))} --seeds {' '.join(map(str, entry['missing_seeds']))} "
                "into the same --out)"))
        if targets_missing:
            findings.append(Finding("experiments", "warning", f"{need.source} needs target caches that are missing: {', '.join(targets_missing)}"))
        if targets_mismatched:
            findings.append(Finding("experiments", "warning",
                f"{need.source}: target caches with another class list: {', '.join(targets_mismatched)}"))
    return out, findings


def _keys_text(keys: Sequence[tuple[int, int]]) -> str:
    text = ", ".join(f"(shots={k}, seed={s})" for k, s in keys[:8])
    return text + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")


# --------------------------------------------------------------------------------------------
# The check


def check_cache(
    path: str | os.PathLike,
    *,
    needs: Sequence[Need] | None = None,
    experiments: Sequence[str | os.PathLike] | None = None,
    features_root: str | os.PathLike | None = None,
    published: Mapping[tuple[str, str, str], tuple[float, str]] | None = None,
    train_keys: Iterable[tuple[int, int]] | None = None,
) -> CheckReport:
    """Check the cache at ``path`` (module docstring).

    Args:
        path: the cache directory.
        needs: what the caller will run on it (:class:`Need`); overrides ``experiments``.
        experiments: experiment files to check against; ``None``: the shipped files whose sweep
            names this cache's dataset and backbone.
        features_root: where the experiments' cache folders are (default: the cache's parent).
        published: :func:`load_published`'s answer (default: read the shipped file).
        train_keys: the training sets whose files to read and check; ``None``: every one listed.

    Raises:
        CacheError: the cache cannot be loaded.
        CheckError / ConfigError: the published values or an experiment file is malformed.
    """
    path = Path(path)
    sidecar = load_sidecar(path)
    cache = load_cache(path, train_keys=[])
    meta = cache.meta
    synthetic = bool(meta.get("synthetic"))
    dataset = _dataset_id(meta)
    backbone = published_backbone(encoder_id(meta))
    pos = (meta.get("prompts") or {}).get("pos") if isinstance(meta.get("prompts"), dict) else None
    prompts = pos.get("name") if isinstance(pos, dict) else None
    if published is None:
        published = load_published()
    if needs is None:
        root = Path(features_root) if features_root is not None else path.parent
        if experiments is None:
            needs = needs_of(_experiment_files(), features_root=root, dataset=dataset, backbone=backbone, explicit=False)
        else:
            needs = needs_of(experiments, features_root=root)
    findings: list[Finding] = []
    splits, f = _splits(cache, sidecar, synthetic)
    findings += f
    zero_shot, f = _zero_shot(cache, dataset, backbone, prompts, published, synthetic)
    findings += f
    features, f = _features(cache)
    findings += f
    leaks, f = _leaks(meta, sidecar, synthetic)
    findings += f
    experiments_out, f = _experiments(cache, sidecar, needs)
    findings += f
    files, f = _files(path, train_keys)
    findings += f
    return CheckReport(str(path), synthetic, dataset, backbone, prompts, splits, zero_shot, features, leaks, experiments_out, findings, files)


def _round(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, 2)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f} %"


def format_check(report: CheckReport) -> str:
    """The report as text for people: one block per section, then the warnings."""
    tag = "  [SYNTHETIC features: say nothing about real CLIP]" if report.synthetic else ""
    s, z, f = report.splits, report.zero_shot, report.features
    lines = [
        f"hgadapter check {report.cache}{tag}",
        f"  dataset {report.dataset or '?'}, backbone {report.backbone or '?'}, prompts {report.prompts or '?'} "
        f"({s['prompts_per_class']['pos']} positive, {s['prompts_per_class']['neg']} negative per class), "
        f"{s['classes']} classes, d={s['dim']}",
        f"  splits: val {s['val']['images']} ({s['val']['per_class_min']}-{s['val']['per_class_max']} per class; "
        f"source: {s['val_source'] or 'not recorded'}), test {s['test']['images']} "
        f"({s['test']['per_class_min']}-{s['test']['per_class_max']} per class), "
        f"training sets {' '.join(f'K{k}/s{sd}' for k, sd in s['train_sets']) or 'none'}",
    ]
    published = f", published {z['published']:.2f} ({z['source']}), gap {z['gap']:+.2f}" if z["published"] is not None and z["gap"] is not None else ""
    lines.append(f"  zero-shot: val {_pct(z['val'])}, test {_pct(z['test'])}{published}")
    norms = ", ".join(f"{k} {v['min']:.3f}-{v['max']:.3f}" for k, v in f["norms"].items() if v)
    lines.append(f"  features: norms {norms}")
    if "matched_cosine" in f:
        unmatched = "—" if f["unmatched_cosine"] is None else f"{f['unmatched_cosine']:.3f}"
        lines.append(f"  image-text cosine: matched {f['matched_cosine']:.3f}, unmatched {unmatched}, "
                     f"modality gap (centroid distance) {f['modality_gap']:.3f}; positive vs negative prompts {f['pos_neg_cosine']:.3f}")
    leaks = report.leaks
    if not leaks["checked"]:
        lines.append(f"  leaks: not checked ({leaks['reason']})")
    else:
        verdict = f"{len(leaks['found'])} found" if leaks["found"] else "none found"
        lines.append(f"  leaks: {verdict} (by source position and shared files; validation from the {leaks['val_split']} list)")
    for e in report.experiments:
        gaps = [x for x in (
            e["missing_train_sets"] and f"{len(e['missing_train_sets'])} training sets missing",
            e["missing_targets"] and f"targets missing: {', '.join(e['missing_targets'])}",
            e["mismatched_targets"] and "targets with another class list",
        ) if x]
        lines.append(f"  experiment {e['file']}: {'; '.join(gaps) if gaps else 'everything present'}")
    if report.files:
        damaged = len(report.files["damaged"])
        lines.append(f"  files: {report.files['checked']} training sets read and checked (checksums, shapes, values), "
                     + (f"{damaged} cannot be used" if damaged else "all usable"))
    infos = [x for x in report.findings if x.level == "info"]
    for x in infos:
        lines.append(f"  note ({x.section}): {x.message}")
    warnings = report.warnings
    lines.append(f"warnings ({len(warnings)}):" if warnings else "no warnings")
    lines += [f"  - {w}" for w in warnings]
    return "\n".join(lines) + "\n"


def sweep_warnings(specs: Sequence[RunSpec]) -> list[str]:
    """The check's warnings for every cache a sweep trains on, as short lines (``hgadapter sweep``).

    ``specs`` are :class:`hgadapter.runspec.RunSpec`; each cache is checked against the training
    sets and targets the sweep's runs on it need. A cache that cannot be loaded is left to the
    sweep's own error.
    """
    by_cache: dict[str, list[RunSpec]] = {}
    for spec in specs:
        by_cache.setdefault(spec.features, []).append(spec)
    published = None
    lines: list[str] = []
    for path, group in sorted(by_cache.items()):
        targets = {name: p for spec in group for name, p in spec.targets.items()}
        need = Need("this sweep", tuple(sorted({(s.shots, s.seed) for s in group})), targets)
        try:
            published = published if published is not None else load_published()
            report = check_cache(path, needs=[need], published=published, train_keys=need.train_keys)
        except (CacheError, CheckError):
            continue
        lines += [f"{path}: {w}" for w in report.warnings]
    return lines


# --------------------------------------------------------------------------------------------
# Command line


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``hgadapter check``."""
    from hgadapter._cli import add_positional_or_option

    add_positional_or_option(parser, "cache", "--features", metavar="CACHE", help="feature cache directory")
    parser.add_argument("--experiments", nargs="+", default=None, metavar="FILE",
                        help="experiment files to check the cache against (default: the shipped ones for its dataset and backbone)")
    parser.add_argument("--features-root", default=None, help="where the experiments' cache folders are (default: the cache's parent folder)")
    parser.add_argument("--published", default=None, metavar="PATH",
                        help=f"published zero-shot values (default: experiments/published_zero_shot.yaml or ${PUBLISHED_ENV})")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (schema in docs/check.md)")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 on any warning")


def run_check(args: argparse.Namespace) -> int:
    """``hgadapter check``: print the report; 1 under ``--strict`` when there are warnings."""
    report = check_cache(args.cache, experiments=args.experiments, features_root=args.features_root,
                         published=load_published(args.published))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_check(report), end="")
    return 1 if args.strict and report.warnings else 0
