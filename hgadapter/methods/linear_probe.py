"""Linear-probe CLIP: L2-regularised logistic regression on frozen image features.

Radford et al., 2021, Sec. 3.2 and Appendix A.3: scikit-learn's L-BFGS logistic regression, the
regularisation strength swept on a validation split. The few-shot sweep follows CoOp's
``lpclip/linear_probe.py`` (Zhou et al., 2022): a coarse grid ``C in {1e6, 1e4, ..., 1e-6}``,
then a bisection in log10(C) around the best coarse value, ``max_iter=1000``.

    minimise_W,b  0.5 ||W||^2 + C * sum_i CE(W f_i + b, y_i)
    logits(f) = W f + b

Changes, and why:
- The chosen C is the best validation accuracy over every C tried (the earliest on ties);
  CoOp keeps the last bisection step's choice, which need not be the best one it saw.
- CLIP probes un-augmented images; the cache holds V augmented views per image, so an image's
  feature is its views' renormalised mean (``views: mean``), the closest thing to the centre
  crop. ``views: all`` trains on every view instead.
- The solver runs on one BLAS/OpenMP thread: scikit-learn's and torch's thread pools otherwise
  compete for the cores, which is many times slower on small machines.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from hgadapter.heads import LinearHead
from hgadapter.methods._common import VIEWS, view_samples
from hgadapter.methods._registry import Method, hparam, register_method
from hgadapter.protocol import FitContext, Fitted, SelectionData, accuracy, require_validation

__all__ = ["LinearProbeConfig", "LinearProbe"]


@dataclass(frozen=True)
class LinearProbeConfig:
    """CoOp's few-shot linear-probe sweep (``lpclip/linear_probe.py``)."""

    c_grid: tuple[float, ...] = hparam((1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6), positive=True)  # coarse inverse regularisation strengths C, tried in this order
    search_steps: int = hparam(8, low=0)  # bisection steps in log10(C) around the best coarse C
    max_iter: int = hparam(1000, low=1)  # L-BFGS iterations per fit
    tol: float = hparam(1e-4, positive=True)  # L-BFGS stopping tolerance (scikit-learn's default)
    views: str = hparam("mean", choices=VIEWS)  # training features: each image's mean view | every view


@register_method("linear_probe")
class LinearProbe(Method):
    """Logistic regression on image features; C chosen on validation."""

    config_cls = LinearProbeConfig

    def _fit(self, data: SelectionData, ctx: FitContext) -> Fitted:
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        cfg: LinearProbeConfig = self.config
        x, y = view_samples(data.train_set, cfg.views)  # (N, d) or (N V, d)
        x_np, y_np = x.double().numpy(), y.numpy()
        if len(set(cfg.c_grid)) > 1 or cfg.search_steps > 0:
            require_validation(data.val_labels, "the linear probe's C search", "fix C (c_grid: [C], search_steps: 0)")
        val_x = data.val_features.double().numpy()
        val_y = data.val_labels.numpy()

        tried: dict[float, tuple[float, object]] = {}  # C -> (val accuracy, classifier), in trial order

        def trial(c: float) -> float:
            if c not in tried:
                clf = LogisticRegression(C=c, solver="lbfgs", max_iter=cfg.max_iter, tol=cfg.tol, random_state=ctx.seed)
                with warnings.catch_warnings():
                    # The extreme ends of the sweep (C = 1e6) stop at max_iter, as in CoOp; that is expected.
                    warnings.simplefilter("ignore")
                    clf.fit(x_np, y_np)
                tried[c] = (100.0 * float(np.mean(clf.predict(val_x) == val_y)) if len(val_y) else float("nan"), clf)
            return tried[c][0]

        start = time.perf_counter()  # the sweep fits one model per C: all of it is selection
        with threadpool_limits(limits=1):
            coarse = [trial(c) for c in cfg.c_grid]
            peak = cfg.c_grid[int(np.argmax(coarse))]
            lo, hi = math.log10(peak) - 1.0, math.log10(peak) + 1.0
            for _ in range(cfg.search_steps):  # CoOp's bisection: keep the better end, halve the interval
                if trial(10.0**lo) < trial(10.0**hi):
                    lo = 0.5 * (lo + hi)
                else:
                    hi = 0.5 * (lo + hi)

        best_c = max(tried, key=lambda c: tried[c][0])  # max() keeps the first of equal accuracies
        val_acc, clf = tried[best_c]
        select_seconds = time.perf_counter() - start
        device = ctx.device
        weight = torch.as_tensor(clf.coef_, dtype=torch.float32, device=device)  # (C, d)
        bias = torch.as_tensor(clf.intercept_, dtype=torch.float32, device=device)  # (C,)

        head = LinearHead(weight=weight, bias=bias)
        # Report the validation accuracy of the predictor actually returned (float32 logits).
        val_acc = accuracy(head(data.val_features), data.val_labels.to(device))
        return Fitted(
            head=head,
            val_acc=val_acc,
            hparams={"C": float(best_c), "fits": len(tried)},
            select_seconds=select_seconds,
        )
