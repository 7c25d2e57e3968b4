"""Heads: the frozen predictors that fitted methods return, as modules that save and load.

Every method's fit ends in a :class:`Head`, a small ``nn.Module`` mapping image features
``(N, d)`` to logits ``(N, C)``. Its tensors are buffers (``state_dict()``) and everything else
that defines it (the chosen alpha and beta, the logit scale, a flag) is :meth:`Head.spec`, plain
JSON. :func:`build_head` rebuilds a head from the two, so a fitted method is exported without
pickling and without the method's training code (``hgadapter export``, :mod:`hgadapter.classifier`).

The kinds cover what the methods need: CLIP's text classifier (:class:`TextHead`), a linear
layer (:class:`LinearHead`), Tip-Adapter's cache model beside a text classifier
(:class:`CacheHead`), CLIP-Adapter's residual feature MLP (:class:`FeatureMLPHead`) and a
weighted sum of heads (:class:`SumHead`, e.g. GDA's ensemble with zero-shot CLIP). A new kind
is a :class:`Head` subclass registered with :func:`register_head` that implements ``forward``,
``spec`` and ``from_state``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from hgadapter.errors import UserError

__all__ = [
    "Head",
    "HeadError",
    "TextHead",
    "LinearHead",
    "CacheHead",
    "FeatureMLPHead",
    "SumHead",
    "register_head",
    "list_heads",
    "build_head",
    "text_logits",
    "cache_logits",
]


class HeadError(UserError):
    """A head spec or its tensors do not describe a valid head (an unknown kind, a missing tensor)."""


def text_logits(features: torch.Tensor, text: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """Eq. 7: ``s * cos(f, t_c)``. Shapes: ``(B, d)``, ``(C, d)`` -> ``(B, C)``."""
    return logit_scale * F.normalize(features, dim=-1) @ F.normalize(text, dim=-1).T


def cache_logits(affinity: torch.Tensor, values: torch.Tensor, beta: float, *, num_classes: int | None = None) -> torch.Tensor:
    """Eq. 8 (Tip-Adapter): ``exp(-beta (1 - A)) L``.

    ``values`` is either the one-hot value matrix L ``(N, C)`` or, faster, the key labels
    ``(N,)`` (int64) with ``num_classes``: multiplying by a one-hot matrix is a per-class sum, so
    it is done as a scatter-add in O(B N) instead of a B x N x C GEMM.

    Shapes: ``(B, N)`` and ``(N, C)`` or ``(N,)`` -> ``(B, C)``.
    """
    weights = torch.exp(-beta * (1.0 - affinity))  # (B, N)
    if values.dtype.is_floating_point:
        return weights @ values
    if num_classes is None:
        raise ValueError("cache_logits with integer labels needs num_classes")
    return weights.new_zeros(weights.shape[0], num_classes).index_add(1, values, weights)  # (B, C)


_HEADS: dict[str, type["Head"]] = {}


def register_head(kind: str) -> Callable[[type["Head"]], type["Head"]]:
    """Class decorator: make a :class:`Head` subclass rebuildable from specs of ``kind``."""

    def decorator(cls: type[Head]) -> type[Head]:
        if kind in _HEADS and _HEADS[kind] is not cls:
            raise ValueError(f"head kind {kind!r} is already registered by {_HEADS[kind].__name__}")
        cls.kind = kind
        _HEADS[kind] = cls
        return cls

    return decorator


def list_heads() -> list[str]:
    """Registered head kinds."""
    return list(_HEADS)


def build_head(spec: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> "Head":
    """The head that ``spec`` (:meth:`Head.spec`) and ``tensors`` (its ``state_dict()``) describe.

    Raises:
        HeadError: an unknown kind or a tensor the kind needs is missing.
    """
    kind = spec.get("kind") if isinstance(spec, Mapping) else None
    cls = _HEADS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise HeadError(f"unknown head kind {kind!r}; available: {list_heads()}")
    try:
        return cls.from_state(spec, tensors)
    except KeyError as err:
        raise HeadError(f"head {kind!r} needs tensor {err.args[0]!r}; it has {sorted(tensors)}") from None


def _buffer(module: nn.Module, name: str, value: torch.Tensor | None) -> None:
    # Buffers, not parameters: a head is frozen, and its tensors follow .to(device).
    module.register_buffer(name, None if value is None else value.detach().clone())


class Head(nn.Module):
    """A frozen predictor: image features ``(N, d)`` -> logits ``(N, C)``.

    ``forward`` accepts features on any device and in any float dtype; they are moved to the
    head's device and computed in float32. ``spec()`` plus ``state_dict()`` rebuild the head
    (:func:`build_head`).
    """

    kind: ClassVar[str] = ""

    @property
    def device(self) -> torch.device:
        """Where the head's tensors are (CPU for a head without tensors)."""
        return next(iter(self.buffers()), torch.empty(0)).device

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """The JSON-serialisable description (``kind`` and scalars) that rebuilds it with its tensors."""
        return {"kind": self.kind}

    @classmethod
    def from_state(cls, spec: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> "Head":
        """The head of ``spec`` with ``tensors`` (the registry hook behind :func:`build_head`)."""
        raise NotImplementedError

    def _input(self, features: torch.Tensor) -> torch.Tensor:
        return features.to(self.device, torch.float32)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:  # a predictor is never differentiated
        with torch.no_grad():
            return super().__call__(features)


@register_head("text")
class TextHead(Head):
    """CLIP's classifier (paper Eq. 7): ``s * cos(f, t_c)``.

    Shapes:
        - text ``(C, d)``; input ``(N, d)``; output ``(N, C)``.
    """

    def __init__(self, *, text: torch.Tensor, logit_scale: float) -> None:
        super().__init__()
        _buffer(self, "text", text.float())
        self.logit_scale = float(logit_scale)

    @property
    def num_classes(self) -> int:
        return int(self.text.shape[0])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return text_logits(self._input(features), self.text, self.logit_scale)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "logit_scale": self.logit_scale}

    @classmethod
    def from_state(cls, spec, tensors):
        return cls(text=tensors["text"], logit_scale=spec["logit_scale"])


@register_head("linear")
class LinearHead(Head):
    """A linear classifier ``g(f) W^T + b`` with ``g`` the identity or L2 normalisation.

    Shapes:
        - weight ``(C, d)``, bias ``(C,)``; input ``(N, d)``; output ``(N, C)``.
    """

    def __init__(self, *, weight: torch.Tensor, bias: torch.Tensor | None = None, normalize: bool = False) -> None:
        super().__init__()
        _buffer(self, "weight", weight.float())
        _buffer(self, "bias", None if bias is None else bias.float())
        self.normalize = bool(normalize)

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self._input(features)
        if self.normalize:
            x = F.normalize(x, dim=-1)
        logits = x @ self.weight.T
        return logits if self.bias is None else logits + self.bias

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "normalize": self.normalize}

    @classmethod
    def from_state(cls, spec, tensors):
        return cls(weight=tensors["weight"], bias=tensors.get("bias"), normalize=spec.get("normalize", False))


@register_head("cache")
class CacheHead(Head):
    """A text classifier plus Tip-Adapter's cache model (Zhang et al., ECCV 2022, Eq. 6):

        logits(f) = s * cos(f, t_c) + alpha * exp(-beta * (1 - g(f) K^T)) L

    ``L`` is either float values ``(N, C)`` (one-hot labels, or any learnt values) or the keys'
    integer labels ``(N,)``, which computes the same product as a per-class sum. ``g`` is the
    identity (Tip-Adapter, whose features are unit-norm already) or L2 normalisation
    (``normalize``, HeGraphAdapter's :func:`~hgadapter.adapter.cache_affinity`).

    Shapes:
        - text ``(C, d)``, keys ``(N, d)``, values ``(N, C)`` or labels ``(N,)``;
          input ``(B, d)``; output ``(B, C)``.
    """

    def __init__(
        self,
        *,
        text: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        alpha: float,
        beta: float,
        logit_scale: float,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        _buffer(self, "text", text.float())
        _buffer(self, "keys", keys.float())
        _buffer(self, "values", values if not values.dtype.is_floating_point else values.float())
        self.alpha, self.beta, self.logit_scale = float(alpha), float(beta), float(logit_scale)
        self.normalize = bool(normalize)

    @property
    def num_classes(self) -> int:
        return int(self.text.shape[0])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self._input(features)
        affinity = (F.normalize(x, dim=-1) if self.normalize else x) @ self.keys.T  # (B, N)
        cache = cache_logits(affinity, self.values, self.beta, num_classes=self.num_classes)
        return text_logits(x, self.text, self.logit_scale) + self.alpha * cache

    def spec(self) -> dict[str, Any]:
        return {
            **super().spec(),
            "alpha": self.alpha,
            "beta": self.beta,
            "logit_scale": self.logit_scale,
            "normalize": self.normalize,
        }

    @classmethod
    def from_state(cls, spec, tensors):
        return cls(
            text=tensors["text"],
            keys=tensors["keys"],
            values=tensors["values"],
            alpha=spec["alpha"],
            beta=spec["beta"],
            logit_scale=spec["logit_scale"],
            normalize=spec.get("normalize", False),
        )


@register_head("feature_mlp")
class FeatureMLPHead(Head):
    """CLIP-Adapter's head (Gao et al., IJCV 2023): a residual bottleneck MLP on the image
    feature, then CLIP's text classifier:

        f' = r * relu(relu(f W1^T) W2^T) + (1 - r) * f,    logits = s * cos(f', t_c)

    Shapes:
        - w1 ``(h, d)``, w2 ``(d, h)``, text ``(C, d)``; input ``(N, d)``; output ``(N, C)``.
    """

    def __init__(self, *, w1: torch.Tensor, w2: torch.Tensor, ratio: float, text: torch.Tensor, logit_scale: float) -> None:
        super().__init__()
        _buffer(self, "w1", w1.float())
        _buffer(self, "w2", w2.float())
        _buffer(self, "text", text.float())
        self.ratio, self.logit_scale = float(ratio), float(logit_scale)

    @property
    def num_classes(self) -> int:
        return int(self.text.shape[0])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self._input(features)
        adapted = self.ratio * F.relu(F.relu(x @ self.w1.T) @ self.w2.T) + (1.0 - self.ratio) * x
        return text_logits(adapted, self.text, self.logit_scale)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "ratio": self.ratio, "logit_scale": self.logit_scale}

    @classmethod
    def from_state(cls, spec, tensors):
        return cls(w1=tensors["w1"], w2=tensors["w2"], ratio=spec["ratio"], text=tensors["text"], logit_scale=spec["logit_scale"])


@register_head("sum")
class SumHead(Head):
    """A weighted sum of heads over the same classes: ``sum_i w_i * head_i(f)``."""

    def __init__(self, *, parts: Sequence[Head], weights: Sequence[float]) -> None:
        super().__init__()
        if len(parts) != len(weights) or not parts:
            raise HeadError(f"a sum head needs one weight per part, got {len(parts)} parts and {len(weights)} weights")
        self.parts = nn.ModuleList(parts)
        self.weights = [float(w) for w in weights]

    @property
    def num_classes(self) -> int:
        return self.parts[0].num_classes

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self._input(features)
        total = None
        for weight, part in zip(self.weights, self.parts):
            logits = part.forward(x) if weight == 1.0 else weight * part.forward(x)
            total = logits if total is None else total + logits
        return total

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "weights": list(self.weights), "parts": [part.spec() for part in self.parts]}

    @classmethod
    def from_state(cls, spec, tensors):
        parts = []
        for i, part_spec in enumerate(spec["parts"]):
            prefix = f"parts.{i}."
            parts.append(build_head(part_spec, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}))
        return cls(parts=parts, weights=spec["weights"])
