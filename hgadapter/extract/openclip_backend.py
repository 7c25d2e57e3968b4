"""open_clip encoders: ``open_clip:<arch>/<pretrained>`` and ``open_clip:hf-hub:<org>/<repo>``
(EVA02-CLIP, PE-Core, SigLIP through timm, OpenAI's ResNets, ...; docs/extraction.md).

``open_clip`` (``pip install 'hgadapter[open_clip]'``) is imported only here and only when such an
id is used. Each model keeps its own tokenizer (``open_clip.get_tokenizer``) and its own eval
transform, which is read from the model's preprocess config (size, mean, std, interpolation,
resize mode) and run by the equivalent Hugging Face PIL processor, so images go through the same
code path as every other family (open_clip's transforms need torchvision):

- ``resize_mode: shortest`` (the default: short side resized, centre crop) -> ``CLIPImageProcessorPil``;
- ``resize_mode: squash`` (SigLIP through timm: resized to the square) -> ``SiglipImageProcessorPil``;
- ``resize_mode: longest`` (letterbox padding) is not supported and says so.

The id parsing and the mapping of a preprocess config are tested here; loading a real open_clip
model is not (open_clip is not installed on the development machine).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from hgadapter.extract.families import CLIP_MEAN, CLIP_STD, EncoderError
from hgadapter.extract.images import ImageProcessing

__all__ = ["OpenClipId", "parse_open_clip_id", "processing_from_preprocess_cfg", "load_open_clip"]

_PREFIX = "open_clip:"
_HUB = "hf-hub:"
_INTERPOLATION = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
_EXAMPLES = "'open_clip:ViT-B-32/laion2b_s34b_b79k' or 'open_clip:hf-hub:timm/ViT-B-16-SigLIP'"


@dataclass(frozen=True)
class OpenClipId:
    """A parsed open_clip id.

    Attributes:
        name: the model name open_clip takes: an architecture (``ViT-B-32``) or ``hf-hub:org/repo``.
        pretrained: the pretrained tag (``laion2b_s34b_b79k``) or a local weight file; ``None`` for hf-hub.
    """

    name: str
    pretrained: str | None

    @property
    def hub(self) -> bool:
        return self.name.startswith(_HUB)


def parse_open_clip_id(spec: str) -> OpenClipId:
    """``open_clip:<arch>/<pretrained>`` or ``open_clip:hf-hub:<org>/<repo>`` -> :class:`OpenClipId`.

    Raises:
        EncoderError: anything else, with examples of valid ids.
    """
    if not spec.startswith(_PREFIX):
        raise EncoderError(f"not an open_clip id: {spec!r}; expected {_EXAMPLES}")
    body = spec[len(_PREFIX):].strip()
    if body.startswith(_HUB):
        repo = body[len(_HUB):]
        parts = repo.split("/")
        if len(parts) != 2 or not all(parts) or any(c.isspace() for c in repo):
            raise EncoderError(f"open_clip hub id {spec!r} must name one hub repo, hf-hub:<org>/<repo>; e.g. {_EXAMPLES}")
        return OpenClipId(name=body, pretrained=None)
    arch, _, tag = body.partition("/")
    if not arch or not tag or any(c.isspace() for c in arch):
        raise EncoderError(f"open_clip id {spec!r} must be open_clip:<arch>/<pretrained tag>; e.g. {_EXAMPLES}")
    return OpenClipId(name=arch, pretrained=tag)


def processing_from_preprocess_cfg(cfg: dict[str, Any]) -> ImageProcessing:
    """The PIL processor that does what open_clip's eval transform for ``cfg`` does.

    Args:
        cfg: an open_clip preprocess config: ``size`` (int or (H, W)), ``mean``, ``std``,
            ``interpolation`` and ``resize_mode``.

    Raises:
        EncoderError: a resize mode or interpolation without a PIL equivalent here.
    """
    size = cfg.get("size", 224)
    h, w = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
    interpolation = str(cfg.get("interpolation", "bicubic"))
    if interpolation not in _INTERPOLATION:
        raise EncoderError(f"open_clip interpolation {interpolation!r} is not supported; available: {sorted(_INTERPOLATION)}")
    common = {
        "image_mean": [float(v) for v in (cfg.get("mean") or CLIP_MEAN)],
        "image_std": [float(v) for v in (cfg.get("std") or CLIP_STD)],
        "resample": _INTERPOLATION[interpolation],
    }
    mode = str(cfg.get("resize_mode", "shortest"))
    if mode == "shortest":
        if h != w:
            raise EncoderError(f"open_clip resize_mode 'shortest' with a non-square size {size} is not supported")
        return ImageProcessing(
            processor_class="CLIPImageProcessorPil",
            settings={"size": {"shortest_edge": h}, "crop_size": {"height": h, "width": w}, "do_center_crop": True, **common},
        )
    if mode == "squash":
        return ImageProcessing(processor_class="SiglipImageProcessorPil", settings={"size": {"height": h, "width": w}, **common})
    raise EncoderError(f"open_clip resize_mode {mode!r} is not supported; available: ['shortest', 'squash']")


def _preprocess_cfg(open_clip: Any, model: Any) -> dict[str, Any]:
    getter = getattr(open_clip, "get_model_preprocess_cfg", None)
    if getter is not None:
        return dict(getter(model))
    visual = model.visual  # older open_clip: attributes on the vision tower
    return {"size": getattr(visual, "image_size", 224), "mean": getattr(visual, "image_mean", None),
            "std": getattr(visual, "image_std", None)}


def load_open_clip(spec: str, device: torch.device) -> dict[str, Any]:
    """Load an open_clip model; returns the keyword fields of an
    :class:`~hgadapter.extract.encoders.Encoder` (all but ``precision``), which that module builds,
    so that imports run one way (encoders -> this backend).

    Raises:
        EncoderError: a malformed id, open_clip not installed, or the model not loadable here.
    """
    oid = parse_open_clip_id(spec)
    try:
        import open_clip  # optional extra: pip install 'hgadapter[open_clip]'
    except ImportError as err:
        raise EncoderError(
            f"{spec!r} needs the open_clip backend: pip install 'hgadapter[open_clip]' (or open_clip_torch) "
            f"({type(err).__name__}: {err})"
        ) from None
    try:
        model = open_clip.create_model(oid.name, pretrained=oid.pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(oid.name)
    except Exception as err:  # open_clip raises RuntimeError / OSError / HF errors when offline
        raise EncoderError(
            f"cannot load {spec!r}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. "
            f"With no network, download the weights once elsewhere (open_clip keeps them in the Hugging Face "
            f"cache, $HF_HOME) and copy the cache here."
        ) from None
    model.eval().requires_grad_(False)
    processing = processing_from_preprocess_cfg(_preprocess_cfg(open_clip, model))
    context_length = int(getattr(tokenizer, "context_length", None) or getattr(model, "context_length", 77))
    with torch.inference_mode():
        dim = int(model.encode_text(tokenizer(["a photo."]).to(device)).shape[-1])
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes()[:4096])
    bias = getattr(model, "logit_bias", None)
    return dict(
        id=spec,
        revision=f"{oid.pretrained or oid.name}:open_clip-{getattr(open_clip, '__version__', '?')}:sha256-prefix:{digest.hexdigest()[:16]}",
        backend="open_clip",
        family="open_clip",
        dim=dim,
        logit_scale=float(model.logit_scale.exp()),
        logit_bias=None if bias is None else float(bias.reshape(-1)[0]),
        preprocess=processing,
        text=None,
        context_length=context_length,
        device=device,
        _model=model,
        _tokenizer=tokenizer,
    )
