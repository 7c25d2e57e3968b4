"""What the baselines share: the zero-shot text classifier, the cache model and the trained-method skeleton.

Every baseline starts from the same zero-shot classifier (the positive prompt ensemble), so the
table compares adaptation methods, not prompt sets. A baseline trained by gradient descent is a
:class:`TrainedMethod`: it states its module, logits, optimiser (and, if not Dassl's, its
schedule); the fit around them (seeding, :func:`hgadapter.train.train_loop`, freezing, timing)
is written once here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hgadapter.adapter import text_logits as zero_shot_logits  # CLIP's classifier s * cos(f, t_c)
from hgadapter.evaluate import cache_keys
from hgadapter.graph import class_means, prompt_ensemble
from hgadapter.heads import Head, TextHead
from hgadapter.methods._registry import Method
from hgadapter.data.cache import FewShotSet
from hgadapter.protocol import FitContext, Fitted, SelectionData
from hgadapter.train import CHECKPOINTS, Schedule, TrainResult, dassl_schedule, train_loop

__all__ = [
    "CHECKPOINTS",
    "prompt_ensemble",
    "class_means",
    "cache_model",
    "VIEWS",
    "view_samples",
    "zero_shot_logits",
    "text_predictor",
    "TrainedMethod",
]

Predictor = Callable[[torch.Tensor], torch.Tensor]


VIEWS: tuple[str, ...] = ("mean", "all")  # how a closed-form method turns an image's V views into samples


def view_samples(train_set: FewShotSet, views: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Training samples of a closed-form method: each image's renormalised view mean (``mean``,
    the closest thing to CLIP's centre crop) or every normalised view as a sample (``all``).

    Returns:
        features ``(N, d)`` or ``(N V, d)`` and their labels.
    """
    x = F.normalize(train_set.features.float(), dim=-1)  # (N, V, d)
    if views == "mean":
        return F.normalize(x.mean(dim=1), dim=-1), train_set.labels  # (N, d), (N,)
    return x.reshape(-1, x.shape[-1]), train_set.labels.repeat_interleave(x.shape[1])  # (N V, d), (N V,)


def cache_model(data: SelectionData, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Tip-Adapter's cache: keys (:func:`~hgadapter.evaluate.cache_keys`), values = one-hot labels.

    Returns:
        keys ``(N, d)`` and values ``(N, C)`` on ``device``.
    """
    keys = cache_keys(data.train_set, device=device)  # (N, d)
    values = F.one_hot(data.train_set.labels, num_classes=data.num_classes).float().to(device)  # (N, C)
    return keys, values


def text_predictor(text: torch.Tensor, logit_scale: float, device: torch.device) -> TextHead:
    """The frozen classifier ``s * cos(f, t_c)`` of a text classifier ``(C, d)``, on ``device``."""
    return TextHead(text=text, logit_scale=logit_scale).to(device)


class TrainedMethod(Method):
    """A baseline whose module is trained by :func:`hgadapter.train.train_loop` on cross-entropy.

    The config has ``epochs``, ``batch_size``, ``checkpoint``, ``drop_last``
    (:func:`~hgadapter.train.train_loop` explains it) and whatever :meth:`optimizer` and
    :meth:`schedule` read (Dassl's ``lr``, ``warmup_epochs``, ``warmup_lr`` by default).
    Subclasses implement :meth:`build` and :meth:`optimizer`; :meth:`schedule` and
    :meth:`select` have defaults.
    """

    def build(self, data: SelectionData, text: torch.Tensor, device: torch.device) -> tuple[nn.Module, Predictor]:
        """The trainable module on ``device`` and its differentiable logits ``(B, d) -> (B, C)``.

        ``text`` ``(C, d)`` is the zero-shot classifier (the prompt ensemble) on ``device``. Runs
        with the global RNG seeded by the fit's seed (and restored afterwards), so a random
        initialisation is the seed's.
        """
        raise NotImplementedError

    def loss(self, module: nn.Module, logits_fn: Predictor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """The training loss ``(views (B, d), labels (B,)) -> loss``; ``None``: cross-entropy of ``logits_fn``."""
        return None

    def optimizer(self, module: nn.Module) -> torch.optim.Optimizer:
        """The optimiser over ``module``'s parameters (the schedule sets its learning rate)."""
        raise NotImplementedError

    def train_data(self, data: SelectionData) -> SelectionData:
        """What the training loop draws its queries from: ``data`` (a method whose queries are not the
        cached views, e.g. PROTO-CLIP-F's view-averaged keys, returns a view of it)."""
        return data

    def train_epochs(self, data: SelectionData) -> int:
        """Epochs to train on ``data``: the config's ``epochs`` (a source that trains longer at more shots overrides this)."""
        return self.config.epochs

    def sampling(self) -> str:
        """How :func:`~hgadapter.train.train_loop` draws each epoch's batches (``"image"``; CLAP: ``"pool"``)."""
        return "image"

    def schedule(self, epochs: int) -> Schedule:
        """Dassl's cosine schedule over ``epochs`` after a constant warmup, from the config."""
        cfg = self.config
        return dassl_schedule(epochs=epochs, lr=cfg.lr, warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.warmup_lr)

    def select(
        self, module: nn.Module, logits_fn: Predictor, result: TrainResult, data: SelectionData, *, device: torch.device
    ) -> tuple[Head, float, dict[str, Any]]:
        """After training: ``(head, val_acc, hparams)``, the trained model frozen as a :class:`~hgadapter.heads.Head`."""
        raise NotImplementedError

    def tensors(self, module: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
        """Trained tensors to save in the run directory (``Fitted.tensors``); none by default."""
        return {}

    def _fit(self, data: SelectionData, ctx: FitContext) -> Fitted:
        cfg = self.config
        text = prompt_ensemble(data.pos_text).to(ctx.device)  # (C, d)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            module, logits_fn = self.build(data, text, ctx.device)
        epochs = self.train_epochs(data)
        result = train_loop(
            module, self.optimizer(module), self.schedule(epochs), self.train_data(data), ctx,
            logits_fn=logits_fn, loss_fn=self.loss(module, logits_fn), epochs=epochs, batch_size=cfg.batch_size,
            checkpoint=cfg.checkpoint, drop_last=cfg.drop_last, sampling=self.sampling(), desc=self.name,
        )
        start = time.perf_counter()
        head, val_acc, hparams = self.select(module, logits_fn, result, data, device=ctx.device)
        return Fitted(
            head=head,
            val_acc=val_acc,
            hparams={"checkpoint_epoch": result.epoch, **hparams},  # a method's select may name another checkpoint
            epochs=epochs,
            history=result.history,
            train_seconds=result.seconds,
            select_seconds=time.perf_counter() - start,
            trainable_params=result.trainable_params,
            tensors=self.tensors(module),
        )
