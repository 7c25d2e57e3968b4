"""Encoder families: how each kind of vision-language dual encoder was trained to read text
and images, looked up by the checkpoint's ``config.json`` ``model_type`` (docs/extraction.md).

A family fixes what a checkpoint's files do not say reliably:

- the text recipe: prompts are padded to the text tower's maximum length; CLIP-like towers
  (causal attention, pooled at the end-of-text token) get the attention mask, SigLIP's
  (bidirectional, pooled at the last position) do not, because they were trained on sequences
  padded with the end-of-text token and no mask (open_clip issue #984; transformers #39269);
  SigLIP 2 lower-cases its text (big_vision's ``lower`` step; transformers' ``Siglip2Tokenizer``
  does the same);
- the image processor class (its PIL backend, no torchvision) and the settings to use when a
  checkpoint ships no ``preprocessor_config.json``: CLIP resizes the short side and centre-crops,
  SigLIP resizes to a square without cropping, SigLIP 2 NaFlex keeps the aspect ratio under a
  patch budget;
- how logits are scored: softmax over classes (CLIP) or a sigmoid per pair with a learned bias
  (SigLIP).

Adding a family is one :class:`Family` entry in ``_FAMILIES`` plus a tiny-checkpoint test in
``tests/extract/test_families.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from hgadapter.errors import UserError

__all__ = ["EncoderError", "Family", "TextRecipe", "family_for_model_type", "get_family", "list_families"]

# CLIP's published preprocessing, for checkpoints that ship no processor config.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class EncoderError(UserError):
    """An encoder id cannot be resolved or loaded (unknown, not downloaded, unsupported, missing extra)."""


@dataclass(frozen=True)
class TextRecipe:
    """How prompts become token ids for one checkpoint (recorded in the cache and classifier).

    Attributes:
        max_length: every prompt is padded (and truncated) to this many tokens.
        attention_mask: whether the text tower is given the attention mask.
        lowercase: whether prompts are lower-cased first.
    """

    max_length: int
    attention_mask: bool
    lowercase: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"padding": "max_length", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TextRecipe":
        return cls(
            max_length=int(data["max_length"]), attention_mask=bool(data["attention_mask"]),
            lowercase=bool(data.get("lowercase", False)),
        )


@dataclass(frozen=True)
class Family:
    """One kind of dual encoder.

    Attributes:
        name: the family's name, recorded in caches and classifiers.
        model_types: ``config.json`` ``model_type`` values that belong to it.
        processor_class: its PIL image processor (``transformers`` class name).
        attention_mask: whether its text tower reads the attention mask (see the module docstring).
        lowercase: ``True``/``False``, or ``"gemma"``: lower-case when the tokenizer is Gemma's
            (SigLIP 2 FixRes checkpoints are ``model_type: siglip`` with Gemma's tokenizer).
        scoring: ``"softmax"`` (CLIP's contrastive loss) or ``"sigmoid"`` (SigLIP's pairwise loss).
        summary: one line for the docs and error messages.
    """

    name: str
    model_types: tuple[str, ...]
    processor_class: str
    attention_mask: bool
    lowercase: bool | str
    scoring: str
    summary: str

    def default_processor(self, config: Any) -> dict[str, Any]:
        """Processor settings for a checkpoint without ``preprocessor_config.json``, from its config."""
        vision = config.vision_config
        if self.processor_class == "CLIPImageProcessorPil":
            size = int(vision.image_size)
            return {
                "size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}, "do_center_crop": True,
                "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD), "resample": 3,
            }
        if self.processor_class == "SiglipImageProcessorPil":
            size = int(vision.image_size)
            return {"size": {"height": size, "width": size}}
        return {"patch_size": int(vision.patch_size), "max_num_patches": int(vision.num_patches)}

    def text_recipe(self, config: Any, tokenizer: Any) -> TextRecipe:
        """The text recipe of a checkpoint of this family."""
        lowercase = self.lowercase
        if lowercase == "gemma":
            lowercase = type(tokenizer).__name__.startswith(("Gemma", "Siglip2"))
        return TextRecipe(
            max_length=int(config.text_config.max_position_embeddings),
            attention_mask=self.attention_mask,
            lowercase=bool(lowercase),
        )


_FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            name="clip", model_types=("clip",), processor_class="CLIPImageProcessorPil", attention_mask=True,
            lowercase=False, scoring="softmax",
            summary="OpenAI CLIP and other CLIPModel checkpoints: short side resized, centre crop",
        ),
        Family(
            name="metaclip_2", model_types=("metaclip_2",), processor_class="CLIPImageProcessorPil", attention_mask=True,
            lowercase=False, scoring="softmax",
            summary="MetaCLIP 2 (worldwide, XLM-R tokenizer): CLIP's recipe",
        ),
        Family(
            name="siglip", model_types=("siglip",), processor_class="SiglipImageProcessorPil", attention_mask=False,
            lowercase="gemma", scoring="sigmoid",
            summary="SigLIP and SigLIP 2 FixRes: text padded to 64 without a mask, image squashed to a square",
        ),
        Family(
            name="siglip2", model_types=("siglip2",), processor_class="Siglip2ImageProcessorPil", attention_mask=False,
            lowercase=True, scoring="sigmoid",
            summary="SigLIP 2 NaFlex: aspect ratio kept under a patch budget, lower-cased text padded to 64",
        ),
    )
}


def list_families() -> list[str]:
    """The names of the supported Hugging Face families."""
    return sorted(_FAMILIES)


def get_family(name: str) -> Family:
    """The family called ``name``.

    Raises:
        EncoderError: unknown name, with the available ones.
    """
    try:
        return _FAMILIES[name]
    except KeyError:
        raise EncoderError(f"unknown encoder family {name!r}; available: {list_families()}") from None


def family_for_model_type(model_type: str | None, *, where: str = "the checkpoint") -> Family:
    """The family a checkpoint's ``model_type`` belongs to.

    Raises:
        EncoderError: a model type no family covers, naming the supported ones.
    """
    for family in _FAMILIES.values():
        if model_type in family.model_types:
            return family
    types = sorted(t for f in _FAMILIES.values() for t in f.model_types)
    raise EncoderError(
        f"{where} is a {model_type!r} model, which hgadapter cannot encode; supported model types: {types} "
        f"(or an open_clip id, open_clip:<arch>/<pretrained> or open_clip:hf-hub:<repo>)"
    )
