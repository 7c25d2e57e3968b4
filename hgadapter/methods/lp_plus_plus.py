"""LP++: a linear probe whose class weights blend visual prototypes with the text embeddings.

Huang et al., "LP++: A Surprisingly Strong Linear Probe for Few-Shot CLIP", CVPR 2024, Sec. 3:

    logits(f) = f W^T + b + alpha ⊙ (f T^T)

with f the L2-normalised image feature, T ``(C, d)`` the zero-shot text embeddings (cosines,
no logit scale), W ``(C, d)``, b ``(C,)`` the visual classifier and alpha ``(C,)`` learnable
class-wise multipliers of the text term. The cross-entropy over the few-shot set is minimised by
full-batch block-coordinate descent whose step sizes come from the loss's Lipschitz constants,
so no learning rate is tuned (official code github.com/FereshteShakeri/FewShot-CLIP-Strong-Baseline,
``methods/linear_probe_p2.py``, ``configs/base.yaml``):

    lr_W     = 4 N / lambda_max(F^T F)                 (SGD with momentum 0.9, every epoch)
    lr_alpha = N / (4 max_c sum_i (f_i . t_c)^2)       (a plain gradient step every 10 epochs)
    W_0 = the class sums of the features,  alpha_0 = 250 * mean_c (mean over class c of f_i . t_c)

300 epochs; b starts at PyTorch's default ``nn.Linear`` bias initialisation (uniform in
``±1/sqrt(d)``, drawn from the fit's seed). The source keeps the epoch with the best
validation accuracy (later epochs win ties) and so do we (``checkpoint: best_val``); nothing
else is searched.

Samples (``views: one``): the source extracts one augmented pass of the training images, N
unit-norm samples that stay fixed for all epochs (the step sizes are the inverse Lipschitz
constants of the loss over that fixed matrix), and W_0 sums K of them per class; here one cached
view per image, drawn once from the fit's seed. ``mean`` (each image's view mean) keeps N fixed
samples too; ``all`` (every view) starts W V times larger at nearly the same steps
(docs/baselines.md). Training runs through :func:`hgadapter.train.train_loop` with the fixed
samples as one full batch and the alpha step as its step hook.

Changes: the alpha step uses the current gradient, as the paper's block-coordinate update does
(the source never zeroes alpha's gradient, so its step applies the sum of every gradient since
the start).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hgadapter.heads import LinearHead
from hgadapter.data.cache import FewShotSet
from hgadapter.methods._common import CHECKPOINTS, VIEWS, prompt_ensemble, view_samples
from hgadapter.methods._registry import Method, hparam, register_method
from hgadapter.protocol import FitContext, Fitted, SelectionData
from hgadapter.train import train_loop

__all__ = ["LPPlusPlusConfig", "LPPlusPlus", "lp_plus_plus_steps", "lp_plus_plus_samples", "LP_VIEWS"]

LP_VIEWS: tuple[str, ...] = ("one", *VIEWS)  # LP++'s training samples: one view per image, the view mean, every view


@dataclass(frozen=True)
class LPPlusPlusConfig:
    """LP++ (official ``configs/base.yaml``: ``train_epoch: 300``; the step sizes are computed)."""

    epochs: int = hparam(300, low=0)  # full-batch epochs
    alpha_every: int = hparam(10, low=1)  # epochs between two steps on alpha
    alpha_init_scale: float = hparam(250.0, low=0.0)  # alpha_0 = scale * mean true-class text cosine
    momentum: float = hparam(0.9, low=0.0)  # SGD momentum on W and b
    checkpoint: str = hparam("best_val", choices=CHECKPOINTS)  # the source keeps the best validation epoch
    views: str = hparam("one", choices=LP_VIEWS)  # training samples: one view per image (drawn once), each image's view mean, or every view


def lp_plus_plus_steps(
    features: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, *, alpha_init_scale: float = 250.0
) -> tuple[float, float, float]:
    """LP++'s step sizes and initial multiplier from the data alone.

    Shapes: features ``(N, d)`` (unit norm), labels ``(N,)``, text ``(C, d)``.

    Returns:
        ``(lr_w, lr_alpha, alpha_0)``: ``4 N / lambda_max(F^T F)``,
        ``N / (4 max_c sum_i (f_i . t_c)^2)`` and ``scale * mean_c mean_{i in c} f_i . t_c``.
    """
    n = features.shape[0]
    x = features.double()
    top_eig = torch.linalg.eigvalsh(x.T @ x)[-1]  # lambda_max(F^T F)
    cos = x @ text.double().T  # (N, C)
    lr_alpha = n / (4.0 * cos.pow(2).sum(dim=0).max())
    num_classes = text.shape[0]
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).double()
    true_cos = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, labels, cos.gather(1, labels[:, None]).squeeze(1))
    alpha0 = alpha_init_scale * (true_cos / counts).mean()
    return float(4.0 * n / top_eig), float(lr_alpha), float(alpha0)


def lp_plus_plus_samples(train_set: FewShotSet, views: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LP++'s fixed training samples: one augmented view per image drawn once from ``seed``
    (``one``: the source's single augmented pass), each image's view mean (``mean``) or every view
    (``all``).

    Returns:
        features ``(N, d)`` (``(N V, d)`` for ``all``), unit norm, and their labels.
    """
    if views != "one":
        return view_samples(train_set, views)
    x = F.normalize(train_set.features.float(), dim=-1)  # (N, V, d)
    pick = torch.randint(x.shape[1], (x.shape[0],), generator=torch.Generator().manual_seed(seed))  # (N,)
    return x[torch.arange(x.shape[0]), pick], train_set.labels  # (N, d), (N,)


class _LPPlusPlusModule(nn.Module):
    """W ``(C, d)`` (class sums of the samples), b ``(C,)`` and the text multipliers alpha ``(C,)``."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, alpha: torch.Tensor, text: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)
        self.alpha = nn.Parameter(alpha)
        self.register_buffer("text", text)  # (C, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x W^T + b + alpha ⊙ (x T^T)`` of unit-norm samples ``(B, d)`` -> ``(B, C)``."""
        return x @ self.weight.T + self.bias + self.alpha * (x @ self.text.T)


@register_method("lp_plus_plus")
class LPPlusPlus(Method):
    """Linear probe plus class-wise scaled text logits, full-batch, step sizes from Lipschitz constants."""

    config_cls = LPPlusPlusConfig

    def _fit(self, data: SelectionData, ctx: FitContext) -> Fitted:
        cfg: LPPlusPlusConfig = self.config
        dev = ctx.device
        x, y = (t.to(dev) for t in lp_plus_plus_samples(data.train_set, cfg.views, ctx.seed))  # (N, d), (N,)
        text = F.normalize(prompt_ensemble(data.pos_text).float(), dim=-1).to(dev)  # (C, d)
        num_classes, dim = text.shape
        lr_w, lr_alpha, alpha0 = lp_plus_plus_steps(x.cpu(), y.cpu(), text.cpu(), alpha_init_scale=cfg.alpha_init_scale)

        weight = torch.zeros(num_classes, dim, device=dev).index_add_(0, y, x)  # (C, d): class sums
        bound = 1.0 / math.sqrt(dim)  # nn.Linear's default bias initialisation, from the fit's seed
        bias = ((torch.rand(num_classes, generator=torch.Generator().manual_seed(ctx.seed)) * 2 - 1) * bound).to(dev)
        module = _LPPlusPlusModule(weight, bias, torch.full((num_classes,), alpha0, device=dev), text)
        optimizer = torch.optim.SGD([module.weight, module.bias], lr=lr_w, momentum=cfg.momentum)

        def alpha_step(step: int) -> None:  # the block-coordinate step on alpha, with the current gradient
            alpha = module.alpha
            if (step + 1) % cfg.alpha_every == 0:
                with torch.no_grad():
                    alpha -= lr_alpha * alpha.grad
            alpha.grad = None  # the optimiser zeroes W and b only

        result = train_loop(
            module, optimizer, lambda step, steps_per_epoch: lr_w, data, ctx,
            logits_fn=lambda f: module(F.normalize(f, dim=-1)),
            loss_fn=lambda query, target: F.cross_entropy(module(query), target),
            epochs=cfg.epochs, batch_size=x.shape[0], checkpoint=cfg.checkpoint,
            samples=(x, y), after_step=alpha_step, ties="last", desc=self.name,
        )
        w, b, a = (t.detach() for t in (module.weight, module.bias, module.alpha))
        # f W^T + b + alpha ⊙ (f T^T) is one linear layer on the normalised feature
        head = LinearHead(weight=w + a[:, None] * text, bias=b, normalize=True)  # (C, d), (C,)
        return Fitted(
            head=head,
            val_acc=result.val_acc,
            hparams={"lr_w": lr_w, "lr_alpha": lr_alpha, "alpha_init": alpha0, "alpha_mean": float(a.mean()), "checkpoint_epoch": result.epoch},
            epochs=cfg.epochs,
            history=result.history,
            train_seconds=result.seconds,
            trainable_params=result.trainable_params,
        )
