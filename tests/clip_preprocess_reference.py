"""An independent, hand-written CLIP preprocessing (resize the shorter side, centre-crop, scale
to [0, 1], normalise per channel): the reference that the Hugging Face image processors used by
extraction (hgadapter.extract.images) and the augmented-view path are tested against."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from hgadapter.extract.augment import Augment

RESAMPLE = {code: Image.Resampling(code) for code in range(6)}  # PIL's codes, as processor configs store them


@dataclass(frozen=True)
class Preprocess:
    """CLIP's evaluation preprocessing written out by hand: the pipeline caches made before
    encoder families used, kept here as the reference the family processors are tested against.

    Attributes:
        resize: target length of the shorter image side, in pixels.
        crop: (height, width) of the centre crop, in pixels.
        mean: per-channel mean subtracted after scaling to [0, 1].
        std: per-channel standard deviation divided by after subtracting the mean.
        resample: PIL resampling code (3 = bicubic, CLIP's).
    """

    resize: int
    crop: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: int = 3

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocess":
        """The inverse of :meth:`to_dict` (e.g. a cache sidecar's ``encoder.preprocess``)."""
        return cls(
            resize=int(data["resize"]), crop=tuple(data["crop"]), mean=tuple(data["mean"]), std=tuple(data["std"]),
            resample=int(data.get("resample", 3)),
        )

    def normalise(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image of the crop size -> float32 array, shape ``(3, H, W)``."""
        arr = np.asarray(image, dtype=np.float32) / 255.0  # (H, W, 3)
        arr = (arr - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))  # (3, H, W)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """Resize the shorter side, centre-crop and normalise: ``(3, H, W)`` float32."""
        image = image.convert("RGB")
        w, h = image.size
        # Same integer arithmetic as Hugging Face's CLIP processor (shorter side exact, longer
        # side floored, crop offsets floored), so features match the reference pipeline.
        if w <= h:
            new_w, new_h = self.resize, max(1, int(self.resize * h / w))
        else:
            new_w, new_h = max(1, int(self.resize * w / h)), self.resize
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), RESAMPLE[self.resample])
        ch, cw = self.crop
        if new_w < cw or new_h < ch:
            # A crop larger than the image: pad with black around it, as HF's processor does.
            canvas = Image.new("RGB", (max(new_w, cw), max(new_h, ch)))
            canvas.paste(image, ((canvas.width - new_w) // 2, (canvas.height - new_h) // 2))
            image, new_w, new_h = canvas, canvas.width, canvas.height
        left, top = (new_w - cw) // 2, (new_h - ch) // 2
        image = image.crop((left, top, left + cw, top + ch))
        return self.normalise(image)


def augmented_view(augment: Augment, image: Image.Image, pre: Preprocess, rng: np.random.Generator) -> np.ndarray:
    """One augmented view, resized to ``pre.crop`` and normalised by hand: ``(3, H, W)`` float32."""
    return pre.normalise(augment.view(image, pre.crop, pre.resample, rng))
