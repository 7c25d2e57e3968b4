"""A synthetic CLIP-like few-shot task, generated from a seed (docs/synthetic.md).

No CLIP weights can be downloaded everywhere this project runs, so the demo, the CLI smoke tests
and most unit tests train on this task instead. It imitates the statistics of frozen CLIP
features that HeGraphAdapter relies on (METHOD.md, "Setting" and "Nodes"): images and prompts
live in two cones separated by a modality gap, classes come in confusable families, each class's
text centre is a biased copy of its visual centre (the bias is what few-shot images can correct),
and negative prompts sit close to their positive prompts, displaced along a shared "negation"
direction. Every number obtained on it is SYNTHETIC and says nothing about real CLIP accuracy.

The generative model, with its equations and the measured statistics of the default task, is in
docs/synthetic.md; :func:`task_statistics` recomputes those statistics for any task.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hgadapter.data.cache import FeatureCache, FewShotSet
from hgadapter.protocol import accuracy

__all__ = [
    "SyntheticTaskConfig",
    "build_synthetic_task",
    "write_synthetic_task",
    "task_statistics",
    "list_presets",
    "preset_config",
    "GENERATOR_VERSION",
]

# Bump when the same config would generate different tensors; recorded in the cache's meta.
GENERATOR_VERSION = 1

# Independent random streams, so that e.g. adding a few-shot seed leaves the test split alone.
_STREAM_STRUCTURE = 0
_STREAM_VAL = 1
_STREAM_TEST = 2
_STREAM_TRAIN = 3


@dataclass(frozen=True)
class SyntheticTaskConfig:
    """Every input of the synthetic task; the defaults are the demo task.

    Noise scales are the expected Euclidean norm of the noise vector added to an unnormalised
    centre whose semantic part has norm 1 (see docs/synthetic.md for the equations).
    """

    seed: int = 0  # generator seed: everything below is a function of (config, seed)
    num_classes: int = 100  # C, number of classes
    dim: int = 512  # d, feature dimension (512 as CLIP ViT-B/16)
    num_families: int = 20  # confusable families of classes; classes are dealt round-robin
    pos_prompts: int = 8  # P, positive prompt templates per class
    neg_prompts: int = 2  # Q, negative prompt templates per class (negations of the first Q)
    shots: tuple[int, ...] = (1, 2, 4, 8, 16)  # K values written as few-shot training sets
    seeds: tuple[int, ...] = (1, 2, 3)  # few-shot sampling seeds written for every K
    views: int = 4  # V, augmented views per training image
    val_per_class: int = 4  # validation images per class
    test_per_class: int = 30  # test images per class (>= 30 keeps accuracy noise small)
    family_weight: float = 0.6  # share of a class centre's variance that its family sets, in [0, 1)
    text_bias: float = 0.35  # share of a text centre's variance that is class-specific bias, in [0, 1)
    image_gap: float = 2.0  # norm of the offset shared by all images (the image cone's axis)
    text_gap: float = 1.7  # norm of the offset shared by all prompts (the text cone's axis)
    cone_cos: float = 0.3  # cosine between the image and text cone axes, in [-1, 1]
    semantic_rank: int | None = None  # m, dimension holding all class structure; None: min(64, dim - 3)
    image_noise: float = 1.9  # norm of an image's within-class noise inside the semantic subspace
    residual_noise: float = 0.5  # norm of an image's isotropic noise in the whole feature space
    family_noise: float = 0.5  # norm of an image's noise inside its family's low-rank subspace
    family_rank: int | None = None  # r, rank of each family's nuisance subspace; None: min(8, m)
    view_noise: float = 0.15  # norm of the perturbation that makes an augmented view
    template_shift: float = 0.3  # norm of a prompt template's shift, shared by all classes
    prompt_noise: float = 0.3  # norm of a prompt's class-specific noise
    negation: float = 0.7  # norm of the displacement of a negative prompt along the negation axis
    negation_suppression: float = 0.1  # how much of its class's text semantics a negation removes
    negation_noise: float = 0.1  # norm of a negative prompt's own noise
    text_norm: float = 10.0  # mean raw (pre-normalisation) L2 norm of a prompt's text feature, as CLIP's encode_text returns it

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, valid: str) -> None:
            if not ok:
                raise ValueError(f"SyntheticTaskConfig.{name}={getattr(self, name)!r} is invalid; valid: {valid}")

        for name in ("shots", "seeds"):  # a YAML or argparse list is as good as a tuple
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("seed", "num_classes", "dim", "num_families", "pos_prompts", "neg_prompts",
                     "views", "val_per_class", "test_per_class"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool), name, "an integer")
        for name in ("semantic_rank", "family_rank"):
            value = getattr(self, name)
            need(value is None or isinstance(value, int) and not isinstance(value, bool), name, "an integer or None")
        need(self.seed >= 0, "seed", "an integer >= 0")
        need(self.num_classes >= 2, "num_classes", "an integer >= 2")
        need(self.dim >= 8, "dim", "an integer >= 8")
        C, d = self.num_classes, self.dim
        need(1 <= self.num_families <= C, "num_families", f"an integer in [1, num_classes={C}]")
        need(self.pos_prompts >= 1, "pos_prompts", "an integer >= 1")
        need(self.neg_prompts >= 1, "neg_prompts", "an integer >= 1")
        need(self.views >= 1, "views", "an integer >= 1")
        need(self.val_per_class >= 1, "val_per_class", "an integer >= 1")
        need(self.test_per_class >= 1, "test_per_class", "an integer >= 1")
        # The semantic subspace leaves room for the frame's other three axes (cones, negation).
        if self.semantic_rank is not None:
            need(1 <= self.semantic_rank <= d - 3, "semantic_rank", f"None or an integer in [1, dim - 3 = {d - 3}]")
        if self.family_rank is not None:
            m = self.rank_m
            need(1 <= self.family_rank <= m, "family_rank", f"None or an integer in [1, semantic rank m = {m}]")
        for name in ("shots", "seeds"):
            value = getattr(self, name)
            ok = (
                isinstance(value, tuple)
                and len(value) > 0
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
                and len(set(value)) == len(value)
            )
            need(ok, name, "a non-empty tuple of distinct integers")
        need(min(self.shots) >= 1, "shots", "a non-empty tuple of distinct integers >= 1")
        need(min(self.seeds) >= 0, "seeds", "a non-empty tuple of distinct integers >= 0")

        def number(name: str) -> bool:
            value = getattr(self, name)
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        for name in ("family_weight", "text_bias", "negation_suppression"):
            need(number(name) and 0.0 <= getattr(self, name) < 1.0, name, "a number in [0, 1)")
        for name in ("image_gap", "text_gap", "image_noise", "residual_noise", "family_noise",
                     "view_noise", "template_shift", "prompt_noise", "negation", "negation_noise"):
            need(number(name) and 0.0 <= getattr(self, name) <= 10.0, name, "a number in [0, 10]")
        need(number("cone_cos") and -1.0 <= self.cone_cos <= 1.0, "cone_cos", "a number in [-1, 1]")
        need(number("text_norm") and 0.0 < self.text_norm <= 1e4, "text_norm", "a number in (0, 1e4]")


    @property
    def rank_m(self) -> int:
        """m, the semantic rank in effect: ``semantic_rank``, or min(64, dim - 3) when None."""
        return self.semantic_rank if self.semantic_rank is not None else min(64, self.dim - 3)

    @property
    def rank_r(self) -> int:
        """r, the family-noise rank in effect: ``family_rank``, or min(8, m) when None."""
        return self.family_rank if self.family_rank is not None else min(8, self.rank_m)


def _resolve_config(config: SyntheticTaskConfig | None, overrides: dict[str, Any]) -> SyntheticTaskConfig:
    config = SyntheticTaskConfig() if config is None else config
    if not isinstance(config, SyntheticTaskConfig):
        raise TypeError(f"config must be a SyntheticTaskConfig or None, got {type(config).__name__}")
    known = {f.name for f in fields(SyntheticTaskConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown SyntheticTaskConfig field(s) {unknown}; available: {sorted(known)}")
    # Lists from YAML or argparse become tuples so the frozen config stays hashable.
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return replace(config, **overrides) if overrides else config


def suite_path() -> Path:
    """The development suite's task list: ``$HGADAPTER_SUITE``, the checkout's or the installed copy."""
    from hgadapter._resources import resource_path

    return resource_path("experiments/suite/tasks.yaml", "HGADAPTER_SUITE")


def _read_suite() -> dict[str, Any]:
    import yaml

    path = suite_path()
    if not path.is_file():
        raise FileNotFoundError(f"no suite task list at {path}; set HGADAPTER_SUITE to experiments/suite/tasks.yaml")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict) or not isinstance(raw.get("tasks"), dict):
        raise ValueError(f"{path}: expected a mapping with a 'tasks' mapping of task name -> generator fields")
    return raw


def list_presets() -> list[str]:
    """Names of the development suite's tasks (``experiments/suite/tasks.yaml``), in file order."""
    return list(_read_suite()["tasks"])


def preset_config(name: str) -> SyntheticTaskConfig:
    """The :class:`SyntheticTaskConfig` of suite task ``name`` (its fields over the file's ``_defaults``)."""
    raw = _read_suite()
    tasks = raw["tasks"]
    if name not in tasks:
        raise ValueError(f"unknown synthetic preset {name!r}; available: {list(tasks)}")
    fields_ = {**(raw.get("_defaults") or {}), **(tasks[name] or {})}
    return _resolve_config(None, fields_)


def _generator(*key: int) -> torch.Generator:
    """A torch generator for one random stream, seeded from ``key`` via numpy's SeedSequence."""
    state = np.random.SeedSequence(list(key)).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run on one intra-op thread, then restore the caller's setting.

    The tensors are small, so extra threads only add synchronisation (seconds instead of a few
    hundred milliseconds on a loaded machine), and one thread keeps the float reductions in the
    same order whatever the caller's thread count, so the task is bit-identical everywhere.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _noise(*shape: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    """Isotropic Gaussian noise whose expected norm over the last axis is about ``scale``."""
    return torch.randn(*shape, generator=generator) * (scale / shape[-1] ** 0.5)


@dataclass(frozen=True)
class _Structure:
    """The latent geometry shared by every split: centres, prompts and noise subspaces."""

    family_of: torch.Tensor  # (C,) family index of each class
    visual_centre: torch.Tensor  # (C, d) unnormalised centre of each class's images
    semantic_basis: torch.Tensor  # (m, d) orthonormal rows spanning the semantic subspace
    family_basis: torch.Tensor  # (F, r, d) orthonormal rows: each family's shared noise subspace
    pos_text: torch.Tensor  # (C, P, d) normalised positive prompt features
    neg_text: torch.Tensor  # (C, Q, d) normalised negative prompt features
    pos_text_norm: torch.Tensor  # (C, P) raw norm of each positive prompt's feature
    neg_text_norm: torch.Tensor  # (C, Q) raw norm of each negative prompt's feature


def _build_structure(cfg: SyntheticTaskConfig) -> _Structure:
    g = _generator(cfg.seed, _STREAM_STRUCTURE)
    C, d, m, P, Q = cfg.num_classes, cfg.dim, cfg.rank_m, cfg.pos_prompts, cfg.neg_prompts
    family_of = torch.tensor(_families(cfg))  # (C,)

    # Three axes (image cone, text cone, negation) and the semantic subspace, all orthonormal, so
    # that the config's norms are exactly the lengths of the offsets they name.
    basis = torch.linalg.qr(torch.randn(d, 3 + m, generator=g))[0].T  # (3 + m, d)
    image_axis, text_orth, negation_axis = basis[:3]
    text_axis = cfg.cone_cos * image_axis + (1 - cfg.cone_cos**2) ** 0.5 * text_orth  # (d,) unit
    semantic_basis = basis[3:]  # (m, d)

    def semantic_unit(n: int) -> torch.Tensor:
        return F.normalize(torch.randn(n, m, generator=g) @ semantic_basis, dim=-1)  # (n, d)

    family_centre = semantic_unit(cfg.num_families)  # (F, d)
    deviation = semantic_unit(C)  # (C, d)
    w = cfg.family_weight
    semantic = F.normalize(w**0.5 * family_centre[family_of] + (1 - w) ** 0.5 * deviation, dim=-1)  # (C, d)
    bias = semantic_unit(C)  # (C, d)
    b = cfg.text_bias
    text_semantic = F.normalize((1 - b) ** 0.5 * semantic + b**0.5 * bias, dim=-1)  # (C, d)

    visual_centre = cfg.image_gap * image_axis + semantic  # (C, d)
    text_centre = cfg.text_gap * text_axis + text_semantic  # (C, d)

    template = _noise(P, d, scale=cfg.template_shift, generator=g)  # (P, d)
    pos_raw = (
        text_centre[:, None, :]
        + template[None, :, :]
        + _noise(C, P, d, scale=cfg.prompt_noise, generator=g)
    )  # (C, P, d)
    # Negative prompt q negates positive template q (mod P): "a photo of no {}" next to "a photo of a {}".
    source = pos_raw[:, torch.arange(Q) % P, :]  # (C, Q, d)
    neg_raw = (
        source
        + cfg.negation * negation_axis
        - cfg.negation_suppression * text_semantic[:, None, :]
        + _noise(C, Q, d, scale=cfg.negation_noise, generator=g)
    )  # (C, Q, d)

    # Each family's nuisance subspace (pose, background, ... shared by look-alike classes).
    family_coords = torch.linalg.qr(torch.randn(cfg.num_families, m, cfg.rank_r, generator=g))[0]  # (F, m, r)
    family_basis = torch.einsum("fmr,md->frd", family_coords, semantic_basis)  # (F, r, d)
    # Raw text norms: the unnormalised prompt vectors' lengths, rescaled so that the positive
    # prompts' mean is text_norm (no random draw, so every other tensor is unchanged).
    to_raw = cfg.text_norm / pos_raw.norm(dim=-1).mean()
    return _Structure(
        family_of=family_of,
        visual_centre=visual_centre,
        semantic_basis=semantic_basis,
        family_basis=family_basis,
        pos_text=F.normalize(pos_raw, dim=-1),
        neg_text=F.normalize(neg_raw, dim=-1),
        pos_text_norm=pos_raw.norm(dim=-1) * to_raw,
        neg_text_norm=neg_raw.norm(dim=-1) * to_raw,
    )


def _sample_images(
    cfg: SyntheticTaskConfig, s: _Structure, per_class: int, g: torch.Generator, *, views: int = 0
) -> torch.Tensor:
    """``per_class`` normalised images of every class, ``(C, n, d)``, or their views ``(C, n, V, d)``.

    An image is its class's visual centre plus noise in its family's subspace, in the semantic
    subspace and in the whole space; a view adds a small perturbation and renormalises. Images
    are made one index at a time with tensors of the same shapes, so the first n images of a
    class are bit-identical however many more are drawn: the 1-shot image of a seed is also in
    its 16-shot set, and writing fewer shots or seeds leaves the others unchanged.
    """
    C, d, m, r = cfg.num_classes, cfg.dim, cfg.rank_m, cfg.rank_r
    family_basis = s.family_basis[s.family_of]  # (C, r, d)
    images = []
    for _ in range(per_class):
        z = torch.randn(C, 1, r, generator=g) * (cfg.family_noise / r**0.5)  # (C, 1, r)
        x = (
            s.visual_centre
            + torch.bmm(z, family_basis).squeeze(1)  # (C, d)
            + _noise(C, m, scale=cfg.image_noise, generator=g) @ s.semantic_basis  # (C, d)
            + _noise(C, d, scale=cfg.residual_noise, generator=g)
        )
        x = F.normalize(x, dim=-1)  # (C, d)
        if views:
            x = F.normalize(x[:, None, :] + _noise(C, views, d, scale=cfg.view_noise, generator=g), dim=-1)  # (C, V, d)
        images.append(x)
    return torch.stack(images, dim=1)  # (C, n, d) or (C, n, V, d)


def _families(cfg: SyntheticTaskConfig) -> list[int]:
    """Family of each class: classes are dealt round-robin, so every family has C / F (+1) classes."""
    return [c % cfg.num_families for c in range(cfg.num_classes)]


def _classnames(cfg: SyntheticTaskConfig) -> list[str]:
    family_of = _families(cfg)
    width_f = len(str(cfg.num_families - 1))
    rank_in_family = [family_of[:c].count(family_of[c]) for c in range(cfg.num_classes)]
    width_c = len(str(max(rank_in_family)))
    return [
        f"synthetic_family{f:0{width_f}d}_class{k:0{width_c}d}" for f, k in zip(family_of, rank_in_family)
    ]


def build_synthetic_task(config: SyntheticTaskConfig | None = None, **overrides: Any) -> FeatureCache:
    """Generate the synthetic CLIP-like task as an in-memory feature cache.

    Deterministic: the same config gives bit-identical tensors on CPU. The default task (100
    classes, d = 512, 15 training sets) takes well under a second.

    Args:
        config: the task; ``None`` means the demo task, ``SyntheticTaskConfig()``.
        **overrides: fields replacing those of ``config``, e.g. ``seed=1, num_classes=10``.

    Returns:
        A :class:`~hgadapter.data.cache.FeatureCache` whose ``meta["synthetic"]`` is ``True``.

    Shapes:
        pos_text ``(C, P, d)``, neg_text ``(C, Q, d)``, val ``(C * val_per_class, d)``,
        test ``(C * test_per_class, d)``, training set ``(K, seed)``: features ``(C * K, V, d)``,
        labels ``(C * K,)`` sorted by class.

    Raises:
        ValueError: an unknown override or an invalid field value.
    """
    cfg = _resolve_config(config, overrides)
    with _one_thread():
        return _build_task(cfg)


def _build_task(cfg: SyntheticTaskConfig) -> FeatureCache:
    s = _build_structure(cfg)
    val = _sample_images(cfg, s, cfg.val_per_class, _generator(cfg.seed, _STREAM_VAL))  # (C, n, d)
    test = _sample_images(cfg, s, cfg.test_per_class, _generator(cfg.seed, _STREAM_TEST))  # (C, n, d)

    train_sets: dict[tuple[int, int], FewShotSet] = {}
    for sampling_seed in cfg.seeds:
        g = _generator(cfg.seed, _STREAM_TRAIN, sampling_seed)
        pool = _sample_images(cfg, s, max(cfg.shots), g, views=cfg.views)  # (C, Kmax, V, d)
        for k in sorted(cfg.shots):
            features = pool[:, :k].reshape(-1, cfg.views, cfg.dim).contiguous()  # (C * K, V, d)
            labels = torch.arange(cfg.num_classes).repeat_interleave(k)  # (C * K,)
            train_sets[(k, sampling_seed)] = FewShotSet(shots=k, seed=sampling_seed, features=features, labels=labels)

    meta = {
        "synthetic": True,
        "generator": "hgadapter.synthetic",
        "generator_version": GENERATOR_VERSION,
        # Tuples as lists: the in-memory meta equals what load_cache parses from the sidecar.
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
        "dataset": {
            "name": "synthetic",
            "num_classes": cfg.num_classes,
            "num_families": cfg.num_families,
            "semantic_rank": cfg.rank_m,
            "family_rank": cfg.rank_r,
            "families": _families(cfg),  # family index of each class, in label order
            "val_size": cfg.num_classes * cfg.val_per_class,
            "test_size": cfg.num_classes * cfg.test_per_class,
            "split_source": {"kind": "generated", "seed": cfg.seed},
        },
        "encoder": {"id": "synthetic-clip", "revision": None},
        "prompts": {
            "pos": {"kind": "synthetic", "templates": cfg.pos_prompts},
            "neg": {"kind": "synthetic", "templates": cfg.neg_prompts},
        },
        "augmentation": {"kind": "gaussian feature perturbation", "views": cfg.views, "noise": cfg.view_noise},
        "note": "SYNTHETIC CLIP-like features; accuracies on them say nothing about real CLIP",
    }
    return FeatureCache(
        classnames=_classnames(cfg),
        pos_text=s.pos_text,
        neg_text=s.neg_text,
        pos_text_norm=s.pos_text_norm,
        neg_text_norm=s.neg_text_norm,
        val_features=val.reshape(-1, cfg.dim),  # (C * val_per_class, d)
        val_labels=torch.arange(cfg.num_classes).repeat_interleave(cfg.val_per_class),
        test_features=test.reshape(-1, cfg.dim),  # (C * test_per_class, d)
        test_labels=torch.arange(cfg.num_classes).repeat_interleave(cfg.test_per_class),
        train_sets=train_sets,
        logit_scale=100.0,
        meta=meta,
    )


def write_synthetic_task(
    out_dir: str | Path, config: SyntheticTaskConfig | None = None, *, overwrite: bool = False, **overrides: Any
) -> Path:
    """Build the synthetic task and save it as a feature cache directory (docs/feature-cache.md).

    Args:
        out_dir: cache directory to write.
        config: the task; ``None`` means the demo task.
        overwrite: replace an existing cache in ``out_dir``.
        **overrides: fields replacing those of ``config``.

    Returns:
        The path :func:`~hgadapter.data.io.save_cache` wrote.
    """
    from hgadapter.data.io import save_cache

    return save_cache(out_dir, build_synthetic_task(config, **overrides), overwrite=overwrite)


_TIP_ALPHAS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def _class_prototypes(text: torch.Tensor) -> torch.Tensor:
    return F.normalize(F.normalize(text, dim=-1).mean(dim=1), dim=-1)  # (C, d)


def task_statistics(
    cache: FeatureCache, *, shots: int = 16, seed: int = 1, probe: bool = True
) -> dict[str, float]:
    """The statistics docs/synthetic.md reports and tests/data/test_synthetic.py checks.

    Works on any cache, real or synthetic, so the synthetic task can be compared to a real one.

    Args:
        cache: the task.
        shots, seed: the training set used by the few-shot classifiers.
        probe: also fit the logistic-regression probe (scikit-learn, about a second).

    Returns:
        ``matched_cos``: mean cos(test image, its class's positive prototype);
        ``mismatched_cos``: mean cos(test image, another class's positive prototype);
        ``image_image_cos``: mean cos between test images of different classes;
        ``text_text_cos``: mean cos between the positive prototypes of different classes;
        ``text_within_family_cos`` / ``text_across_family_cos``: mean cos between positive class
        prototypes in the same family / different families (only when ``meta["dataset"]``
        lists ``families``, as the synthetic task does);
        ``neg_pos_cos``: mean cos(negative prompt, the positive prompt it negates);
        ``neg_shift_cos``: mean pairwise cos of the (negative - positive) prompt differences;
        ``zero_shot_acc``, ``tip_acc`` (cos to the text prototype + ``tip_alpha`` * cos to the
        few-shot visual class mean, ``tip_alpha`` chosen on the validation split) and
        ``probe_acc`` (logistic regression on view-averaged few-shot features), test accuracies in %.
    """
    with _one_thread():
        return _task_statistics(cache, shots=shots, seed=seed, probe=probe)


def _task_statistics(cache: FeatureCache, *, shots: int, seed: int, probe: bool) -> dict[str, float]:
    pos = F.normalize(cache.pos_text.float(), dim=-1)  # (C, P, d)
    neg = F.normalize(cache.neg_text.float(), dim=-1)  # (C, Q, d)
    test = F.normalize(cache.test_features.float(), dim=-1)  # (N, d)
    labels = cache.test_labels
    C, P, Q = pos.shape[0], pos.shape[1], neg.shape[1]
    proto = _class_prototypes(pos)  # (C, d)
    stats: dict[str, float] = {}

    image_text = test @ proto.T  # (N, C)
    matched = F.one_hot(labels, C).bool()  # (N, C)
    stats["matched_cos"] = image_text[matched].mean().item()
    stats["mismatched_cos"] = image_text[~matched].mean().item()
    sim = test @ test.T  # (N, N)
    other = labels[:, None] != labels[None, :]
    stats["image_image_cos"] = sim[other].mean().item()

    text_sim = proto @ proto.T  # (C, C)
    dataset = cache.meta.get("dataset")
    families = dataset.get("families") if isinstance(dataset, dict) else None
    if families is not None:
        family = torch.as_tensor(families)  # (C,)
        same = family[:, None] == family[None, :]
        off_diag = ~torch.eye(C, dtype=torch.bool)
        stats["text_within_family_cos"] = text_sim[same & off_diag].mean().item()
        stats["text_across_family_cos"] = text_sim[~same].mean().item()
    stats["text_text_cos"] = text_sim[~torch.eye(C, dtype=torch.bool)].mean().item()

    paired = pos[:, torch.arange(Q) % P, :]  # (C, Q, d)
    stats["neg_pos_cos"] = (neg * paired).sum(-1).mean().item()
    shift = F.normalize((neg - paired).reshape(-1, pos.shape[-1]), dim=-1)  # (C * Q, d)
    shift_sim = shift @ shift.T  # (C * Q, C * Q)
    n = shift.shape[0]
    stats["neg_shift_cos"] = ((shift_sim.sum() - n) / (n * (n - 1))).item()

    stats["zero_shot_acc"] = accuracy(image_text, labels)
    few_shot = cache.train_set(shots, seed)
    train = F.normalize(F.normalize(few_shot.features.float(), dim=-1).mean(dim=1), dim=-1)  # (N_train, d)
    visual_mean = F.normalize(
        torch.zeros(C, train.shape[1]).index_add_(0, few_shot.labels, train), dim=-1
    )  # (C, d)
    # Text prototype + alpha * few-shot visual mean, alpha picked on the validation split as
    # Tip-Adapter picks its weights (a training-free stand-in for what an adapter can learn).
    val = F.normalize(cache.val_features.float(), dim=-1)  # (N_val, d)
    alpha = max(_TIP_ALPHAS, key=lambda a: accuracy(val @ proto.T + a * val @ visual_mean.T, cache.val_labels))
    stats["tip_alpha"] = alpha
    stats["tip_acc"] = accuracy(test @ proto.T + alpha * test @ visual_mean.T, labels)
    if probe:
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        clf = LogisticRegression(C=1.0, max_iter=200)
        with threadpool_limits(limits=1):  # BLAS threads only contend on a problem this small
            clf.fit(train.numpy(), few_shot.labels.numpy())
        stats["probe_acc"] = 100.0 * float((clf.predict(test.numpy()) == labels.numpy()).mean())
    return stats
