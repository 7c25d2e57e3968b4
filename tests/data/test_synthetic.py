"""The synthetic CLIP-like task: determinism, layout, and the statistics docs/synthetic.md promises.

The statistics targets imitate frozen CLIP ViT-B/16 features (matched image-text cosine ~0.3,
zero-shot well below what 16 shots allow); a failure prints the measured value so the generator
can be re-tuned and docs/synthetic.md updated.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hgadapter.data.cache import FeatureCache
from hgadapter.data.synthetic import SyntheticTaskConfig, build_synthetic_task, task_statistics, write_synthetic_task

SMALL = dict(num_classes=12, dim=64, num_families=4, semantic_rank=16, shots=(1, 2, 4), seeds=(1, 2), test_per_class=5)


@pytest.fixture(scope="module")
def default_task() -> FeatureCache:
    return build_synthetic_task()


@pytest.fixture(scope="module", params=[0, 2], ids=["seed0", "seed2"])
def task_stats(request: pytest.FixtureRequest, default_task: FeatureCache) -> dict[str, float]:
    # Only the (16, 1) training set is measured, and it does not depend on the other sets.
    cache = default_task if request.param == 0 else build_synthetic_task(seed=request.param, shots=(16,), seeds=(1,))
    return task_statistics(cache, shots=16, seed=1)


# --- determinism ----------------------------------------------------------------------------


def _tensors(cache: FeatureCache) -> dict[str, torch.Tensor]:
    out = {
        "pos_text": cache.pos_text,
        "neg_text": cache.neg_text,
        "val_features": cache.val_features,
        "val_labels": cache.val_labels,
        "test_features": cache.test_features,
        "test_labels": cache.test_labels,
    }
    for (k, s), few_shot in cache.train_sets.items():
        out[f"train_{k}_{s}"] = few_shot.features
        out[f"train_{k}_{s}_labels"] = few_shot.labels
    return out


def test_same_seed_gives_identical_tensors() -> None:
    a, b = _tensors(build_synthetic_task(**SMALL)), _tensors(build_synthetic_task(SyntheticTaskConfig(**SMALL)))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_different_seed_gives_different_tensors() -> None:
    a, b = build_synthetic_task(**SMALL), build_synthetic_task(**{**SMALL, "seed": 1})
    assert not torch.equal(a.pos_text, b.pos_text)
    assert not torch.equal(a.test_features, b.test_features)
    assert not torch.equal(a.train_set(4, 1).features, b.train_set(4, 1).features)


def test_sampling_seeds_differ_and_shots_are_nested() -> None:
    cache = build_synthetic_task(**SMALL)
    assert not torch.equal(cache.train_set(4, 1).features, cache.train_set(4, 2).features)
    C, V, d = 12, 4, 64
    four = cache.train_set(4, 1).features.reshape(C, 4, V, d)  # (C, K, V, d)
    two = cache.train_set(2, 1).features.reshape(C, 2, V, d)
    assert torch.equal(four[:, :2], two), "the 2-shot images must be the first 2 of the 4-shot ones"


def test_training_sets_do_not_depend_on_the_other_shots_and_seeds() -> None:
    full = build_synthetic_task(**SMALL)
    partial = build_synthetic_task(**{**SMALL, "shots": (2,), "seeds": (2,)})
    assert torch.equal(full.train_set(2, 2).features, partial.train_set(2, 2).features)
    assert torch.equal(full.test_features, partial.test_features)


# --- layout -----------------------------------------------------------------------------------


def test_default_shapes_labels_and_meta(default_task: FeatureCache) -> None:
    cache, cfg = default_task, SyntheticTaskConfig()
    C, d = cfg.num_classes, cfg.dim
    assert cache.num_classes == C and cache.dim == d
    assert cache.pos_text.shape == (C, cfg.pos_prompts, d)
    assert cache.neg_text.shape == (C, cfg.neg_prompts, d)
    assert cache.val_features.shape == (C * cfg.val_per_class, d)
    assert cache.test_features.shape == (C * cfg.test_per_class, d)
    assert torch.equal(torch.bincount(cache.val_labels, minlength=C), torch.full((C,), cfg.val_per_class))
    assert torch.equal(torch.bincount(cache.test_labels, minlength=C), torch.full((C,), cfg.test_per_class))
    assert sorted(cache.train_sets) == sorted((k, s) for k in cfg.shots for s in cfg.seeds)
    for (k, s), few_shot in cache.train_sets.items():
        assert (few_shot.shots, few_shot.seed) == (k, s)
        assert few_shot.features.shape == (C * k, cfg.views, d)
        assert torch.equal(few_shot.labels, torch.arange(C).repeat_interleave(k)), "labels sorted by class, K each"
        assert few_shot.labels.dtype == torch.int64
    assert cache.logit_scale == 100.0
    assert len(set(cache.classnames)) == C and all(n.startswith("synthetic_") for n in cache.classnames)
    meta = cache.meta
    assert meta["synthetic"] is True and meta["generator"] == "hgadapter.synthetic"
    assert meta["dataset"]["name"] == "synthetic"
    assert meta["encoder"] == {"id": "synthetic-clip", "revision": None}
    assert SyntheticTaskConfig(**meta["config"]) == cfg


def test_features_are_float32_and_unit_norm(default_task: FeatureCache) -> None:
    tensors = {k: v for k, v in _tensors(default_task).items() if not k.endswith("labels")}
    for name, t in tensors.items():
        assert t.dtype == torch.float32, name
        norms = t.norm(dim=-1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5), name
        assert torch.isfinite(t).all(), name


def test_views_are_small_perturbations_of_one_image(default_task: FeatureCache) -> None:
    views = default_task.train_set(4, 1).features  # (N, V, d)
    cos = torch.einsum("nvd,nwd->nvw", views, views)  # (N, V, V)
    off = ~torch.eye(views.shape[1], dtype=torch.bool)
    assert cos[:, off].min() > 0.95, f"views of one image: min cos {cos[:, off].min():.3f}"


# --- statistics targets (measured values are printed on failure) -------------------------------


def test_modality_gap(task_stats: dict[str, float]) -> None:
    v = task_stats["matched_cos"]
    assert 0.2 <= v <= 0.35, f"matched image-text cosine {v:.3f}, want 0.2-0.35 (CLIP ViT-B/16 ~0.3)"
    assert task_stats["mismatched_cos"] < v - 0.1, f"mismatched {task_stats['mismatched_cos']:.3f} vs matched {v:.3f}"


def test_text_families(task_stats: dict[str, float]) -> None:
    within, across = task_stats["text_within_family_cos"], task_stats["text_across_family_cos"]
    assert within > across + 0.05, f"text-text cosine within families {within:.3f}, across {across:.3f}"


def test_negative_prompts_are_close_and_share_a_direction(task_stats: dict[str, float]) -> None:
    close, shared = task_stats["neg_pos_cos"], task_stats["neg_shift_cos"]
    assert close > 0.8, f"mean cos(negative, its positive) {close:.3f}, want > 0.8"
    assert shared > 0.5, f"mean pairwise cos of (negative - positive) {shared:.3f}, want > 0.5"


def test_zero_shot_accuracy(task_stats: dict[str, float]) -> None:
    v = task_stats["zero_shot_acc"]
    assert 50.0 <= v <= 65.0, f"zero-shot test accuracy {v:.2f}%, want 50-65%"


def test_few_shot_beats_zero_shot(task_stats: dict[str, float]) -> None:
    zs, probe, tip = task_stats["zero_shot_acc"], task_stats["probe_acc"], task_stats["tip_acc"]
    assert probe >= zs + 5.0, f"16-shot logistic probe {probe:.2f}% vs zero-shot {zs:.2f}%, want >= +5"
    assert tip >= zs + 5.0, f"16-shot text + visual-mean classifier {tip:.2f}% vs zero-shot {zs:.2f}%, want >= +5"


def test_one_shot_text_plus_visual_mean_does_not_hurt(default_task: FeatureCache) -> None:
    stats = task_statistics(default_task, shots=1, seed=1, probe=False)
    tip, zs = stats["tip_acc"], stats["zero_shot_acc"]
    assert tip >= zs, f"1-shot text + visual-mean classifier {tip:.2f}% vs zero-shot {zs:.2f}%"


# --- config validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"num_classes": 1}, r"num_classes=1 .*>= 2"),
        ({"num_families": 0}, r"num_families=0 .*\[1, num_classes=100\]"),
        ({"num_families": 101}, r"num_families=101"),
        ({"dim": 4}, r"dim=4 .*>= 8"),
        ({"pos_prompts": 0}, r"pos_prompts"),
        ({"neg_prompts": 0}, r"neg_prompts"),
        ({"views": 0}, r"views"),
        ({"val_per_class": 0}, r"val_per_class"),
        ({"test_per_class": 0}, r"test_per_class"),
        ({"shots": ()}, r"shots=\(\) .*non-empty tuple"),
        ({"shots": (0, 1)}, r"shots=.*>= 1"),
        ({"shots": (2, 2)}, r"shots=.*distinct"),
        ({"seeds": (-1,)}, r"seeds=.*>= 0"),
        ({"seed": -3}, r"seed=-3"),
        ({"seed": 1.5}, r"seed=1.5 .*integer"),
        ({"semantic_rank": 600}, r"semantic_rank=600 .*\[1, dim - 3 = 509\]"),
        ({"semantic_rank": 2.0}, r"semantic_rank=2.0 .*integer or None"),
        ({"family_rank": 65}, r"family_rank=65 .*\[1, semantic rank m = 64\]"),
        ({"semantic_rank": 4, "family_rank": 5}, r"family_rank=5 .*\[1, semantic rank m = 4\]"),
        ({"family_weight": 1.0}, r"family_weight=1.0 .*\[0, 1\)"),
        ({"text_bias": -0.1}, r"text_bias"),
        ({"image_noise": -1.0}, r"image_noise=-1.0 .*\[0, 10\]"),
        ({"view_noise": "big"}, r"view_noise='big'"),
        ({"cone_cos": 1.5}, r"cone_cos=1.5 .*\[-1, 1\]"),
        ({"negation_suppression": 1.0}, r"negation_suppression"),
        ({"text_norm": 0.0}, r"text_norm=0.0 .*\(0, 1e4\]"),
    ],
)
def test_config_validation(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SyntheticTaskConfig(**overrides)


def test_unknown_override_names_the_field_and_lists_the_valid_ones() -> None:
    match = r"unknown SyntheticTaskConfig field\(s\) \['clases'\]; available: .*num_classes"
    with pytest.raises(ValueError, match=match):
        build_synthetic_task(clases=10)


def test_default_ranks_follow_the_dimension() -> None:
    assert (SyntheticTaskConfig().rank_m, SyntheticTaskConfig().rank_r) == (64, 8)
    small = SyntheticTaskConfig(dim=8)
    assert (small.rank_m, small.rank_r) == (5, 5)
    assert build_synthetic_task(num_classes=4, num_families=2, dim=8, test_per_class=2).dim == 8


def test_lists_are_accepted_as_tuples() -> None:
    assert SyntheticTaskConfig(shots=[1, 2], seeds=[3]) == SyntheticTaskConfig(shots=(1, 2), seeds=(3,))


def test_raw_text_norms_have_the_stated_mean_and_change_nothing_else() -> None:
    """The raw norms are the unnormalised prompt vectors' lengths scaled to mean text_norm; the
    setting draws nothing, so every feature is bit-identical whatever its value."""
    a, b = build_synthetic_task(**SMALL), build_synthetic_task(**{**SMALL, "text_norm": 25.0})
    assert a.pos_text_norm.shape == a.pos_text.shape[:2] and a.neg_text_norm.shape == a.neg_text.shape[:2]
    assert float(a.pos_text_norm.mean()) == pytest.approx(SyntheticTaskConfig().text_norm, rel=1e-5)
    assert bool((a.pos_text_norm > 0).all()) and float(a.pos_text_norm.std()) > 0  # they vary per prompt
    torch.testing.assert_close(b.pos_text_norm, a.pos_text_norm * 2.5)
    torch.testing.assert_close(b.neg_text_norm, a.neg_text_norm * 2.5)
    ta, tb = _tensors(a), _tensors(b)
    for name in ta:
        assert torch.equal(ta[name], tb[name]), name


# --- writing ------------------------------------------------------------------------------------


def test_write_and_load_round_trip(tmp_path: Path) -> None:
    from hgadapter.data.io import load_cache

    path = write_synthetic_task(tmp_path / "cache", **SMALL)
    loaded, built = load_cache(path), build_synthetic_task(**SMALL)
    assert loaded.classnames == built.classnames and loaded.meta == built.meta
    a, b = _tensors(loaded), _tensors(built)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert torch.equal(loaded.pos_text_norm, built.pos_text_norm) and torch.equal(loaded.neg_text_norm, built.neg_text_norm)


def test_every_suite_preset_builds_a_valid_config():
    from hgadapter.data.synthetic import list_presets, preset_config

    names = list_presets()
    assert len(names) >= 6 and "many500" in names
    configs = [preset_config(n) for n in names]
    assert len({c.seed for c in configs}) == len(names)  # no two tasks share their latent geometry
    assert min(c.num_classes for c in configs) <= 20 and max(c.num_classes for c in configs) >= 500
    assert {c.dim for c in configs} == {512, 768, 1024}
    assert all(c.shots == (1, 4, 16) for c in configs)
    with pytest.raises(ValueError, match="unknown synthetic preset 'nope'; available"):
        preset_config("nope")


def test_synth_preset_cli_writes_the_task(tmp_path):
    from hgadapter.cli import main
    from hgadapter.data.io import load_cache

    assert main(["synth", "--preset", "coarse20", "--seeds", "1", "--shots", "1", "--out", str(tmp_path / "c")]) == 0
    cache = load_cache(tmp_path / "c")
    assert cache.num_classes == 20 and cache.dim == 512 and set(cache.train_sets) == {(1, 1)}
