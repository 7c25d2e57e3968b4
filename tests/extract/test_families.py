"""Encoder families (hgadapter/extract/families.py): each family's tiny random checkpoint, saved
with save_pretrained, extracts into a cache whose text and image features are what the family's
own Hugging Face classes give for the same prompts and images, with the family's padding and
image processor."""

from __future__ import annotations

import json

import family_fixtures as ff
import clip_fixtures as cf
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hgadapter.cli import main
from hgadapter.data.io import load_cache
from hgadapter.extract.datasets import build_dataset
from hgadapter.extract.encoders import EncoderError, create_encoder
from hgadapter.extract.families import get_family, list_families
from hgadapter.extract.images import ImageProcessing

# What each tiny checkpoint is, as the family registry must see it: (family, model class, PIL processor).
EXPECTED = {
    "clip": ("clip", "CLIPModel", "CLIPImageProcessorPil"),
    "siglip": ("siglip", "SiglipModel", "SiglipImageProcessorPil"),
    "siglip2_fixres": ("siglip", "SiglipModel", "SiglipImageProcessorPil"),
    "siglip2_naflex": ("siglip2", "Siglip2Model", "Siglip2ImageProcessorPil"),
    "metaclip_2": ("metaclip_2", "MetaClip2Model", "CLIPImageProcessorPil"),
}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("family_images")
    for part, count, seed in (("train", 2, 0), ("val", 1, 1), ("test", 2, 2)):
        cf.build_imagefolder(root / part, per_class=count, seed=seed)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """``checkpoint(kind)``: the tiny checkpoint of a family, built once per module."""
    built: dict[str, object] = {}

    def get(kind: str):
        if kind not in built:
            built[kind] = ff.build(kind, tmp_path_factory.mktemp(kind) / "model")
        return built[kind]

    return get


@pytest.fixture(scope="module", params=ff.FAMILIES)
def extracted(request, tmp_path_factory, images, checkpoint):
    """(kind, checkpoint dir, cache) of one family: `hgadapter extract` on its tiny checkpoint."""
    root = tmp_path_factory.mktemp(request.param)
    model = checkpoint(request.param)
    assert main([
        "extract", "--dataset", "imagefolder", "--data-dir", str(images), "--model", str(model), "--out",
        str(root / "cache"), "--shots", "1", "--seeds", "1", "--views", "2", "--device", "cpu", "--quiet",
    ]) == 0
    return request.param, model, load_cache(root / "cache")


def _reference_text(kind: str, model_dir, texts: list[str]) -> torch.Tensor:
    """The family's own classes, as its model card says to call them: CLIP-like towers with the
    attention mask (dynamic padding); SigLIP's padded to the maximum length, ids only."""
    from transformers import AutoModel, AutoTokenizer

    model, tokenizer = AutoModel.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)
    if kind in ("clip", "metaclip_2"):
        kwargs = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    else:
        texts = [t.lower() for t in texts] if kind != "siglip" else texts
        max_length = model.config.text_config.max_position_embeddings
        kwargs = {"input_ids": tokenizer(texts, padding="max_length", max_length=max_length, return_tensors="pt")["input_ids"]}
    with torch.no_grad():
        return F.normalize(model.get_text_features(**kwargs).pooler_output, dim=-1)


def _reference_images(kind: str, model_dir, paths) -> torch.Tensor:
    import transformers
    from PIL import Image

    processor = getattr(transformers, EXPECTED[kind][2]).from_pretrained(model_dir)
    model = transformers.AutoModel.from_pretrained(model_dir).eval()
    inputs = processor(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")
    with torch.no_grad():
        return F.normalize(model.get_image_features(**inputs).pooler_output, dim=-1)


def test_cached_features_equal_the_family_own_classes(extracted, images):
    kind, model_dir, cache = extracted
    family, model_class, processor_class = EXPECTED[kind]
    enc = cache.meta["encoder"]
    assert enc["family"] == family and enc["processor"]["class"] == processor_class
    assert enc["id"] == str(model_dir.resolve())
    assert enc["text"]["attention_mask"] == (family in ("clip", "metaclip_2"))
    prompts = [p for ps in cache.meta["prompts"]["pos"]["prompts"] for p in ps] if "prompts" in cache.meta["prompts"]["pos"] else None
    texts = prompts or [f"a photo of a {c}." for c in cache.classnames]
    if prompts is None:  # the default prompt set: one CLIP template per class
        assert cache.pos_text.shape[1] == 1
    torch.testing.assert_close(cache.pos_text[:, 0], _reference_text(kind, model_dir, texts), atol=1e-5, rtol=0)
    paths = [s.key for s in build_dataset("imagefolder", images).test]
    torch.testing.assert_close(cache.test_features, _reference_images(kind, model_dir, paths), atol=1e-5, rtol=0)
    assert cache.logit_scale == pytest.approx(enc["logit_scale"])
    assert (enc["logit_bias"] is not None) == (get_family(family).scoring == "sigmoid")


@pytest.mark.parametrize("kind", ["siglip", "siglip2_naflex"])
def test_siglip_text_depends_on_max_length_padding(kind, checkpoint):
    """Why the family pads to the maximum length: dynamic padding gives other features."""
    enc = create_encoder(str(checkpoint(kind)), device="cpu")
    texts = ["a photo of a red square.", "itap of a green circle."]
    tokens = enc.tokenizer([t.lower() for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        dynamic = F.normalize(enc.model.get_text_features(input_ids=tokens["input_ids"]).pooler_output, dim=-1)
    assert not torch.allclose(enc.encode_texts(texts), dynamic, atol=1e-3)


def test_naflex_keeps_the_aspect_ratio_and_siglip_squashes_without_crop(checkpoint):
    naflex = create_encoder(str(checkpoint("siglip2_naflex")), device="cpu")
    wide = cf.make_image(np.random.default_rng(0), 0, (64, 16))  # 4:1
    inputs = naflex.preprocess(wide)
    rows, cols = inputs["spatial_shapes"].tolist()
    assert cols > rows and rows * cols <= 16 and int(inputs["pixel_attention_mask"].sum()) == rows * cols
    assert naflex.preprocess.view_size is None and naflex.preprocess.naflex
    siglip = create_encoder(str(checkpoint("siglip")), device="cpu")
    assert siglip.preprocess.view_size == (32, 32) and "crop_size" not in siglip.preprocess.settings
    # A square resize keeps the whole image: a left half that differs from the right survives it.
    arr = np.zeros((16, 64, 3), np.uint8)
    arr[:, :8] = 255  # a white strip at the far left, which a centre crop would cut away
    from PIL import Image

    pixels = siglip.preprocess(Image.fromarray(arr))["pixel_values"]  # (3, 32, 32)
    assert pixels[:, :, 0].mean() > 0.9 and pixels[:, :, -1].mean() < -0.9


def test_augmented_naflex_views_batch_with_a_mask(extracted):
    kind, _, cache = extracted
    (fs,) = cache.train_sets.values()
    assert fs.features.shape[1:] == (2, cache.dim) and torch.isfinite(fs.features).all()
    torch.testing.assert_close(fs.features.norm(dim=-1), torch.ones(fs.features.shape[:2]))
    assert not torch.allclose(fs.features[:, 0], fs.features[:, 1])  # two different augmented views


def test_unsupported_family_gets_one_line_naming_the_supported(tmp_path):
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, image_size=16,
                       patch_size=8)).save_pretrained(tmp_path / "vit")
    with pytest.raises(EncoderError) as err:
        create_encoder(str(tmp_path / "vit"), device="cpu")
    message = str(err.value)
    assert "\n" not in message and "'vit'" in message
    assert all(f"'{name}'" in message for name in ("clip", "siglip", "siglip2", "metaclip_2"))


def test_a_folder_that_is_not_a_model_is_one_line(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "config.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(EncoderError) as err:
        create_encoder(str(tmp_path / "notes"), device="cpu")
    assert "\n" not in str(err.value)
    clip = cf.build_tiny_clip(tmp_path / "clip")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"):
        (clip / name).unlink(missing_ok=True)
    with pytest.raises(EncoderError, match="tokenizer") as err:
        create_encoder(str(clip), device="cpu")
    assert "\n" not in str(err.value)


def test_path_typos_say_no_such_folder_and_relative_paths_are_recorded_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for typo in ("./clip-typo", "models/x", "clip-typo", "a/b/c"):
        with pytest.raises(EncoderError, match="does not exist") as err:
            create_encoder(typo, device="cpu")
        assert "hf download" not in str(err.value)
    cf.build_tiny_clip(tmp_path / "clip")
    enc = create_encoder("clip", device="cpu")
    assert enc.id == str((tmp_path / "clip").resolve())


def test_processing_record_round_trips_and_reads_pre_family_caches():
    proc = ImageProcessing(processor_class="SiglipImageProcessorPil", settings={"size": {"height": 32, "width": 32}})
    assert ImageProcessing.from_dict(json.loads(json.dumps(proc.to_dict()))) == proc
    legacy = ImageProcessing.from_dict({"resize": 32, "crop": [32, 32], "mean": [0.5] * 3, "std": [0.25] * 3, "resample": 3})
    assert legacy.processor_class == "CLIPImageProcessorPil" and legacy.view_size == (32, 32)
    image = cf.make_image(np.random.default_rng(1), 2, (50, 40))
    from clip_preprocess_reference import Preprocess

    old = Preprocess(resize=32, crop=(32, 32), mean=(0.5,) * 3, std=(0.25,) * 3)(image)
    np.testing.assert_allclose(legacy(image)["pixel_values"], old, atol=1e-5)
    # a hub checkpoint's config as OpenAI's CLIP ships it (int sizes, a feature-extractor name)
    hub = ImageProcessing(processor_class="CLIPImageProcessorPil", settings={
        "crop_size": 224, "do_center_crop": True, "feature_extractor_type": "CLIPFeatureExtractor", "resample": 3,
        "size": 224})
    assert hub.view_size == (224, 224) and hub.settings["size"] == {"shortest_edge": 224}
    with pytest.raises(EncoderError, match="unknown image processor"):
        ImageProcessing(processor_class="os.system", settings={})


def test_registry_names_and_errors():
    assert list_families() == ["clip", "metaclip_2", "siglip", "siglip2"]
    with pytest.raises(EncoderError, match=r"unknown encoder family 'align'; available: \['clip'"):
        get_family("align")


def test_tokenize_follows_the_family_recipe(checkpoint):
    siglip = create_encoder(str(checkpoint("siglip2_naflex")), device="cpu")
    tokens = siglip.tokenize(["A Photo Of A Red Square."])
    assert set(tokens) == {"input_ids"} and tokens["input_ids"].shape == (1, siglip.text.max_length)
    assert torch.equal(tokens["input_ids"], siglip.tokenize(["a photo of a red square."])["input_ids"])  # lower-cased
    clip = create_encoder(str(checkpoint("clip")), device="cpu")
    assert set(clip.tokenize(["a photo."])) == {"input_ids", "attention_mask"}
