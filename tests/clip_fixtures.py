"""Builders for tiny CLIP checkpoints and datasets on disk (no network, no hub).

The tiny model goes through the real code path: a random ``CLIPModel``, a BPE tokenizer trained
with the ``tokenizers`` library on a few sentences, and a PIL image-processor config, all
written with ``save_pretrained`` and loaded back by :func:`hgadapter.extract.encoders.create_encoder`.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLASSNAMES = ("red_square", "green circle", "blue stripes")

_CORPUS = [
    "a photo of a {}.",
    "a photo of no {}.",
    "a photo of the large {}.",
    "itap of a {}.",
    "a bad photo of the {}.",
    "{} texture.",
    "a photo without a {}.",
    "there is no {} in this photo.",
    "a photo that is not a {}.",
]


def tokenizer_corpus(classnames: tuple[str, ...] | list[str] = CLASSNAMES) -> list[str]:
    """Sentences covering the fixture prompts, plus every letter and digit both inside and at
    the end of a word, so any lowercase ASCII word tokenises without unknown pieces."""
    chars = string.ascii_lowercase + string.digits
    lines = [t.format(c.replace("_", " ")) for t in _CORPUS for c in classnames]
    lines += [" ".join(chars), chars, chars[::-1], "a, b. c; d: e! f? g' h- i( j) k/ l\" m"]
    return lines * 3


def build_tiny_clip(
    path: str | Path,
    *,
    hidden: int = 32,
    layers: int = 2,
    projection: int = 24,
    image_size: int = 32,
    patch: int = 8,
    context_length: int = 24,
    seed: int = 0,
    classnames: tuple[str, ...] | list[str] = CLASSNAMES,
) -> Path:
    """Write a random tiny CLIP checkpoint with its tokenizer and processor config to ``path``."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    path = Path(path)
    tokenizer = CLIPTokenizer().train_new_from_iterator(tokenizer_corpus(classnames), vocab_size=320)
    tokenizer.model_max_length = context_length
    common = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(
            **common,
            vocab_size=len(tokenizer),
            max_position_embeddings=context_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(**common, image_size=image_size, patch_size=patch),
        projection_dim=projection,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(path)
    return path


def make_image(rng: np.random.Generator, label: int, size: tuple[int, int] = (40, 48)) -> Image.Image:
    """A small RGB image whose dominant channel depends on the label (sizes vary per call)."""
    w, h = size
    arr = rng.integers(0, 80, size=(h, w, 3), dtype=np.uint8)
    arr[..., label % 3] += np.uint8(150)
    return Image.fromarray(arr, "RGB")


def build_imagefolder(
    root: str | Path,
    *,
    classes: tuple[str, ...] | list[str] = CLASSNAMES,
    per_class: int = 10,
    seed: int = 0,
) -> Path:
    """``root/<class>/img<i>.png`` (and some ``.jpg``), ``per_class`` images per class."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = (int(rng.integers(34, 60)), int(rng.integers(34, 60)))
            ext = "jpg" if i % 3 == 0 else "png"
            make_image(rng, c, size).save(folder / f"img{i:03d}.{ext}")
    return root


def build_coop_dtd(
    root: str | Path,
    *,
    classes: tuple[str, ...] | list[str] = CLASSNAMES,
    per_split: tuple[int, int, int] = (6, 3, 3),
    seed: int = 0,
) -> Path:
    """A CoOp-layout ``dtd`` dataset: ``root/dtd/images/<class>/*.jpg`` and
    ``root/dtd/split_zhou_DescribableTextures.json``. Returns ``root``."""
    root = Path(root)
    image_dir = root / "dtd" / "images"
    rng = np.random.default_rng(seed)
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for c, name in enumerate(classes):
        (image_dir / name).mkdir(parents=True, exist_ok=True)
        n = 0
        for part, count in zip(("train", "val", "test"), per_split):
            for _ in range(count):
                rel = f"{name}/{name}_{n:04d}.jpg"
                make_image(rng, c, (int(rng.integers(34, 60)), int(rng.integers(34, 60)))).save(image_dir / rel)
                split[part].append([rel, c, name])
                n += 1
    (root / "dtd" / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))
    return root


def write_bad_image(path: str | Path) -> Path:
    """A file with an image extension that PIL cannot decode."""
    path = Path(path)
    path.write_bytes(b"this is not an image")
    return path


def build_coop_imagenet(
    root: str | Path,
    *,
    classes: tuple[str, ...] | list[str] = CLASSNAMES,
    per_split: tuple[int, int] = (12, 3),
    seed: int = 0,
) -> Path:
    """A CoOp-layout ``imagenet``: ``root/imagenet/classnames.txt`` (``<wnid> <name>``) and
    ``root/imagenet/images/{train,val}/<wnid>/*.png`` with ``per_split`` images per class
    (val is ImageNet's labelled val set, i.e. the test split). Returns ``root``."""
    root = Path(root)
    folder = root / "imagenet"
    rng = np.random.default_rng(seed)
    wnids = [f"n{c:08d}" for c in range(len(classes))]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classnames.txt").write_text("".join(f"{w} {name}\n" for w, name in zip(wnids, classes)))
    for part, count in zip(("train", "val"), per_split):
        for c, wnid in enumerate(wnids):
            sub = folder / "images" / part / wnid
            sub.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                make_image(rng, c, (int(rng.integers(34, 60)), int(rng.integers(34, 60)))).save(sub / f"{wnid}_{part}{i:03d}.png")
    return root
