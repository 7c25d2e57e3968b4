"""Export and predict (hgadapter/classifier.py, hgadapter/predict.py) end to end on a tiny CLIP:
extract an image folder, run every registered method, export the run, classify the test images
again from their files, and get the predictions the run scored."""

from __future__ import annotations

import csv
import json
import shutil

import clip_fixtures as cf
import pytest
import torch
from test_methods import quick

from hgadapter import Classifier
from hgadapter.classifier import CONFIG_NAME, FORMAT, WEIGHTS_NAME, ClassifierError, ClassifierWarning, export_run
from hgadapter.cli import main
from hgadapter.data.io import load_cache
from hgadapter.data.synthetic import build_synthetic_task
from hgadapter.extract.datasets import build_dataset
from hgadapter.methods import create_method, list_methods
from hgadapter.records import HEAD_SPEC_FILE, load_record
from hgadapter.runner import run_method

SHOTS, SEED = 2, 1


def _messages(err: str) -> list[str]:
    """Our lines on stderr (transformers draws its own "Loading weights" bar there)."""
    return [line for line in err.replace("\r", "\n").splitlines() if line.startswith("hgadapter ")]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny CLIP, an image folder with train/ val/ test/, and its feature cache (`hgadapter extract`)."""
    root = tmp_path_factory.mktemp("classifier")
    model = cf.build_tiny_clip(root / "clip")
    for part, count, seed in (("train", 4, 0), ("val", 2, 1), ("test", 3, 2)):
        cf.build_imagefolder(root / "images" / part, per_class=count, seed=seed)
    cache_dir = root / "cache"
    assert main([
        "extract", "--dataset", "imagefolder", "--data-dir", str(root / "images"), "--model", str(model),
        "--out", str(cache_dir), "--shots", str(SHOTS), "--seeds", str(SEED), "--views", "2", "--device", "cpu", "--quiet",
    ]) == 0
    test_paths = [s.key for s in build_dataset("imagefolder", root / "images").test]  # the cache's test order
    return {"root": root, "model": model, "cache_dir": cache_dir, "cache": load_cache(cache_dir), "test_paths": test_paths}


def _run(world, name, out):
    method = create_method(name, overrides=quick(name))
    return run_method(method, world["cache"], shots=SHOTS, seed=SEED, out_dir=out, device="cpu", progress=False)


@pytest.fixture(scope="module")
def exported(world):
    """HeGraphAdapter's run and its exported classifier folder."""
    run = world["root"] / "run_hegraphadapter"
    _run(world, "hegraphadapter", run)
    out = world["root"] / "clf_hegraphadapter"
    export_run(run, out)
    return run, out


@pytest.mark.parametrize("name", list_methods())
def test_exported_classifier_predicts_what_the_run_scored(name, world, tmp_path):
    cache = world["cache"]
    record = _run(world, name, tmp_path / "run")
    export_run(tmp_path / "run", tmp_path / "clf")
    clf = Classifier.from_pretrained(tmp_path / "clf", device="cpu")
    # Encoding the test images again gives the cache's test features: one centre crop each.
    features, keys, skipped = clf.encode(world["test_paths"])
    assert keys == world["test_paths"] and skipped == []
    torch.testing.assert_close(features, cache.test_features, rtol=0, atol=1e-6)
    predicted = clf.predict(world["test_paths"])
    scored = clf.predict_features(cache.test_features)
    assert predicted.indices.tolist() == scored.indices.tolist()
    torch.testing.assert_close(predicted.logits, scored.logits, rtol=0, atol=1e-4)
    accuracy = 100.0 * float((predicted.indices == cache.test_labels).float().mean())
    assert round(accuracy, 4) == record["test_acc"] == load_record(tmp_path / "run")["test_acc"], name
    assert predicted.labels == [cache.classnames[i] for i in predicted.indices.tolist()]
    torch.testing.assert_close(predicted.scores, predicted.probs.max(dim=1).values)


def test_the_readme_commands_run_and_predict_the_run_scores(world, tmp_path, capsys):
    """README's four commands (extract is the fixture's): run, export, predict with --top-k."""
    run, clf, out = tmp_path / "run", tmp_path / "clf", tmp_path / "pred.csv"
    assert main(["run", "--features", str(world["cache_dir"]), "--shots", str(SHOTS), "--seed", str(SEED),
                 "--out", str(run), "--set", "train.epochs=2", "--quiet"]) == 0
    assert main(["export", str(run), "--out", str(clf)]) == 0
    assert main(["predict", "--classifier", str(clf), "--out", str(out), "--top-k", "2", "--device", "cpu", "--quiet",
                 str(world["root"] / "images" / "test")]) == 0
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "label", "score", "label_2", "score_2"]
    assert [r["path"] for r in rows] == world["test_paths"]  # a folder lists its images recursively, sorted
    # The label a folder name stands for (clean_classname: "red_square" -> "red square").
    truth = [p.split("/")[-2].replace("_", " ") for p in world["test_paths"]]
    accuracy = 100.0 * sum(r["label"] == t for r, t in zip(rows, truth)) / len(rows)
    assert round(accuracy, 4) == load_record(run)["test_acc"]
    for r in rows:
        assert float(r["score"]) >= float(r["score_2"]) and r["label"] != r["label_2"]
    assert f"-> {out}" in capsys.readouterr().out


def test_save_pretrained_round_trip_and_the_folder_layout(exported, world, tmp_path):
    run, folder = exported
    clf = Classifier.from_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", CONFIG_NAME, WEIGHTS_NAME]
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["format"] == FORMAT and config["classnames"] == world["cache"].classnames
    assert config["encoder"]["id"] == str(world["model"]) and config["encoder"]["processor"]["settings"]["crop_size"] == {"height": 32, "width": 32}
    assert config["encoder"]["family"] == "clip" and config["encoder"]["logit_bias"] is None
    assert config["head"] == json.loads((run / HEAD_SPEC_FILE).read_text())["spec"]
    assert config["run"]["test_acc"] == load_record(run)["test_acc"] and config["synthetic"] is False
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: hgadapter" in card
    for text in ("hegraphadapter", "green circle", str(world["model"]), f"{load_record(run)['test_acc']:.2f} %"):
        assert text in card
    clf.save_pretrained(tmp_path / "again")
    again = Classifier.from_pretrained(tmp_path / "again")
    assert again.config == clf.config
    state, state_again = clf.state_dict(), again.state_dict()
    assert state.keys() == state_again.keys() and all(torch.equal(state[k], state_again[k]) for k in state)
    features = world["cache"].test_features
    assert torch.equal(again(features), clf(features))
    assert (tmp_path / "again" / "README.md").read_text() == card


def test_a_bad_classifier_folder_is_a_one_line_error(exported, world, tmp_path, capsys):
    run, _ = exported
    image = world["test_paths"][0]
    for folder, message in (
        (tmp_path / "missing", "does not exist"),
        (run, "hgadapter export"),  # a run directory is not a classifier folder
        (world["test_paths"][0], "is a file"),
    ):
        assert main(["predict", "--classifier", str(folder), "--out", str(tmp_path / "p.csv"), image]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("hgadapter predict: error: ") and message in err, err
    assert main(["predict", "--classifier", str(exported[1]), "--out", str(tmp_path / "p.csv"), str(tmp_path / "nothing.jpg")]) == 2
    assert "no such image or folder" in capsys.readouterr().err
    assert main(["predict", "--classifier", str(exported[1]), "--out", str(tmp_path / "p.txt"), image]) == 2
    assert ".csv or .json" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", "--classifier", str(exported[1]), "--out", str(tmp_path / "p.csv"), str(empty)]) == 2
    assert "has no images" in capsys.readouterr().err


def test_an_unreadable_image_warns_and_strict_makes_it_an_error(exported, world, tmp_path, capsys):
    _, folder = exported
    bad = cf.write_bad_image(tmp_path / "broken.png")
    good = world["test_paths"][:2]
    out = tmp_path / "pred.json"
    assert main(["predict", "--classifier", str(folder), "--out", str(out), "--quiet", *good, str(bad)]) == 0
    (warning,) = _messages(capsys.readouterr().err)
    assert warning.startswith("hgadapter predict: warning: ") and str(bad) in warning and "skipped" in warning
    written = json.loads(out.read_text())
    assert [r["path"] for r in written["predictions"]] == good
    assert [s["path"] for s in written["skipped"]] == [str(bad)]
    out.unlink()
    assert main(["predict", "--classifier", str(folder), "--out", str(out), "--quiet", "--strict", *good, str(bad)]) == 2
    (err,) = _messages(capsys.readouterr().err)
    assert err.startswith("hgadapter predict: error: ") and str(bad) in err and not out.exists()
    with pytest.raises(ClassifierError, match="cannot read image"):
        Classifier.from_pretrained(folder, device="cpu").predict([*good, bad])


def test_predict_takes_pil_images_and_another_copy_of_the_model(exported, world, tmp_path):
    from PIL import Image

    _, folder = exported
    copy = shutil.copytree(world["model"], tmp_path / "clip_copy")
    clf = Classifier.from_pretrained(folder, model=str(copy), device="cpu")
    with Image.open(world["test_paths"][0]) as image:
        from_pil = clf.predict([image.copy()])
    from_path = clf.predict(world["test_paths"][0])
    assert from_pil.keys == ["<image 0>"] and from_path.keys == [world["test_paths"][0]]
    torch.testing.assert_close(from_pil.logits, from_path.logits)
    other = cf.build_tiny_clip(tmp_path / "other_clip", seed=1)  # same shapes, other weights
    with pytest.warns(ClassifierWarning, match="predictions may differ"):
        clf.use_encoder(str(other), device="cpu").predict(world["test_paths"][:1])


def test_a_synthetic_run_exports_and_classifies_features_but_not_images(world, tmp_path, capsys):
    cache = build_synthetic_task(num_classes=5, dim=16, num_families=1, semantic_rank=8, shots=(2,), seeds=(1,), test_per_class=3)
    record = run_method(create_method("tip_adapter", overrides=quick("tip_adapter")), cache, shots=2, seed=1,
                        out_dir=tmp_path / "run", device="cpu", progress=False)
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "clf")]) == 0
    assert "synthetic" in capsys.readouterr().out
    clf = Classifier.from_pretrained(tmp_path / "clf")
    assert clf.synthetic and "synthetic" in (tmp_path / "clf" / "README.md").read_text()
    scored = clf.predict_features(cache.test_features)
    accuracy = 100.0 * float((scored.indices == cache.test_labels).float().mean())
    assert round(accuracy, 4) == record["test_acc"]
    with pytest.raises(ClassifierError, match="no image encoder.*synthetic"):
        clf.predict(world["test_paths"][:1])
    assert main(["predict", "--classifier", str(tmp_path / "clf"), "--out", str(tmp_path / "p.csv"), world["test_paths"][0]]) == 2
    (err,) = _messages(capsys.readouterr().err)
    assert "error: this classifier has no image encoder" in err
    with pytest.raises(ClassifierError, match=r"expected features of shape \(N, 16\)"):
        clf.predict_features(torch.zeros(2, 24))


def test_export_needs_a_finished_run_with_its_head(exported, tmp_path, capsys):
    run, _ = exported
    old = shutil.copytree(run, tmp_path / "old_run")
    (old / HEAD_SPEC_FILE).unlink()  # a run written before heads were saved
    assert main(["export", str(old), "--out", str(tmp_path / "clf")]) == 2
    assert "re-run it" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "no_run"), "--out", str(tmp_path / "clf")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["export", str(run), "--out", str(tmp_path / "busy")]) == 2
    assert "not a classifier folder" in capsys.readouterr().err


def test_predict_without_out_writes_to_stdout(exported, world, tmp_path, capsys):
    """No --out: the predictions on stdout (CSV, or --format json), what was done on stderr."""
    _, folder = exported
    images = str(world["root"] / "images" / "test")
    common = ["predict", "--classifier", str(folder), "--device", "cpu", "--quiet", "--top-k", "2"]
    assert main([*common, "--out", str(tmp_path / "p.csv"), images]) == 0
    capsys.readouterr()
    assert main([*common, images]) == 0
    out, err = capsys.readouterr()
    assert out == (tmp_path / "p.csv").read_text()  # the same bytes as the file
    assert f"classified {len(world['test_paths'])} images" in err
    assert main([*common, "--format", "json", images]) == 0
    written = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in written["predictions"]] == world["test_paths"]
    assert main([*common, "--format", "json", "--out", str(tmp_path / "p.csv"), images]) == 2
    assert "--out" in capsys.readouterr().err


def test_a_run_on_an_image_folder_records_the_folders_name(exported):
    run, _ = exported
    assert load_record(run)["dataset"] == "images"  # the folder's name (the fixture's DIR is .../images)
