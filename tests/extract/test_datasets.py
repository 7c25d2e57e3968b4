"""Dataset layouts, class-name checks, few-shot sampling and augmentation."""

from __future__ import annotations

import json

import clip_fixtures as cf
import clip_preprocess_reference as ref
import numpy as np
import pytest

from hgadapter.extract import augment as aug
from hgadapter.extract.datasets import (
    DataError,
    Sample,
    build_dataset,
    choose_validation,
    clean_classname,
    list_datasets,
    sample_per_class,
    seeded_split,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return cf.build_imagefolder(tmp_path_factory.mktemp("imgs"), per_class=10)


def test_imagefolder_seeded_split_is_disjoint_recorded_and_reproducible(folder):
    a = build_dataset("imagefolder", folder, split_seed=1)
    b = build_dataset("imagefolder", folder, split_seed=1)
    c = build_dataset("imagefolder", folder, split_seed=2)
    assert a.classnames == ["blue stripes", "green circle", "red square"]  # sorted folders, cleaned
    keys = [s.key for s in a.train + a.val + a.test]
    assert len(keys) == len(set(keys)) == 30
    assert (len(a.train), len(a.val), len(a.test)) == (15, 6, 9)  # 5 / 2 / 3 per class
    assert a.train == b.train and a.meta["train_hash"] == b.meta["train_hash"]
    assert a.meta["train_hash"] != c.meta["train_hash"]
    assert a.meta["split_source"] == {"kind": "seeded", "seed": 1, "fractions": [0.5, 0.2, 0.3]}


def test_imagefolder_with_split_folders(tmp_path):
    for part, n in (("train", 4), ("val", 2), ("test", 2)):
        cf.build_imagefolder(tmp_path / part, classes=("a", "b"), per_class=n)
    ds = build_dataset("imagefolder", tmp_path)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (8, 4, 4)
    cf.build_imagefolder(tmp_path / "test", classes=("c",), per_class=1)
    with pytest.raises(DataError, match=r"classes in .*test but not in .*train: 'c'"):
        build_dataset("imagefolder", tmp_path)


def test_coop_json_layout(tmp_path):
    root = cf.build_coop_dtd(tmp_path)
    ds = build_dataset("coop:dtd", root)
    assert ds.name == "dtd" and ds.classnames == ["red square", "green circle", "blue stripes"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (18, 9, 9)
    assert ds.load_image(ds.train[0]).mode == "RGB"
    assert ds.meta["split_source"].endswith("split_zhou_DescribableTextures.json")


def test_coop_class_name_mismatches_are_named(tmp_path):
    root = cf.build_coop_dtd(tmp_path)
    split_file = root / "dtd" / "split_zhou_DescribableTextures.json"
    split = json.loads(split_file.read_text())
    split["test"][0][2] = "purple blob"
    split_file.write_text(json.dumps(split))
    with pytest.raises(DataError, match=r"label 0: 'red square' vs 'purple blob'"):
        build_dataset("coop:dtd", root)
    ok = cf.build_coop_dtd(tmp_path / "ok")
    names = tmp_path / "names.txt"
    names.write_text("red square\ngreen circle\nyellow star\n")
    with pytest.raises(DataError, match=r"not in the class list: \['blue stripes'\].*not in .*: \['yellow star'\]"):
        build_dataset("coop:dtd", ok, classnames_file=names)


def test_fgvc_variant_files(tmp_path):
    folder = tmp_path / "fgvc_aircraft"
    (folder / "images").mkdir(parents=True)
    (folder / "variants.txt").write_text("707-320\nA300B4\n")
    for part, rows in (("train", ["1 707-320", "2 A300B4"]), ("val", ["3 A300B4"]), ("test", ["4 707-320"])):
        (folder / f"images_variant_{part}.txt").write_text("\n".join(rows) + "\n")
    ds = build_dataset("coop:fgvc_aircraft", tmp_path)
    assert ds.classnames == ["707-320", "A300B4"]
    assert [s.label for s in ds.train] == [0, 1] and ds.train[1].key.endswith("images/2.jpg")
    (folder / "images_variant_test.txt").write_text("5 Cessna 172\n")
    with pytest.raises(DataError, match=r"not in variants.txt: 'Cessna 172'"):
        build_dataset("coop:fgvc_aircraft", tmp_path)


def _write_imagenet_classnames(path, n=5):
    path.write_text("".join(f"n{i:08d} class_{i}\n" for i in range(n)))
    return [f"n{i:08d}" for i in range(n)]


def test_imagenet_a_labels_are_imagenet_indices(tmp_path):
    folder = tmp_path / "imagenet-adversarial"
    folder.mkdir()
    wnids = _write_imagenet_classnames(folder / "classnames.txt")
    cf.build_imagefolder(folder / "imagenet-a", classes=(wnids[1], wnids[3]), per_class=2)
    ds = build_dataset("coop:imagenet_a", tmp_path)
    assert len(ds.classnames) == 5 and ds.classnames[3] == "class 3"
    assert sorted({s.label for s in ds.test}) == [1, 3] and ds.meta["class_subset"] == [1, 3]
    assert ds.train == [] and ds.val == []
    # ImageNet-V2 names its folders by index; the class list comes from imagenet/ when missing.
    (tmp_path / "imagenet").mkdir()
    _write_imagenet_classnames(tmp_path / "imagenet" / "classnames.txt")
    cf.build_imagefolder(tmp_path / "imagenetv2" / "imagenetv2-matched-frequency-format-val", classes=("0", "4"), per_class=1)
    v2 = build_dataset("coop:imagenetv2", tmp_path)
    assert [s.label for s in v2.test] == [0, 4]


def test_hf_dataset_saved_to_disk(tmp_path):
    import datasets

    rng = np.random.default_rng(0)
    labels = [i % 3 for i in range(12)]
    feats = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=list(cf.CLASSNAMES))})
    table = datasets.Dataset.from_dict({"img": [cf.make_image(rng, y) for y in labels], "y": labels}, features=feats)
    datasets.DatasetDict({"train": table, "test": table.select(range(6))}).save_to_disk(str(tmp_path / "hf"))
    ds = build_dataset(f"hf:{tmp_path / 'hf'}", image_column="img", label_column="y")
    assert ds.classnames == ["red square", "green circle", "blue stripes"]
    assert len(ds.test) == 6 and len(ds.train) + len(ds.val) == 12 and ds.val  # val carved from train
    assert ds.load_image(ds.test[2]).size == (40, 48)
    with pytest.raises(DataError, match=r"no column 'image'"):
        build_dataset(f"hf:{tmp_path / 'hf'}", label_column="y")


def test_unknown_specs():
    with pytest.raises(DataError, match=r"unknown dataset spec 'foo'; available: \['coop:oxford_pets'"):
        build_dataset("foo")
    with pytest.raises(DataError, match=r"unknown CoOp dataset 'nope'"):
        build_dataset("coop:nope", "/tmp")
    assert "coop:imagenet_r" in list_datasets()


def test_coop_renames():
    assert clean_classname("SeaLake", "eurosat") == "Sea or Lake"
    assert clean_classname("Faces", "caltech101") == "face"
    assert clean_classname("apple_pie", "food101") == "apple pie"


def test_few_shot_sampling_protocol():
    samples = [Sample(f"{i}", i % 4) for i in range(40)] + [Sample("rare", 3)]
    samples = [s if s.label != 3 else Sample(s.key, 3) for s in samples][:30] + [Sample("lonely", 3)]
    a = sample_per_class(samples, 4, 4, seed=1)
    assert a == sample_per_class(samples, 4, 4, seed=1)
    assert a != sample_per_class(samples, 4, 4, seed=2)
    labels = [samples[i].label for i in a]
    assert labels == sorted(labels) and [labels.count(c) for c in range(4)] == [4, 4, 4, 4]
    for c in range(3):
        assert len({i for i in a if samples[i].label == c}) == 4  # without replacement
    assert sample_per_class([Sample("x", 0), Sample("y", 0)], 1, 5, seed=1) == [0, 1]  # all when short
    small = sample_per_class([Sample("x", 0), Sample("y", 0)], 1, 5, seed=1, repeat=True)
    assert len(small) == 5 and set(small) == {0, 1}
    with pytest.raises(DataError, match="no image"):
        sample_per_class([Sample("x", 0)], 2, 1, seed=1)


def test_seeded_split_small_classes():
    samples = [Sample(str(i), 0) for i in range(3)] + [Sample("solo", 1)]
    train, val, test = seeded_split(samples, 2, seed=1)
    assert (len(train), len(val), len(test)) == (2, 1, 1)
    assert Sample("solo", 1) in train


def test_augmentation_is_seeded_and_in_range():
    from hgadapter.extract.images import ImageProcessing

    pre = ImageProcessing.from_dict({"resize": 32, "crop": [32, 32], "mean": [0.5] * 3, "std": [0.25] * 3})
    image = cf.make_image(np.random.default_rng(0), 1, (60, 40))
    a = aug.make_views(image, pre, aug.Augment(), 4, aug.view_rng(0, 16, 1, 7))["pixel_values"]
    b = aug.make_views(image, pre, aug.Augment(), 4, aug.view_rng(0, 16, 1, 7))["pixel_values"]
    c = aug.make_views(image, pre, aug.Augment(), 4, aug.view_rng(0, 16, 2, 7))["pixel_values"]
    assert a.shape == (4, 3, 32, 32) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[0], a[1])  # views differ from each other
    # The view is resized straight to the processor's size, which then only normalises it: the
    # same numbers as CLIP's own normalisation of that view.
    legacy = ref.Preprocess(resize=32, crop=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    np.testing.assert_allclose(a[0], ref.augmented_view(aug.Augment(), image, legacy, aug.view_rng(0, 16, 1, 7)), atol=1e-5)
    plain = aug.make_views(image, pre, None, 1, None)["pixel_values"]
    np.testing.assert_array_equal(plain[0], pre(image)["pixel_values"])
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, right, bottom = aug.Augment().crop_box(60, 40, rng)
        area = (right - left) * (bottom - top) / (60 * 40)
        assert 0 <= left < right <= 60 and 0 <= top < bottom <= 40
        assert 0.45 <= area <= 1.0  # scale (0.5, 1) up to rounding


def test_imagenet_validation_is_held_out_of_train_for_every_shots_and_seed(tmp_path):
    """ImageNet's labelled val images are its test split: by default the validation images are
    train images that no few-shot training set of any (shots, seed) draws (issue 12 part 1)."""
    root = cf.build_coop_imagenet(tmp_path, per_split=(12, 3))
    ds = build_dataset("coop:imagenet", root)
    assert ds.val == [] and "val_source" not in ds.meta  # chosen by choose_validation, not here
    val = choose_validation(ds, "auto", per_class=4, seed=1)
    assert val.val_origin == "train" and val.meta["val_source"].startswith("train")
    assert [s.label for s in val.val] == [0] * 4 + [1] * 4 + [2] * 4
    assert val.val == [val.train[i] for i in val.held_out]
    val_keys = {s.key for s in val.val}
    assert not val_keys & {s.key for s in val.test}  # no validation image is a test image
    for shots in (1, 2, 4, 8, 16):
        for seed in range(1, 6):
            drawn = sample_per_class(val.train, 3, shots, seed, repeat=True, exclude=set(val.held_out))
            assert len(drawn) == 3 * shots and not val_keys & {val.train[i].key for i in drawn}, (shots, seed)
            if shots <= 8:  # 8 allowed images a class: drawn without repeats
                assert len(set(drawn)) == len(drawn)
    assert val.meta["duplicates"] == [] and val.meta["val_hash"] != ds.meta["val_hash"]
    assert choose_validation(ds, "auto", per_class=4, seed=1).held_out == val.held_out  # seeded
    assert choose_validation(ds, "auto", per_class=4, seed=2).held_out != val.held_out
    coop = choose_validation(ds, "test", per_class=4, seed=1)
    assert coop.val == coop.test and coop.meta["val_source"] == "test (CoOp's ImageNet protocol)"


def test_swapping_held_out_images_keeps_every_other_draw():
    samples = [Sample(str(i), i % 3) for i in range(60)]
    plain = sample_per_class(samples, 3, 8, seed=1)
    held = {plain[0], plain[9]}
    swapped = sample_per_class(samples, 3, 8, seed=1, exclude=held)
    assert not held & set(swapped) and len(set(swapped)) == 24
    assert [a == b for a, b in zip(plain, swapped)].count(False) == 2  # only the two held-out ones changed


def test_validation_source_errors_and_datasets_with_their_own_split(tmp_path):
    root = cf.build_coop_dtd(tmp_path)
    ds = build_dataset("coop:dtd", root)
    own = choose_validation(ds, "auto", per_class=4, seed=1)
    assert own.val == ds.val and own.val_origin == "val" and own.meta["val_source"].startswith("val")
    with pytest.raises(DataError, match=r"--val-source test: coop:dtd has its own validation split"):
        choose_validation(ds, "test", per_class=4, seed=1)
    forced = choose_validation(ds, "train", per_class=2, seed=1)
    assert forced.val_origin == "train" and len(forced.val) == 6
    with pytest.raises(DataError, match="unknown validation source 'x'"):
        choose_validation(ds, "x", per_class=4, seed=1)
    # the same file listed in train and test is recorded
    split = json.loads((root / "dtd" / "split_zhou_DescribableTextures.json").read_text())
    split["test"][0] = split["train"][1]
    (root / "dtd" / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))
    dup = choose_validation(build_dataset("coop:dtd", root), "auto", per_class=4, seed=1)
    assert dup.meta["duplicates"] == [["train", 1, "test", 0]]


def test_a_cache_names_its_dataset_by_the_folder(tmp_path):
    """Records, titles and tables name an image folder's dataset by the folder, not null/"imagefolder"."""
    from hgadapter.data.cache import dataset_name

    photos = cf.build_imagefolder(tmp_path / "my_photos", classes=("a", "b"), per_class=5)
    ds = build_dataset("imagefolder", photos)
    assert ds.meta["name"] == "my_photos" and dataset_name({"dataset": ds.meta}) == "my_photos"
    assert build_dataset("coop:dtd", cf.build_coop_dtd(tmp_path / "coop")).meta["name"] == "dtd"
    # caches extracted before the name was recorded: named by their spec
    for meta, name in (
        ({"spec": "imagefolder", "root": "/data/my_photos/"}, "my_photos"),
        ({"spec": "coop:oxford_pets", "root": "/data/coop"}, "oxford_pets"),
        ({"spec": "hf:org/beans"}, "beans"),
        ({"name": "synthetic"}, "synthetic"),
        ({}, None),
    ):
        assert dataset_name({"dataset": meta}) == name, meta
    assert dataset_name({"dataset": "plain"}) == "plain" and dataset_name({}) is None


def test_asking_for_more_shots_than_a_class_has_is_said_once(tmp_path):
    from hgadapter.extract.run import short_classes_note

    for c, n in (("few", 3), ("many", 8)):
        cf.build_imagefolder(tmp_path / "train", classes=(c,), per_class=n)
    for part in ("val", "test"):
        cf.build_imagefolder(tmp_path / part, classes=("few", "many"), per_class=1)
    ds = build_dataset("imagefolder", tmp_path)
    assert short_classes_note(ds, [1, 2, 3]) is None and short_classes_note(ds, []) is None
    note = short_classes_note(ds, [1, 4, 16])
    assert note.startswith("2 of 2 classes have fewer than 16 training images (fewest: 'few' with 3); for K=4, K=16 ")
    assert "repeat images to fill K" in note
