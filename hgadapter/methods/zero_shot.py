"""Zero-shot CLIP with the positive prompt ensemble (Radford et al., 2021, Sec. 3.1.4).

    logits(f) = s * cos(f, t_c),   t_c = normalise(mean_p normalise(text(prompt_p(class c))))

Nothing is trained and nothing is chosen; the validation accuracy is reported for the table.
"""

from __future__ import annotations

from dataclasses import dataclass

from hgadapter.methods._common import prompt_ensemble, text_predictor
from hgadapter.methods._registry import Method, register_method
from hgadapter.protocol import FitContext, Fitted, SelectionData, accuracy

__all__ = ["ZeroShotConfig", "ZeroShot"]


@dataclass(frozen=True)
class ZeroShotConfig:
    """Zero-shot CLIP has no hyper-parameters: the prompts are fixed when the cache is built."""


@register_method("zero_shot")
class ZeroShot(Method):
    """CLIP's classifier from the positive prompt ensemble (the cache's ``pos_text``)."""

    config_cls = ZeroShotConfig

    def _fit(self, data: SelectionData, ctx: FitContext) -> Fitted:
        head = text_predictor(prompt_ensemble(data.pos_text).to(ctx.device), data.logit_scale, ctx.device)  # (C, d) classifier
        return Fitted(head=head, val_acc=accuracy(head(data.val_features), data.val_labels.to(ctx.device)))
