"""Image transforms for feature extraction, in PIL and NumPy (no torchvision).

The evaluation transform is the checkpoint's own image processor
(:class:`hgadapter.extract.images.ImageProcessing`, which also reads the CLIP-only record of caches
made before encoder families). The training transform is the one Tip-Adapter and GraphAdapter use to
build their caches (paper Sec. 4.1 follows them): a random resized crop covering 50-100 % of
the image area with aspect ratio in [3/4, 4/3], a horizontal flip with probability 1/2, then
the same normalisation. Each augmented view draws from its own seeded generator, so a view
is a pure function of (augmentation seed, set, image, view) and does not depend on batching
or on which worker thread loaded it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from hgadapter.extract.images import ImageProcessing

# PIL's resampling filters by the integer codes Hugging Face processor configs store.
_RESAMPLE = {
    0: Image.Resampling.NEAREST,
    1: Image.Resampling.LANCZOS,
    2: Image.Resampling.BILINEAR,
    3: Image.Resampling.BICUBIC,
    4: Image.Resampling.BOX,
    5: Image.Resampling.HAMMING,
}


@dataclass(frozen=True)
class Augment:
    """Random resized crop + horizontal flip for the few-shot training views.

    Attributes:
        scale: range of the crop's area as a fraction of the image area.
        ratio: range of the crop's aspect ratio (width / height).
        flip_p: probability of a horizontal flip.
    """

    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip_p: float = 0.5

    def to_dict(self) -> dict:
        return {"kind": "random_resized_crop+hflip", **asdict(self)}

    def crop_box(self, width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """A random (left, top, right, bottom) box; falls back to the largest central crop
        within ``ratio`` after 10 failed tries (the usual RandomResizedCrop rule)."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * rng.uniform(self.scale[0], self.scale[1])
            aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                left = int(rng.integers(0, width - w + 1))
                top = int(rng.integers(0, height - h + 1))
                return left, top, left + w, top + h
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            w, h = int(round(height * self.ratio[1])), height
        else:
            w, h = width, height
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h

    def view(
        self, image: Image.Image, size: tuple[int, int] | None, resample: int, rng: np.random.Generator
    ) -> Image.Image:
        """One augmented RGB view: a random crop resized straight to ``size`` = (H, W) in one
        resampling (the processor then leaves it as it is), or kept at its own size when ``size``
        is None (NaFlex resizes it to its patch budget), then maybe flipped."""
        image = image.convert("RGB")
        box = self.crop_box(image.width, image.height, rng)
        if size is None:
            view = image.crop(box)
        else:
            view = image.resize((size[1], size[0]), _RESAMPLE[resample], box=box)
        if rng.random() < self.flip_p:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return view


def view_rng(aug_seed: int, shots: int, seed: int, index: int) -> np.random.Generator:
    """The generator for every view of source image ``index`` in training set (shots, seed)."""
    return np.random.default_rng([aug_seed, shots, seed, index])


def make_views(
    image: Image.Image,
    processing: "ImageProcessing",
    augment: Augment | None,
    views: int,
    rng: np.random.Generator | None,
) -> dict[str, np.ndarray]:
    """``views`` training views of one image as model inputs, each stacked over the views:
    ``pixel_values`` ``(V, 3, H, W)`` (NaFlex: ``(V, N, p*p*3)`` and its mask and shapes).

    The augmented views are made first, then the checkpoint's own processor turns each into
    model inputs. Without augmentation every view is the evaluation input (then ``views``
    should be 1).
    """
    if augment is None or rng is None:
        one = processing(image)
        return {k: np.broadcast_to(v, (views, *v.shape)).copy() for k, v in one.items()}  # (V, ...)
    size, resample = processing.view_size, processing.resample
    each = [processing(augment.view(image, size, resample, rng)) for _ in range(views)]
    return {k: np.stack([e[k] for e in each]) for k in each[0]}  # (V, ...)
