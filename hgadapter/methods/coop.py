"""CoOp: learnable context vectors read by CLIP's frozen text encoder (Zhou et al., "Learning to
Prompt for Vision-Language Models", IJCV 2022, Sec. 3.2).

    t_c = g([SOS] [V]_1 ... [V]_M [CLASS_c] [.] [EOS]),   logits(f) = s * cos(f, t_c)

``[V]_m`` are M learnable word embeddings (the context), shared by every class (unified) or one
set per class (``csc``); ``[CLASS_c]`` are the class name's token embeddings; ``g`` is CLIP's
frozen text transformer: positional embeddings, causal self-attention, the final layer norm,
the hidden state at the EOS position and the text projection. Only the context is trained, by
cross-entropy through ``g``; the class token sits at the end (``class_token_position``:
``middle`` splits the context around it, ``front`` puts it first).

Official recipe (``trainers/coop.py``, ``configs/trainers/CoOp/*.yaml``, ``scripts/coop/main.sh``,
``COOP.md``): M = 16 context vectors drawn from N(0, 0.02^2) (or, with ``CTX_INIT``, the token
embeddings of "a photo of a", M = 4), class token at the end, unified context; SGD (Dassl's
momentum 0.9 and weight decay 5e-4), lr 0.002, batch 32, cosine schedule after one constant
warmup epoch at 1e-5, 50 epochs at 1 shot, 100 at 2 and 4, 200 at 8 and 16 (ImageNet: 50 at
every K); the last epoch is kept and Dassl's loader drops each epoch's partial batch.

Changes (docs/baselines.md): the image features are the cache's augmented views of each
training image (the source augments every batch afresh: random resized crop and flip); the text
encoder runs in fp32 (the source's default ``PREC`` is fp16); the head is the text classifier
of the learned prompts' class embeddings, so export and predict need no prompt code. The
encoder is the one recorded in the cache (``meta["encoder"]``, id and revision), loaded through
:func:`hgadapter.extract.encoders.create_encoder` as extraction and prediction load it; CLIP-family
text encoders (Hugging Face ``CLIPModel``) only, for now.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hgadapter.config import ConfigError
from hgadapter.errors import UserError
from hgadapter.methods._common import CHECKPOINTS, TrainedMethod, text_predictor, zero_shot_logits
from hgadapter.methods._registry import hparam, register_method
from hgadapter.protocol import SelectionData

__all__ = [
    "CoOpConfig",
    "CoOp",
    "CoOpError",
    "ClipTextTower",
    "PromptTokens",
    "PromptLearner",
    "build_prompt_tokens",
    "load_cache_encoder",
    "CLASS_TOKEN_POSITIONS",
]

CLASS_TOKEN_POSITIONS: tuple[str, ...] = ("end", "middle", "front")


class CoOpError(UserError):
    """CoOp cannot run with this cache's encoder (another family, another revision, a prompt too long)."""


@dataclass(frozen=True)
class CoOpConfig:
    """CoOp (official ``configs/trainers/CoOp/rn50*.yaml`` and ``train.py``'s ``TRAINER.COOP`` defaults)."""

    n_ctx: int = hparam(16, low=1)  # context vectors M (TRAINER.COOP.N_CTX); with ctx_init, its token count instead
    ctx_init: str = ""  # words whose token embeddings start the context ("a photo of a"); "" = random N(0, init_std^2)
    init_std: float = hparam(0.02, positive=True)  # std of the random context initialisation
    csc: bool = False  # class-specific context: one context per class (TRAINER.COOP.CSC)
    class_token_position: str = hparam("end", choices=CLASS_TOKEN_POSITIONS)  # where the class name sits: end | middle | front
    lr: float = hparam(2e-3, positive=True)  # SGD peak learning rate
    momentum: float = hparam(0.9, low=0.0)  # SGD momentum (Dassl's default)
    weight_decay: float = hparam(5e-4, low=0.0)  # SGD weight decay (Dassl's default)
    epochs: tuple[int, ...] = hparam((50, 100, 200), low=0)  # epochs per shot tier: K <= epoch_max_shots[0], ..., above the last
    epoch_max_shots: tuple[int, ...] = hparam((1, 4), low=1)  # the largest K of each tier but the last (increasing)
    batch_size: int = hparam(32, low=1)  # training images per step
    warmup_epochs: int = hparam(1, low=0)  # constant-warmup epochs
    warmup_lr: float = hparam(1e-5, positive=True)  # learning rate during warmup
    checkpoint: str = hparam("last", choices=CHECKPOINTS)  # which epoch's context to keep (the source: last)
    drop_last: bool = True  # skip each epoch's partial last batch, as Dassl's training loader does

    def __post_init__(self) -> None:
        if len(self.epochs) != len(self.epoch_max_shots) + 1:
            raise ConfigError(
                f"coop: epochs {list(self.epochs)} needs one entry per shot tier, len(epoch_max_shots) + 1 = "
                f"{len(self.epoch_max_shots) + 1} (epoch_max_shots {list(self.epoch_max_shots)})"
            )
        if list(self.epoch_max_shots) != sorted(set(self.epoch_max_shots)):
            raise ConfigError(f"coop: epoch_max_shots must increase strictly, got {list(self.epoch_max_shots)}")

    def epochs_at(self, shots: int) -> int:
        """Epochs at ``shots`` images per class: the first tier whose largest K is >= shots."""
        for limit, epochs in zip(self.epoch_max_shots, self.epochs):
            if shots <= limit:
                return epochs
        return self.epochs[-1]


# --------------------------------------------------------------------------------------------
# The frozen encoder


def load_cache_encoder(meta: Mapping[str, Any], *, device: torch.device):
    """The frozen encoder that made a cache's features, loaded as extraction loads it.

    Reads ``meta["encoder"]`` (id and revision, :meth:`hgadapter.extract.encoders.Encoder.meta`)
    and loads it with :func:`~hgadapter.extract.encoders.create_encoder` in fp32.

    Raises:
        CoOpError: nothing recorded, or the weights found are another revision than the cache's.
        hgadapter.extract.encoders.EncoderError: the model cannot be found or loaded.
    """
    from hgadapter.extract.encoders import create_encoder

    recorded = meta.get("encoder")
    if not isinstance(recorded, Mapping) or not isinstance(recorded.get("id"), str):
        raise CoOpError("the cache records no encoder (meta['encoder']['id']); extract it with `hgadapter extract`")
    model_id, revision = recorded["id"], recorded.get("revision")
    hub_revision = revision if isinstance(revision, str) and not revision.startswith("sha256:") else None
    encoder = create_encoder(model_id, revision=hub_revision, device=device, precision="fp32")
    if revision and encoder.revision != revision:
        raise CoOpError(
            f"the cache's encoder {model_id!r} was revision {revision}, and the model found is {encoder.revision}; "
            "its text encoder would not be the one that made the cached features"
        )
    return encoder


class ClipTextTower:
    r"""CLIP's frozen text encoder applied to token embeddings instead of token ids.

    The same computation as ``CLIPModel.get_text_features`` (transformers' ``CLIPTextModel``):
    positional embeddings are added, the encoder runs with the causal mask, then the final layer
    norm, the hidden state at each prompt's EOS position and the text projection. Not an
    ``nn.Module``: it holds the model without making its weights anyone's parameters.

    Shapes:
        - embeddings ``(C, L, w)``, eos ``(C,)``; output ``(C, d)``.
    """

    def __init__(self, model: Any) -> None:
        from transformers import CLIPModel

        if not isinstance(model, CLIPModel):
            raise CoOpError(f"CoOp supports CLIP-family text encoders for now (a Hugging Face CLIPModel), not {type(model).__name__}")
        self.model = model
        self.text = model.text_model

    @property
    def width(self) -> int:
        """Token embedding width w."""
        return int(self.text.embeddings.token_embedding.embedding_dim)

    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        """The frozen word embeddings of token ids: ``(..., L)`` -> ``(..., L, w)``."""
        with torch.no_grad():
            return self.text.embeddings.token_embedding(ids)

    def __call__(self, embeddings: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
        from transformers.masking_utils import create_causal_mask

        hidden = self.text.embeddings(inputs_embeds=embeddings)  # (C, L, w): + positional embeddings
        mask = create_causal_mask(config=self.text.config, inputs_embeds=hidden, attention_mask=None, cache=None)
        hidden = self.text.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
        hidden = self.text.final_layer_norm(hidden)  # (C, L, w)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), eos]  # (C, w): the EOS token's state
        return self.model.text_projection(pooled)  # (C, d)


# --------------------------------------------------------------------------------------------
# Prompts


@dataclass(frozen=True)
class PromptTokens:
    """The token layout of CoOp's C prompts.

    Attributes:
        ids: ``(C, L)`` token ids, padded to the context length; context slots hold the init
            words' ids (or the pad id for a random context).
        ctx_index: ``(C, M)`` positions of the M context slots in each prompt.
        eos: ``(C,)`` position of each prompt's EOS token.
        init_ids: ``(M,)`` ids of the init words, or ``None`` for a random context.
        truncated: classes whose name (or final period) did not fit the context length.
    """

    ids: torch.Tensor
    ctx_index: torch.Tensor
    eos: torch.Tensor
    init_ids: torch.Tensor | None
    truncated: tuple[str, ...] = ()


def _word_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def build_prompt_tokens(
    tokenizer: Any,
    classnames: Sequence[str],
    *,
    n_ctx: int,
    ctx_init: str,
    position: str,
    context_length: int,
) -> PromptTokens:
    """Lay out ``[SOS] context class-name [.] [EOS]`` (or the ``middle`` / ``front`` order) per class.

    The words are tokenised piece by piece (the context, then ``"<name>."`` split after the
    name's own tokens, as the source splits it); CLIP's tokenizer splits at spaces and
    punctuation, so with ``ctx_init`` the ids equal those of ``"<ctx_init> <name>."`` tokenised
    whole. Prompts longer than ``context_length`` lose their last words before EOS, as the
    tokenizer's truncation does; the context always fits.

    Raises:
        CoOpError: an unknown position, empty init words, or more context than the length allows.
    """
    from hgadapter.extract.prompts import clean_classname

    if position not in CLASS_TOKEN_POSITIONS:
        raise CoOpError(f"unknown class_token_position {position!r}; available: {list(CLASS_TOKEN_POSITIONS)}")
    bos, eos_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    init_ids = None
    if ctx_init.strip():
        init = _word_ids(tokenizer, " ".join(ctx_init.replace("_", " ").split()))
        if not init:
            raise CoOpError(f"ctx_init {ctx_init!r} has no tokens")
        n_ctx, init_ids = len(init), torch.tensor(init)
    if n_ctx + 2 > context_length:
        raise CoOpError(f"{n_ctx} context tokens do not fit the encoder's {context_length} tokens with SOS and EOS")
    ctx_ids = list(init_ids.tolist()) if init_ids is not None else [pad] * n_ctx
    rows, slots, eos, truncated = [], [], [], []
    for raw in classnames:
        name = clean_classname(raw)
        name_ids = _word_ids(tokenizer, name)
        full = _word_ids(tokenizer, f"{name}.")
        name_ids, tail = full[: len(name_ids)], full[len(name_ids) :]
        half = n_ctx // 2
        if position == "end":
            parts = [(ctx_ids, True), (name_ids, False), (tail, False)]
        elif position == "middle":
            parts = [(ctx_ids[:half], True), (name_ids, False), (ctx_ids[half:], True), (tail, False)]
        else:
            parts = [(name_ids, False), (ctx_ids, True), (tail, False)]
        body, is_ctx = [], []
        for ids, flag in parts:
            body += ids
            is_ctx += [flag] * len(ids)
        room = context_length - 2
        if len(body) > room:  # drop the last non-context words until the prompt fits
            keep = [i for i in range(len(body)) if is_ctx[i]]
            others = [i for i in range(len(body)) if not is_ctx[i]][: room - n_ctx]
            chosen = sorted(keep + others)
            body, is_ctx = [body[i] for i in chosen], [is_ctx[i] for i in chosen]
            truncated.append(raw)
        ids = [bos, *body, eos_id]
        slots.append([1 + i for i, flag in enumerate(is_ctx) if flag])
        eos.append(len(ids) - 1)
        rows.append(ids + [pad] * (context_length - len(ids)))
    return PromptTokens(
        ids=torch.tensor(rows),  # (C, L)
        ctx_index=torch.tensor(slots),  # (C, M)
        eos=torch.tensor(eos),  # (C,)
        init_ids=init_ids,
        truncated=tuple(truncated),
    )


class PromptLearner(nn.Module):
    r"""CoOp's learnable context written into the frozen prompt embeddings, then encoded.

    ``forward()`` returns the C class embeddings :math:`t_c = g(\text{prompt}_c)` (unnormalised,
    as the text projection gives them). The context ``ctx`` is the only parameter; the word
    embeddings of the rest of each prompt are a buffer, and the text tower's weights belong to
    no module here.

    Shapes:
        - ctx ``(M, w)`` (unified) or ``(C, M, w)`` (class-specific); output ``(C, d)``.
    """

    def __init__(self, tower: ClipTextTower, tokens: PromptTokens, *, csc: bool, init_std: float) -> None:
        super().__init__()
        self.tower = tower
        device = tower.text.embeddings.token_embedding.weight.device
        self.truncated = tokens.truncated  # class names cut to fit the context length
        self.register_buffer("ids", tokens.ids.to(device))  # (C, L)
        self.register_buffer("ctx_index", tokens.ctx_index.to(device))  # (C, M)
        self.register_buffer("eos", tokens.eos.to(device))  # (C,)
        self.register_buffer("base", tower.token_embedding(self.ids).float())  # (C, L, w): word embeddings of every token
        num_classes, n_ctx = tokens.ctx_index.shape
        if tokens.init_ids is not None:
            ctx = tower.token_embedding(tokens.init_ids.to(device)).float().clone()  # (M, w)
            if csc:
                ctx = ctx.unsqueeze(0).repeat(num_classes, 1, 1)  # (C, M, w): every class starts from the words
        else:
            shape = (num_classes, n_ctx, tower.width) if csc else (n_ctx, tower.width)
            ctx = torch.empty(shape, device=device).normal_(std=init_std)
        self.ctx = nn.Parameter(ctx)

    def prompts(self) -> torch.Tensor:
        """The prompt embeddings ``(C, L, w)`` with the context in its slots."""
        num_classes, width = self.base.shape[0], self.base.shape[-1]
        ctx = self.ctx if self.ctx.dim() == 3 else self.ctx.unsqueeze(0).expand(num_classes, -1, -1)  # (C, M, w)
        index = self.ctx_index.unsqueeze(-1).expand(-1, -1, width)  # (C, M, w)
        return self.base.scatter(1, index, ctx)  # (C, L, w)

    def forward(self) -> torch.Tensor:
        return self.tower(self.prompts(), self.eos)  # (C, d)


# --------------------------------------------------------------------------------------------
# The method


@register_method("coop")
class CoOp(TrainedMethod):
    """Context optimisation through the cache's frozen CLIP text encoder."""

    config_cls = CoOpConfig
    needs_encoder = True

    def unmet_need(self, meta: Mapping[str, Any]) -> str | None:
        """Besides an encoder (:meth:`Method.unmet_need`), a CLIP-family one: a Hugging Face ``CLIPModel``."""
        reason = super().unmet_need(meta)
        if reason is not None:
            return reason
        encoder = meta["encoder"] if isinstance(meta.get("encoder"), Mapping) else {}
        backend = encoder.get("backend")
        # caches written before encoder families were recorded hold Hugging Face CLIPModels
        family = encoder.get("family") or ("clip" if backend in (None, "hf") else backend)
        if family != "clip":
            return (
                f"{self.name} supports CLIP-family text encoders (a Hugging Face CLIPModel) for now; this cache's encoder "
                f"{encoder.get('id')!r} is of the {family!r} family"
            )
        return reason

    def build(self, data: SelectionData, text: torch.Tensor, device: torch.device):
        cfg: CoOpConfig = self.config
        encoder = load_cache_encoder(data.meta, device=device)
        if encoder.family != "clip":
            raise CoOpError(
                f"CoOp supports CLIP-family text encoders for now; the cache's encoder {encoder.id!r} is {encoder.family!r}"
            )
        if encoder.dim != data.dim:
            raise CoOpError(f"the cache's encoder {encoder.id!r} makes {encoder.dim}-d features; the cache holds {data.dim}-d ones")
        tower = ClipTextTower(encoder.model)
        tokens = build_prompt_tokens(
            encoder.tokenizer, data.classnames, n_ctx=cfg.n_ctx, ctx_init=cfg.ctx_init,
            position=cfg.class_token_position, context_length=encoder.context_length,
        )
        module = PromptLearner(tower, tokens, csc=cfg.csc, init_std=cfg.init_std)
        return module, lambda x: zero_shot_logits(x, module(), data.logit_scale)

    def train_epochs(self, data: SelectionData) -> int:
        return self.config.epochs_at(data.train_set.shots)

    def optimizer(self, module: nn.Module) -> torch.optim.Optimizer:
        cfg: CoOpConfig = self.config
        return torch.optim.SGD([module.ctx], lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def select(self, module, logits_fn, result, data, *, device):
        with torch.no_grad():
            class_embeddings = module().detach()  # (C, d)
        hparams = {"n_ctx": int(module.ctx_index.shape[1]), "truncated_prompts": len(module.truncated)}
        return text_predictor(class_embeddings, data.logit_scale, device), result.val_acc, hparams

    def tensors(self, module: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
        return {"coop": {"ctx": module.ctx.detach().cpu().contiguous()}}
