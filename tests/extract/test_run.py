"""``hgadapter extract`` end to end on a tiny CLIP and tiny datasets: cache contents, batching,
reproducible sampling, resume, and bad-image handling."""

from __future__ import annotations

import json
import shutil

import clip_fixtures as cf
import pytest
import torch

import hgadapter.extract.run as ex
from hgadapter.data.io import load_cache
from hgadapter.extract.datasets import build_dataset, sample_per_class
from hgadapter.extract.encode import encode_samples
from hgadapter.extract.encoders import create_encoder
from hgadapter.extract.options import ExtractError


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return cf.build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return cf.build_imagefolder(tmp_path_factory.mktemp("imgs"), per_class=10)


def _args(model_dir, data_dir, out, *extra, dataset="imagefolder"):
    return [
        "--dataset", dataset, "--data-dir", str(data_dir), "--model", str(model_dir), "--out", str(out),
        "--device", "cpu", "--batch-size", "8", "--workers", "2", "--quiet", *extra,
    ]


@pytest.fixture(scope="module")
def first_cache(model_dir, folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "c"
    assert ex.main(_args(model_dir, folder, out, "--shots", "1", "2", "--seeds", "1", "2", "--views", "3",
                         "--pos-prompts", "photo+ensemble7", "--neg-prompts", "neg4")) == 0
    return out


def test_cache_contents(first_cache):
    cache = load_cache(first_cache)
    C, d = 3, 24
    assert cache.classnames == ["blue stripes", "green circle", "red square"]
    assert cache.pos_text.shape == (C, 8, d) and cache.neg_text.shape == (C, 4, d)
    assert cache.val_features.shape == (3 * 2, d) and cache.test_features.shape == (9, d)  # val: 2 per class exist
    assert sorted(cache.train_sets) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    fs = cache.train_set(2, 1)
    assert fs.features.shape == (6, 3, d) and fs.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert len(fs.indices) == 6
    for t in (cache.pos_text, cache.neg_text, cache.val_features, cache.test_features, fs.features):
        torch.testing.assert_close(t.norm(dim=-1), torch.ones(t.shape[:-1]))
    assert not torch.equal(fs.features[:, 0], fs.features[:, 1])  # augmented views differ
    meta = cache.meta
    assert meta["encoder"]["revision"].startswith("sha256:")
    assert meta["prompts"]["pos"]["name"] == "photo+ensemble7" and meta["prompts"]["pos"]["hash"].startswith("sha256:")
    assert meta["dataset"]["spec"] == "imagefolder" and meta["dataset"]["split_source"]["seed"] == 1
    assert meta["augment"]["views"] == 3 and meta["augment"]["scale"] == [0.5, 1.0]
    assert cache.logit_scale == pytest.approx(create_encoder(str(meta["encoder"]["id"])).logit_scale)


def test_text_features_are_the_prompts_encoded(first_cache, model_dir):
    cache = load_cache(first_cache, train_keys=[])
    enc = create_encoder(str(model_dir), device="cpu")
    ref, norms = enc.encode_texts(["a photo of a blue stripes.", "itap of a red square."], return_norms=True)
    torch.testing.assert_close(cache.pos_text[0, 0], ref[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(cache.pos_text[2, 1], ref[1], atol=1e-5, rtol=0)
    # the raw norms before normalisation are recorded beside them, one per prompt
    assert cache.pos_text_norm.shape == cache.pos_text.shape[:2] and cache.neg_text_norm.shape == cache.neg_text.shape[:2]
    torch.testing.assert_close(cache.pos_text_norm[0, 0], norms[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache.pos_text_norm[2, 1], norms[1], atol=1e-5, rtol=1e-5)


def test_batched_equals_one_image_at_a_time(model_dir, folder):
    enc = create_encoder(str(model_dir), device="cpu")
    ds = build_dataset("imagefolder", folder)
    batched, _ = encode_samples(enc, ds, ds.test, split="test", batch_size=4, workers=2, progress=False)
    single = torch.cat([enc.encode_images(torch.from_numpy(enc.preprocess(ds.load_image(s))["pixel_values"])[None]) for s in ds.test])
    torch.testing.assert_close(batched[:, 0], single, atol=1e-5, rtol=0)


def test_sampling_and_views_identical_across_reruns(first_cache, model_dir, folder, tmp_path):
    out = tmp_path / "again"
    # different batch size and no loader threads: same indices, same augmented features
    ex.main(_args(model_dir, folder, out, "--shots", "2", "--seeds", "2", "--views", "3", "--pos-prompts",
                  "photo+ensemble7", "--neg-prompts", "neg4", "--workers", "0", "--batch-size", "5"))
    a, b = load_cache(first_cache).train_set(2, 2), load_cache(out).train_set(2, 2)
    assert a.indices == b.indices
    torch.testing.assert_close(a.features, b.features, atol=1e-5, rtol=0)
    assert load_cache(first_cache).train_set(2, 1).indices != a.indices


def test_resume_skips_finished_sets_and_rejects_other_inputs(model_dir, folder, tmp_path, monkeypatch):
    out = tmp_path / "resume"
    base = ["--shots", "1", "--seeds", "1", "--views", "1", "--augment", "none"]
    ex.main(_args(model_dir, folder, out, *base))
    before = load_cache(out)
    encoded = []
    real = ex.encode_train_set
    monkeypatch.setattr(ex, "encode_train_set", lambda o, e, s, k, seed, *a: encoded.append((k, seed)) or real(o, e, s, k, seed, *a))
    ex.main(_args(model_dir, folder, out, "--shots", "1", "4", "--seeds", "1", "--views", "1", "--augment", "none"))
    assert encoded == [(4, 1)]  # (1, 1) was skipped
    after = load_cache(out)
    assert sorted(after.train_sets) == [(1, 1), (4, 1)]
    torch.testing.assert_close(after.train_set(1, 1).features, before.train_set(1, 1).features)
    torch.testing.assert_close(after.test_features, before.test_features)
    with pytest.raises(ExtractError, match=r"different inputs:\n  prompts.pos"):
        ex.main(_args(model_dir, folder, out, *base, "--pos-prompts", "ensemble7"))
    ex.main(_args(model_dir, folder, out, *base, "--pos-prompts", "ensemble7", "--overwrite"))
    replaced = load_cache(out)
    assert replaced.pos_text.shape[1] == 7 and sorted(replaced.train_sets) == [(1, 1)]


def test_bad_images_fail_by_default_and_are_recorded_with_skip_bad(model_dir, folder, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(folder, data)
    ds = build_dataset("imagefolder", data)
    bad_test = cf.write_bad_image(ds.test[0].key)
    first = sample_per_class(ds.train, 3, 4, seed=1)[0]
    bad_train = cf.write_bad_image(ds.train[first].key)
    args = _args(model_dir, data, tmp_path / "c", "--shots", "4", "--seeds", "1", "--views", "2")
    with pytest.raises(ExtractError, match=rf"1 image\(s\) could not be read:\n  \[test #0\] {bad_test}"):
        ex.main(args)
    ex.main([*args, "--skip-bad", "--overwrite"])
    cache = load_cache(tmp_path / "c")
    assert cache.meta["bad_images"][0]["key"] == str(bad_test) and len(cache.test_labels) == len(ds.test) - 1
    fs = cache.train_set(4, 1)
    assert len(fs.indices) == 12 and first not in fs.indices  # the unreadable image was substituted
    assert fs.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    report = [json.loads(line) for line in (tmp_path / "c" / "extract_report.jsonl").read_text().splitlines()]
    assert report[0]["skipped"][0]["key"] == str(bad_train)


def test_coop_layout_end_to_end(model_dir, tmp_path):
    root = cf.build_coop_dtd(tmp_path / "coop")
    out = tmp_path / "dtd"
    ex.main(_args(model_dir, root, out, "--shots", "2", "--seeds", "1", "--views", "2", dataset="coop:dtd"))
    cache = load_cache(out)
    assert cache.classnames == ["red square", "green circle", "blue stripes"]
    assert cache.meta["prompts"]["pos"]["sources"][0]["templates"] == ["{} texture."]
    assert cache.val_features.shape[0] == 9 and cache.test_features.shape[0] == 9
    assert cache.meta["val"]["indices"] == sorted(cache.meta["val"]["indices"], key=lambda i: i // 3)


def test_user_errors_are_extract_errors(model_dir, folder, tmp_path):
    with pytest.raises(ExtractError, match="unknown dataset spec"):
        ex.main(_args(model_dir, folder, tmp_path / "x", dataset="nope"))
    with pytest.raises(ExtractError, match="use --views 1"):
        ex.main(_args(model_dir, folder, tmp_path / "x", "--augment", "none", "--views", "3"))
    with pytest.raises(ExtractError, match="does not exist"):
        ex.main(_args(tmp_path / "no" / "model", folder, tmp_path / "x"))


def test_shards_then_merge_equal_one_process(first_cache, model_dir, folder, tmp_path):
    out = tmp_path / "sharded"
    common = ["--shots", "2", "--seeds", "1", "--views", "3", "--pos-prompts", "photo+ensemble7", "--neg-prompts", "neg4"]
    for i in range(2):
        assert ex.main(_args(model_dir, folder, out, *common, "--shard", f"{i}/2")) == 0
    assert not out.exists() and len(list((tmp_path / "sharded.shards").iterdir())) == 2
    with pytest.raises(ExtractError, match="different inputs"):
        ex.main(_args(model_dir, folder, out, *common, "--views", "2", "--merge"))
    ex.main(_args(model_dir, folder, out, *common, "--merge"))
    merged, single = load_cache(out), load_cache(first_cache)
    torch.testing.assert_close(merged.test_features, single.test_features, atol=1e-5, rtol=0)
    torch.testing.assert_close(merged.val_features, single.val_features, atol=1e-5, rtol=0)
    torch.testing.assert_close(merged.train_set(2, 1).features, single.train_set(2, 1).features, atol=1e-5, rtol=0)
    assert merged.meta["identity"] == single.meta["identity"]


def test_a_run_killed_before_cache_json_resumes_and_leaves_no_temp_file(model_dir, folder, tmp_path):
    """Killed while writing text/val/test (cache.json is written last): the rerun needs no
    --overwrite, removes the temp files the kill left, and gives the same cache (issue 14 item 12)."""
    out = tmp_path / "killed"
    base = ["--shots", "1", "--seeds", "1", "--views", "1", "--augment", "none"]
    assert ex.main(_args(model_dir, folder, out, *base)) == 0
    reference = load_cache(out)
    (out / "cache.json").unlink()  # the state a kill before the sidecar leaves ...
    (out / "test.safetensors").unlink()
    (out / ".test.safetensors.abc123.tmp").write_bytes(b"half a file")  # ... with atomic_write's temp file
    assert ex.main(_args(model_dir, folder, out, *base)) == 0
    again = load_cache(out)
    torch.testing.assert_close(again.test_features, reference.test_features)
    assert not list(out.glob(".*.tmp"))
    (out / "notes.txt").write_text("mine")  # a folder with someone else's file is still refused
    (out / "cache.json").unlink()
    with pytest.raises(ExtractError, match="exists but is not a readable feature cache"):
        ex.main(_args(model_dir, folder, out, *base))


def test_a_run_directory_loses_the_temp_files_of_a_killed_run(tmp_path):
    from hgadapter.data.synthetic import build_synthetic_task
    from hgadapter.methods import create_method
    from hgadapter.runner import run_method

    (tmp_path / ".metrics.json.x1.tmp").write_text("{")
    cache = build_synthetic_task(num_classes=6, num_families=2, dim=16, shots=(1,), seeds=(1,), test_per_class=3)
    run_method(create_method("zero_shot"), cache, shots=1, seed=1, out_dir=tmp_path, progress=False)
    assert not list(tmp_path.glob(".*.tmp")) and (tmp_path / "metrics.json").is_file()


def test_imagenet_validation_never_is_a_test_or_training_image(model_dir, tmp_path):
    """Issue 12 part 1 end to end: by default ImageNet validates on held-out train images, none of
    them in the test split or in any training set; --val-source test is CoOp's protocol, recorded,
    and a different cache."""
    root = cf.build_coop_imagenet(tmp_path / "data", per_split=(12, 3))
    out = tmp_path / "imagenet"
    sets = ["--shots", "1", "2", "4", "--seeds", "1", "2", "3", "--views", "1", "--augment", "none"]
    assert ex.main(_args(model_dir, root, out, *sets, dataset="coop:imagenet")) == 0
    cache = load_cache(out)
    ds = build_dataset("coop:imagenet", root)
    source = cache.meta["val"]["source"]
    assert cache.meta["dataset"]["val_source"].startswith("train") and source["split"] == "train"
    assert len(source["indices"]) == len(cache.val_labels) == 12
    val_keys = {ds.train[i].key for i in source["indices"]}
    assert [ds.train[i].label for i in source["indices"]] == cache.val_labels.tolist()
    assert not val_keys & {s.key for s in ds.test}
    assert len(cache.train_sets) == 9
    for key, fs in cache.train_sets.items():
        assert not set(fs.indices) & set(source["indices"]) and not val_keys & {ds.train[i].key for i in fs.indices}, key
    with pytest.raises(ExtractError, match=r"val\.source: cache has 'train', this run has 'test'"):
        ex.main(_args(model_dir, root, out, *sets, "--val-source", "test", dataset="coop:imagenet"))
    coop = tmp_path / "coop"
    ex.main(_args(model_dir, root, coop, "--shots", "1", "--seeds", "1", "--views", "1", "--augment", "none",
                  "--val-source", "test", dataset="coop:imagenet"))
    meta = load_cache(coop).meta
    assert meta["dataset"]["val_source"] == "test (CoOp's ImageNet protocol)" and meta["val"]["source"]["split"] == "test"


def test_more_shots_than_a_class_has_is_said_once(model_dir, folder, tmp_path, capsys):
    """The folder has 5 training images per class: K=8 and K=16 repeat images, and extract says so once."""
    out = tmp_path / "c"
    assert ex.main(_args(model_dir, folder, out, "--shots", "1", "8", "16", "--seeds", "1", "2", "--views", "1")) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "warning:" in line]
    assert len(lines) == 1 and "3 of 3 classes have fewer than 16 training images" in lines[0] and "K=8, K=16" in lines[0], err
    assert load_cache(out).meta["dataset"]["name"] == folder.name
