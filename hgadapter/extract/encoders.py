"""Frozen CLIP encoders behind one interface (paper Sec. 3.1: CLIP's image and text encoders
stay frozen; every image and prompt is encoded once and cached).

Two backends:

- Hugging Face ``transformers`` ``CLIPModel``, loaded by hub id (``openai/clip-vit-base-patch16``,
  ``-patch32``, ``-large-patch14``) or from a local directory written by ``save_pretrained``.
- ``open_clip`` (optional extra, imported only when used) for the ResNet backbones the paper
  reports by default, selected by ``open_clip:<arch>/<pretrained tag>``, e.g. ``open_clip:RN50/openai``.

Both return L2-normalised float32 features on the CPU. Inference runs in eval mode under
``torch.inference_mode``; on CUDA inside an fp16 or bf16 autocast, on the CPU in fp32.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hgadapter.device import resolve_device
from hgadapter.errors import UserError
from hgadapter.extract.augment import Preprocess

DEFAULT_ENCODER = "openai/clip-vit-base-patch16"

# Hub ids we know; any other hub id or a local directory also works.
_HF_ENCODERS = (
    "openai/clip-vit-base-patch16",
    "openai/clip-vit-base-patch32",
    "openai/clip-vit-large-patch14",
)
_OPEN_CLIP_ENCODERS = (
    "open_clip:RN50/openai",
    "open_clip:RN101/openai",
)
_PRECISIONS = ("auto", "fp32", "fp16", "bf16")

# CLIP's published preprocessing, used when a checkpoint does not say otherwise.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class EncoderError(UserError):
    """An encoder id cannot be resolved or loaded (unknown, not downloaded, missing extra)."""


def list_encoders() -> list[str]:
    """Encoder ids known to work; any Hugging Face CLIP hub id or local directory also does."""
    return [*_HF_ENCODERS, *_OPEN_CLIP_ENCODERS]


@dataclass
class Encoder:
    """A frozen CLIP image and text encoder.

    Attributes:
        id: the id or directory it was created from.
        revision: what pins the weights: the hub commit, a content hash of a local directory,
            or the open_clip pretrained tag and weight-file hash.
        backend: ``"hf"`` or ``"open_clip"``.
        dim: feature dimension d.
        logit_scale: the model's learned logit scale s (exp of the stored log value).
        preprocess: the evaluation image transform of this checkpoint.
        context_length: token length prompts are padded / truncated to.
        device: where the model runs.
        precision: ``fp32``, ``fp16`` or ``bf16`` (autocast; CUDA only for the latter two).
    """

    id: str
    revision: str
    backend: str
    dim: int
    logit_scale: float
    preprocess: Preprocess
    context_length: int
    device: torch.device
    precision: str
    _model: Any = None
    _tokenizer: Any = None

    # -- inference ----------------------------------------------------------------------------
    def _autocast(self):
        if self.device.type == "cuda" and self.precision in ("fp16", "bf16"):
            dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
            return torch.autocast("cuda", dtype=dtype)
        return torch.autocast(self.device.type, enabled=False)

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised image features.

        Shapes:
            pixels: ``(B, 3, H, W)`` float32, already preprocessed; returns ``(B, d)`` float32 (CPU).
        """
        pixels = pixels.to(self.device, non_blocking=True)
        with self._autocast():
            if self.backend == "hf":
                out = self._model.get_image_features(pixel_values=pixels).pooler_output
            else:
                out = self._model.encode_image(pixels)
        return F.normalize(out.float(), dim=-1).cpu()

    @torch.inference_mode()
    def encode_texts(
        self, texts: list[str], *, batch_size: int = 256, return_norms: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Normalised text features of ``texts``: ``(len(texts), d)`` float32 (CPU).

        With ``return_norms`` also each feature's raw L2 norm before normalisation, ``(len(texts),)``
        (the scale CLAP's prototypes start at; docs/feature-cache.md): ``(features, norms)``.
        """
        chunks, norms = [], []
        for start in range(0, len(texts), batch_size):
            part = texts[start : start + batch_size]
            with self._autocast():
                if self.backend == "hf":
                    tokens = self._tokenizer(
                        part,
                        padding="max_length",
                        max_length=self.context_length,
                        truncation=True,
                        return_tensors="pt",
                    ).to(self.device)
                    out = self._model.get_text_features(
                        input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
                    ).pooler_output
                else:
                    out = self._model.encode_text(self._tokenizer(part).to(self.device))
            chunks.append(F.normalize(out.float(), dim=-1).cpu())
            norms.append(out.float().norm(dim=-1).cpu())
        features = torch.cat(chunks) if chunks else torch.zeros(0, self.dim)  # (n, d)
        if return_norms:
            return features, (torch.cat(norms) if norms else torch.zeros(0))  # (n, d), (n,)
        return features

    def meta(self) -> dict[str, Any]:
        """What the sidecar records about the encoder (everything that determines features)."""
        return {
            "id": self.id,
            "revision": self.revision,
            "backend": self.backend,
            "dim": self.dim,
            "preprocess": self.preprocess.to_dict(),
            "context_length": self.context_length,
            "precision": self.precision,
        }


# -- construction ---------------------------------------------------------------------------


def _resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in _PRECISIONS:
        raise EncoderError(f"unknown precision {precision!r}; available: {list(_PRECISIONS)}")
    if device.type != "cuda":
        return "fp32"  # half-precision autocast is only worth it (and only exact enough) on CUDA
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def hash_directory(path: Path, *, patterns: tuple[str, ...] = ("*.json", "*.txt", "*.safetensors", "*.bin")) -> str:
    """sha256 over the names and bytes of a model directory's config, vocab and weight files."""
    digest = hashlib.sha256()
    files = sorted({p for pat in patterns for p in path.glob(pat) if p.is_file()})
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def _offline_message(model_id: str) -> str:
    return (
        f"CLIP model {model_id!r} is not available on this machine (no network or not in the "
        f"Hugging Face cache). Download it once where there is internet, e.g. "
        f"`hf download {model_id}` (or `huggingface-cli download {model_id}`), and copy the cache "
        f"($HF_HOME, default ~/.cache/huggingface) here; or save it with "
        f"`CLIPModel.from_pretrained(...).save_pretrained(DIR)` plus the processor, and pass --model DIR."
    )


def _snapshot(model_id: str, revision: str | None) -> tuple[Path, str]:
    """The local snapshot directory and commit of a hub model; downloads only when online."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.safetensors"]
    try:
        path = snapshot_download(model_id, revision=revision, allow_patterns=patterns, local_files_only=True)
    except Exception:
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
            raise EncoderError(_offline_message(model_id)) from None
        try:
            path = snapshot_download(model_id, revision=revision, allow_patterns=patterns)
        except Exception as err:
            raise EncoderError(f"{_offline_message(model_id)} ({type(err).__name__}: {err})") from None
    path = Path(path)
    return path, path.name  # snapshot folders are named by commit hash


def _read_preprocess(directory: Path, image_size: int) -> Preprocess:
    cfg_path = directory / "preprocessor_config.json"
    cfg: dict[str, Any] = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    size = cfg.get("size", {"shortest_edge": image_size})
    if isinstance(size, int):
        resize = size
    else:
        resize = size.get("shortest_edge") or min(size.get("height", image_size), size.get("width", image_size))
    crop = cfg.get("crop_size", {"height": image_size, "width": image_size})
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    if not cfg.get("do_center_crop", True):
        crop = {"height": resize, "width": resize}
    return Preprocess(
        resize=int(resize),
        crop=(int(crop["height"]), int(crop["width"])),
        mean=tuple(float(v) for v in cfg.get("image_mean", _CLIP_MEAN)),
        std=tuple(float(v) for v in cfg.get("image_std", _CLIP_STD)),
        resample=int(cfg.get("resample", 3)),
    )


def _load_hf(model_id: str, revision: str | None, device: torch.device, precision: str) -> Encoder:
    from transformers import AutoTokenizer, CLIPModel

    local = Path(model_id).expanduser()
    if local.is_dir():
        directory, rev = local, hash_directory(local)
    elif model_id.startswith((".", "/", "~")) or model_id.count("/") > 1:  # hub ids are org/name
        raise EncoderError(f"model directory {model_id!r} does not exist")
    else:
        directory, rev = _snapshot(model_id, revision)
    if not (directory / "config.json").is_file():
        raise EncoderError(f"{directory} has no config.json; is it a CLIPModel saved with save_pretrained?")
    try:
        model = CLIPModel.from_pretrained(directory, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except OSError as err:
        raise EncoderError(f"cannot load CLIP model from {directory}: {err}") from None
    model.eval().requires_grad_(False).to(device)
    vision = model.config.vision_config
    return Encoder(
        id=model_id,
        revision=rev,
        backend="hf",
        dim=int(model.config.projection_dim),
        logit_scale=float(model.logit_scale.exp()),
        preprocess=_read_preprocess(directory, int(vision.image_size)),
        context_length=int(model.config.text_config.max_position_embeddings),
        device=device,
        precision=precision,
        _model=model,
        _tokenizer=tokenizer,
    )


def _load_open_clip(spec: str, device: torch.device, precision: str) -> Encoder:
    body = spec.split(":", 1)[1]
    arch, _, tag = body.partition("/")
    if not arch or not tag:
        raise EncoderError(f"open_clip id must look like 'open_clip:RN50/openai', got {spec!r}")
    try:
        import open_clip  # optional extra: pip install 'hgadapter[open_clip]'
    except ImportError:
        raise EncoderError(
            f"{spec!r} needs the open_clip backend: pip install 'hgadapter[open_clip]' "
            f"(or open_clip_torch)"
        ) from None
    try:
        model, _, _ = open_clip.create_model_and_transforms(arch, pretrained=tag, device=device)
    except Exception as err:  # open_clip raises RuntimeError / OSError / HF errors when offline
        raise EncoderError(
            f"cannot load {spec!r}: {type(err).__name__}: {err}. With no network, download the "
            f"weights once elsewhere (open_clip stores them in the Hugging Face cache, $HF_HOME) "
            f"and copy the cache here."
        ) from None
    model.eval().requires_grad_(False)
    visual = model.visual
    size = getattr(visual, "image_size", 224)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = tuple(getattr(visual, "image_mean", None) or _CLIP_MEAN)
    std = tuple(getattr(visual, "image_std", None) or _CLIP_STD)
    with torch.inference_mode():
        dim = int(model.encode_text(open_clip.get_tokenizer(arch)(["x"]).to(device)).shape[-1])
    tokenizer = open_clip.get_tokenizer(arch)
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes()[:4096])
    return Encoder(
        id=spec,
        revision=f"{tag}:open_clip-{getattr(open_clip, '__version__', '?')}:sha256-prefix:{digest.hexdigest()[:16]}",
        backend="open_clip",
        dim=dim,
        logit_scale=float(model.logit_scale.exp()),
        preprocess=Preprocess(resize=size, crop=(size, size), mean=mean, std=std, resample=3),
        context_length=int(getattr(model, "context_length", 77)),
        device=device,
        precision=precision,
        _model=model,
        _tokenizer=tokenizer,
    )


def create_encoder(
    model_id: str = DEFAULT_ENCODER,
    *,
    revision: str | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
) -> Encoder:
    """Load a frozen CLIP encoder by hub id, local directory or ``open_clip:<arch>/<tag>``.

    Args:
        model_id: see :func:`list_encoders`; a directory saved with ``save_pretrained`` also works.
        revision: hub branch, tag or commit (Hugging Face backend only).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``; default: CUDA when available.
        precision: ``auto`` (bf16 where supported, else fp16 on CUDA; fp32 on the CPU), ``fp32``,
            ``fp16`` or ``bf16``.

    Raises:
        EncoderError: unknown or unavailable model, with how to download it.
    """
    dev = resolve_device(device)
    prec = _resolve_precision(precision, dev)
    if model_id.startswith("open_clip:"):
        return _load_open_clip(model_id, dev, prec)
    return _load_hf(model_id, revision, dev, prec)
