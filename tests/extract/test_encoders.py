"""The frozen CLIP encoders: real save_pretrained / from_pretrained path on a tiny model."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from hgadapter.extract.encoders import EncoderError, create_encoder, hash_directory, list_encoders
import clip_fixtures as cf


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    return cf.build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir):
    return create_encoder(str(tiny_clip_dir), device="cpu")


def test_loads_frozen_in_eval_mode_fp32_on_cpu(encoder, tiny_clip_dir):
    model = encoder._model
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert encoder.precision == "fp32"
    assert encoder.dim == 24 and encoder.context_length == 24
    assert encoder.revision == hash_directory(tiny_clip_dir) and encoder.id == str(tiny_clip_dir.resolve())
    assert encoder.logit_scale == pytest.approx(float(model.logit_scale.exp()))


def test_preprocess_matches_the_hf_pil_processor(encoder, tiny_clip_dir):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil.from_pretrained(tiny_clip_dir)
    rng = np.random.default_rng(3)
    for size in [(50, 40), (33, 61), (32, 32), (20, 28)]:
        image = cf.make_image(rng, 0, size)
        ours = encoder.preprocess(image)["pixel_values"]
        ref = processor(images=[image], return_tensors="np")["pixel_values"][0]
        np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_image_features_normalised_and_batch_independent(encoder):
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(np.stack([encoder.preprocess(cf.make_image(rng, i % 3))["pixel_values"] for i in range(5)]))
    batched = encoder.encode_images(pixels)
    single = torch.cat([encoder.encode_images(pixels[i : i + 1]) for i in range(5)])
    assert batched.shape == (5, 24) and batched.dtype == torch.float32
    torch.testing.assert_close(batched.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


def test_text_features_match_the_model(encoder):
    texts = ["a photo of a red square.", "a photo of no blue stripes.", "itap of a green circle."]
    ours = encoder.encode_texts(texts, batch_size=2)
    tok = encoder._tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = encoder._model.get_text_features(**tok).pooler_output
    torch.testing.assert_close(ours, torch.nn.functional.normalize(ref, dim=-1), atol=1e-5, rtol=0)
    assert encoder.encode_texts([]).shape == (0, 24)
    # return_norms: the same features and each prompt's raw norm before normalisation
    features, norms = encoder.encode_texts(texts, batch_size=2, return_norms=True)
    assert torch.equal(features, ours)
    torch.testing.assert_close(norms, ref.norm(dim=-1), atol=1e-5, rtol=1e-5)
    assert encoder.encode_texts([], return_norms=True)[1].shape == (0,)


def test_unknown_hub_id_offline_says_how_to_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderError, match=r"hf download nobody/no-such-clip"):
        create_encoder("nobody/no-such-clip", device="cpu")


def test_missing_directory_is_an_error(tmp_path):
    with pytest.raises(EncoderError, match="does not exist"):
        create_encoder(str(tmp_path / "nope" / "model"), device="cpu")


def test_bad_precision_lists_choices():
    with pytest.raises(EncoderError, match=r"unknown precision 'fp8'.*fp16"):
        create_encoder("whatever", precision="fp8", device="cpu")


def test_list_encoders_names_both_backends():
    ids = list_encoders()
    assert "openai/clip-vit-base-patch16" in ids and "open_clip:RN50/openai" in ids


def test_public_model_tokenizer_family_and_text_norms(encoder):
    assert encoder.model is encoder._model and encoder.tokenizer is encoder._tokenizer
    assert encoder.family == "clip"
    texts = ["a photo of a red square.", "itap of a green circle."]
    feats, norms = encoder.encode_texts(texts, return_norms=True)
    tok = encoder.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        raw = encoder.model.get_text_features(**tok).pooler_output
    torch.testing.assert_close(norms, raw.norm(dim=-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats, encoder.encode_texts(texts))
    empty, empty_norms = encoder.encode_texts([], return_norms=True)
    assert empty.shape == (0, 24) and empty_norms.shape == (0,)
