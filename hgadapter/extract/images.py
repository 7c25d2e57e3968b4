"""How a checkpoint turns one image into model inputs: its family's own Hugging Face image
processor, PIL backend (no torchvision), with the settings the checkpoint ships.

:class:`ImageProcessing` wraps that processor and knows the two things augmentation needs from
it (:mod:`hgadapter.extract.augment`): the size an augmented view is resized to before the
processor (``view_size``; ``None`` for NaFlex, which keeps the crop's aspect ratio and resizes
it to a patch budget itself) and the resampling filter. Its :meth:`~ImageProcessing.to_dict` is
what a cache's sidecar and an exported classifier record, so ``predict`` rebuilds the very same
processor (:meth:`~ImageProcessing.from_dict`) instead of re-reading a checkpoint that may have
changed.

Caches and classifiers written before families were recorded store CLIP's preprocessing as
``{resize, crop, mean, std, resample}``; :meth:`ImageProcessing.from_dict` reads that too, as the
``CLIPImageProcessorPil`` settings it described.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["ImageProcessing", "PROCESSOR_CLASSES"]

# The PIL image processors the families use; recorded by name, rebuilt from these only (a
# recorded name is user input: it must never import an arbitrary class).
PROCESSOR_CLASSES = ("CLIPImageProcessorPil", "SiglipImageProcessorPil", "Siglip2ImageProcessorPil")

# Keys of a processor's to_dict() that name it rather than set it.
_NAME_KEYS = ("image_processor_type", "processor_class", "auto_map", "_processor_class", "backend")


def _plain(value: Any) -> Any:
    """JSON-safe copy of a processor setting (PIL's resampling enum -> its int code, tuples -> lists)."""
    if isinstance(value, enum.Enum):
        return int(value.value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _processor_class(name: str):
    if name not in PROCESSOR_CLASSES:
        from hgadapter.extract.families import EncoderError

        raise EncoderError(f"unknown image processor {name!r}; available: {list(PROCESSOR_CLASSES)}")
    import transformers

    return getattr(transformers, name)


class ImageProcessing:
    """A family's image processor with fixed settings: PIL image -> that image's model inputs.

    Args:
        processor_class: one of :data:`PROCESSOR_CLASSES`.
        settings: the processor's configuration (a ``preprocessor_config.json``'s keys).
    """

    def __init__(self, *, processor_class: str, settings: Mapping[str, Any]) -> None:
        cls = _processor_class(processor_class)
        settings = {k: v for k, v in dict(settings).items() if k not in _NAME_KEYS}
        try:
            self.processor = cls.from_dict(settings)
        except (TypeError, ValueError) as err:
            from hgadapter.extract.families import EncoderError

            raise EncoderError(f"cannot build {processor_class} from settings {settings}: {err}") from None
        self.processor_class = processor_class
        self.settings: dict[str, Any] = {
            k: _plain(v) for k, v in sorted(self.processor.to_dict().items()) if k not in _NAME_KEYS
        }

    # -- what augmentation needs -----------------------------------------------------------------
    @property
    def naflex(self) -> bool:
        """Whether images keep their aspect ratio under a patch budget (SigLIP 2 NaFlex)."""
        return "max_num_patches" in self.settings

    @property
    def view_size(self) -> tuple[int, int] | None:
        """``(H, W)`` of the processor's output, which augmented views are resized to before it
        (so it leaves them as they are); ``None`` for NaFlex (views keep their own size)."""
        if self.naflex:
            return None
        crop, size = self.settings.get("crop_size") or {}, self.settings.get("size") or {}
        if self.settings.get("do_center_crop") and crop.get("height"):
            return int(crop["height"]), int(crop["width"])
        if size.get("height") and size.get("width"):
            return int(size["height"]), int(size["width"])
        from hgadapter.extract.families import EncoderError

        raise EncoderError(
            f"{self.processor_class} settings {self.settings} give images of varying size (no crop and "
            "no fixed height/width); batched encoding needs a fixed size"
        )

    @property
    def resample(self) -> int:
        """PIL resampling code of the processor's resize (2 bilinear, 3 bicubic)."""
        return int(self.settings.get("resample", 3))

    # -- images -> inputs --------------------------------------------------------------------------
    def __call__(self, image: Image.Image) -> dict[str, np.ndarray]:
        """One RGB image -> its model inputs, without a batch axis: ``pixel_values`` ``(3, H, W)``
        (NaFlex: ``(N, p*p*3)`` patches, with ``pixel_attention_mask`` ``(N,)`` and ``spatial_shapes`` ``(2,)``)."""
        out = self.processor(images=[image.convert("RGB")], return_tensors="np")
        inputs = {k: np.asarray(v)[0] for k, v in out.items()}
        inputs["pixel_values"] = inputs["pixel_values"].astype(np.float32, copy=False)
        return inputs

    # -- the record ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """What a cache and a classifier record: ``{"class": ..., "settings": {...}}``."""
        return {"class": self.processor_class, "settings": dict(self.settings)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ImageProcessing":
        """The inverse of :meth:`to_dict`; also reads the CLIP-only ``{resize, crop, mean, std,
        resample}`` record of caches written before families."""
        if "class" in data:
            return cls(processor_class=str(data["class"]), settings=dict(data.get("settings") or {}))
        crop = list(data["crop"])
        return cls(
            processor_class="CLIPImageProcessorPil",
            settings={
                "size": {"shortest_edge": int(data["resize"])},
                "crop_size": {"height": int(crop[0]), "width": int(crop[1])},
                "do_center_crop": True,
                "do_resize": True,
                "do_rescale": True,
                "do_normalize": True,
                "do_convert_rgb": True,
                "image_mean": [float(v) for v in data["mean"]],
                "image_std": [float(v) for v in data["std"]],
                "resample": int(data.get("resample", 3)),
            },
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImageProcessing) and other.to_dict() == self.to_dict()

    def __repr__(self) -> str:
        return f"ImageProcessing({self.processor_class}, {self.settings})"
