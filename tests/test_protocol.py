"""Empty splits, stale run directories and the logit scale (issue 14 items 1-4): a correct result
or a one-line error, never a silently wrong record."""

import json
import math

import pytest
import torch

from hgadapter.data.io import load_cache, save_cache
from hgadapter.data.synthetic import build_synthetic_task
from hgadapter.methods import create_method
from hgadapter.protocol import NoValidationError
from hgadapter.records import load_record
from hgadapter.runner import run_method


def _without(cache, split):
    """The cache with an empty validation or test split (the format allows both)."""
    import dataclasses

    d = cache.dim
    empty = {f"{split}_features": torch.zeros(0, d), f"{split}_labels": torch.zeros(0, dtype=torch.long)}
    return dataclasses.replace(cache, **empty)


@pytest.fixture(scope="module")
def cache():
    return build_synthetic_task(num_classes=8, num_families=2, dim=16, shots=(2,), seeds=(1,), test_per_class=5)


@pytest.mark.parametrize("method, fixed", [
    ("hegraphadapter", ["train.epochs=1", "train.checkpoint=last", "eval.alpha=1", "eval.beta=5.5"]),
    ("tip_adapter", ["alpha=1", "beta=5.5"]),
    ("gda", ["alpha=0.1"]),
    ("linear_probe", ["c_grid=[1.0]", "search_steps=0"]),
])
def test_empty_validation_uses_fixed_values_and_records_them(cache, tmp_path, method, fixed):
    record = run_method(create_method(method, overrides=fixed), _without(cache, "val"), shots=2, seed=1, out_dir=tmp_path, progress=False)
    assert record["val_acc"] is None and "the validation split is empty: no validation accuracy" in record["notes"]
    fixed_alpha = {"hegraphadapter": 1.0, "tip_adapter": 1.0, "gda": 0.1}
    if method in fixed_alpha:  # the fixed value is the one used and recorded
        assert record["hparams"]["alpha"] == fixed_alpha[method]
    saved = json.loads((tmp_path / "metrics.json").read_text())  # valid JSON: null, not NaN
    assert saved["val_acc"] is None and math.isfinite(saved["test_acc"])
    assert load_record(tmp_path)["val_acc"] is None  # report reads it


@pytest.mark.parametrize("method, message", [
    ("hegraphadapter", r"checkpoint best_val .* needs validation images.*train\.checkpoint=last"),
    ("tip_adapter", r"alpha/beta search needs validation images.*fix alpha and beta"),
    ("gda", r"ensemble-weight search needs validation images"),
    ("linear_probe", r"C search needs validation images.*c_grid"),
])
def test_a_search_without_validation_is_refused(cache, method, message):
    overrides = ["train.epochs=1"] if method == "hegraphadapter" else []
    with pytest.raises(NoValidationError, match=message) as info:
        run_method(create_method(method, overrides=overrides), _without(cache, "val"), shots=2, seed=1, progress=False)
    assert "\n" not in str(info.value) and "--val-shots" in str(info.value)


def test_empty_test_split_writes_null_and_says_why(cache, tmp_path):
    record = run_method(create_method("zero_shot"), _without(cache, "test"), shots=2, seed=1, out_dir=tmp_path, progress=False)
    assert record["test_acc"] is None and "the test split is empty: no test accuracy" in record["notes"]
    text = (tmp_path / "metrics.json").read_text()
    assert "NaN" not in text and json.loads(text)["test_acc"] is None


def test_a_rerun_removes_the_old_metrics_before_anything_else(cache, tmp_path, monkeypatch):
    """Killed after rewriting config.yaml, a rerun must not leave the old metrics.json beside it."""
    run_method(create_method("zero_shot"), cache, shots=2, seed=1, out_dir=tmp_path, progress=False)
    assert (tmp_path / "metrics.json").is_file()
    method = create_method("tip_adapter")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands in for the kill, after the run started

    monkeypatch.setattr(type(method), "_fit", killed)
    with pytest.raises(KeyboardInterrupt):
        run_method(method, cache, shots=2, seed=1, out_dir=tmp_path, progress=False, overwrite=True)
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("scale", [1e39, 1e300, 1e7, -1.0, 0.0])
def test_a_logit_scale_float32_cannot_use_is_refused(cache, tmp_path, scale):
    from hgadapter.data.cache import CacheError

    save_cache(tmp_path / "c", cache)
    sidecar = tmp_path / "c" / "cache.json"
    raw = json.loads(sidecar.read_text())
    raw["logit_scale"] = scale
    sidecar.write_text(json.dumps(raw))
    with pytest.raises(CacheError, match=r"logit_scale must be a positive number of at most 1e\+06"):
        load_cache(tmp_path / "c")


def test_a_logit_scale_far_from_clips_warns(cache, tmp_path):
    save_cache(tmp_path / "c", cache)
    sidecar = tmp_path / "c" / "cache.json"
    raw = json.loads(sidecar.read_text())
    raw["logit_scale"] = 5000.0
    sidecar.write_text(json.dumps(raw))
    with pytest.warns(UserWarning, match="logit_scale 5000 is far from CLIP's 100"):
        assert load_cache(tmp_path / "c").logit_scale == 5000.0


@pytest.mark.parametrize("encoder, backbone", [("openai/clip-vit-base-patch16", "ViT-B/16"), (["x"], None), ("local-folder", None)])
def test_a_free_form_meta_encoder_never_breaks_a_finished_run(cache, tmp_path, encoder, backbone):
    import dataclasses

    odd = dataclasses.replace(cache, meta={**cache.meta, "encoder": encoder})
    record = run_method(create_method("zero_shot"), odd, shots=2, seed=1, out_dir=tmp_path, progress=False)
    assert record["backbone"] == backbone and (tmp_path / "metrics.json").is_file()


def test_nan_in_a_sidecar_or_a_record_is_not_json(cache, tmp_path):
    from hgadapter.data.cache import CacheError
    from hgadapter.records import RecordError

    save_cache(tmp_path / "c", cache)
    sidecar = tmp_path / "c" / "cache.json"
    sidecar.write_text(sidecar.read_text().replace('"meta": {', '"meta": {"bad": NaN, ', 1))
    with pytest.raises(CacheError, match=r"cache\.json: not valid JSON \(NaN is not a JSON value"):
        load_cache(tmp_path / "c")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text('{"method": "zero_shot", "shots": 1, "seed": 1, "val_acc": Infinity, "test_acc": 1.0}')
    with pytest.raises(RecordError, match=r"not valid JSON \(Infinity is not a JSON value"):
        load_record(run)


def test_a_cache_json_nested_too_deep_is_one_line(cache, tmp_path):
    from hgadapter.data.cache import CacheError

    save_cache(tmp_path / "c", cache)
    sidecar = tmp_path / "c" / "cache.json"
    sidecar.write_text(sidecar.read_text().replace('"meta": {', '"meta": {"deep": ' + "[" * 100000 + "]" * 100000 + ", ", 1))
    with pytest.raises(CacheError, match=r"cache\.json: not valid JSON \(nested too deeply to read"):
        load_cache(tmp_path / "c")
