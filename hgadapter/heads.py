"""Heads: the frozen predictors that fitted methods return, as modules that save and load.

Every method's fit ends in a :class:`Head`, a small ``nn.Module`` mapping image features
``(N, d)`` to logits ``(N, C)``. Its tensors are buffers (``state_dict()``) and everything else
that defines it (the chosen alpha and beta, the logit scale, a flag) is :meth:`Head.spec`, plain
JSON. :func:`build_head` rebuilds a head from the two, so a fitted method is exported without
pickling and without the method's training code (``hgadapter export``, :mod:`hgadapter.classifier`).

The kinds cover what the methods need: CLIP's text classifier (:class:`TextHead`), a linear
layer (:class:`LinearHead`), Tip-Adapter's cache model beside a text classifier
(:class:`CacheHead`), CLIP-Adapter's residual feature MLP (:class:`FeatureMLPHead`) and a
weighted sum of heads (:class:`SumHead`, e.g. GDA's ensemble with zero-shot CLIP) and
PROTO-CLIP's image and text prototypes behind its query adapter (:class:`PrototypeHead`). A new kind
is a :class:`Head` subclass registered with :func:`register_head` that implements ``forward``,
``spec`` and ``from_state``.
"""

from __future__ import annotations

import math
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
    "QUERY_ADAPTERS",
    "QueryAdapter",
    "PrototypeHead",
    "prototype_probabilities",
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

    Two options serve APE (Zhu et al., ICCV 2023): ``channels`` ``(k,)`` restricts the affinity to
    those feature channels, the query renormalised on them (``g(f) = f[:, idx] / |f[:, idx]|``;
    the keys are given on the same channels); ``text=None`` drops the text term, for a cache
    summed with another text classifier (:class:`SumHead`), and then ``L`` must be float values.

    Shapes:
        - text ``(C, d)``, keys ``(N, d)`` or ``(N, k)``, values ``(N, C)`` or labels ``(N,)``,
          channels ``(k,)``; input ``(B, d)``; output ``(B, C)``.
    """

    def __init__(
        self,
        *,
        text: torch.Tensor | None,
        keys: torch.Tensor,
        values: torch.Tensor,
        alpha: float,
        beta: float,
        logit_scale: float,
        normalize: bool = False,
        channels: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if text is None and not values.dtype.is_floating_point:
            raise HeadError("a cache head without a text classifier needs float values (N, C), not integer labels")
        _buffer(self, "text", None if text is None else text.float())
        _buffer(self, "keys", keys.float())
        _buffer(self, "values", values if not values.dtype.is_floating_point else values.float())
        _buffer(self, "channels", None if channels is None else channels.long())
        self.alpha, self.beta, self.logit_scale = float(alpha), float(beta), float(logit_scale)
        self.normalize = bool(normalize)

    @property
    def num_classes(self) -> int:
        return int(self.text.shape[0] if self.text is not None else self.values.shape[1])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self._input(features)
        if self.channels is not None:
            query = F.normalize(x[:, self.channels], dim=-1)  # (B, k): the query on the kept channels, renormalised
        else:
            query = F.normalize(x, dim=-1) if self.normalize else x  # (B, d)
        affinity = query @ self.keys.T  # (B, N)
        cache = self.alpha * cache_logits(affinity, self.values, self.beta, num_classes=self.num_classes)
        return cache if self.text is None else text_logits(x, self.text, self.logit_scale) + cache

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
            text=tensors.get("text"),
            keys=tensors["keys"],
            values=tensors["values"],
            alpha=spec["alpha"],
            beta=spec["beta"],
            logit_scale=spec["logit_scale"],
            normalize=spec.get("normalize", False),
            channels=tensors.get("channels"),
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


# --------------------------------------------------------------------------------------------
# PROTO-CLIP (Jaykumar P et al., IROS 2024): the query adapter and the prototype classifier.

QUERY_ADAPTERS: tuple[str, ...] = ("none", "conv-3x", "conv-2x", "fc")


class QueryAdapter(nn.Module):
    """PROTO-CLIP's residual query adapter on an image feature (its ``model.py``).

    ``conv-3x`` / ``conv-2x``: the feature, zero-padded to a square ``s x s`` (``s = ceil(sqrt(d))``),
    goes through a 1x1 conv to ``width`` channels, (conv-3x only) a 3x3 conv, and a 1x1 conv back
    to one channel, each followed by a LayerNorm over the whole map, plus the input; cropped back
    to ``d``. ``fc``: ``0.2 * LN(LN(f W1^T) W2^T) + 0.8 * f`` with a ``d/4`` bottleneck, no biases.
    ``none``: the identity.

    Shapes:
        - input ``(B, d)``; output ``(B, d)``.
    """

    def __init__(self, *, kind: str, dim: int, width: int = 16) -> None:
        super().__init__()
        if kind not in QUERY_ADAPTERS:
            raise HeadError(f"unknown query adapter {kind!r}; available: {list(QUERY_ADAPTERS)}")
        self.kind, self.dim, self.width = kind, int(dim), int(width)
        self.side = math.ceil(math.sqrt(self.dim))
        s = self.side
        if kind.startswith("conv"):
            self.conv1 = nn.Conv2d(1, width, kernel_size=1, bias=False)
            self.norm1 = nn.LayerNorm([width, s, s])
            if kind == "conv-3x":
                self.conv2 = nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False)
                self.norm2 = nn.LayerNorm([width, s, s])
            self.conv3 = nn.Conv2d(width, 1, kernel_size=1, bias=False)
            self.norm3 = nn.LayerNorm([1, s, s])
        elif kind == "fc":
            hidden = max(self.dim // 4, 1)
            self.fc = nn.Sequential(
                nn.Linear(self.dim, hidden, bias=False), nn.LayerNorm(hidden), nn.Linear(hidden, self.dim, bias=False), nn.LayerNorm(self.dim)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            return x
        if self.kind == "fc":
            return 0.2 * self.fc(x) + 0.8 * x
        s = self.side
        grid = F.pad(x, (0, s * s - self.dim)).reshape(-1, 1, s, s)  # (B, 1, s, s)
        out = self.norm1(self.conv1(grid))  # (B, width, s, s)
        if self.kind == "conv-3x":
            out = self.norm2(self.conv2(out))
        out = self.norm3(self.conv3(out)) + grid  # (B, 1, s, s)
        return out.reshape(-1, s * s)[:, : self.dim]  # (B, d)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": self.dim, "width": self.width}


def prototype_probabilities(
    query: torch.Tensor, image_proto: torch.Tensor, text_proto: torch.Tensor, *, alpha: float, beta: float
) -> torch.Tensor:
    """PROTO-CLIP's class probabilities (its ``utils.P``), all inputs unit-norm:

        p(y | q) = alpha * softmax_y(-beta |q - z_y|^2) + (1 - alpha) * softmax_y(-beta |q - t_y|^2)

    Shapes: ``(B, d)``, ``(C, d)``, ``(C, d)`` -> ``(B, C)``.
    """
    dist_image = torch.cdist(query, image_proto).pow(2)  # (B, C)
    dist_text = torch.cdist(query, text_proto).pow(2)  # (B, C)
    return alpha * F.softmax(-beta * dist_image, dim=1) + (1.0 - alpha) * F.softmax(-beta * dist_text, dim=1)


@register_head("prototype")
class PrototypeHead(Head):
    """PROTO-CLIP's classifier: the query adapted and renormalised, then
    :func:`prototype_probabilities` against unit-norm image and text prototypes; the logits are
    the log-probabilities (same argmax, and a softmax of them gives the probabilities back).

    Shapes:
        - image_proto ``(C, d)``, text_proto ``(C, d)`` (unit-norm rows); input ``(B, d)``; output ``(B, C)``.
    """

    def __init__(
        self, *, image_proto: torch.Tensor, text_proto: torch.Tensor, alpha: float, beta: float, adapter: QueryAdapter | None = None
    ) -> None:
        super().__init__()
        _buffer(self, "image_proto", image_proto.float())  # unit-norm rows, as given (renormalising is not idempotent in float)
        _buffer(self, "text_proto", text_proto.float())
        self.alpha, self.beta = float(alpha), float(beta)
        self.adapter = adapter if adapter is not None else QueryAdapter(kind="none", dim=int(image_proto.shape[1]))
        self.adapter.requires_grad_(False).eval()  # frozen; its weights are in state_dict() under adapter.*

    @property
    def num_classes(self) -> int:
        return int(self.image_proto.shape[0])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        query = F.normalize(self.adapter(self._input(features)), dim=-1)  # (B, d)
        p = prototype_probabilities(query, self.image_proto, self.text_proto, alpha=self.alpha, beta=self.beta)
        return torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))  # (B, C)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "alpha": self.alpha, "beta": self.beta, "adapter": self.adapter.spec()}

    @classmethod
    def from_state(cls, spec, tensors):
        a = spec["adapter"]
        adapter = QueryAdapter(kind=a["kind"], dim=a["dim"], width=a.get("width", 16))
        prefix = "adapter."
        adapter.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        return cls(image_proto=tensors["image_proto"], text_proto=tensors["text_proto"], alpha=spec["alpha"], beta=spec["beta"], adapter=adapter)
