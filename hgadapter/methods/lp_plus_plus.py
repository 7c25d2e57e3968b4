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

Changes: every augmented view is a sample (``views: all``; the source extracts one augmented
pass of the training images); the alpha step uses the current gradient, as the paper's
block-coordinate update does (the source never zeroes alpha's gradient, so its step applies the
sum of every gradient since the start).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hgadapter.heads import LinearHead
from hgadapter.methods._common import CHECKPOINTS, VIEWS, prompt_ensemble, view_samples
from hgadapter.methods._registry import Method, hparam, register_method
from hgadapter.protocol import FitContext, Fitted, SelectionData, accuracy, require_validation

__all__ = ["LPPlusPlusConfig", "LPPlusPlus", "lp_plus_plus_steps"]


@dataclass(frozen=True)
class LPPlusPlusConfig:
    """LP++ (official ``configs/base.yaml``: ``train_epoch: 300``; the step sizes are computed)."""

    epochs: int = hparam(300, low=0)  # full-batch epochs
    alpha_every: int = hparam(10, low=1)  # epochs between two steps on alpha
    alpha_init_scale: float = hparam(250.0, low=0.0)  # alpha_0 = scale * mean true-class text cosine
    momentum: float = hparam(0.9, low=0.0)  # SGD momentum on W and b
    checkpoint: str = hparam("best_val", choices=CHECKPOINTS)  # the source keeps the best validation epoch
    views: str = hparam("all", choices=VIEWS)  # training samples: every augmented view, or each image's view mean


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


@register_method("lp_plus_plus")
class LPPlusPlus(Method):
    """Linear probe plus class-wise scaled text logits, full-batch, step sizes from Lipschitz constants."""

    config_cls = LPPlusPlusConfig

    def _fit(self, data: SelectionData, ctx: FitContext) -> Fitted:
        cfg: LPPlusPlusConfig = self.config
        dev = ctx.device
        if cfg.checkpoint == "best_val":
            require_validation(data.val_labels, "checkpoint best_val (LP++'s best validation epoch)", "keep the last epoch (checkpoint: last)")
        x, y = (t.to(dev) for t in view_samples(data.train_set, cfg.views))  # (N, d), (N,)
        text = F.normalize(prompt_ensemble(data.pos_text).float(), dim=-1).to(dev)  # (C, d)
        val_x, val_y = F.normalize(data.val_features.float(), dim=-1).to(dev), data.val_labels.to(dev)
        num_classes, dim = text.shape
        lr_w, lr_alpha, alpha0 = lp_plus_plus_steps(x.cpu(), y.cpu(), text.cpu(), alpha_init_scale=cfg.alpha_init_scale)

        weight = torch.zeros(num_classes, dim, device=dev).index_add_(0, y, x).requires_grad_()  # (C, d): class sums
        bound = 1.0 / math.sqrt(dim)  # nn.Linear's default bias initialisation, from the fit's seed
        bias = ((torch.rand(num_classes, generator=torch.Generator().manual_seed(ctx.seed)) * 2 - 1) * bound).to(dev).requires_grad_()
        alpha = torch.full((num_classes,), alpha0, device=dev, requires_grad=True)  # (C,)
        optimizer = torch.optim.SGD([weight, bias], lr=lr_w, momentum=cfg.momentum)
        text_x, text_val = x @ text.T, val_x @ text.T  # (N, C), (B, C): the text term's cosines

        def state() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return weight.detach().clone(), bias.detach().clone(), alpha.detach().clone()

        start = time.perf_counter()
        history: list[dict] = []
        best = (-1.0, 0, state())
        for epoch in range(cfg.epochs):
            loss = F.cross_entropy(x @ weight.T + bias + alpha * text_x, y)
            optimizer.zero_grad(set_to_none=True)
            alpha.grad = None
            loss.backward()
            optimizer.step()
            if (epoch + 1) % cfg.alpha_every == 0:  # the block-coordinate step on alpha
                with torch.no_grad():
                    alpha -= lr_alpha * alpha.grad
            with torch.no_grad():
                val_acc = accuracy(val_x @ weight.T + bias + alpha * text_val, val_y)
            history.append({"epoch": epoch + 1, "loss": loss.item(), "lr": lr_w, "val_acc": val_acc})
            ctx.note(f"epoch {epoch + 1}/{cfg.epochs} loss {loss.item():.4f} val_acc {val_acc:.2f}")
            if cfg.checkpoint == "last" or val_acc >= best[0]:  # the source: later epochs win ties
                best = (val_acc, epoch + 1, state())
        train_seconds = time.perf_counter() - start
        val_acc, kept, (w, b, a) = best
        if kept == 0:  # no epoch ran
            with torch.no_grad():
                val_acc = accuracy(val_x @ w.T + b + a * text_val, val_y) if val_y.numel() else float("nan")
        # f W^T + b + alpha ⊙ (f T^T) is one linear layer on the normalised feature
        head = LinearHead(weight=w + a[:, None] * text, bias=b, normalize=True)  # (C, d), (C,)
        return Fitted(
            head=head,
            val_acc=val_acc,
            hparams={"lr_w": lr_w, "lr_alpha": lr_alpha, "alpha_init": alpha0, "alpha_mean": float(a.mean()), "checkpoint_epoch": kept},
            epochs=cfg.epochs,
            history=history,
            train_seconds=train_seconds,
            trainable_params=weight.numel() + bias.numel() + alpha.numel(),
        )
