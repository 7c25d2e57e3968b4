"""ProKeR: proximal kernel ridge regression towards the zero-shot predictor, in closed form.

Bendou et al., "ProKeR: A Kernel Perspective on Few-Shot Adaptation of Large Vision-Language
Models", CVPR 2025. The few-shot samples S ``(N, d)`` (each image's views averaged and
renormalised, Tip-Adapter's cache keys) and their one-hot labels Y ``(N, C)`` fit a function in
the RKHS of the kernel ``k(x, x') = exp(-beta (1 - x . x'))`` regularised towards zero-shot CLIP
``f0(x) = x T^T`` (cosines with the text classifier T) instead of towards 0. Its minimiser has
the closed form of the public code (training-free ``ProKeR``):

    A = (K_SS / lambda + I)^-1 (Y - f0(S)),     f(x) = f0(x) + k(x, S) A

so lambda -> 0 is zero-shot CLIP and a large lambda interpolates the residuals Y - f0(S).
beta and lambda are chosen on validation over the source's grids (``configs/RN50/configs_proker/
<dataset>.yaml``: ``torch.linspace`` of beta and of lambda; the defaults here are its SUN397
grid), extended outward when the optimum lies on an edge. One eigendecomposition of K_SS per
beta serves every lambda (``K = U E U^T``: ``A = U (E / lambda + I)^-1 U^T R``). Logits are
returned times the logit scale s (argmax-neutral), so they read like the other methods'.

Changes: the source ships per-dataset grids that it searches on the validation split, except
with ``hp_selection imagenet``, which reuses hyper-parameters chosen on ImageNet; we always
search on the task's own validation split, in float64.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hgadapter.evaluate import cache_keys, extend_pair_search
from hgadapter.heads import CacheHead
from hgadapter.methods._common import prompt_ensemble
from hgadapter.methods._registry import Method, hparam, register_method
from hgadapter.protocol import FitContext, Fitted, SelectionData, accuracy, require_validation

__all__ = ["ProKeRConfig", "ProKeR", "proker_kernel", "proker_coefficients", "linspace_grid"]


def linspace_grid(low: float, high: float, steps: int) -> tuple[float, ...]:
    """``torch.linspace(low, high, steps)`` as the source builds its grids (both ends included)."""
    return tuple(float(v) for v in torch.linspace(low, high, steps, dtype=torch.float64))


@dataclass(frozen=True)
class ProKeRConfig:
    """ProKeR's search (the public code's ``configs_proker/sun397.yaml``)."""

    beta_range: tuple[float, ...] = hparam((0.1, 10.0), positive=True, length=2)  # lowest and highest kernel sharpness tried
    beta_steps: int = hparam(20, low=1)  # number of beta values (linspace)
    lmbda_range: tuple[float, ...] = hparam((0.01, 10.0), positive=True, length=2)  # lowest and highest lambda tried
    lmbda_steps: int = hparam(10, low=1)  # number of lambda values (linspace)
    extend_rounds: int = hparam(4, low=0)  # times a grid is extended outward when the optimum lies on its edge
    beta: float | None = hparam(None, positive=True)  # fix the kernel sharpness instead of searching
    lmbda: float | None = hparam(None, positive=True)  # fix lambda instead of searching


def proker_kernel(x: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """``exp(-beta (1 - x y^T))``. Shapes: ``(B, d), (N, d) -> (B, N)``."""
    return torch.exp(-beta * (1.0 - x @ y.T))


def proker_coefficients(gram: torch.Tensor, residual: torch.Tensor, lmbda: float) -> torch.Tensor:
    """``A = (K / lambda + I)^-1 R`` by a direct solve. Shapes: ``(N, N), (N, C) -> (N, C)``."""
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram / lmbda + eye, residual)


@register_method("proker")
class ProKeR(Method):
    """Kernel ridge regression around zero-shot CLIP; beta and lambda chosen on validation."""

    config_cls = ProKeRConfig

    def _fit(self, data: SelectionData, ctx: FitContext) -> Fitted:
        cfg: ProKeRConfig = self.config
        dev = ctx.device
        text = F.normalize(prompt_ensemble(data.pos_text).float(), dim=-1).to(dev)  # (C, d)
        keys = cache_keys(data.train_set, device=dev)  # (N, d)
        onehot = F.one_hot(data.train_set.labels, num_classes=data.num_classes).to(dev, torch.float64)  # (N, C)
        s, t = keys.double(), text.double()
        residual = onehot - s @ t.T  # (N, C): Y - f0(S)
        betas = [cfg.beta] if cfg.beta is not None else list(linspace_grid(cfg.beta_range[0], cfg.beta_range[1], cfg.beta_steps))
        lmbdas = [cfg.lmbda] if cfg.lmbda is not None else list(linspace_grid(cfg.lmbda_range[0], cfg.lmbda_range[1], cfg.lmbda_steps))

        start = time.perf_counter()
        extended: dict[str, list[float]] = {}  # grid values added past an edge of the search
        if len(betas) == 1 and len(lmbdas) == 1:
            beta, lmbda, val_acc = betas[0], lmbdas[0], float("nan")
        else:
            require_validation(data.val_labels, "the beta/lambda search", "fix beta and lmbda")
            val_x = F.normalize(data.val_features.double(), dim=-1).to(dev)  # (B, d)
            val_y, val_zs = data.val_labels.to(dev), val_x @ t.T  # (B,), (B, C)
            best = (-1.0, 0.0, 0.0)
            spectrum: dict[float, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # the last beta's only: B x N floats each

            def scan(pairs: list[tuple[float, list[float]]]) -> None:
                nonlocal best
                for beta, beta_lmbdas in pairs:
                    if beta not in spectrum:  # K = U E U^T once per beta; each of its lambdas reuses it
                        evals, evecs = torch.linalg.eigh(proker_kernel(s, s, beta))
                        spectrum.clear()
                        spectrum[beta] = (evals.clamp_min(0.0), proker_kernel(val_x, s, beta) @ evecs, evecs.T @ residual)
                    evals, val_u, u_res = spectrum[beta]  # (N,), (B, N), (N, C)
                    for lmbda in beta_lmbdas:
                        acc = accuracy(val_zs + val_u @ (u_res / (evals / lmbda + 1.0)[:, None]), val_y)
                        if acc > best[0]:
                            best = (acc, beta, lmbda)

            scan([(b, lmbdas) for b in betas])
            extended = extend_pair_search(betas, lmbdas, scan, lambda: (best[1], best[2]), rounds=cfg.extend_rounds, names=("beta", "lmbda"))
            val_acc, beta, lmbda = best
        coef = proker_coefficients(proker_kernel(s, s, beta), residual, lmbda)  # (N, C)
        scale = data.logit_scale
        # s * (f0(x) + k(x, S) A): Tip-Adapter's cache form with values A and weight s
        head = CacheHead(text=text, keys=keys, values=coef.float(), alpha=scale, beta=beta, logit_scale=scale, normalize=True)
        ctx.note(f"beta {beta:g} lambda {lmbda:g} val_acc {val_acc:.2f}" + (f"; grid extended by {extended}" if extended else ""))
        hparams = {"beta": float(beta), "lmbda": float(lmbda), **({"grid_extended": extended} if extended else {})}
        return Fitted(head=head, val_acc=val_acc, hparams=hparams, select_seconds=time.perf_counter() - start)
