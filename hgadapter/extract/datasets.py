"""Datasets and few-shot sampling for feature extraction (paper Sec. 4.1: the 11 CoOp
datasets and ImageNet's four shifted variants, K in {1, 2, 4, 8, 16} shots, seeds 1-3).

Dataset specs (``--dataset``):

- ``coop:<name>`` with ``--data-dir ROOT``: the folder layout CoOp published and every paper in
  this field uses: ``ROOT/<folder>/<image dir>/`` plus ``split_zhou_<Name>.json`` holding
  ``{"train"|"val"|"test": [[relative path, label, class name], ...]}``; FGVC-Aircraft's official
  ``images_variant_*.txt`` files; ImageNet's ``images/{train,val}/<wnid>/`` with ``classnames.txt``;
  ImageNet-V2 / -Sketch / -A / -R (see :data:`COOP_DATASETS`). -A and -R cover 200 of ImageNet's
  classes: their labels are ImageNet indices and the class list is ImageNet's 1000, so a
  classifier trained on ImageNet applies directly; ``meta["class_subset"]`` lists the 200.
- ``imagefolder`` with ``--data-dir DIR``: ``DIR/<class>/*`` or ``DIR/{train,val,test}/<class>/*``;
  without split folders, validation and test are carved out per class by a seeded split
  (CoOp's 50 / 20 / 30 %), recorded in the metadata.
- ``hf:<hub id or saved directory>``: a Hugging Face ``datasets`` dataset with an image and a
  label column (``--image-column``, ``--label-column``).

Few-shot sampling follows CoOp's protocol: K images per class from the train split, drawn with
the run's seed (1, 2, 3); a class with fewer than K images contributes all of them (CoOp's
default; ``repeat=True`` draws the missing ones with replacement instead). The few-shot
validation set holds min(K, 4) images per class; because a cache keeps one validation set for
all K, it is drawn once with ``val_shots`` (default 4) per class and ordered so that the first
min(K, 4) images of each class are CoOp's subset for smaller K.

Where the validation images come from (:func:`choose_validation`, ``--val-source``): a dataset's
own validation split when it has one; otherwise (ImageNet: its labelled val images are the test
split) ``val_shots`` train images per class are held out, and no few-shot training set of any
(shots, seed) ever draws them. ``--val-source test`` keeps CoOp's ImageNet choice instead
(validation drawn from the test images), recorded in ``meta["val_source"]``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hgadapter.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class DataError(UserError):
    """A dataset spec, folder, split file or class list is missing or inconsistent."""


@dataclass(frozen=True)
class Sample:
    """One image: ``key`` is a file path (or ``"<split>/<row>"`` for HF datasets) and its label."""

    key: str
    label: int


@dataclass
class DatasetSplits:
    """Train / val / test image lists of one dataset, with everything that determines them.

    Attributes:
        name: dataset name used for prompt templates (``dtd``, ``imagenet``, ``imagefolder``).
        classnames: cleaned class names in label order.
        train / val / test: the full source splits (``val`` may be empty for test-only sets).
        meta: spec, root, split source and hashes of the split lists; goes into the sidecar.
        loader: opens a sample as a PIL image (default: open the file).
        val_origin: the source list the ``val`` images belong to: ``"val"`` (the dataset's own),
            ``"train"`` (held out of the train split) or ``"test"`` (CoOp's ImageNet protocol).
        held_out: when ``val_origin == "train"``, the train position of each ``val`` image; few-shot
            sampling never draws these.
    """

    name: str
    classnames: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    meta: dict[str, Any] = field(default_factory=dict)
    loader: Callable[[Sample], Image.Image] | None = None
    val_origin: str = "val"
    held_out: list[int] = field(default_factory=list)

    def val_source_positions(self, indices: list[int]) -> list[int]:
        """Positions in the ``val_origin`` list of the ``val`` images at ``indices``."""
        return [self.held_out[i] for i in indices] if self.val_origin == "train" else list(indices)

    def load_image(self, sample: Sample) -> Image.Image:
        """The sample's image, RGB. An unreadable file raises ``OSError`` or ``ValueError`` (PIL's,
        and ours for a file that is not a regular file, which could block forever, e.g. a FIFO)."""
        if self.loader is not None:
            return self.loader(sample)
        with open(sample.key, "rb", opener=_nonblocking_opener) as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise OSError(errno.EINVAL, "not a regular file (a FIFO, device or folder)", sample.key)
            with Image.open(handle) as img:
                img.load()  # decode now so truncated files fail here, inside the error handling
                return img.convert("RGB")


def _nonblocking_opener(path: str, flags: int) -> int:
    # O_NONBLOCK: opening a FIFO returns at once (then refused above) instead of waiting for a writer
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


# --- CoOp layout -----------------------------------------------------------------------------

# name -> (folder under ROOT, image dir under it, split file)
COOP_DATASETS: dict[str, tuple[str, str, str]] = {
    "oxford_pets": ("oxford_pets", "images", "split_zhou_OxfordPets.json"),
    "oxford_flowers": ("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    "fgvc_aircraft": ("fgvc_aircraft", "images", "images_variant_{split}.txt"),
    "dtd": ("dtd", "images", "split_zhou_DescribableTextures.json"),
    "eurosat": ("eurosat", "2750", "split_zhou_EuroSAT.json"),
    "stanford_cars": ("stanford_cars", "", "split_zhou_StanfordCars.json"),
    "food101": ("food-101", "images", "split_zhou_Food101.json"),
    "sun397": ("sun397", "SUN397", "split_zhou_SUN397.json"),
    "caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
    "ucf101": ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
    "imagenet": ("imagenet", "images", "classnames.txt"),
    "imagenetv2": ("imagenetv2", "imagenetv2-matched-frequency-format-val", "classnames.txt"),
    "imagenet_sketch": ("imagenet-sketch", "images", "classnames.txt"),
    "imagenet_a": ("imagenet-adversarial", "imagenet-a", "classnames.txt"),
    "imagenet_r": ("imagenet-rendition", "imagenet-r", "classnames.txt"),
}

# CoOp's renamings of raw folder names (EuroSAT's NEW_CNAMES, Caltech101's NEW_CNAMES).
_RENAMES: dict[str, dict[str, str]] = {
    "eurosat": {
        "AnnualCrop": "Annual Crop Land",
        "Forest": "Forest",
        "HerbaceousVegetation": "Herbaceous Vegetation Land",
        "Highway": "Highway or Road",
        "Industrial": "Industrial Buildings",
        "Pasture": "Pasture Land",
        "PermanentCrop": "Permanent Crop Land",
        "Residential": "Residential Buildings",
        "River": "River",
        "SeaLake": "Sea or Lake",
    },
    "caltech101": {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"},
}


def list_datasets() -> list[str]:
    """Dataset specs accepted by :func:`build_dataset` (``hf:<id>`` takes any id)."""
    return [f"coop:{n}" for n in COOP_DATASETS] + ["imagefolder", "hf:<id>"]


def clean_classname(name: str, dataset: str = "") -> str:
    """CoOp's clean-ups: the dataset's renamings, then underscores to spaces."""
    name = _RENAMES.get(dataset, {}).get(name, name)
    return " ".join(name.replace("_", " ").split())


def _hash_samples(samples: list[Sample], root: Path | None = None) -> str:
    digest = hashlib.sha256()
    for s in samples:
        key = s.key
        if root is not None:
            try:
                key = str(Path(s.key).relative_to(root))
            except ValueError:
                pass
        digest.update(f"{key}\t{s.label}\n".encode())
    return "sha256:" + digest.hexdigest()


def _split_meta(splits: DatasetSplits, root: Path | None) -> None:
    splits.meta["num_classes"] = len(splits.classnames)
    for part in ("train", "val", "test"):
        items = getattr(splits, part)
        splits.meta[f"{part}_size"] = len(items)
        splits.meta[f"{part}_hash"] = _hash_samples(items, root)


def _names_error(what: str, names: list[str]) -> DataError:
    shown = ", ".join(repr(n) for n in names[:20])
    more = f" and {len(names) - 20} more" if len(names) > 20 else ""
    return DataError(f"{what}: {shown}{more}")


def _check_classnames(given: list[str] | None, found: list[str], source: str) -> list[str]:
    """``found`` unless a user class list was given, which must then name the same classes."""
    if given is None:
        return found
    if given != found:
        only_given = [n for n in given if n not in found]
        only_found = [n for n in found if n not in given]
        if only_given or only_found:
            parts = []
            if only_found:
                parts.append(f"in {source} but not in the class list: {only_found[:20]}")
            if only_given:
                parts.append(f"in the class list but not in {source}: {only_given[:20]}")
            raise DataError("class-name mismatch; " + "; ".join(parts))
        raise DataError(f"class list order differs from the label order of {source}")
    return given


def _read_classnames_txt(path: Path) -> tuple[list[str], list[str]]:
    """ImageNet's ``classnames.txt``: ``<wnid> <class name>`` per line -> (wnids, names)."""
    if not path.is_file():
        raise DataError(f"class list {path} does not exist (CoOp's ImageNet layout needs it)")
    wnids, names = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        wnid, _, name = line.strip().partition(" ")
        wnids.append(wnid)
        names.append(name.strip())
    return wnids, names


def _read_split_json(path: Path, image_dir: Path, dataset: str) -> tuple[list[str], dict[str, list[Sample]]]:
    if not path.is_file():
        raise DataError(f"split file {path} does not exist")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"split file {path} is not valid JSON: {err}") from None
    label_names: dict[int, str] = {}
    conflicts: list[str] = []
    out: dict[str, list[Sample]] = {}
    for part in ("train", "val", "test"):
        rows = raw.get(part, [])
        samples = []
        for row in rows:
            if not (isinstance(row, list) and len(row) == 3):
                raise DataError(f"{path}: '{part}' rows must be [relative_path, label, classname], got {row!r}")
            rel, label, cname = row
            name = clean_classname(str(cname), dataset)
            prev = label_names.setdefault(int(label), name)
            if prev != name:
                conflicts.append(f"label {label}: {prev!r} vs {name!r}")
            samples.append(Sample(str(image_dir / rel), int(label)))
        out[part] = samples
    if conflicts:
        raise _names_error(f"{path}: one label carries different class names", sorted(set(conflicts)))
    num = max(label_names) + 1 if label_names else 0
    missing = [str(i) for i in range(num) if i not in label_names]
    if missing:
        raise _names_error(f"{path}: labels without any image", missing)
    return [label_names[i] for i in range(num)], out


def _read_fgvc(folder: Path, image_dir: Path) -> tuple[list[str], dict[str, list[Sample]]]:
    variants_file = folder / "variants.txt"
    if not variants_file.is_file():
        raise DataError(f"{variants_file} does not exist (FGVC-Aircraft's official class list)")
    classnames = [ln.strip() for ln in variants_file.read_text().splitlines() if ln.strip()]
    index = {name: i for i, name in enumerate(classnames)}
    out: dict[str, list[Sample]] = {}
    unknown: set[str] = set()
    for part, fname in (("train", "train"), ("val", "val"), ("test", "test")):
        path = folder / f"images_variant_{fname}.txt"
        if not path.is_file():
            raise DataError(f"{path} does not exist")
        samples = []
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            image_id, _, variant = line.strip().partition(" ")
            if variant not in index:
                unknown.add(variant)
                continue
            samples.append(Sample(str(image_dir / f"{image_id}.jpg"), index[variant]))
        out[part] = samples
    if unknown:
        raise _names_error(f"class-name mismatch: variants in {folder}/images_variant_*.txt but not in variants.txt", sorted(unknown))
    return classnames, out


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _imagenet_folder(folder: Path, wnids: list[str], *, numeric: bool = False) -> tuple[list[Sample], list[int]]:
    """Images under ``folder/<wnid or index>/``, labelled by ImageNet index."""
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist")
    index = {w: i for i, w in enumerate(wnids)}
    samples: list[Sample] = []
    unknown, present = [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if numeric:
            label = int(sub.name) if sub.name.isdigit() and int(sub.name) < len(wnids) else None
        else:
            label = index.get(sub.name)
        if label is None:
            unknown.append(sub.name)
            continue
        present.append(label)
        samples.extend(Sample(str(p), label) for p in _list_images(sub))
    if unknown:
        raise _names_error(f"class-name mismatch: folders in {folder} not in classnames.txt", unknown)
    return samples, sorted(present)


def _build_coop(name: str, root: Path, classnames_file: Path | None) -> DatasetSplits:
    if name not in COOP_DATASETS:
        raise DataError(f"unknown CoOp dataset {name!r}; available: {sorted(COOP_DATASETS)}")
    folder_name, image_sub, split_name = COOP_DATASETS[name]
    folder = root / folder_name
    if not folder.is_dir():
        raise DataError(f"dataset folder {folder} does not exist (expected CoOp's layout: ROOT/{folder_name}/)")
    image_dir = folder / image_sub if image_sub else folder
    meta: dict[str, Any] = {"spec": f"coop:{name}", "name": name, "root": str(root), "layout": "coop"}
    given = _read_user_classnames(classnames_file)
    if name.startswith("imagenet"):
        cls_file = folder / "classnames.txt"
        if not cls_file.is_file():  # CoOp copies it into every variant folder; fall back to ImageNet's
            cls_file = root / "imagenet" / "classnames.txt"
        wnids, names = _read_classnames_txt(cls_file)
        names = [clean_classname(n) for n in names]
        meta["split_source"] = str(cls_file)
        if name == "imagenet":
            train, _ = _imagenet_folder(image_dir / "train", wnids)
            test, _ = _imagenet_folder(image_dir / "val", wnids)
            # ImageNet's labelled val images are the test split and there is no other: the
            # validation set is chosen later (choose_validation), held out of train by default.
            val = []
        else:
            test, present = _imagenet_folder(image_dir, wnids, numeric=(name == "imagenetv2"))
            train, val = [], []
            if len(present) < len(wnids):
                meta["class_subset"] = present
        splits = DatasetSplits(name, _check_classnames(given, names, str(cls_file)), train, val, test, meta)
    elif name == "fgvc_aircraft":
        classnames, parts = _read_fgvc(folder, image_dir)
        meta["split_source"] = str(folder / "images_variant_{train,val,test}.txt")
        splits = DatasetSplits(
            name, _check_classnames(given, classnames, "variants.txt"), parts["train"], parts["val"], parts["test"], meta
        )
    else:
        split_path = folder / split_name
        classnames, parts = _read_split_json(split_path, image_dir, name)
        meta["split_source"] = str(split_path)
        splits = DatasetSplits(
            name, _check_classnames(given, classnames, str(split_path)), parts["train"], parts["val"], parts["test"], meta
        )
    _split_meta(splits, root)
    return splits


# --- image folders ---------------------------------------------------------------------------


def _read_user_classnames(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise DataError(f"class list {path} does not exist")
    return [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]


def seeded_split(
    samples: list[Sample], num_classes: int, *, seed: int, fractions: tuple[float, float] = (0.5, 0.2)
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Per-class seeded split into train / val / test (CoOp's ``read_and_split_data`` rule:
    the first ``round(n * p_train)`` shuffled images train, the next ``round(n * p_val)`` validate,
    the rest test; every split gets at least one image per class when n >= 3)."""
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    for c in range(num_classes):
        items = [s for s in samples if s.label == c]
        order = rng.permutation(len(items))
        n = len(items)
        n_train = max(1, round(n * fractions[0])) if n else 0
        n_val = max(1, round(n * fractions[1])) if n >= 3 else 0
        n_train = min(n_train, max(n - n_val - 1, 1)) if n >= 3 else n_train
        picked = [items[i] for i in order]
        train += picked[:n_train]
        val += picked[n_train : n_train + n_val]
        test += picked[n_train + n_val :]
    return train, val, test


def _build_imagefolder(root: Path, classnames_file: Path | None, split_seed: int) -> DatasetSplits:
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    # the folder's name is the dataset's in records, titles and tables ("imagefolder" names the layout)
    meta: dict[str, Any] = {"spec": "imagefolder", "name": root.resolve().name or str(root), "root": str(root), "layout": "imagefolder"}
    given = _read_user_classnames(classnames_file)
    split_dirs = [root / p for p in ("train", "val", "test")]
    if all(d.is_dir() for d in split_dirs):
        class_sets = {d.name: sorted(p.name for p in d.iterdir() if p.is_dir()) for d in split_dirs}
        folders = class_sets["train"]
        for part in ("val", "test"):
            extra = [c for c in class_sets[part] if c not in folders]
            if extra:
                raise _names_error(f"class-name mismatch: classes in {root / part} but not in {root / 'train'}", extra)
        index = {c: i for i, c in enumerate(folders)}
        parts = {
            d.name: [Sample(str(p), index[c]) for c in class_sets[d.name] for p in _list_images(d / c)]
            for d in split_dirs
        }
        meta["split_source"] = "folders train/ val/ test/"
        train, val, test = parts["train"], parts["val"], parts["test"]
    else:
        folders = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not folders:
            raise DataError(f"image folder {root} has no class subfolders")
        samples = [Sample(str(p), i) for i, c in enumerate(folders) for p in _list_images(root / c)]
        train, val, test = seeded_split(samples, len(folders), seed=split_seed)
        meta["split_source"] = {"kind": "seeded", "seed": split_seed, "fractions": [0.5, 0.2, 0.3]}
    names = [clean_classname(c) for c in folders]
    if given is not None:
        names = _check_classnames([clean_classname(c) for c in given], names, f"the class folders of {root}")
    splits = DatasetSplits("imagefolder", names, train, val, test, meta)
    _split_meta(splits, root)
    return splits


# --- Hugging Face datasets -------------------------------------------------------------------


def _build_hf(
    hub_id: str,
    *,
    image_column: str,
    label_column: str,
    splits_names: tuple[str, str, str],
    classnames_file: Path | None,
    split_seed: int,
) -> DatasetSplits:
    import datasets  # heavy; only imported for hf: specs

    local = Path(hub_id).expanduser()
    try:
        if local.is_dir() and ((local / "dataset_dict.json").is_file() or (local / "dataset_info.json").is_file()):
            dsd = datasets.load_from_disk(str(local))
        else:
            dsd = datasets.load_dataset(hub_id)
    except Exception as err:
        raise DataError(
            f"cannot load Hugging Face dataset {hub_id!r} ({type(err).__name__}: {err}); offline, "
            f"download it first where there is internet (`hf download {hub_id} --repo-type dataset`) "
            f"or pass a directory written by save_to_disk"
        ) from None
    if isinstance(dsd, datasets.Dataset):
        dsd = datasets.DatasetDict({splits_names[0]: dsd})
    train_name, val_name, test_name = splits_names
    if train_name not in dsd:
        raise DataError(f"dataset {hub_id!r} has no split {train_name!r}; available: {list(dsd)}")
    first = dsd[train_name]
    for col in (image_column, label_column):
        if col not in first.column_names:
            raise DataError(f"dataset {hub_id!r} has no column {col!r}; columns: {first.column_names}")
    feature = first.features[label_column]
    given = _read_user_classnames(classnames_file)
    if hasattr(feature, "names"):
        names = _check_classnames(
            None if given is None else [clean_classname(g) for g in given],
            [clean_classname(n) for n in feature.names],
            f"{hub_id}'s label feature",
        )
    elif given is not None:
        names = [clean_classname(g) for g in given]
    else:
        raise DataError(f"column {label_column!r} of {hub_id!r} has no class names; pass --classnames FILE")

    def rows(split: str) -> list[Sample]:
        labels = dsd[split][label_column]
        return [Sample(f"{split}/{i}", int(y)) for i, y in enumerate(labels)]

    meta: dict[str, Any] = {
        "spec": f"hf:{hub_id}",
        "name": Path(hub_id).name or hub_id,
        "layout": "hf",
        "columns": {"image": image_column, "label": label_column},
        "fingerprints": {k: getattr(v, "_fingerprint", None) for k, v in dsd.items()},
    }
    train = rows(train_name)
    if test_name in dsd:
        test = rows(test_name)
        if val_name in dsd:
            val = rows(val_name)
            meta["split_source"] = {"train": train_name, "val": val_name, "test": test_name}
        else:
            train, val, rest = seeded_split(train, len(names), seed=split_seed, fractions=(0.8, 0.2))
            train = train + rest  # no test carved here: the remainder stays in train
            meta["split_source"] = {"train+val": train_name, "seed": split_seed, "val_fraction": 0.2, "test": test_name}
    else:
        train, val, test = seeded_split(train, len(names), seed=split_seed)
        meta["split_source"] = {"kind": "seeded", "of": train_name, "seed": split_seed, "fractions": [0.5, 0.2, 0.3]}
    bad_labels = sorted({s.label for s in train + val + test if not 0 <= s.label < len(names)})
    if bad_labels:
        raise _names_error(f"labels outside the {len(names)} class names", [str(b) for b in bad_labels])
    hf_splits = {name: dsd[name] for name in dsd}

    def loader(sample: Sample) -> Image.Image:
        split, _, row = sample.key.rpartition("/")
        image = hf_splits[split][int(row)][image_column]
        if isinstance(image, dict) and image.get("path"):
            image = Image.open(image["path"])
        if not isinstance(image, Image.Image):
            raise OSError(f"row {sample.key} holds {type(image).__name__}, not an image")
        return image.convert("RGB")

    splits = DatasetSplits(Path(hub_id).name or hub_id, names, train, val, test, meta, loader)
    _split_meta(splits, None)
    return splits


def build_dataset(
    spec: str,
    data_dir: str | Path | None = None,
    *,
    classnames_file: str | Path | None = None,
    split_seed: int = 1,
    image_column: str = "image",
    label_column: str = "label",
    hf_splits: tuple[str, str, str] = ("train", "validation", "test"),
) -> DatasetSplits:
    """Resolve a dataset spec (module docstring) to its splits and class names.

    Raises:
        DataError: unknown spec, missing folder or split file, inconsistent class names.
    """
    cls_path = Path(classnames_file) if classnames_file else None
    if spec.startswith("coop:"):
        if data_dir is None:
            raise DataError("coop: datasets need --data-dir ROOT (the folder holding oxford_pets/, dtd/, ...)")
        return _build_coop(spec.split(":", 1)[1], Path(data_dir).expanduser(), cls_path)
    if spec == "imagefolder":
        if data_dir is None:
            raise DataError("imagefolder needs --data-dir DIR (class subfolders, optionally under train/ val/ test/)")
        return _build_imagefolder(Path(data_dir).expanduser(), cls_path, split_seed)
    if spec.startswith("hf:"):
        return _build_hf(
            spec.split(":", 1)[1],
            image_column=image_column,
            label_column=label_column,
            splits_names=hf_splits,
            classnames_file=cls_path,
            split_seed=split_seed,
        )
    raise DataError(f"unknown dataset spec {spec!r}; available: {list_datasets()}")


# --- where the validation images come from --------------------------------------------------

# --val-source choices: auto = the dataset's validation split, else held out of train.
VAL_SOURCES = ("auto", "train", "test")
# meta["val_source"] per origin; the first word is the origin (hgadapter check and report read it).
VAL_SOURCE_TEXT = {
    "val": "val (the dataset's own validation split)",
    "train": "train (held out of every few-shot training set)",
    "test": "test (CoOp's ImageNet protocol)",
}
_HOLD_OUT_STREAM = 0x76616C  # keeps the hold-out draw apart from the few-shot draws of the same seed


def choose_validation(splits: DatasetSplits, source: str, *, per_class: int, seed: int) -> DatasetSplits:
    """The splits with their validation images chosen (``--val-source``; module docstring).

    ``auto``: the dataset's own validation split, or, when it has none, ``per_class`` train images
    per class held out (at most all but one of a class's images), drawn with ``seed``; few-shot
    sampling then never draws them (:attr:`DatasetSplits.held_out`). ``train`` holds out even when
    the dataset has a validation split. ``test`` draws validation from the test images (CoOp's
    ImageNet protocol), only for a dataset without a validation split. Test-only datasets keep an
    empty validation set. ``meta["val_source"]`` records the choice and ``meta["duplicates"]``
    lists the image files that two source lists share.

    Raises:
        DataError: an unknown source, or one the dataset cannot give.
    """
    if source not in VAL_SOURCES:
        raise DataError(f"unknown validation source {source!r}; available: {list(VAL_SOURCES)}")
    spec = splits.meta.get("spec", splits.name)
    if source == "test" and splits.val:
        raise DataError(
            f"--val-source test: {spec} has its own validation split; drawing validation from the test "
            f"images is only CoOp's fallback for datasets without one (ImageNet); use --val-source auto"
        )
    if source == "train" and not splits.train:
        raise DataError(f"--val-source train: {spec} has no train split to hold validation images out of")
    if source == "auto":
        source = "val" if splits.val or not splits.train else "train"
    meta = dict(splits.meta)
    if source == "test":
        out = replace(splits, val=list(splits.test), val_origin="test", held_out=[], meta=meta)
    elif source == "train":
        held = _hold_out(splits.train, len(splits.classnames), per_class, seed)
        out = replace(splits, val=[splits.train[i] for i in held], val_origin="train", held_out=held, meta=meta)
    else:
        out = replace(splits, meta=meta)
    if out.val:
        meta["val_source"] = VAL_SOURCE_TEXT[out.val_origin]
        meta["val_size"] = len(out.val)
        root = splits.meta.get("root")
        meta["val_hash"] = _hash_samples(out.val, Path(root) if root else None)
    meta["duplicates"] = find_duplicates(out)
    return out


def _hold_out(train: list[Sample], num_classes: int, per_class: int, seed: int) -> list[int]:
    """Train positions of ``per_class`` images per class (never a class's last image), grouped by class."""
    by_class: list[list[int]] = [[] for _ in range(num_classes)]
    for i, s in enumerate(train):
        by_class[s.label].append(i)
    rng = np.random.default_rng([seed, per_class, _HOLD_OUT_STREAM])
    held: list[int] = []
    for pool in by_class:
        take = min(per_class, max(len(pool) - 1, 0))
        held += [pool[i] for i in rng.choice(len(pool), size=take, replace=False)] if take else []
    return held


def find_duplicates(splits: DatasetSplits, limit: int = 1000) -> list[list[Any]]:
    """``[list a, position, list b, position]`` for each image file two source lists share (by key).

    Compares train with test, and, when validation is the dataset's own list, val with train and
    test (held-out or test-drawn validation shares its list by design; its leaks are judged by
    position). Only the first ``limit`` pairs are listed; ``hgadapter check`` reports the ones
    a cache actually uses.
    """
    lists = [("train", splits.train), ("test", splits.test)]
    if splits.val_origin == "val":
        lists.insert(1, ("val", splits.val))
    found: list[list[Any]] = []
    for a, (name_a, list_a) in enumerate(lists):
        for name_b, list_b in lists[a + 1:]:
            where = {s.key: j for j, s in enumerate(list_b)}
            for i, s in enumerate(list_a):
                j = where.get(s.key)
                if j is not None and len(found) < limit:
                    found.append([name_a, i, name_b, j])
    return found


# --- few-shot sampling -----------------------------------------------------------------------


def sample_per_class(
    samples: list[Sample],
    num_classes: int,
    shots: int,
    seed: int,
    *,
    repeat: bool = False,
    exclude: Collection[int] = (),
) -> list[int]:
    """Indices into ``samples`` of ``shots`` images per class, drawn with ``seed`` (CoOp's protocol).

    Classes are visited in label order; each draws without replacement from its images in
    list order. A class with fewer than ``shots`` images gives all of them, plus draws with
    replacement up to ``shots`` when ``repeat`` (CoOp's ``generate_fewshot_dataset`` flag). The
    result is grouped by class, each class's indices in draw order, and is identical on every
    run for the same inputs.

    ``exclude`` (images held out for validation) are never returned: a drawn one is swapped for
    another image of its class in a seeded order. The draw itself ignores ``exclude``, so every
    image that is not swapped is the one an unrestricted draw gives (a cache validated on held-out
    train images trains on the same images as one validated CoOp's way, up to the swaps).
    """
    if shots < 1:
        raise DataError(f"shots must be >= 1, got {shots}")
    by_class: list[list[int]] = [[] for _ in range(num_classes)]
    for i, s in enumerate(samples):
        by_class[s.label].append(i)
    rng = np.random.default_rng([seed, shots])
    picked: list[int] = []
    empty = []
    for c, pool in enumerate(by_class):
        if not pool:
            empty.append(c)
            continue
        if len(pool) >= shots:
            chosen = [pool[i] for i in rng.choice(len(pool), size=shots, replace=False)]
        elif repeat:
            extra = rng.choice(len(pool), size=shots - len(pool), replace=True)
            chosen = pool + [pool[i] for i in extra]
        else:
            chosen = list(pool)
        if exclude:
            chosen = _swap_excluded(chosen, pool, exclude, (seed, shots, c), repeat=repeat)
            if not chosen:
                empty.append(c)
        picked += chosen
    if empty and samples:
        raise DataError(f"{len(empty)} classes have no image to sample from (labels {empty[:20]})")
    return picked


def _swap_excluded(
    chosen: list[int], pool: list[int], exclude: Collection[int], key: tuple[int, ...], *, repeat: bool
) -> list[int]:
    """``chosen`` with each excluded index replaced by an unused allowed one of ``pool`` (seeded
    by ``key``, a stream of its own so the main draw is unchanged); without one left, dropped,
    or (``repeat``) replaced by a repeat of an allowed image."""
    allowed = [i for i in pool if i not in exclude]
    if len(allowed) == len(pool):
        return chosen
    taken = set(chosen)
    order = np.random.default_rng([*key, 4099]).permutation(len(allowed))
    spare = [allowed[j] for j in order if allowed[j] not in taken]
    out: list[int] = []
    for i in chosen:
        if i not in exclude:
            out.append(i)
        elif spare:
            out.append(spare.pop(0))
        elif repeat and allowed:
            out.append(allowed[len(out) % len(allowed)])
    return out


def replacement_candidates(samples: list[Sample], label: int, exclude: set[int], seed: int, shots: int) -> list[int]:
    """Images of class ``label`` not in ``exclude``, in a seeded order: where ``--skip-bad``
    finds substitutes for unreadable training images (deterministic, so reruns agree)."""
    pool = [i for i, s in enumerate(samples) if s.label == label and i not in exclude]
    rng = np.random.default_rng([seed, shots, label, 7919])
    return [pool[i] for i in rng.permutation(len(pool))]

