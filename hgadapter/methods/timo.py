"""TIMO and TIMO-S: text-image mutual guidance, training-free (Li et al., AAAI 2025, arXiv 2412.11375).

Image-guided text (IGT): each class's prompt features ``T_c`` ``(P, d)`` are weighted by how well
they match the class's image prototype ``z_c`` (the renormalised mean of its cache keys):

    m_cp = T_cp . z_c,   w_c = softmax(gamma * m_c / |m_c|),   t_c = normalise(sum_p w_cp T_cp)

Text-guided image (TGI): the prompt features, sorted by ``m_c`` and scaled by it, join the
few-shot image views (every augmented view a sample) as extra samples of their class; the first
``beta`` of the class's prompts repeated twice are used. GDA (shared shrunk covariance, the
linear Bayes classifier; :func:`hgadapter.methods.gda.gda_classifier`, here without
renormalising the scaled text samples) is fitted on the union, and

    logits(f) = alpha * cos(f, t_c) + f W^T + b,

alpha searched on validation over ``10^i``, ``i = -4 ... 4`` (first best). TIMO fixes ``gamma``
(the official ``image_guide_text``: 1 on ImageNet, 100 on Flowers102, 50 elsewhere) and
``beta = P``. TIMO-S searches ``gamma`` in 5, 10, ..., 100 by the validation accuracy of the IGT
classifier alone, and ``beta`` over ``linspace(1, 2P, 10)`` (each with its own alpha search),
keeping the first best validation accuracy; the official code searches on validation as well.

Changes (docs/baselines.md): the prompts are the cache's prompt set (the official features use
the dataset's CoOp templates, ``extract_text_feature_all``); the source's ImageNet "val" is its
test split, ours is a validation split.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hgadapter.evaluate import select_weight
from hgadapter.heads import LinearHead, SumHead, TextHead
from hgadapter.methods._common import cache_model, view_samples
from hgadapter.methods._registry import Method, hparam, register_method
from hgadapter.methods.gda import gda_classifier
from hgadapter.protocol import FitContext, Fitted, SelectionData, accuracy, require_validation

__all__ = ["TIMOConfig", "TIMOSConfig", "TIMO", "TIMOS", "image_guided_text", "text_guided_samples"]


def image_prototypes(keys: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Renormalised mean of each class's (unit-norm) cache keys: ``(N, d) -> (C, d)``."""
    sums = keys.new_zeros(num_classes, keys.shape[1]).index_add_(0, labels, keys)  # (C, d)
    return F.normalize(sums, dim=-1)


def image_guided_text(prompts: torch.Tensor, protos: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """IGT: the matching-weighted prompt ensemble and the matching scores.

    Shapes: prompts ``(C, P, d)`` (unit-norm), protos ``(C, d)`` -> text ``(C, d)``, scores ``(C, P)``.
    """
    scores = torch.einsum("cpd,cd->cp", prompts, protos)  # (C, P): m_cp
    weights = F.softmax(gamma * F.normalize(scores, dim=1), dim=1)  # (C, P)
    return F.normalize(torch.einsum("cp,cpd->cd", weights, prompts), dim=-1), scores


def text_guided_samples(prompts: torch.Tensor, scores: torch.Tensor, beta: int) -> tuple[torch.Tensor, torch.Tensor]:
    """TGI's text samples: per class, its prompts sorted by score (descending), repeated twice,
    the first ``beta`` kept, each scaled by its score.

    Shapes: prompts ``(C, P, d)``, scores ``(C, P)`` -> samples ``(C * beta, d)``, labels ``(C * beta,)``.
    """
    num_classes, num_prompts, dim = prompts.shape
    beta = max(1, min(int(beta), 2 * num_prompts))
    sorted_scores, order = torch.sort(scores, dim=1, descending=True, stable=True)  # (C, P)
    sorted_prompts = torch.gather(prompts, 1, order.unsqueeze(-1).expand(-1, -1, dim))  # (C, P, d)
    vecs = (sorted_prompts * sorted_scores.unsqueeze(-1)).repeat(1, 2, 1)[:, :beta]  # (C, beta, d)
    labels = torch.arange(num_classes, device=prompts.device).repeat_interleave(beta)  # (C * beta,)
    return vecs.reshape(-1, dim), labels


@dataclass(frozen=True)
class TIMOConfig:
    """TIMO (official ``main.py`` and ``utils.image_guide_text``)."""

    gamma: float = hparam(50.0, low=0.0)  # IGT's softmax sharpness (the source's value for datasets other than ImageNet and Flowers102)
    alpha_grid: tuple[float, ...] = hparam((1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4), low=0.0)  # weights of the IGT classifier tried (10^-4 ... 10^4)
    alpha: float | None = hparam(None, low=0.0)  # fix the weight of the IGT classifier instead of searching


@dataclass(frozen=True)
class TIMOSConfig:
    """TIMO-S: gamma and beta searched on validation (official ``image_guide_text_search`` and ``TIMO(grid_search=True)``)."""

    gamma_grid: tuple[float, ...] = hparam(tuple(float(g) for g in range(5, 101, 5)), low=0.0)  # IGT sharpness values tried
    beta_searches: int = hparam(10, low=1)  # number of beta values tried, linspace(1, 2P, n) as integers (n_quick_search)
    alpha_grid: tuple[float, ...] = hparam((1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4), low=0.0)  # weights of the IGT classifier tried


class _TIMOBase(Method):
    """What TIMO and TIMO-S share: IGT text, TGI samples, GDA, and the alpha search, for given gammas and betas."""

    def candidates(self, data: SelectionData, prompts: torch.Tensor, protos: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor) -> tuple[float, list[int]]:
        """``(gamma, betas)`` to try."""
        raise NotImplementedError

    def _fit(self, data: SelectionData, ctx: FitContext) -> Fitted:
        cfg = self.config
        dev = ctx.device
        num_classes = data.num_classes
        prompts = F.normalize(data.pos_text.float(), dim=-1).to(dev)  # (C, P, d)
        keys, _ = cache_model(data, dev)  # (N, d)
        protos = image_prototypes(keys, data.train_set.labels.to(dev), num_classes)  # (C, d)
        images, image_labels = view_samples(data.train_set, "all")  # (N V, d), (N V,)
        images, image_labels = images.to(dev), image_labels.to(dev)
        val_x, val_y = F.normalize(data.val_features.float().to(dev), dim=-1), data.val_labels.to(dev)
        fixed_alpha = getattr(cfg, "alpha", None)
        if fixed_alpha is None:
            require_validation(val_y, f"{self.name}'s alpha search", "fix alpha")
        start = time.perf_counter()
        gamma, betas = self.candidates(data, prompts, protos, val_x, val_y)
        text, scores = image_guided_text(prompts, protos, gamma)  # (C, d), (C, P)
        grid = (fixed_alpha,) if fixed_alpha is not None else cfg.alpha_grid
        best = None  # (val_acc, beta, alpha, W, b)
        with torch.no_grad():
            igt = val_x @ text.T  # (B, C): cos(f, t_c)
            for beta in betas:
                vecs, vec_labels = text_guided_samples(prompts, scores, beta)
                weight, bias = gda_classifier(
                    torch.cat([vecs, images]), torch.cat([vec_labels, image_labels]), num_classes, normalize=False
                )
                weight, bias = weight.to(dev), bias.to(dev)
                choice = select_weight(val_x @ weight.T + bias, igt, val_y, grid=grid)
                if best is None or choice.val_acc > best[0]:
                    best = (choice.val_acc, beta, choice.weight, weight, bias)
        val_acc, beta, alpha, weight, bias = best
        head = SumHead(parts=[TextHead(text=text, logit_scale=alpha), LinearHead(weight=weight, bias=bias, normalize=True)], weights=[1.0, 1.0])
        ctx.note(f"{self.name}: gamma {gamma:g} beta {beta} alpha {alpha:g} val_acc {val_acc:.2f}")
        return Fitted(
            head=head, val_acc=val_acc, hparams={"gamma": float(gamma), "beta": int(beta), "alpha": float(alpha)},
            select_seconds=time.perf_counter() - start,
        )


@register_method("timo")
class TIMO(_TIMOBase):
    """IGT text at a fixed gamma plus GDA on the images and the P best-matching text samples; alpha chosen on validation."""

    config_cls = TIMOConfig

    def candidates(self, data, prompts, protos, val_x, val_y):
        return self.config.gamma, [prompts.shape[1]]


@register_method("timo_s")
class TIMOS(_TIMOBase):
    """TIMO with the IGT sharpness gamma and the number of text samples beta chosen on validation."""

    config_cls = TIMOSConfig

    def candidates(self, data, prompts, protos, val_x, val_y):
        cfg: TIMOSConfig = self.config
        require_validation(val_y, "TIMO-S's gamma and beta search", "use timo (fixed gamma and beta)")
        best_acc, gamma = 0.0, 0.0  # the source starts at 0 and keeps the first strictly better value
        for g in cfg.gamma_grid:
            acc = accuracy(val_x @ image_guided_text(prompts, protos, g)[0].T, val_y)
            if acc > best_acc:
                best_acc, gamma = acc, g
        num_prompts = prompts.shape[1]
        betas = [max(1, int(b)) for b in torch.linspace(1, 2 * num_prompts, cfg.beta_searches).tolist()]
        return gamma, betas
