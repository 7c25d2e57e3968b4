"""open_clip ids and transforms (hgadapter/extract/openclip_backend.py). open_clip itself is not
installed on the development machine (it needs torchvision), so loading a model is untested here;
the id grammar, the mapping of its preprocess config to a PIL processor and the errors are."""

from __future__ import annotations

import importlib.util

import clip_fixtures as cf
import numpy as np
import pytest

from hgadapter.extract.encoders import EncoderError, create_encoder
from hgadapter.extract.openclip_backend import OpenClipId, parse_open_clip_id, processing_from_preprocess_cfg


@pytest.mark.parametrize(
    "spec, parsed",
    [
        ("open_clip:RN50/openai", OpenClipId("RN50", "openai")),
        ("open_clip:ViT-B-32/laion2b_s34b_b79k", OpenClipId("ViT-B-32", "laion2b_s34b_b79k")),
        ("open_clip:EVA02-B-16/merged2b_s8b_b131k", OpenClipId("EVA02-B-16", "merged2b_s8b_b131k")),
        ("open_clip:hf-hub:timm/ViT-B-16-SigLIP", OpenClipId("hf-hub:timm/ViT-B-16-SigLIP", None)),
        ("open_clip:hf-hub:timm/PE-Core-B-16", OpenClipId("hf-hub:timm/PE-Core-B-16", None)),
        ("open_clip:RN50//weights/rn50.pt", OpenClipId("RN50", "/weights/rn50.pt")),  # a local weight file
    ],
)
def test_open_clip_ids_parse(spec, parsed):
    assert parse_open_clip_id(spec) == parsed
    assert parsed.hub == spec.startswith("open_clip:hf-hub:")


@pytest.mark.parametrize(
    "spec", ["open_clip:RN50", "open_clip:/openai", "open_clip:", "open_clip:hf-hub:", "open_clip:hf-hub:timm",
             "open_clip:hf-hub:a/b/c", "open_clip:ViT B/openai", "RN50/openai"],
)
def test_malformed_open_clip_ids_say_what_is_expected(spec):
    with pytest.raises(EncoderError, match=r"open_clip:ViT-B-32/laion2b_s34b_b79k") as err:
        parse_open_clip_id(spec)
    assert "\n" not in str(err.value)


def test_shortest_resize_mode_is_clip_processing():
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    proc = processing_from_preprocess_cfg(
        {"size": 32, "mode": "RGB", "mean": mean, "std": std, "interpolation": "bicubic", "resize_mode": "shortest"}
    )
    assert proc.processor_class == "CLIPImageProcessorPil" and proc.view_size == (32, 32) and proc.resample == 3
    from clip_preprocess_reference import Preprocess

    image = cf.make_image(np.random.default_rng(0), 1, (50, 37))
    np.testing.assert_allclose(proc(image)["pixel_values"], Preprocess(32, (32, 32), mean, std)(image), atol=1e-5)


def test_squash_resize_mode_is_siglip_processing_and_longest_is_refused():
    proc = processing_from_preprocess_cfg(
        {"size": (24, 24), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "resize_mode": "squash"}
    )
    assert proc.processor_class == "SiglipImageProcessorPil" and proc.view_size == (24, 24) and proc.resample == 2
    assert proc(cf.make_image(np.random.default_rng(0), 1, (50, 20)))["pixel_values"].shape == (3, 24, 24)
    with pytest.raises(EncoderError, match="resize_mode 'longest' is not supported"):
        processing_from_preprocess_cfg({"size": 224, "resize_mode": "longest"})
    with pytest.raises(EncoderError, match="interpolation 'random'"):
        processing_from_preprocess_cfg({"size": 224, "interpolation": "random"})


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is not None, reason="open_clip is installed")
@pytest.mark.parametrize("spec", ["open_clip:RN50/openai", "open_clip:hf-hub:timm/ViT-B-16-SigLIP"])
def test_open_clip_backend_is_optional(spec):
    with pytest.raises(EncoderError, match=r"pip install 'hgadapter\[open_clip\]'"):
        create_encoder(spec, device="cpu")


def test_malformed_id_fails_before_importing_open_clip():
    with pytest.raises(EncoderError, match="must be open_clip:<arch>/<pretrained tag>"):
        create_encoder("open_clip:RN50", device="cpu")
