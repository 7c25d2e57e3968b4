"""GDA: Gaussian discriminant analysis on CLIP features, ensembled with zero-shot CLIP.

Wang et al., "A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation", ICLR 2024. The
image features of each class are modelled as Gaussians with their own means and one shared
covariance; the Bayes classifier is then linear:

    w_c = P mu_c,   b_c = -1/2 mu_c^T P mu_c   (uniform class prior),   logits_gda(f) = f W^T + b

with mu_c the class mean of the L2-normalised few-shot features (every augmented view is a
sample) and P the precision. With N samples in d dimensions and d comparable to N the sample
covariance S (pooled within-class) is singular or badly conditioned, so the paper shrinks it
(an empirical-Bayes ridge estimator): ``P = d ((N - 1) S + tr(S) I)^-1``. Prediction is
``logits_zs(f) + alpha logits_gda(f)``; the paper searches alpha on a validation set, and so do we
(a log grid extended outward when the optimum lies on its edge). Training-free: no gradients.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hgadapter.config import hparam
from hgadapter.evaluate import select_weight
from hgadapter.heads import LinearHead, SumHead, TextHead
from hgadapter.methods._common import VIEWS, prompt_ensemble, view_samples
from hgadapter.methods._registry import Method, register_method
from hgadapter.protocol import FitContext, Fitted, SelectionData

__all__ = ["GDAConfig", "GDA", "gda_classifier"]


@dataclass(frozen=True)
class GDAConfig:
    """GDA's ensemble-weight search (the paper: alpha on validation; no other hyper-parameter)."""

    alpha_grid: tuple[float, ...] = hparam(  # ensemble weights tried: 1e-4 ... 1e2, two per decade
        (1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2, 3.16e-2, 0.1, 0.316, 1.0, 3.16, 10.0, 31.6, 100.0), low=0.0
    )
    extend_rounds: int = hparam(4, low=0)  # times the grid is extended outward when the optimum lies on its edge
    alpha: float | None = hparam(None, low=0.0)  # fix the ensemble weight instead of searching
    views: str = hparam("all", choices=VIEWS)  # every augmented view is a sample, or each image's view mean


def gda_classifier(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, *, normalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The linear GDA classifier of L2-normalised ``features`` ``(N, d)`` with ``labels`` ``(N,)``.

    ``normalize=False`` takes the samples as given (TIMO's text samples are scaled by their
    matching score on purpose).

    Returns:
        ``W`` ``(C, d)`` and ``b`` ``(C,)`` with ``logits = f W^T + b``.
    """
    x = features.double()  # (N, d); float64: the shrunk inverse is of a d x d matrix
    x = F.normalize(x, dim=-1) if normalize else x
    n, d = x.shape
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).to(x.dtype)  # (C,)
    means = x.new_zeros(num_classes, d).index_add_(0, labels, x) / counts.unsqueeze(1)  # (C, d)
    centred = x - means[labels]  # (N, d)
    cov = centred.T @ centred / max(n - 1, 1)  # (d, d): pooled within-class sample covariance S
    shrunk = (n - 1) * cov + torch.trace(cov) * torch.eye(d, dtype=x.dtype)  # (N - 1) S + tr(S) I
    precision = d * torch.linalg.inv(shrunk)  # (d, d)
    weight = means @ precision  # (C, d); P is symmetric
    bias = -0.5 * (weight * means).sum(dim=1)  # (C,)
    return weight.float(), bias.float()


@register_method("gda")
class GDA(Method):
    """Gaussian discriminant analysis with a shrunk shared covariance, plus zero-shot CLIP."""

    config_cls = GDAConfig

    def _fit(self, data: SelectionData, ctx: FitContext) -> Fitted:
        cfg: GDAConfig = self.config
        dev = ctx.device
        features, labels = view_samples(data.train_set, cfg.views)  # (N V, d) or (N, d)
        weight, bias = (t.to(dev) for t in gda_classifier(features.to(dev), labels.to(dev), data.num_classes))
        text = prompt_ensemble(data.pos_text).to(dev)  # (C, d)
        scale = data.logit_scale

        zs_head = TextHead(text=text, logit_scale=scale)
        gda_head = LinearHead(weight=weight, bias=bias, normalize=True)

        start = time.perf_counter()  # the closed form is no training loop: fit_seconds covers it
        with torch.no_grad():
            zs, gda = zs_head(data.val_features), gda_head(data.val_features)  # (B, C) each
            grid = (cfg.alpha,) if cfg.alpha is not None else cfg.alpha_grid
            choice = select_weight(zs, gda, data.val_labels.to(dev), grid=grid, extend_rounds=cfg.extend_rounds)
        alpha = choice.weight
        ctx.note(f"alpha {alpha:g} val_acc {choice.val_acc:.2f}" + (f"; grid extended by {choice.extended}" if choice.extended else ""))

        hparams = {"alpha": alpha, **({"grid_extended": {"alpha": choice.extended}} if choice.extended else {})}
        return Fitted(head=SumHead(parts=[zs_head, gda_head], weights=[1.0, alpha]), val_acc=choice.val_acc, hparams=hparams, select_seconds=time.perf_counter() - start)
