"""Encoder families end to end (issue 19): a SigLIP 2 NaFlex checkpoint extracts, trains, exports
and predicts the run's test accuracy from its image files; a classifier exported before families
were recorded (CLIP, ``preprocess`` only) still predicts what it did."""

from __future__ import annotations

import csv
import json

import clip_fixtures as cf
import family_fixtures as ff
import pytest
import torch

from hgadapter import Classifier
from hgadapter.cli import main
from hgadapter.data.io import load_cache
from hgadapter.extract.datasets import build_dataset
from hgadapter.records import load_record

SHOTS, SEED = 2, 1


def _world(root, model):
    for part, count, seed in (("train", 3, 0), ("val", 2, 1), ("test", 3, 2)):
        cf.build_imagefolder(root / "images" / part, per_class=count, seed=seed)
    assert main([
        "extract", "--dataset", "imagefolder", "--data-dir", str(root / "images"), "--model", str(model),
        "--out", str(root / "cache"), "--shots", str(SHOTS), "--seeds", str(SEED), "--views", "2", "--device", "cpu",
        "--quiet",
    ]) == 0
    assert main(["run", "--features", str(root / "cache"), "--shots", str(SHOTS), "--seed", str(SEED),
                 "--out", str(root / "run"), "--set", "train.epochs=2", "--quiet"]) == 0
    assert main(["export", str(root / "run"), "--out", str(root / "clf")]) == 0
    return [s.key for s in build_dataset("imagefolder", root / "images").test]


def _predicted_accuracy(root, test_paths, clf_dir) -> float:
    out = root / "pred.csv"
    assert main(["predict", "--classifier", str(clf_dir), "--out", str(out), "--device", "cpu", "--quiet",
                 str(root / "images" / "test")]) == 0
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"] for r in rows] == test_paths
    truth = [p.split("/")[-2].replace("_", " ") for p in test_paths]
    return round(100.0 * sum(r["label"] == t for r, t in zip(rows, truth)) / len(rows), 4)


def test_siglip2_naflex_extract_run_export_predict(tmp_path, monkeypatch):
    model = ff.build("siglip2_naflex", tmp_path / "siglip2")
    test_paths = _world(tmp_path, model)
    config = json.loads((tmp_path / "clf" / "config.json").read_text())
    enc = config["encoder"]
    assert enc["family"] == "siglip2" and enc["processor"]["class"] == "Siglip2ImageProcessorPil"
    assert enc["processor"]["settings"]["max_num_patches"] == 16 and enc["text"]["attention_mask"] is False
    assert isinstance(enc["logit_bias"], float) and enc["logit_scale"] == pytest.approx(config["logit_scale"])
    assert _predicted_accuracy(tmp_path, test_paths, tmp_path / "clf") == load_record(tmp_path / "run")["test_acc"]
    # predict from another working directory finds the model by its recorded absolute path
    monkeypatch.chdir(tmp_path / "images")
    clf = Classifier.from_pretrained(tmp_path / "clf", device="cpu")
    features, _, _ = clf.encode(test_paths)
    torch.testing.assert_close(features, load_cache(tmp_path / "cache").test_features, rtol=0, atol=1e-5)


def test_a_classifier_from_before_families_predicts_as_before(tmp_path):
    model = cf.build_tiny_clip(tmp_path / "clip")
    test_paths = _world(tmp_path, model)
    path = tmp_path / "clf" / "config.json"
    config = json.loads(path.read_text())
    enc = config["encoder"]
    settings = enc["processor"]["settings"]
    # what hgadapter wrote before encoder families: CLIP's preprocessing, no family, processor or text recipe
    config["encoder"] = {
        "id": enc["id"], "revision": enc["revision"], "backend": "hf", "dim": enc["dim"], "context_length": 24,
        "precision": "fp32",
        "preprocess": {"resize": settings["size"]["shortest_edge"], "crop": [32, 32], "mean": settings["image_mean"],
                       "std": settings["image_std"], "resample": 3},
    }
    path.write_text(json.dumps(config))
    clf = Classifier.from_pretrained(tmp_path / "clf", device="cpu")
    features, _, _ = clf.encode(test_paths)
    torch.testing.assert_close(features, load_cache(tmp_path / "cache").test_features, rtol=0, atol=1e-5)
    assert _predicted_accuracy(tmp_path, test_paths, tmp_path / "clf") == load_record(tmp_path / "run")["test_acc"]
    # a classifier of one family refuses a model of another
    config["encoder"]["family"] = "siglip"
    path.write_text(json.dumps(config))
    with pytest.raises(Exception, match="'siglip' encoder, but .* is a 'clip' one"):
        Classifier.from_pretrained(tmp_path / "clf", device="cpu").encoder
