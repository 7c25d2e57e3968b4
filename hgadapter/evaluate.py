"""The cache classifier's keys, and the choice of its alpha/beta on validation.

Prediction (METHOD.md, Tip-Adapter): ``logits_text + alpha * logits_cache``; ``alpha`` and the
cache sharpness ``beta`` come from a grid search on the validation split (or are fixed in the
config). Tip-Adapter, Tip-Adapter-F and HeGraphAdapter build their cache keys with
:func:`cache_keys` and search with :func:`select_alpha_beta`. Nothing here can see the test
split: it receives a :class:`~hgadapter.protocol.SelectionData` and returns a predictor with
frozen hyper-parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from hgadapter.adapter import cache_affinity, cache_logits, shift_features, text_logits
from hgadapter.config import EvalConfig
from hgadapter.data.cache import FewShotSet
from hgadapter.heads import CacheHead, Head, TextHead
from hgadapter.protocol import SelectionData, accuracy, require_validation

__all__ = ["GridChoice", "Selection", "WeightChoice", "best_grid_pair", "cache_keys", "extend_pair_search", "outward_values", "select_alpha_beta", "select_predictor", "select_weight"]


def cache_keys(train_set: FewShotSet, *, device: torch.device | str, vis_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Tip-Adapter's cache keys: each image's V unit-norm views averaged and renormalised, then shifted and renormalised.

    Tip-Adapter (``build_cache_model``) averages the features of ``augment_epoch`` augmented
    passes over the training set; the cache's V views are those passes. With ``vis_bias``
    ``(C, d)`` (HeGraphAdapter's visual stage) each key is shifted by its class's bias before
    renormalising (:func:`~hgadapter.adapter.shift_features`).

    Returns:
        keys ``(N, d)`` on ``device``.
    """
    views = F.normalize(train_set.features.float(), dim=-1).to(device)  # (N, V, d)
    # The unshifted key is renormalised before the shift, as in training
    # (adapter.shifted_cache_affinity expects unit-norm keys), so the bias means the same in both.
    keys = F.normalize(views.mean(dim=1), dim=-1)  # (N, d)
    return shift_features(keys, train_set.labels.to(device), vis_bias)  # (N, d)


@dataclass(frozen=True)
class Selection:
    """A predictor with its hyper-parameters chosen on validation.

    Attributes:
        head: the frozen predictor, image features ``(N, d)`` -> logits ``(N, C)``.
        val_acc: validation accuracy in percent.
        alpha / beta: the chosen cache weight and sharpness (``None`` without a cache).
        extended: grid values added past an edge of the search (:class:`GridChoice`).
    """

    head: Head
    val_acc: float
    alpha: float | None
    beta: float | None
    extended: dict[str, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class GridChoice:
    """The outcome of :func:`select_alpha_beta`.

    Attributes:
        alpha / beta: the chosen pair.
        val_acc: its validation accuracy in percent.
        extended: grid values added because the optimum lay on an edge, by name (``alpha``,
            ``beta``), in the order added; empty when the optimum was inside the given grids.
    """

    alpha: float
    beta: float
    val_acc: float
    extended: dict[str, list[float]] = field(default_factory=dict)


def outward_values(grid: Sequence[float], best: float) -> list[float]:
    """The values to add when ``best`` lies on an edge of ``grid``: 1.5x and 2x past the top, or
    1/1.5 and 1/2 of a positive bottom; nothing for an interior optimum, a one-value (fixed) grid
    or a bottom of 0 (alpha = 0 is the natural bound: no cache)."""
    values = sorted(set(float(v) for v in grid))
    if len(values) < 2:
        return []
    if best == values[-1]:
        return [values[-1] * 1.5, values[-1] * 2.0]
    if best == values[0] and values[0] > 0:
        return [values[0] / 1.5, values[0] / 2.0]
    return []


def best_grid_pair(table: dict[tuple[float, float], float], *, smooth: int = 0) -> tuple[float, float]:
    """The ``(beta, alpha)`` key of ``table`` (key -> validation accuracy, in scan order) to choose.

    ``smooth`` 0: the highest accuracy, the first of equals. ``smooth`` r > 0: the highest mean
    accuracy over the pairs within r grid steps in both beta and alpha (the grid being the sorted
    values present in ``table``), then the higher accuracy of the pair itself, then the first.
    """
    if smooth <= 0:
        return max(table, key=table.__getitem__)  # max() keeps the first of equal accuracies
    index = [{v: i for i, v in enumerate(sorted({key[axis] for key in table}))} for axis in (0, 1)]
    cells = {(index[0][b], index[1][a]): acc for (b, a), acc in table.items()}

    def score(key: tuple[float, float]) -> tuple[float, float]:
        i, j = index[0][key[0]], index[1][key[1]]
        steps = range(-smooth, smooth + 1)
        near = [cells[(i + di, j + dj)] for di in steps for dj in steps if (i + di, j + dj) in cells]
        return sum(near) / len(near), table[key]

    return max(table, key=score)


def select_alpha_beta(
    text: torch.Tensor,
    affinity: torch.Tensor,
    values: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha_grid: Sequence[float],
    beta_grid: Sequence[float],
    num_classes: int | None = None,
    extend_rounds: int = 0,
    smooth: int = 0,
) -> GridChoice:
    """Grid search of ``text + alpha * cache_logits(affinity, beta)`` on validation.

    Ties go to the first grid point in (beta, alpha) order, so the choice is deterministic. When
    the optimum lies on an edge of a grid, that grid is extended outward (:func:`outward_values`)
    and only the new (alpha, beta) pairs are evaluated, up to ``extend_rounds`` times: a search
    whose answer is its own boundary has not found the optimum (Tip-Adapter's ImageNet grid caps
    alpha on most other tasks). Validation only, like the rest of the search.

    ``smooth`` > 0 scores each pair by the mean validation accuracy of the pairs within
    ``smooth`` grid steps of it in both alpha and beta (ties: the higher accuracy of the pair
    itself), so that on a small validation set a lone spike of the accuracy surface does not
    win over a plateau; 0 is the plain argmax.

    Shapes: text ``(N, C)``, affinity ``(N, M)``, values ``(M, C)`` one-hot or ``(M,)`` labels
    with ``num_classes`` (see :func:`~hgadapter.adapter.cache_logits`).
    """
    alphas, betas = list(alpha_grid), list(beta_grid)
    if len(set(alphas)) == 1 and len(set(betas)) == 1 and labels.numel() == 0:  # fixed values, nothing to score them on
        return GridChoice(alpha=float(alphas[0]), beta=float(betas[0]), val_acc=float("nan"))
    require_validation(labels, "the alpha/beta search", "fix alpha and beta (eval.alpha / eval.beta, or alpha / beta of the method)")
    table: dict[tuple[float, float], float] = {}  # (beta, alpha) -> val accuracy, in scan order

    def scan(pairs: list[tuple[float, list[float]]]) -> None:
        for beta, beta_alphas in pairs:
            cache = cache_logits(affinity, values, beta, num_classes=num_classes)
            for alpha in beta_alphas:
                table.setdefault((beta, alpha), accuracy(text + alpha * cache, labels))

    def best() -> tuple[float, float]:
        return best_grid_pair(table, smooth=smooth)

    scan([(beta, alphas) for beta in betas])
    extended = extend_pair_search(betas, alphas, scan, best, rounds=extend_rounds, names=("beta", "alpha"))
    beta, alpha = best()
    return GridChoice(alpha=alpha, beta=beta, val_acc=table[(beta, alpha)], extended=extended)


def extend_pair_search(
    outer: Sequence[float],
    inner: Sequence[float],
    scan: Callable[[list[tuple[float, list[float]]]], None],
    best: Callable[[], tuple[float, float]],
    *,
    rounds: int,
    names: tuple[str, str],
) -> dict[str, list[float]]:
    """Extend a two-dimensional grid search outward while its optimum lies on an edge.

    ``scan(pairs)`` scores ``[(outer value, [inner values])]`` and keeps its best; ``best()``
    returns the current optimum ``(outer, inner)``. Each round adds :func:`outward_values` to
    either grid and scans only the new pairs (the new inner values with every outer value, then
    every inner value with the new outer values), at most ``rounds`` times.

    Returns:
        the values added, by name (``names`` of outer and inner), inner first.
    """
    outer, inner = list(outer), list(inner)
    extended: dict[str, list[float]] = {}
    for _ in range(rounds):
        best_outer, best_inner = best()
        new_outer, new_inner = outward_values(outer, best_outer), outward_values(inner, best_inner)
        if not new_outer and not new_inner:
            break
        scan([(o, new_inner) for o in outer] + [(o, inner + new_inner) for o in new_outer])
        outer, inner = outer + new_outer, inner + new_inner
        for name, added in ((names[1], new_inner), (names[0], new_outer)):
            if added:
                extended.setdefault(name, []).extend(added)
    return extended


@dataclass(frozen=True)
class WeightChoice:
    """The outcome of :func:`select_weight`: the weight, its validation accuracy, values added past the grid."""

    weight: float
    val_acc: float
    extended: list[float] = field(default_factory=list)


def select_weight(
    base: torch.Tensor, extra: torch.Tensor, labels: torch.Tensor, *, grid: Sequence[float], extend_rounds: int = 0
) -> WeightChoice:
    """The weight w of ``base + w * extra`` (two ``(N, C)`` logit matrices) with the best validation accuracy.

    Ties go to the first grid value; an optimum on the grid's edge extends it outward
    (:func:`outward_values`) up to ``extend_rounds`` times, as :func:`select_alpha_beta` does.
    """
    values = list(grid)
    if len(set(values)) == 1 and labels.numel() == 0:  # a fixed weight, nothing to score it on
        return WeightChoice(weight=float(values[0]), val_acc=float("nan"))
    require_validation(labels, "the ensemble-weight search", "fix the weight (alpha of the method)")
    best = (-1.0, 0.0)

    def scan(candidates: list[float]) -> None:
        nonlocal best
        for w in candidates:
            acc = accuracy(base + w * extra, labels)
            if acc > best[0]:
                best = (acc, w)

    scan(values)
    extended: list[float] = []
    for _ in range(extend_rounds):
        new = outward_values(values, best[1])
        if not new:
            break
        scan(new)
        values, extended = values + new, extended + new
    return WeightChoice(weight=float(best[1]), val_acc=best[0], extended=extended)


@torch.no_grad()
def select_predictor(
    text: torch.Tensor,
    vis_bias: torch.Tensor | None,
    eval_cfg: EvalConfig,
    *,
    with_cache: bool,
    data: SelectionData,
    device: torch.device,
) -> Selection:
    """Freeze a text classifier ``(C, d)`` (plus the cache, ``with_cache``) and choose alpha/beta on validation.

    ``vis_bias`` ``(C, d)`` shifts the cache keys (:func:`cache_keys`); ``eval_cfg`` fixes alpha
    or beta, or gives their grids.
    """
    scale = data.logit_scale
    val_x, val_y = data.val_features.float().to(device), data.val_labels.to(device)
    val_text = text_logits(val_x, text, scale)
    if not with_cache:
        return Selection(head=TextHead(text=text, logit_scale=scale), val_acc=accuracy(val_text, val_y), alpha=None, beta=None)

    labels = data.train_set.labels.to(device)
    keys = cache_keys(data.train_set, device=device, vis_bias=vis_bias)  # (N, d)
    alpha_grid = (eval_cfg.alpha,) if eval_cfg.alpha is not None else eval_cfg.alpha_grid
    beta_grid = (eval_cfg.beta,) if eval_cfg.beta is not None else eval_cfg.beta_grid
    choice = select_alpha_beta(
        val_text,
        cache_affinity(val_x, keys),
        labels,
        val_y,
        alpha_grid=alpha_grid,
        beta_grid=beta_grid,
        num_classes=data.num_classes,
        extend_rounds=eval_cfg.extend_rounds,
        smooth=eval_cfg.smooth,
    )
    head = CacheHead(text=text, keys=keys, values=labels, alpha=choice.alpha, beta=choice.beta, logit_scale=scale, normalize=True)
    return Selection(head=head, val_acc=choice.val_acc, alpha=choice.alpha, beta=choice.beta, extended=choice.extended)
