"""Zero-shot CLIP with the positive prompt ensemble (Radford et al., 2021, Sec. 3.1.4).

    logits(f) = s * cos(f, t_c),   t_c = normalise(mean_p normalise(text(prompt_p(class c))))

Nothing is trained and nothing is chosen; the validation accuracy is reported for the table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from hgadapter.methods._common import device_of, fit_on_device, prompt_ensemble, zero_shot_logits
from hgadapter.methods._registry import Method, register_method
from hgadapter.protocol import Fitted, SelectionData, accuracy

__all__ = ["ZeroShotConfig", "ZeroShot"]


@dataclass(frozen=True)
class ZeroShotConfig:
    """Zero-shot CLIP has no hyper-parameters: the prompts are fixed when the cache is built."""


@register_method("zero_shot")
class ZeroShot(Method):
    """CLIP's classifier from the positive prompt ensemble (the cache's ``pos_text``)."""

    config_cls = ZeroShotConfig

    @fit_on_device
    def fit(self, data: SelectionData, *, seed: int, device: torch.device | str | None = None, progress: bool = False) -> Fitted:
        start = time.perf_counter()
        dev = device_of(device)
        text = prompt_ensemble(data.pos_text).to(dev)  # (C, d)
        scale = data.logit_scale

        def predict(x: torch.Tensor) -> torch.Tensor:
            return zero_shot_logits(x.to(dev), text, scale)

        val_acc = accuracy(predict(data.val_features), data.val_labels.to(dev))
        return Fitted(predict=predict, val_acc=val_acc, hparams={}, train_seconds=time.perf_counter() - start, epochs=0)
