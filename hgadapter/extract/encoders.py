"""Frozen vision-language dual encoders behind one interface (paper Sec. 3.1: the image and text
encoders stay frozen; every image and prompt is encoded once and cached).

Two backends:

- Hugging Face ``transformers``: any checkpoint of a supported family
  (:mod:`hgadapter.extract.families`: CLIP, MetaCLIP 2, SigLIP, SigLIP 2 FixRes and NaFlex),
  loaded by hub id (``openai/clip-vit-base-patch16``, ``google/siglip2-base-patch16-naflex``, ...)
  or from a local directory written by ``save_pretrained``. The model class comes from the
  checkpoint's config (``AutoModel``), the tokenizer and image processor from its own files, and
  the family says how text is padded and which processor resizes images.
- ``open_clip`` (optional extra, imported only when used): ``open_clip:<arch>/<pretrained>`` or
  ``open_clip:hf-hub:<org>/<repo>`` (:mod:`hgadapter.extract.openclip_backend`).

Both return L2-normalised float32 features on the CPU. Inference runs in eval mode under
``torch.inference_mode``; on CUDA inside an fp16 or bf16 autocast, on the CPU in fp32.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hgadapter.device import resolve_device
from hgadapter.extract.families import EncoderError, Family, TextRecipe, family_for_model_type, list_families
from hgadapter.extract.images import PROCESSOR_CLASSES, ImageProcessing

__all__ = ["DEFAULT_ENCODER", "Encoder", "EncoderError", "create_encoder", "hash_directory", "list_encoders", "list_families"]

DEFAULT_ENCODER = "openai/clip-vit-base-patch16"

# Hub ids we know; any other hub id of a supported family or a local directory also works.
_HF_ENCODERS = (
    "openai/clip-vit-base-patch16",
    "openai/clip-vit-base-patch32",
    "openai/clip-vit-large-patch14",
    "google/siglip-base-patch16-224",
    "google/siglip2-base-patch16-224",
    "google/siglip2-base-patch16-naflex",
    "facebook/metaclip-2-worldwide-huge-quickgelu",
)
_OPEN_CLIP_ENCODERS = (
    "open_clip:RN50/openai",
    "open_clip:RN101/openai",
    "open_clip:ViT-B-32/laion2b_s34b_b79k",
    "open_clip:hf-hub:timm/ViT-B-16-SigLIP",
)
_PRECISIONS = ("auto", "fp32", "fp16", "bf16")
# Files a model directory's revision hash and a hub snapshot cover (config, vocab, weights).
_MODEL_FILES = ("*.json", "*.txt", "*.model", "*.safetensors", "*.bin")
# One of these must be beside the weights: transformers would otherwise build an empty tokenizer.
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")


def list_encoders() -> list[str]:
    """Encoder ids known to work; any hub id or local directory of a supported family also does."""
    return [*_HF_ENCODERS, *_OPEN_CLIP_ENCODERS]


@dataclass
class Encoder:
    """A frozen image and text encoder of one family.

    Attributes:
        id: the hub id or ``open_clip:`` id it was created from, or the absolute path of a local
            directory (so a cache or classifier made here finds it from any working directory).
        revision: what pins the weights: the hub commit, a content hash of a local directory,
            or the open_clip pretrained tag and weight-file hash.
        backend: ``"hf"`` or ``"open_clip"``.
        family: the encoder family (:func:`hgadapter.extract.families.list_families`, or ``"open_clip"``).
        dim: feature dimension d.
        logit_scale: the model's learned logit scale s (exp of the stored log value).
        logit_bias: SigLIP's learned logit bias b (``None`` for softmax-trained families).
        preprocess: the checkpoint's own image processor (evaluation inputs of one image).
        text: how prompts are tokenised (Hugging Face backend; ``None`` for open_clip's own tokenizer).
        context_length: token length prompts are padded / truncated to.
        device: where the model runs.
        precision: ``fp32``, ``fp16`` or ``bf16`` (autocast; CUDA only for the latter two).
    """

    id: str
    revision: str
    backend: str
    dim: int
    logit_scale: float
    preprocess: ImageProcessing
    context_length: int
    device: torch.device
    precision: str
    _model: Any = None
    _tokenizer: Any = None
    family: str = "clip"
    logit_bias: float | None = None
    text: TextRecipe | None = None

    # -- what other modules may use (CoOp reads the frozen model and its tokenizer) -------------
    @property
    def model(self) -> Any:
        """The frozen underlying model: a ``transformers`` model or an ``open_clip`` one (read only)."""
        return self._model

    @property
    def tokenizer(self) -> Any:
        """The tokenizer that :meth:`encode_texts` uses (read only)."""
        return self._tokenizer

    # -- inference ----------------------------------------------------------------------------
    def _autocast(self):
        if self.device.type == "cuda" and self.precision in ("fp16", "bf16"):
            dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
            return torch.autocast("cuda", dtype=dtype)
        return torch.autocast(self.device.type, enabled=False)

    @torch.inference_mode()
    def encode_images(self, inputs: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Normalised image features.

        Args:
            inputs: the processor's outputs for a batch (``pixel_values`` and, for NaFlex,
                ``pixel_attention_mask`` and ``spatial_shapes``), or ``pixel_values`` alone.

        Shapes:
            pixel_values: ``(B, 3, H, W)`` float32 (NaFlex: ``(B, N, p*p*3)``); returns ``(B, d)``
            float32 (CPU).
        """
        if isinstance(inputs, torch.Tensor):
            inputs = {"pixel_values": inputs}
        inputs = {k: v.to(self.device, non_blocking=True) for k, v in inputs.items()}
        with self._autocast():
            if self.backend == "hf":
                out = self._model.get_image_features(**inputs).pooler_output
            else:
                out = self._model.encode_image(inputs["pixel_values"])
        return F.normalize(out.float(), dim=-1).cpu()

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """The text tower's keyword inputs for ``texts``, as the family was trained (Hugging Face
        backend): ``input_ids`` ``(n, L)`` padded to ``L = text.max_length`` and, when the
        family's tower reads it, ``attention_mask`` ``(n, L)``; on :attr:`device`. Methods that
        learn prompt tokens (CoOp) start from these."""
        if self.backend != "hf":
            raise EncoderError(f"{self.id}: tokenize() serves Hugging Face encoders; open_clip's tokenizer is .tokenizer")
        recipe = self.text
        if recipe.lowercase:
            texts = [t.lower() for t in texts]
        tokens = self._tokenizer(
            list(texts), padding="max_length", max_length=recipe.max_length, truncation=True, return_tensors="pt"
        )
        kwargs = {"input_ids": tokens["input_ids"].to(self.device)}
        if recipe.attention_mask:
            kwargs["attention_mask"] = tokens["attention_mask"].to(self.device)
        return kwargs

    def _text_forward(self, texts: list[str]) -> torch.Tensor:
        """Raw (unnormalised) text features of one batch, ``(n, d)``."""
        if self.backend != "hf":
            return self._model.encode_text(self._tokenizer(texts).to(self.device))
        return self._model.get_text_features(**self.tokenize(texts)).pooler_output

    @torch.inference_mode()
    def encode_texts(
        self, texts: list[str], *, batch_size: int = 256, return_norms: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Normalised text features of ``texts``: ``(len(texts), d)`` float32 (CPU), each prompt
        tokenised as its family was trained (:class:`~hgadapter.extract.families.TextRecipe`).

        With ``return_norms`` also the raw L2 norm of each prompt's feature before normalising,
        ``(len(texts),)`` float32: ``(features, norms)``.
        """
        chunks, norms = [], []
        for start in range(0, len(texts), batch_size):
            with self._autocast():
                out = self._text_forward(list(texts[start : start + batch_size])).float()  # (n, d)
            norms.append(out.norm(dim=-1).cpu())
            chunks.append(F.normalize(out, dim=-1).cpu())
        feats = torch.cat(chunks) if chunks else torch.zeros(0, self.dim)  # (n, d)
        if return_norms:
            return feats, (torch.cat(norms) if norms else torch.zeros(0))  # (n, d), (n,)
        return feats

    def meta(self) -> dict[str, Any]:
        """What the sidecar and an exported classifier record about the encoder: everything that
        determines its features, and the scale (and bias) its logits were trained with."""
        return {
            "id": self.id,
            "revision": self.revision,
            "backend": self.backend,
            "family": self.family,
            "dim": self.dim,
            "processor": self.preprocess.to_dict(),
            "text": self.text.to_dict() if self.text is not None else {"tokenizer": "open_clip"},
            "context_length": self.context_length,
            "precision": self.precision,
            "logit_scale": self.logit_scale,
            "logit_bias": self.logit_bias,
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


def hash_directory(path: Path, *, patterns: tuple[str, ...] = _MODEL_FILES) -> str:
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
        f"{model_id!r} is neither a folder here nor a model in this machine's Hugging Face cache (no network, "
        f"or not downloaded). Download it once where there is internet, e.g. `hf download {model_id}`, and copy "
        f"the cache ($HF_HOME, default ~/.cache/huggingface) here; or save the model, tokenizer and image "
        f"processor with save_pretrained into a folder and pass --model FOLDER."
    )


def _snapshot(model_id: str, revision: str | None) -> tuple[Path, str]:
    """The local snapshot directory and commit of a hub model; downloads only when online."""
    from huggingface_hub import snapshot_download

    patterns = list(_MODEL_FILES[:-1])  # no pickled *.bin weights
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


def _looks_like_path(model_id: str) -> bool:
    """Whether an id that is not an existing folder was meant as one: it starts like a path, has
    more parts than a hub ``org/name``, or its first part is a folder here (``models/x``)."""
    if model_id.startswith((".", "/", "~")) or model_id.endswith(("/", os.sep)) or model_id.count("/") > 1:
        return True
    if os.sep != "/" and os.sep in model_id:
        return True
    head = model_id.split("/", 1)[0]
    return "/" in model_id and Path(head).is_dir()


def _locate(model_id: str, revision: str | None) -> tuple[str, Path, str]:
    """(recorded id, directory, revision) of a local folder or hub id."""
    local = Path(model_id).expanduser()
    if local.is_dir():
        return str(local.resolve()), local, hash_directory(local)
    if local.exists():
        raise EncoderError(f"--model {model_id!r} is a file; expected a model folder (save_pretrained) or a hub id")
    if _looks_like_path(model_id) or "/" not in model_id:
        raise EncoderError(
            f"model folder {model_id!r} does not exist (no folder {local.resolve()}); check the path, or give a "
            f"hub id such as {DEFAULT_ENCODER!r}"
        )
    directory, rev = _snapshot(model_id, revision)
    return model_id, directory, rev


def _processing(directory: Path, family: Family, config: Any) -> ImageProcessing:
    """The checkpoint's own image processor (its ``preprocessor_config.json``), else the family's default."""
    path = directory / "preprocessor_config.json"
    if not path.is_file():
        return ImageProcessing(processor_class=family.processor_class, settings=family.default_processor(config))
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise EncoderError(f"{path}: cannot read the image processor config: {err}") from None
    if not isinstance(settings, dict):
        raise EncoderError(f"{path}: expected a JSON object")
    declared = str(settings.get("image_processor_type") or "").removesuffix("Fast").removesuffix("Pil") + "Pil"
    cls = declared if declared in PROCESSOR_CLASSES else family.processor_class
    return ImageProcessing(processor_class=cls, settings=settings)


def _load_hf(model_id: str, revision: str | None, device: torch.device, precision: str) -> Encoder:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    recorded_id, directory, rev = _locate(model_id, revision)
    if not (directory / "config.json").is_file():
        raise EncoderError(
            f"{directory} has no config.json; expected a model folder written by save_pretrained "
            f"(supported families: {list_families()})"
        )
    try:
        config = AutoConfig.from_pretrained(directory)
    except (OSError, ValueError, KeyError) as err:
        raise EncoderError(f"{directory}/config.json is not a model config transformers can read: {_first_line(err)}") from None
    family = family_for_model_type(getattr(config, "model_type", None), where=str(directory))
    try:
        model = AutoModel.from_pretrained(directory, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as err:
        raise EncoderError(f"cannot load the {family.name} model in {directory}: {_first_line(err)}") from None
    if not any((directory / name).is_file() for name in _TOKENIZER_FILES):
        raise EncoderError(
            f"{directory} has no tokenizer files (one of {list(_TOKENIZER_FILES)}); save the tokenizer there too"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError, ImportError, TypeError, AttributeError) as err:
        hint = "; SigLIP's tokenizer needs sentencepiece: pip install 'hgadapter[siglip]'" if "sentencepiece" in str(err).lower() else ""
        raise EncoderError(f"cannot load the tokenizer in {directory}: {_first_line(err)}{hint}") from None
    model.eval().requires_grad_(False).to(device)
    bias = getattr(model, "logit_bias", None)
    encoder = Encoder(
        id=recorded_id,
        revision=rev,
        backend="hf",
        family=family.name,
        dim=0,
        logit_scale=float(model.logit_scale.exp()),
        logit_bias=None if bias is None else float(bias.reshape(-1)[0]),
        preprocess=_processing(directory, family, config),
        text=family.text_recipe(config, tokenizer),
        context_length=int(config.text_config.max_position_embeddings),
        device=device,
        precision=precision,
        _model=model,
        _tokenizer=tokenizer,
    )
    return dataclasses.replace(encoder, dim=int(encoder.encode_texts(["a photo."]).shape[1]))


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def create_encoder(
    model_id: str = DEFAULT_ENCODER,
    *,
    revision: str | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
) -> Encoder:
    """Load a frozen dual encoder by hub id, local directory or open_clip id.

    Args:
        model_id: see :func:`list_encoders`; a directory saved with ``save_pretrained`` of any
            supported family (:func:`list_families`), ``open_clip:<arch>/<pretrained>`` or
            ``open_clip:hf-hub:<org>/<repo>``.
        revision: hub branch, tag or commit (Hugging Face backend only).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``; default: CUDA when available.
        precision: ``auto`` (bf16 where supported, else fp16 on CUDA; fp32 on the CPU), ``fp32``,
            ``fp16`` or ``bf16``.

    Raises:
        EncoderError: unknown, unavailable or unsupported model, in one line (with how to
            download it, or the supported families).
    """
    dev = resolve_device(device)
    prec = _resolve_precision(precision, dev)
    if model_id.startswith("open_clip:"):
        from hgadapter.extract.openclip_backend import load_open_clip

        return Encoder(**load_open_clip(model_id, dev), precision=prec)
    return _load_hf(model_id, revision, dev, prec)
