"""``hgadapter check`` (issue 12 part 2): on synthetic caches and on tiny extracted ones, with
injected leaks, ``--strict``, ``--json``, published values and the sweep's check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import clip_fixtures as cf
import pytest

import hgadapter.extract.run as ex
from hgadapter.check import SCHEMA, CheckError, Need, check_cache, format_check, load_published, sweep_warnings
from hgadapter.cli import main
from hgadapter.data.io import save_cache
from hgadapter.data.synthetic import build_synthetic_task
from hgadapter.methods import create_method
from hgadapter.runner import run_method
from hgadapter.sweep import expand_experiment, run_sweep

REPO = Path(__file__).resolve().parents[1]
SYNTH_FEWSHOT = REPO / "experiments" / "synthetic" / "fewshot.yaml"


def _synthetic(path: Path, **overrides):
    cfg = dict(num_classes=6, num_families=2, dim=16, shots=(1, 2, 4, 8, 16), seeds=(1, 2, 3), test_per_class=5)
    cache = build_synthetic_task(**{**cfg, **overrides})
    save_cache(path, cache)
    return cache


def _edit_meta(cache_dir: Path, edit) -> None:
    """Change the sidecar's meta in place (what a buggy extractor or a hand-made cache might hold)."""
    sidecar = json.loads((cache_dir / "cache.json").read_text())
    edit(sidecar["meta"])
    (cache_dir / "cache.json").write_text(json.dumps(sidecar))


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth") / "synthetic"
    _synthetic(path)
    return path


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """Tiny ImageNet-layout caches from a tiny random CLIP: default validation (held out of
    train) and CoOp's (--val-source test)."""
    root = tmp_path_factory.mktemp("check")
    model = cf.build_tiny_clip(root / "clip")
    data = cf.build_coop_imagenet(root / "data", per_split=(12, 3))
    common = ["--dataset", "coop:imagenet", "--data-dir", str(data), "--model", str(model), "--device", "cpu",
              "--batch-size", "16", "--workers", "0", "--quiet", "--views", "1", "--augment", "none", "--seeds", "1", "2"]
    ex.main([*common, "--out", str(root / "held"), "--shots", "1", "2"])
    ex.main([*common, "--out", str(root / "coop"), "--shots", "--val-source", "test"])  # val and test only
    return root


def test_synthetic_cache_passes_strict_and_says_synthetic(synthetic_dir, capsys):
    report = check_cache(synthetic_dir, experiments=[SYNTH_FEWSHOT])
    assert report.synthetic and report.warnings == []
    assert report.leaks["checked"] is False and "synthetic" in report.leaks["reason"]
    assert report.experiments[0]["missing_train_sets"] == []
    assert "SYNTHETIC" in format_check(report)
    discovered = check_cache(synthetic_dir)  # the shipped synthetic experiment files
    assert "experiments/synthetic/fewshot.yaml" in {Path(e["file"]).relative_to(REPO).as_posix() for e in discovered.experiments}
    assert not [w for w in discovered.warnings if not w.startswith("experiments:")]  # dg.yaml's targets are not made here
    assert main(["check", str(synthetic_dir), "--strict", "--experiments", str(SYNTH_FEWSHOT)]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out


def test_zero_shot_accuracy_equals_the_zero_shot_method(synthetic_dir, tmp_path):
    cache = _synthetic(tmp_path / "c")
    report = check_cache(tmp_path / "c", needs=[])
    record = run_method(create_method("zero_shot"), cache, shots=1, seed=1, progress=False)
    assert report.zero_shot["test"] == pytest.approx(record["test_acc"], abs=0.01)
    assert report.zero_shot["val"] == pytest.approx(record["val_acc"], abs=0.01)
    f = report.features
    assert f["norms"]["test"]["min"] == pytest.approx(1.0, abs=1e-3) and f["matched_cosine"] > f["unmatched_cosine"]
    assert report.splits["test"] == {"images": 30, "per_class_min": 5, "per_class_max": 5, "empty_classes": []}


def test_missing_training_sets_and_targets_are_named(tmp_path):
    _synthetic(tmp_path / "synthetic", shots=(1,), seeds=(1,))
    report = check_cache(tmp_path / "synthetic", experiments=[SYNTH_FEWSHOT, REPO / "experiments" / "synthetic" / "dg.yaml"])
    few, dg = report.experiments
    assert len(few["missing_train_sets"]) == 14 and [1, 1] not in few["missing_train_sets"]
    assert few["missing_shots"] == [1, 2, 4, 8, 16] and few["missing_seeds"] == [1, 2, 3]  # what to extract: present ones are skipped
    assert [t.split(" ")[0] for t in dg["missing_targets"]] == ["synthetic_noisy", "synthetic_styled"]
    assert any("--shots 1 2 4 8 16 --seeds 1 2 3" in w for w in report.warnings)
    assert main(["check", str(tmp_path / "synthetic"), "--strict", "--experiments", str(SYNTH_FEWSHOT)]) == 1
    assert main(["check", str(tmp_path / "synthetic"), "--experiments", str(SYNTH_FEWSHOT)]) == 0


def test_extracted_cache_has_no_leak_and_an_injected_one_is_caught(extracted, tmp_path, capsys):
    held = tmp_path / "held"
    shutil.copytree(extracted / "held", held)
    report = check_cache(held, needs=[])
    assert not report.synthetic and report.dataset == "imagenet" and report.prompts == "coop"
    assert report.leaks["checked"] and report.leaks["found"] == [] and report.leaks["val_split"] == "train"
    assert not [w for w in report.warnings if w.startswith("leaks")]
    sidecar = json.loads((held / "cache.json").read_text())
    train_index = next(e for e in sidecar["train_sets"] if (e["shots"], e["seed"]) == (2, 1))["indices"][0]

    def inject(meta):
        meta["val"]["source"]["indices"][0] = train_index  # a validation image that is also a training image
        meta["dataset"]["duplicates"] = [["train", train_index, "test", 4]]  # and the same file listed as test #4
    _edit_meta(held, inject)
    leaky = check_cache(held, needs=[])
    pairs = {(f["a"], f["b"], f["by"]) for f in leaky.leaks["found"]}
    assert ("training set (shots=2, seed=1)", "validation", "position in the train list") in pairs
    assert ("training set (shots=2, seed=1)", "test", "the same file in two source lists") in pairs
    assert any("in both training set (shots=2, seed=1) and validation" in w for w in leaky.warnings)
    assert main(["check", str(held), "--strict"]) == 1
    assert main(["check", str(held)]) == 0  # warnings alone do not fail without --strict
    capsys.readouterr()
    assert main(["check", str(held), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and any(w.startswith("leaks:") for w in data["warnings"])


def test_validation_drawn_from_test_is_a_warning(extracted):
    report = check_cache(extracted / "coop", needs=[])
    assert report.leaks["val_split"] == "test"
    (leak,) = [w for w in report.warnings if w.startswith("leaks")]
    assert "validation is drawn from the test images (9 images; --val-source test" in leak
    assert report.splits["val_source"] == "test (CoOp's ImageNet protocol)"


def test_published_values_gap_warning_and_hints(extracted):
    plain = check_cache(extracted / "held", needs=[], published={})
    test = plain.zero_shot["test"]
    key = ("imagenet", "", "coop")  # the tiny CLIP is a local folder: no backbone
    near = check_cache(extracted / "held", needs=[], published={key: (test + 1.0, "a paper")})
    assert near.zero_shot["published"] == test + 1.0 and near.zero_shot["gap"] == pytest.approx(-1.0)
    assert not [w for w in near.warnings if w.startswith("zero_shot")]
    far_value = test - 10 if test > 50 else test + 10
    far = check_cache(extracted / "held", needs=[], published={key: (far_value, "a paper")})
    (gap,) = [w for w in far.warnings if w.startswith("zero_shot")]
    assert "10.00 points" in gap and "a paper" in gap
    assert all(word in gap for word in ("preprocessing", "class names or prompts", "checkpoint"))


def test_shipped_published_values_and_malformed_files(tmp_path):
    published = load_published()
    value, source = published[("imagenet", "RN50", "coop")]
    assert value == 58.18 and "CoOp" in source
    assert published[("eurosat", "RN50", "coop")][0] == 37.56 and published[("imagenet_r", "ViT-B/16", "coop")][0] == 73.96
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: {a: x}\nentries:\n  - {backbone: RN50, prompts: coop, source: b, values: {dtd: 40}}\n")
    with pytest.raises(CheckError, match=r"entries\[0\]\.source: unknown source 'b'; available: \['a'\]"):
        load_published(bad)
    bad.write_text("sources: {a: x}\nentries:\n  - {backbone: RN50, prompts: coop, source: a, values: {dtd: 140}}\n")
    with pytest.raises(CheckError, match=r"values\.dtd: expected an accuracy in \[0, 100\], got 140"):
        load_published(bad)


def test_json_schema(synthetic_dir, capsys):
    assert main(["check", str(synthetic_dir), "--json", "--experiments", str(SYNTH_FEWSHOT)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == SCHEMA and data["ok"] is True and data["synthetic"] is True
    assert set(data) == {"schema", "cache", "synthetic", "dataset", "backbone", "prompts", "splits", "zero_shot",
                         "features", "leaks", "experiments", "files", "findings", "warnings", "ok"}
    assert data["files"] == {"checked": 15, "damaged": []}  # 5 shots x 3 seeds, every file read
    assert set(data["zero_shot"]) == {"val", "test", "published", "source", "gap"}
    assert {"norms", "matched_cosine", "unmatched_cosine", "modality_gap", "pos_neg_cosine"} <= set(data["features"])
    assert {"classes", "dim", "val", "test", "val_source", "train_sets"} <= set(data["splits"])
    assert set(data["leaks"]) >= {"checked", "found"}
    assert set(data["experiments"][0]) == {"file", "missing_train_sets", "missing_shots", "missing_seeds",
                                           "missing_targets", "mismatched_targets"}
    assert all(set(f) == {"section", "level", "message"} and f["level"] in ("info", "warning") for f in data["findings"])


def test_sweep_prints_the_check_first(extracted, tmp_path):
    held = tmp_path / "held"
    shutil.copytree(extracted / "held", held)
    sidecar = json.loads((held / "cache.json").read_text())
    leaked = next(e for e in sidecar["train_sets"] if (e["shots"], e["seed"]) == (1, 1))["indices"][0]
    _edit_meta(held, lambda meta: meta["val"]["source"]["indices"].__setitem__(0, leaked))  # always a warning
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"sweep: {{name: t, dataset: imagenet, features: {held}, methods: [zero_shot], shots: [1, 4], seeds: [1]}}\n")
    warnings = sweep_warnings(expand_experiment(exp, features_root=tmp_path))
    assert any("(shots=4, seed=1)" in w for w in warnings) and all(w.startswith(str(held)) for w in warnings)
    exp.write_text(f"sweep: {{name: t, dataset: imagenet, features: {held}, methods: [zero_shot], shots: [1], seeds: [1]}}\n")
    lines: list[str] = []
    result = run_sweep([exp], out_root=tmp_path / "runs", features_root=tmp_path, progress=False, log=lines.append)
    assert len(result.finished) == 1
    block = [line for line in lines if "cache check" in line or line.startswith("  ! ")]
    assert block and block[0].startswith("cache check: ") and lines.index(block[0]) < next(i for i, l in enumerate(lines) if "zero_shot" in l)
    assert sweep_warnings([]) == [] and Need("x", ()).targets == {}


@pytest.mark.parametrize(
    "model_id, key",
    [
        ("openai/clip-vit-base-patch16", "ViT-B/16"),
        ("open_clip:RN50/openai", "RN50"),
        # other weights of the same architecture are never compared with OpenAI CLIP's numbers
        ("open_clip:ViT-B-16/laion2b_s34b_b88k", "open_clip:ViT-B-16/laion2b_s34b_b88k"),
        ("open_clip:hf-hub:timm/ViT-B-16-SigLIP", "open_clip:hf-hub:timm/ViT-B-16-SigLIP"),
        ("google/siglip2-base-patch16-224", "google/siglip2-base-patch16-224"),
        ("/models/my-clip", None),
        (None, None),
    ],
)
def test_published_values_are_filed_by_weights_not_only_architecture(model_id, key):
    from hgadapter.check import published_backbone

    assert published_backbone(model_id) == key


def _retensor(cache_dir: Path, file: str, edit) -> None:
    """Rewrite one training-set file with edited tensors and record its new checksum, as a buggy
    writer that keeps its sidecar consistent would: only the values are wrong."""
    import safetensors.torch

    from hgadapter.data.validate import file_checksum

    tensors = safetensors.torch.load_file(cache_dir / file)
    edit(tensors)
    safetensors.torch.save_file(tensors, cache_dir / file)
    sidecar = json.loads((cache_dir / "cache.json").read_text())
    sidecar["checksums"][file] = file_checksum(cache_dir / file)
    (cache_dir / "cache.json").write_text(json.dumps(sidecar))


def test_every_training_set_file_is_read_and_checked(tmp_path, capsys):
    """Issue 21 item 9: damaged training sets passed with "no warnings" and `run` then refused them."""
    import pickle

    import torch

    cache_dir = tmp_path / "c"
    _synthetic(cache_dir, shots=(1, 2), seeds=(1, 2, 3))
    (cache_dir / "train_k1_s1.safetensors").write_bytes((cache_dir / "train_k1_s1.safetensors").read_bytes()[:100])  # truncated
    (cache_dir / "train_k1_s2.safetensors").unlink()  # missing
    (cache_dir / "train_k1_s3.safetensors").write_bytes(pickle.dumps({"features": [1.0]}))  # a pickle, not safetensors
    _retensor(cache_dir, "train_k2_s1.safetensors", lambda t: t["features"].__setitem__((0, 0, 0), float("nan")))
    _retensor(cache_dir, "train_k2_s2.safetensors", lambda t: t.__setitem__("labels", t["labels"] + 99))
    report = check_cache(cache_dir, needs=[])
    damaged = {tuple(d["train_set"]): d["error"] for d in report.files["damaged"]}
    assert report.files["checked"] == 6 and set(damaged) == {(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)}
    assert "do not match the checksum" in damaged[(1, 1)] and "missing" in damaged[(1, 2)]
    assert "non-finite" in damaged[(2, 1)] and "outside [0, 6)" in damaged[(2, 2)]
    files_warnings = [w for w in report.warnings if w.startswith("files:")]
    assert len(files_warnings) == 5 and any("(shots=2, seed=2)" in w for w in files_warnings)
    assert main(["check", str(cache_dir), "--strict", "--experiments", str(SYNTH_FEWSHOT)]) == 1
    out = capsys.readouterr().out
    assert "6 training sets read and checked" in out and "5 cannot be used" in out and "no warnings" not in out
    # the sweep's check verifies the sets its runs need, and names only those
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"sweep: {{name: t, dataset: synthetic, features: {cache_dir}, methods: [zero_shot], shots: [2], seeds: [2, 3]}}\n")
    lines = sweep_warnings(expand_experiment(exp, features_root=tmp_path))
    assert [line for line in lines if "files:" in line] == [next(line for line in lines if "(shots=2, seed=2)" in line)]
    assert torch.isfinite(load_cache_set(cache_dir, 2, 3)).all()  # an intact set still loads


def load_cache_set(cache_dir: Path, shots: int, seed: int):
    from hgadapter.data.io import load_cache

    return load_cache(cache_dir, train_keys=[(shots, seed)]).train_set(shots, seed).features


def test_an_integer_of_thousands_of_digits_in_the_sidecar_is_one_line(tmp_path, capsys):
    """Issue 21 item 10: a 5,000-digit integer in cache.json was a ValueError traceback in run and check."""
    cache_dir = tmp_path / "c"
    _synthetic(cache_dir, shots=(1,), seeds=(1,))
    text = (cache_dir / "cache.json").read_text()
    for field, huge in (("dim", "9" * 5000), ("dim", "9" * 400), ("logit_scale", "9" * 400), ("logit_scale", "9" * 5000)):
        sidecar = json.loads(text)
        sidecar[field] = 0
        (cache_dir / "cache.json").write_text(json.dumps(sidecar).replace(f'"{field}": 0', f'"{field}": {huge}'))
        assert main(["check", str(cache_dir)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("hgadapter check: error: ") and len(err.strip().splitlines()) == 1 and "cache.json" in err
        assert main(["run", "--features", str(cache_dir), "--shots", "1", "--seed", "1", "--out", str(tmp_path / "r"), "--quiet"]) == 2
        assert "hgadapter run: error: " in capsys.readouterr().err
