"""Tiny random checkpoints of every encoder family, written with ``save_pretrained`` (no network).

Each has random weights, a small tokenizer trained here with the ``tokenizers`` library (the kind
its family ships: T5-style with pad = end-of-text for SigLIP, Gemma's for SigLIP 2, XLM-R's for
MetaCLIP 2, CLIP's BPE for CLIP) and its family's PIL image processor config.
"""

from __future__ import annotations

from pathlib import Path

import torch

import clip_fixtures as cf

FAMILIES = ("clip", "siglip", "siglip2_fixres", "siglip2_naflex", "metaclip_2")

_COMMON = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
_CONTEXT = 16
_IMAGE = 32
_PATCH = 8


def _text_config(tokenizer, **extra) -> dict:
    return dict(
        **_COMMON,
        vocab_size=len(tokenizer),
        max_position_embeddings=_CONTEXT,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
        **extra,
    )


def _train(cls, **kwargs):
    tokenizer = cls(**kwargs).train_new_from_iterator(cf.tokenizer_corpus(), vocab_size=300)
    tokenizer.model_max_length = _CONTEXT
    return tokenizer


def build_tiny_siglip(path: str | Path, *, seed: int = 0) -> Path:
    """SigLIP: ``SiglipModel``, a T5-style unigram tokenizer whose pad token is ``</s>`` (as
    SigLIP's), a square ``SiglipImageProcessorPil``."""
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel, T5Tokenizer

    tokenizer = _train(T5Tokenizer, pad_token="</s>")
    config = SiglipConfig(
        text_config=_text_config(tokenizer), vision_config=dict(**_COMMON, image_size=_IMAGE, patch_size=_PATCH)
    )
    return _save(path, SiglipModel, config, tokenizer, SiglipImageProcessorPil(size={"height": _IMAGE, "width": _IMAGE}), seed)


def build_tiny_siglip2_fixres(path: str | Path, *, seed: int = 0) -> Path:
    """SigLIP 2 FixRes as the hub ships it: ``model_type: siglip`` with Gemma's tokenizer."""
    from transformers import GemmaTokenizer, SiglipConfig, SiglipImageProcessorPil, SiglipModel

    tokenizer = _train(GemmaTokenizer)
    config = SiglipConfig(
        text_config=_text_config(tokenizer), vision_config=dict(**_COMMON, image_size=_IMAGE, patch_size=_PATCH)
    )
    processor = SiglipImageProcessorPil(size={"height": _IMAGE, "width": _IMAGE}, resample=2)
    return _save(path, SiglipModel, config, tokenizer, processor, seed)


def build_tiny_siglip2_naflex(path: str | Path, *, seed: int = 0, max_num_patches: int = 16) -> Path:
    """SigLIP 2 NaFlex: ``Siglip2Model``, Gemma's tokenizer, ``Siglip2ImageProcessorPil`` with a patch budget."""
    from transformers import GemmaTokenizer, Siglip2Config, Siglip2ImageProcessorPil, Siglip2Model

    tokenizer = _train(GemmaTokenizer)
    config = Siglip2Config(
        text_config=_text_config(tokenizer),
        vision_config=dict(**_COMMON, patch_size=_PATCH, num_patches=max_num_patches),
    )
    processor = Siglip2ImageProcessorPil(patch_size=_PATCH, max_num_patches=max_num_patches)
    return _save(path, Siglip2Model, config, tokenizer, processor, seed)


def build_tiny_metaclip_2(path: str | Path, *, seed: int = 0) -> Path:
    """MetaCLIP 2: ``MetaClip2Model``, an XLM-R-style unigram tokenizer, CLIP's processor."""
    from transformers import CLIPImageProcessorPil, MetaClip2Config, MetaClip2Model, XLMRobertaTokenizer

    tokenizer = _train(XLMRobertaTokenizer)
    config = MetaClip2Config(
        text_config=_text_config(tokenizer),
        vision_config=dict(**_COMMON, image_size=_IMAGE, patch_size=_PATCH),
        projection_dim=24,
    )
    processor = CLIPImageProcessorPil(size={"shortest_edge": _IMAGE}, crop_size={"height": _IMAGE, "width": _IMAGE})
    return _save(path, MetaClip2Model, config, tokenizer, processor, seed)


def _save(path, model_cls, config, tokenizer, processor, seed: int) -> Path:
    path = Path(path)
    torch.manual_seed(seed)
    model_cls(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build(family: str, path: str | Path, *, seed: int = 0) -> Path:
    """The tiny checkpoint of ``family`` (one of :data:`FAMILIES`) in ``path``."""
    builders = {
        "clip": lambda p: cf.build_tiny_clip(p, seed=seed),
        "siglip": lambda p: build_tiny_siglip(p, seed=seed),
        "siglip2_fixres": lambda p: build_tiny_siglip2_fixres(p, seed=seed),
        "siglip2_naflex": lambda p: build_tiny_siglip2_naflex(p, seed=seed),
        "metaclip_2": lambda p: build_tiny_metaclip_2(p, seed=seed),
    }
    return builders[family](path)
