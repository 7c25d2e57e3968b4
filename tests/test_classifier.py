"""Export and predict (hgadapter/classifier.py, hgadapter/predict.py) end to end on a tiny CLIP:
extract an image folder, run every registered method, export the run, classify the test images
again from their files, and get the predictions the run scored."""

from __future__ import annotations

import csv
import json
import re
import shutil

import clip_fixtures as cf
import pytest
import torch
from test_classifier_format import _undeclared
from test_methods import quick

from hgadapter import Classifier
from hgadapter.classifier import CONFIG_NAME, FORMAT, WEIGHTS_NAME, ClassifierError, ClassifierWarning, export_run
from hgadapter.classifier_format import CONFIG_FIELDS
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
    # every key a CLIP export writes has its entry in the format's table (so it is checked when loaded)
    assert list(_undeclared(config, CONFIG_FIELDS, "")) == []
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


# -- issue 21: data loss, damaged folders, images ------------------------------------------------


def _one_error(capsys) -> str:
    (err,) = _messages(capsys.readouterr().err)
    assert err.startswith("hgadapter ") and ": error: " in err, err
    return err


def _predict(folder, out, *inputs, extra=()) -> int:
    return main(["predict", "--classifier", str(folder), "--out", str(out), "--device", "cpu", "--quiet", *extra, *map(str, inputs)])


def test_export_replaces_only_a_classifier_folder(exported, world, tmp_path, capsys):
    """Item 1: exporting onto a copy of a CLIP checkpoint left it overwritten."""
    run, _ = exported
    clip = shutil.copytree(world["model"], tmp_path / "clip_copy")
    before = {p.name: p.read_bytes() for p in clip.iterdir()}
    assert main(["export", str(run), "--out", str(clip)]) == 2
    assert "is not a classifier folder" in _one_error(capsys)
    assert {p.name: p.read_bytes() for p in clip.iterdir()} == before
    # an earlier classifier is replaced, as a whole
    target = tmp_path / "clf"
    export_run(run, target)
    (target / "notes.txt").write_text("from the old export")
    assert main(["export", str(run), "--out", str(target)]) == 0
    assert sorted(p.name for p in target.iterdir()) == ["README.md", CONFIG_NAME, WEIGHTS_NAME]


def test_a_killed_re_export_leaves_the_old_classifier_and_the_retry_succeeds(exported, world, tmp_path):
    """Item 2: a re-export killed midway left new weights, the old card and no config.json."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    run, _ = exported
    other = tmp_path / "other_run"
    _run(world, "zero_shot", other)
    target = tmp_path / "clf"
    export_run(other, target)
    old = {p.name: p.read_bytes() for p in target.iterdir()}
    # Killed (os._exit: no cleanup, as kill -9) after the weights and config.json of the new folder are written.
    script = (
        "import os, hgadapter.classifier as c\n"
        "def die(path, text): os._exit(9)\n"
        "c.atomic_write_text = die\n"
        f"c.export_run({str(run)!r}, {str(target)!r})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    assert subprocess.run([sys.executable, "-c", script], env=env).returncode == 9
    assert {p.name: p.read_bytes() for p in target.iterdir()} == old  # the old classifier, whole
    assert any(p.name.startswith(".clf.staging-") for p in tmp_path.iterdir())  # what the kill left
    Classifier.from_pretrained(target)
    export_run(run, target)  # the retry is not refused, and cleans up
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".clf.")]
    assert json.loads((target / CONFIG_NAME).read_text())["run"]["method"] == "hegraphadapter"


def _damaged(folder, tmp_path, *, config=None, tensors=None):
    from safetensors.torch import load_file, save_file

    copy = shutil.copytree(folder, tmp_path / "damaged")
    if config is not None:
        data = json.loads((copy / CONFIG_NAME).read_text())
        text = config(data)
        (copy / CONFIG_NAME).write_text(text if isinstance(text, str) else json.dumps(data))
    if tensors is not None:
        state = load_file(copy / WEIGHTS_NAME)
        tensors(state)
        save_file(state, copy / WEIGHTS_NAME)
    return copy


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ({"tensors": lambda s: s.update(text=s["text"].T.contiguous())}, r"tensor 'text' is float32 \(24, 3\)"),
        ({"tensors": lambda s: s.update(values=torch.full_like(s["values"], 99))}, r"class labels outside \[0, 3\) \(min 99"),
        ({"tensors": lambda s: s.update(values=torch.full_like(s["values"], -1))}, r"class labels outside \[0, 3\) \(min -1"),
        ({"config": lambda c: "[]"}, "must be a JSON object, got a list"),
        ({"config": lambda c: ""}, "not valid JSON"),
        ({"config": lambda c: c.update(dim="abc")}, "dim must be an integer in"),
        ({"config": lambda c: json.dumps(c).replace('"dim": 24', '"dim": ' + "7" * 5000)}, "not valid JSON"),
        ({"config": lambda c: c["encoder"].__delitem__("id")}, "encoder lacks 'id'"),
    ],
    ids=["text-transposed", "labels-99", "labels-minus-1", "config-a-list", "config-empty", "dim-abc", "dim-5000-digits", "no-encoder-id"],
)
def test_a_damaged_classifier_folder_is_a_one_line_error(exported, world, tmp_path, capsys, damage, message):
    """Item 3: these gave tracebacks at load or through predict."""
    folder = _damaged(exported[1], tmp_path, **damage)
    assert _predict(folder, tmp_path / "p.csv", world["test_paths"][0]) == 2
    err = _one_error(capsys)
    assert "hgadapter predict: error: " in err and re.search(message, err), err
    with pytest.raises(ClassifierError):
        Classifier.from_pretrained(folder)


def test_a_truncated_or_pickled_weights_file_is_a_one_line_error(exported, world, tmp_path, capsys):
    folder = shutil.copytree(exported[1], tmp_path / "clf")
    data = (folder / WEIGHTS_NAME).read_bytes()
    for content in (data[: len(data) // 2], b""):
        (folder / WEIGHTS_NAME).write_bytes(content)
        assert _predict(folder, tmp_path / "p.csv", world["test_paths"][0]) == 2
        assert "not a readable safetensors file" in _one_error(capsys)
    torch.save({"text": torch.zeros(3, 24)}, folder / WEIGHTS_NAME)  # a pickle under the safetensors name
    assert _predict(folder, tmp_path / "p.csv", world["test_paths"][0]) == 2
    assert "not a readable safetensors file" in _one_error(capsys)


def test_export_reads_the_runs_head_files_as_user_input(exported, tmp_path, capsys):
    """Item 3: head.json a list gave a traceback in export."""
    run, _ = exported
    bad = shutil.copytree(run, tmp_path / "run")
    (bad / HEAD_SPEC_FILE).write_text("[]")
    assert main(["export", str(bad), "--out", str(tmp_path / "clf")]) == 2
    assert "head.json: must be a JSON object" in _one_error(capsys)
    spec = json.loads((run / HEAD_SPEC_FILE).read_text())
    spec["spec"]["alpha"] = "abc"
    (bad / HEAD_SPEC_FILE).write_text(json.dumps(spec))
    assert main(["export", str(bad), "--out", str(tmp_path / "clf")]) == 2
    assert "head.alpha must be a finite number" in _one_error(capsys)
    assert not (tmp_path / "clf").exists()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ({"config": lambda c: json.dumps(c).replace('"alpha": ', '"alpha": 1e999, "was": ', 1)}, "head.alpha must be a finite number.*got inf"),
        ({"config": lambda c: json.dumps(c).replace('"beta": ', '"beta": -1e999, "was": ', 1)}, "head.beta must be a finite number.*got -inf"),
        ({"config": lambda c: json.dumps(c).replace('"logit_scale": ', '"logit_scale": 1e999, "was": ', 1)}, "logit_scale must be a finite number"),
        ({"config": lambda c: c["encoder"]["processor"]["settings"].update(image_std=[0.0, 0.3, 0.3])}, r"encoder.processor.settings.image_std\[0\] must be a finite number"),
        ({"tensors": lambda s: s["text"].view(-1).__setitem__(0, float("nan"))}, "tensor 'text' has 1 non-finite value"),
        ({"tensors": lambda s: s["keys"].view(-1).__setitem__(5, float("inf"))}, "tensor 'keys' has 1 non-finite value"),
    ],
    ids=["alpha-inf", "beta-minus-inf", "logit-scale-inf", "std-0", "text-nan", "keys-inf"],
)
def test_non_finite_values_are_refused_not_predicted_as_nan(exported, world, tmp_path, capsys, damage, message):
    """Item 4: these labelled every image the same class with score nan and exited 0."""
    folder = _damaged(exported[1], tmp_path, **damage)
    out = tmp_path / "p.csv"
    assert _predict(folder, out, *world["test_paths"]) == 2
    assert re.search(message, _one_error(capsys)) and not out.exists()


@pytest.mark.parametrize("name", [CONFIG_NAME, WEIGHTS_NAME])
def test_a_fifo_in_a_classifier_folder_does_not_block(exported, world, tmp_path, capsys, name):
    """Item 5: a FIFO named model.safetensors or config.json blocked forever (SIGINT did not
    help: safetensors' Rust code blocks holding the GIL), so this runs in a subprocess."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    folder = shutil.copytree(exported[1], tmp_path / "clf")
    (folder / name).unlink()
    os.mkfifo(folder / name)
    command = [sys.executable, "-m", "hgadapter", "predict", "--classifier", str(folder), "--out", str(tmp_path / "p.csv"), world["test_paths"][0]]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"blocked on the FIFO {name}")
    assert done.returncode == 2 and "not a regular file" in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_preprocessing_sizes_are_bounded(exported, world, tmp_path, capsys):
    """Item 5: `resize: 1e6` ran out of memory."""
    folder = _damaged(exported[1], tmp_path, config=lambda c: c["encoder"]["processor"]["settings"]["size"].update(shortest_edge=1e6))
    assert _predict(folder, tmp_path / "p.csv", world["test_paths"][0]) == 2
    assert "encoder.processor.settings.size.shortest_edge must be an integer in [1, 4096] or null, got 1000000.0" in _one_error(capsys)


def _decompression_bomb(path):
    """A valid PNG header that declares 30000 x 30000 pixels (PIL refuses it at open)."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_skipped_like_any_unreadable_image(exported, world, tmp_path, capsys):
    """Item 6: a PNG declaring 30000 x 30000 aborted the whole predict."""
    bomb = _decompression_bomb(tmp_path / "bomb.png")
    good = world["test_paths"][:2]
    out = tmp_path / "p.json"
    assert _predict(exported[1], out, *good, bomb) == 0
    (warning,) = _messages(capsys.readouterr().err)
    assert str(bomb) in warning and "DecompressionBombError" in warning and "skipped" in warning
    written = json.loads(out.read_text())
    assert [r["path"] for r in written["predictions"]] == good and [s["path"] for s in written["skipped"]] == [str(bomb)]
    out.unlink()
    assert _predict(exported[1], out, *good, bomb, extra=["--strict"]) == 2
    assert "DecompressionBombError" in _one_error(capsys) and not out.exists()


def test_a_file_name_that_is_not_utf8_is_written_losslessly(exported, world, tmp_path, capsys):
    """Item 6: a name that is not valid UTF-8 made the CSV writer raise (nothing written)."""
    import base64
    import csv as csv_module
    import os

    folder = tmp_path / "images"
    folder.mkdir()
    raw_name = os.path.join(os.fsencode(folder), b"caf\xe9-\xff.png")  # Latin-1 bytes, not UTF-8
    shutil.copyfile(world["test_paths"][0], raw_name)
    shutil.copyfile(world["test_paths"][1], folder / "plain.png")
    for out in (tmp_path / "p.csv", tmp_path / "p.json"):
        assert _predict(exported[1], out, folder) == 0
        text = out.read_bytes().decode("utf-8")  # valid UTF-8 throughout
        assert "\\udc" not in text and "\udcff" not in text
        if out.suffix == ".csv":
            rows = list(csv_module.DictReader(text.splitlines()))
            assert list(rows[0]) == ["path", "label", "score", "path_bytes"]
        else:
            rows = json.loads(text)["predictions"]
        (odd,) = [r for r in rows if r.get("path_bytes")]
        assert base64.b64decode(odd["path_bytes"]) == raw_name  # exactly the name on disk
        assert odd["path"].endswith("caf\ufffd-\ufffd.png")
        (plain,) = [r for r in rows if r["path"].endswith("plain.png")]
        assert not plain.get("path_bytes")
    capsys.readouterr()


def test_predict_with_nothing_classified_fails(exported, tmp_path, capsys):
    """Item 7: all inputs unreadable exited 0 with a header-only CSV."""
    bad = [cf.write_bad_image(tmp_path / "a.png"), cf.write_bad_image(tmp_path / "b.png")]
    out = tmp_path / "p.csv"
    assert _predict(exported[1], out, *bad) == 2
    err = _messages(capsys.readouterr().err)[-1]
    assert err.startswith("hgadapter predict: error: none of the 2 image(s) could be classified") and not out.exists()


def test_predict_refuses_an_out_that_is_one_of_its_inputs(exported, world, tmp_path, capsys):
    """Item 7: `--out` among the inputs (e.g. from a shell glob) was read as an image, then overwritten."""
    out = tmp_path / "p.json"
    out.write_text("{}")
    assert _predict(exported[1], out, world["test_paths"][0], out) == 2
    assert "is one of the inputs" in _one_error(capsys) and out.read_text() == "{}"
