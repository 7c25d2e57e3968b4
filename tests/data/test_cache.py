"""Tests for hgadapter/data/ (cache, io, validate, merge): the feature-cache directory format (docs/feature-cache.md).

Every cache is built here from a few random unit vectors (C=4 classes, d=8), written with
save_cache, and, for the validation tests, corrupted on disk with safetensors itself.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import safetensors.torch

import torch

from hgadapter.data.cache import FORMAT_VERSION, CacheError, FeatureCache, FewShotSet
from hgadapter.data.io import list_train_sets, load_cache, load_sidecar, save_cache
from hgadapter.data.validate import file_checksum

C, D = 4, 8
CLASSNAMES = ["ant", "bee", "cat", "dog"]
META = {"encoder": {"id": "toy/clip", "revision": "abc123"}, "dataset": "toy", "synthetic": True}


def _unit(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1)


def _few_shot(shots: int, seed: int, views: int = 2) -> FewShotSet:
    labels = torch.arange(C).repeat_interleave(shots)  # (C * shots,)
    return FewShotSet(
        shots=shots,
        seed=seed,
        features=_unit(C * shots, views, D, seed=100 + 10 * shots + seed),  # (N, V, d)
        labels=labels,
        indices=list(range(7, 7 + C * shots)),
    )


def _cache(train=((1, 1), (2, 1)), **changes) -> FeatureCache:
    split_labels = torch.arange(C).repeat(3)  # (12,)
    cache = FeatureCache(
        classnames=list(CLASSNAMES),
        pos_text=_unit(C, 3, D, seed=1),  # (C, P, d)
        neg_text=_unit(C, 2, D, seed=2),  # (C, Q, d)
        val_features=_unit(12, D, seed=3),
        val_labels=split_labels,
        test_features=_unit(12, D, seed=4),
        test_labels=split_labels.clone(),
        train_sets={(k, s): _few_shot(k, s) for k, s in train},
        logit_scale=100.0,
        meta=json.loads(json.dumps(META)),
    )
    return dataclasses.replace(cache, **changes)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return save_cache(tmp_path / "cache", _cache())


def _rewrite(path: Path, **tensors: torch.Tensor | None) -> None:
    """Replace (or with None drop) tensors of a cache file behind the sidecar's back.

    The sidecar's checksum of the file is updated to the new bytes, so what is tested is the
    structural check behind it (a file altered without that is caught by the checksum first:
    ``test_a_damaged_file_fails_its_checksum``).
    """
    content = safetensors.torch.load_file(path)
    for key, value in tensors.items():
        if value is None:
            del content[key]
        else:
            content[key] = value
    safetensors.torch.save_file(content, path)
    _edit_sidecar(path.parent, lambda s: s.get("checksums", {}).update({path.name: file_checksum(path)}) if "checksums" in s else None)


def _edit_sidecar(directory: Path, edit) -> None:
    path = directory / "cache.json"
    sidecar = json.loads(path.read_text())
    edit(sidecar)
    path.write_text(json.dumps(sidecar))


# ------------------------------------------------------------------------------------------
# Round trip and layout
# ------------------------------------------------------------------------------------------


def test_round_trip_preserves_tensors_and_meta(saved: Path) -> None:
    cache = _cache()
    loaded = load_cache(saved)
    assert loaded.classnames == CLASSNAMES
    assert loaded.logit_scale == 100.0
    assert loaded.meta == META
    for name in ("pos_text", "neg_text", "val_features", "val_labels", "test_features"):
        assert torch.equal(getattr(loaded, name), getattr(cache, name)), name
    assert sorted(loaded.train_sets) == [(1, 1), (2, 1)]
    for key, few_shot in cache.train_sets.items():
        got = loaded.train_set(*key)
        assert got.key == key
        assert torch.equal(got.features, few_shot.features)
        assert torch.equal(got.labels, few_shot.labels)
        assert got.labels.dtype == torch.int64
        assert got.indices == few_shot.indices


def test_float16_is_stored_as_float16_and_loads_as_float32(tmp_path: Path) -> None:
    cache = _cache(
        val_features=_unit(12, D, seed=3).half(), val_labels=torch.arange(C).repeat(3).int()
    )
    save_cache(tmp_path, cache)
    assert load_sidecar(tmp_path)["files"]["val.safetensors"]["features"]["dtype"] == "float16"
    loaded = load_cache(tmp_path)
    assert loaded.val_features.dtype == torch.float32
    assert loaded.val_labels.dtype == torch.int64
    assert torch.equal(loaded.val_features, cache.val_features.float())


def test_directory_layout_and_sidecar(saved: Path) -> None:
    assert sorted(p.name for p in saved.iterdir()) == [
        "cache.json",
        "test.safetensors",
        "text.safetensors",
        "train_k1_s1.safetensors",
        "train_k2_s1.safetensors",
        "val.safetensors",
    ]
    sidecar = json.loads((saved / "cache.json").read_text())
    assert sidecar["format_version"] == FORMAT_VERSION
    assert sidecar["classnames"] == CLASSNAMES
    assert sidecar["dim"] == D
    neg_record = sidecar["files"]["text.safetensors"]["neg_text"]
    assert neg_record == {"dtype": "float32", "shape": [C, 2, D]}
    assert sidecar["files"]["train_k2_s1.safetensors"]["features"]["shape"] == [2 * C, 2, D]
    assert sidecar["train_sets"][1] == {
        "shots": 2,
        "seed": 1,
        "file": "train_k2_s1.safetensors",
        "views": 2,
        "indices": list(range(7, 7 + 2 * C)),
    }
    assert sidecar["meta"] == META
    with safetensors.safe_open(saved / "val.safetensors", framework="pt") as f:
        assert sorted(f.keys()) == ["features", "labels"]


def test_train_keys_selects_sets_and_listing_reads_only_the_sidecar(saved: Path) -> None:
    assert list(load_cache(saved, train_keys=[(2, 1)]).train_sets) == [(2, 1)]
    (saved / "train_k2_s1.safetensors").unlink()  # a set that is not requested is not read
    assert load_cache(saved, train_keys=[]).train_sets == {}
    (saved / "val.safetensors").unlink()
    assert list_train_sets(saved) == [(1, 1), (2, 1)]
    assert load_sidecar(saved)["meta"] == META


def test_empty_split_round_trips(tmp_path: Path) -> None:
    empty = _cache(val_features=torch.zeros(0, D), val_labels=torch.zeros(0, dtype=torch.int64))
    assert load_cache(save_cache(tmp_path, empty)).val_features.shape == (0, D)


def test_views_and_shared_tensors_are_saved(tmp_path: Path) -> None:
    text = _unit(C, 3, D, seed=1)
    wide = _unit(24, D, seed=5).T.contiguous().T  # (24, d), column-major
    cache = _cache(pos_text=text, neg_text=text, val_features=wide[:12], test_features=wide[12:])
    loaded = load_cache(save_cache(tmp_path, cache))
    assert torch.equal(loaded.neg_text, text)
    assert torch.equal(loaded.test_features, wide[12:])


# ------------------------------------------------------------------------------------------
# Writing: atomicity, resuming, overwriting
# ------------------------------------------------------------------------------------------


def test_no_temporary_files_left_behind(saved: Path) -> None:
    save_cache(saved, _cache(train=((4, 1),)))
    assert not [p.name for p in saved.iterdir() if p.name.startswith(".") or "tmp" in p.name]


def test_failed_write_leaves_no_temporary_file_and_no_sidecar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = safetensors.torch.save_file
    calls = []

    def crash_on_second_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            Path(filename).write_bytes(b"half a file")
            raise OSError("disk full")
        real_save(tensors, filename, metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", crash_on_second_file)
    with pytest.raises(OSError, match="disk full"):
        save_cache(tmp_path, _cache())
    assert [p.name for p in tmp_path.iterdir()] == ["text.safetensors"]
    with pytest.raises(CacheError, match="cache.json: missing"):
        load_cache(tmp_path)


def test_invalid_cache_is_never_written(tmp_path: Path) -> None:
    val = _unit(12, D, seed=3)
    val[5, 2] = float("nan")
    with pytest.raises(CacheError, match=r"val_features has 1 non-finite value\(s\)"):
        save_cache(tmp_path / "new", _cache(val_features=val))
    assert not (tmp_path / "new").exists()


def test_adding_train_sets_resumes_an_existing_cache(tmp_path: Path) -> None:
    save_cache(tmp_path, _cache(train=((1, 1),)))
    save_cache(tmp_path, _cache(train=((4, 1), (2, 3))))
    assert list_train_sets(tmp_path) == [(1, 1), (2, 3), (4, 1)]
    loaded = load_cache(tmp_path)
    assert torch.equal(loaded.train_set(4, 1).features, _few_shot(4, 1).features)
    assert torch.equal(loaded.train_set(1, 1).labels, _few_shot(1, 1).labels)


def test_a_float16_cache_loaded_as_float32_can_be_extended(tmp_path: Path) -> None:
    # How extraction resumes: read the cache without training sets, save it with a new one.
    half = _cache(train=((1, 1),), val_features=_unit(12, D, seed=3).half())
    save_cache(tmp_path, half)
    base = load_cache(tmp_path, train_keys=[])
    save_cache(tmp_path, dataclasses.replace(base, train_sets={(2, 1): _few_shot(2, 1)}))
    assert list_train_sets(tmp_path) == [(1, 1), (2, 1)]
    assert load_sidecar(tmp_path)["files"]["val.safetensors"]["features"]["dtype"] == "float16"


def test_saving_the_same_cache_twice_rewrites_nothing(saved: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in saved.glob("*.safetensors")}
    save_cache(saved, _cache())
    assert {p.name: p.stat().st_mtime_ns for p in saved.glob("*.safetensors")} == before
    assert list_train_sets(saved) == [(1, 1), (2, 1)]


@pytest.mark.parametrize(
    ("changes", "differs_in"),
    [
        (
            {"meta": {**META, "encoder": {"id": "toy/clip", "revision": "def456"}}},
            "meta.encoder.revision",
        ),
        ({"classnames": ["ant", "bee", "cat", "dingo"]}, r"classnames\[3\]"),
        ({"logit_scale": 50.0}, "logit_scale"),
        (
            {"test_features": _unit(8, D, seed=4), "test_labels": torch.arange(C).repeat(2)},
            r"files.test.safetensors.features.shape\[0\], files.test.safetensors.labels.shape\[0\]",
        ),
    ],
)
def test_refuses_to_add_to_an_incompatible_cache(saved: Path, changes, differs_in) -> None:
    with pytest.raises(CacheError, match=f"incompatible cache \\(differs in {differs_in}\\)"):
        save_cache(saved, _cache(train=((4, 1),), **changes))
    assert list_train_sets(saved) == [(1, 1), (2, 1)]


def test_refuses_to_add_beside_different_val_features(saved: Path) -> None:
    with pytest.raises(CacheError, match=r"val.safetensors 'features' on disk differs"):
        save_cache(saved, _cache(train=((4, 1),), val_features=_unit(12, D, seed=99)))


def test_refuses_a_conflicting_copy_of_a_train_set(saved: Path) -> None:
    other = dataclasses.replace(_few_shot(1, 1), indices=[0, 1, 2, 3])
    with pytest.raises(CacheError, match=r"training set \(shots=1, seed=1\) differs"):
        save_cache(saved, _cache(train=(), train_sets={(1, 1): other}))


def test_refuses_to_add_to_an_invalid_cache(saved: Path) -> None:
    (saved / "cache.json").write_text("{")
    with pytest.raises(CacheError, match="existing cache is invalid.*pass overwrite=True"):
        save_cache(saved, _cache())


def test_overwrite_replaces_the_cache_and_removes_stale_train_sets(saved: Path) -> None:
    replacement = _cache(train=((4, 2),), classnames=["a", "b", "c", "d"], meta={"v": 2})
    save_cache(saved, replacement, overwrite=True)
    assert list_train_sets(saved) == [(4, 2)]
    assert not (saved / "train_k1_s1.safetensors").exists()
    loaded = load_cache(saved)
    assert loaded.classnames == ["a", "b", "c", "d"]
    assert loaded.meta == {"v": 2}


# ------------------------------------------------------------------------------------------
# save_cache refuses an invalid cache, naming the FeatureCache field
# ------------------------------------------------------------------------------------------


def _bad_labels() -> torch.Tensor:
    labels = torch.arange(C).repeat(3)
    labels[0] = C
    return labels


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"val_features": torch.ones(12, D, dtype=torch.int64)}, "val_features has dtype int64"),
        ({"test_labels": _bad_labels()}, r"test_labels has values outside \[0, 4\)"),
        ({"classnames": CLASSNAMES[:3]}, r"pos_text has 4 classes \(first dim\) but there are 3"),
        ({"classnames": "ant bee cat dog"}, "classnames must be a non-empty list"),
        ({"neg_text": _unit(C, 2, D + 1, seed=2)}, "neg_text has d=9 but the cache's feature dim"),
        ({"val_features": _unit(12, D, seed=3) * 3}, "val_features is not L2-normalised"),
        ({"val_features": _unit(12, D, seed=3).numpy()}, "val_features must be a torch.Tensor"),
        ({"meta": {"when": object()}}, "meta must be JSON-serialisable"),
        ({"train_sets": {(1, 2): _few_shot(1, 1)}}, r"key \(1, 2\) does not match"),
        (
            {"train_sets": {(2, 1): dataclasses.replace(_few_shot(2, 1), shots=3)}},
            r"key \(2, 1\) does not match",
        ),
        (
            {"train_sets": {(3, 1): dataclasses.replace(_few_shot(2, 1), shots=3)}},
            r"class 0 \('ant'\) has 2 image\(s\), but a 3-shot set",
        ),
    ],
)
def test_save_rejects_an_invalid_cache(tmp_path: Path, changes, match) -> None:
    with pytest.raises(CacheError, match=f"cannot save feature cache to .*{match}"):
        save_cache(tmp_path / "c", _cache(**changes))
    assert not (tmp_path / "c").exists()


# ------------------------------------------------------------------------------------------
# load_cache: one test per validation error, each from real files on disk
# ------------------------------------------------------------------------------------------


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="nowhere: feature cache directory does not exist"):
        load_cache(tmp_path / "nowhere")
    with pytest.raises(CacheError, match="does not exist"):
        list_train_sets(tmp_path / "nowhere")


def test_path_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(CacheError, match="file: not a directory"):
        load_cache(tmp_path / "file")


def test_missing_sidecar(saved: Path) -> None:
    (saved / "cache.json").unlink()
    with pytest.raises(CacheError, match="cache.json: missing, so .* is not a feature cache"):
        load_cache(saved)


@pytest.mark.parametrize("file", ["text.safetensors", "val.safetensors", "train_k2_s1.safetensors"])
def test_missing_file(saved: Path, file: str) -> None:
    (saved / file).unlink()
    with pytest.raises(CacheError, match=f"{file}: missing \\(listed in cache.json\\)"):
        load_cache(saved)


def test_sidecar_not_json(saved: Path) -> None:
    (saved / "cache.json").write_text('{"format_version": 1,,}')
    with pytest.raises(CacheError, match=r"cache.json: not valid JSON \(.* line 1, column 22\)"):
        load_cache(saved)


def test_sidecar_missing_keys(saved: Path) -> None:
    _edit_sidecar(saved, lambda s: [s.pop("dim"), s.pop("meta")])
    with pytest.raises(CacheError, match=r"cache.json: missing key\(s\) 'dim', 'meta'"):
        load_cache(saved)


def test_unknown_format_version(saved: Path) -> None:
    _edit_sidecar(saved, lambda s: s.update(format_version=2))
    match = "format_version 2 is not supported; this version of hgadapter reads format_version 1"
    with pytest.raises(CacheError, match=match):
        load_cache(saved)


def test_sidecar_train_entry_with_a_bad_file_name(saved: Path) -> None:
    _edit_sidecar(saved, lambda s: s["train_sets"][0].update(file="../elsewhere.safetensors"))
    with pytest.raises(CacheError, match=r"train_sets\[0\].file must be a plain file name"):
        load_cache(saved)


def test_sidecar_shapes_checked_without_loading(saved: Path) -> None:
    _edit_sidecar(saved, lambda s: s.update(classnames=CLASSNAMES[:3]))
    match = r"files\['text.safetensors'\]: 'pos_text' has 4 classes \(first dim\) but there are 3"
    with pytest.raises(CacheError, match=match):
        list_train_sets(saved)


def test_features_with_integer_dtype(saved: Path) -> None:
    _rewrite(saved / "val.safetensors", features=torch.ones(12, D, dtype=torch.int32))
    match = "val.safetensors: 'features' has dtype int32; features must be floating point"
    with pytest.raises(CacheError, match=match):
        load_cache(saved)


def test_labels_with_float_dtype(saved: Path) -> None:
    _rewrite(saved / "test.safetensors", labels=torch.zeros(12))
    match = "test.safetensors: 'labels' has dtype float32; labels must be integer"
    with pytest.raises(CacheError, match=match):
        load_cache(saved)


def test_wrong_rank(saved: Path) -> None:
    _rewrite(saved / "val.safetensors", features=_unit(12, 1, D, seed=3))
    match = r"val.safetensors: 'features' has shape \(12, 1, 8\); expected rank 2, \(N, d\)"
    with pytest.raises(CacheError, match=match):
        load_cache(saved)


@pytest.mark.parametrize(
    ("file", "key", "tensor"),
    [
        ("val.safetensors", "features", _unit(12, D + 4, seed=3)),
        ("train_k1_s1.safetensors", "features", _unit(C, 2, D + 4, seed=3)),
        ("text.safetensors", "neg_text", _unit(C, 2, D + 4, seed=3)),
    ],
)
def test_feature_dim_mismatch(saved: Path, file: str, key: str, tensor: torch.Tensor) -> None:
    _rewrite(saved / file, **{key: tensor})
    match = f"{file}: '{key}' has d=12 but the cache's feature dim is 8"
    with pytest.raises(CacheError, match=match):
        load_cache(saved)


def test_class_count_mismatch(saved: Path) -> None:
    _rewrite(saved / "text.safetensors", pos_text=_unit(C + 1, 3, D, seed=1))
    match = r"text.safetensors: 'pos_text' has 5 classes \(first dim\) but there are 4 classnames"
    with pytest.raises(CacheError, match=match):
        load_cache(saved)


@pytest.mark.parametrize(("bad", "extremes"), [(C, "min 0, max 4"), (-1, "min -1, max 3")])
def test_labels_out_of_range(saved: Path, bad: int, extremes: str) -> None:
    labels = torch.arange(C).repeat(3)
    labels[4] = bad
    _rewrite(saved / "val.safetensors", labels=labels)
    match = rf"val.safetensors: 'labels' has values outside \[0, 4\) \({extremes}\)"
    with pytest.raises(CacheError, match=match):
        load_cache(saved)


@pytest.mark.parametrize(
    ("file", "key", "value"),
    [
        ("text.safetensors", "pos_text", float("nan")),
        ("val.safetensors", "features", float("inf")),
        ("test.safetensors", "features", float("-inf")),
        ("train_k2_s1.safetensors", "features", float("nan")),
    ],
)
def test_non_finite_features(saved: Path, file: str, key: str, value: float) -> None:
    tensor = safetensors.torch.load_file(saved / file)[key]
    tensor.view(-1)[3] = value
    _rewrite(saved / file, **{key: tensor})
    match = rf"{file}: '{key}' has 1 non-finite value\(s\) \(NaN/Inf\)"
    with pytest.raises(CacheError, match=match):
        load_cache(saved)


def test_unnormalised_features(saved: Path) -> None:
    _rewrite(saved / "test.safetensors", features=_unit(12, D, seed=4) * 2)
    match = "test.safetensors: 'features' is not L2-normalised: 12 of 12 rows"
    with pytest.raises(CacheError, match=match):
        load_cache(saved)


def test_requested_train_set_absent(saved: Path) -> None:
    match = (
        r"cache.json: no training set for \(shots=4, seed=1\); "
        r"present: \(shots=1, seed=1\), \(shots=2, seed=1\)"
    )
    with pytest.raises(CacheError, match=match):
        load_cache(saved, train_keys=[(1, 1), (4, 1)])


def test_few_shot_set_without_shots_images_per_class(saved: Path) -> None:
    labels = torch.arange(C).repeat_interleave(2)
    labels[3] = 2  # class 1 keeps one image, class 2 gets three
    _rewrite(saved / "train_k2_s1.safetensors", labels=labels)
    match = r"train_k2_s1.safetensors: class 1 \('bee'\) has 1 image\(s\), but a 2-shot set"
    with pytest.raises(CacheError, match=match):
        load_cache(saved)


def test_shape_differs_from_the_sidecar_record(saved: Path) -> None:
    _rewrite(saved / "val.safetensors", features=_unit(9, D, seed=3), labels=torch.arange(9) % C)
    match = r"'features' is float32 \(9, 8\) but cache.json records float32 \(12, 8\)"
    with pytest.raises(CacheError, match=match):
        load_cache(saved)


def test_labels_and_features_disagree_on_n(saved: Path) -> None:
    _rewrite(saved / "test.safetensors", labels=torch.arange(10) % C)
    match = "test.safetensors: 'labels' has 10 entries but 'features' has 12 rows"
    with pytest.raises(CacheError, match=match):
        load_cache(saved)


def test_missing_tensor_in_a_file(saved: Path) -> None:
    _rewrite(saved / "val.safetensors", labels=None)
    with pytest.raises(CacheError, match=r"val.safetensors: missing tensor\(s\) 'labels'"):
        load_cache(saved)


def test_unreadable_safetensors_file(saved: Path) -> None:
    _edit_sidecar(saved, lambda s: s.pop("checksums"))  # else the checksum names the damage first
    (saved / "test.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(CacheError, match="test.safetensors: not a readable safetensors file"):
        load_cache(saved)


def test_errors_are_one_line(saved: Path) -> None:
    (saved / "test.safetensors").write_bytes(b"garbage\nwith\nnewlines")
    with pytest.raises(CacheError) as info:
        load_cache(saved)
    assert "\n" not in str(info.value)




def test_every_file_gets_a_checksum_and_a_damaged_file_names_itself(saved: Path) -> None:
    sidecar = json.loads((saved / "cache.json").read_text())
    assert set(sidecar["checksums"]) == set(sidecar["files"])
    assert all(v == file_checksum(saved / f) for f, v in sidecar["checksums"].items())
    # one flipped bit inside the tensor data: same shapes and dtypes, still a valid safetensors file
    path = saved / "test.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=r"test\.safetensors: its bytes do not match the checksum cache\.json records"):
        load_cache(saved)


def test_a_cache_without_checksums_still_loads(saved: Path) -> None:
    """Caches written before checksums were recorded load as before (nothing to verify)."""
    _edit_sidecar(saved, lambda s: s.pop("checksums"))
    assert load_cache(saved).num_classes == len(CLASSNAMES)
    _edit_sidecar(saved, lambda s: s.update(checksums={"text.safetensors": "md5:x"}))
    with pytest.raises(CacheError, match=r"checksums must map every file of 'files' to"):
        load_cache(saved)


def test_adding_a_training_set_keeps_every_checksum_true(tmp_path: Path) -> None:
    """A merge writes only the new set; every file's recorded checksum still matches its bytes."""
    save_cache(tmp_path, _cache(train=((1, 1),)))
    before = json.loads((tmp_path / "cache.json").read_text())["checksums"]
    save_cache(tmp_path, _cache(train=((2, 1),)))
    after = json.loads((tmp_path / "cache.json").read_text())["checksums"]
    assert set(after) == set(before) | {"train_k2_s1.safetensors"}
    assert all(after[f] == before[f] for f in before)  # untouched files: untouched checksums
    assert all(v == file_checksum(tmp_path / f) for f, v in after.items())
    assert sorted(load_cache(tmp_path).train_sets) == [(1, 1), (2, 1)]


# ------------------------------------------------------------------------------------------
# Optional raw text norms (pos_text_norm, neg_text_norm)
# ------------------------------------------------------------------------------------------


def _norms(seed: int = 9) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"pos_text_norm": 8 + 4 * torch.rand(C, 3, generator=g), "neg_text_norm": 8 + 4 * torch.rand(C, 2, generator=g)}


def test_raw_text_norms_round_trip_and_old_caches_load_without_them(tmp_path: Path, saved: Path) -> None:
    norms = _norms()
    path = save_cache(tmp_path / "with_norms", _cache(**norms))
    loaded = load_cache(path)
    for key, value in norms.items():
        assert torch.equal(getattr(loaded, key), value)
    table = json.loads((path / "cache.json").read_text())["files"]["text.safetensors"]
    assert table["pos_text_norm"] == {"dtype": "float32", "shape": [C, 3]}
    old = load_cache(saved)  # written without them: loads as before
    assert old.pos_text_norm is None and old.neg_text_norm is None


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"pos_text_norm": torch.ones(C, 3)}, r"holds 'pos_text_norm' without the rest of 'pos_text_norm', 'neg_text_norm'"),
        ({**_norms(), "neg_text_norm": torch.ones(C, 3)}, r"neg_text_norm has shape \(4, 3\); expected \(C, Q\), one raw norm per prompt of neg_text \(4, 2\)"),
        ({**_norms(), "pos_text_norm": torch.ones(C, 3, dtype=torch.int64)}, r"pos_text_norm has dtype int64; norms must be floating point"),
        ({**_norms(), "pos_text_norm": torch.zeros(C, 3)}, r"pos_text_norm has 12 value\(s\) that are not finite positive norms"),
    ],
)
def test_save_rejects_bad_raw_text_norms(tmp_path: Path, changes, match) -> None:
    with pytest.raises(CacheError, match=match):
        save_cache(tmp_path / "bad", _cache(**changes))
    assert not (tmp_path / "bad" / "cache.json").exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -3.0, 0.0])
def test_corrupt_raw_text_norm_on_disk(tmp_path: Path, value: float) -> None:
    path = save_cache(tmp_path / "cache", _cache(**_norms()))
    norms = safetensors.torch.load_file(path / "text.safetensors")["neg_text_norm"]
    norms[1, 0] = value
    _rewrite(path / "text.safetensors", neg_text_norm=norms)
    with pytest.raises(CacheError, match=r"text.safetensors: 'neg_text_norm' has 1 value\(s\) that are not finite positive norms"):
        load_cache(path)


def test_raw_text_norms_the_sidecar_does_not_record(saved: Path) -> None:
    _rewrite(saved / "text.safetensors", **_norms())
    with pytest.raises(CacheError, match=r"text.safetensors: holds .*'pos_text_norm', 'neg_text_norm' but cache.json records 'pos_text', 'neg_text'"):
        load_cache(saved)
