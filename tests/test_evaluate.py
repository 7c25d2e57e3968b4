"""Alpha/beta selection on validation (hgadapter/evaluate.py), by hand."""

import math

import pytest
import torch

from hgadapter.evaluate import outward_values, select_alpha_beta


def _case():
    """Three validation images, two classes, a fixed sharpness. The cache favours class 1 by
    0.1, 0.2, 0.1 and the text classifier favours class 0 by 1.0, 0.5, 0.1: images 2 and 3 are
    right only for alpha > 2.5 and alpha > 1, image 1 only for alpha < 10."""
    text = torch.tensor([[1.0, 0.0], [0.5, 0.0], [0.1, 0.0]])  # (N, C)
    cache = torch.tensor([[0.0, 0.1], [0.0, 0.2], [0.0, 0.1]])  # wanted exp(-(1 - A)) per class
    affinity = torch.where(cache > 0, 1.0 + torch.log(cache.clamp_min(1e-30)), torch.full_like(cache, -60.0))  # (N, M=2 keys)
    values = torch.eye(2)  # key j is class j
    labels = torch.tensor([0, 1, 1])
    return text, affinity, values, labels


def test_an_optimum_on_the_edge_extends_the_grid():
    text, affinity, values, labels = _case()
    capped = select_alpha_beta(text, affinity, values, labels, alpha_grid=(0.5, 1.0, 2.0), beta_grid=(1.0,))
    assert (capped.alpha, capped.extended) == (2.0, {}) and capped.val_acc == pytest.approx(200 / 3)
    found = select_alpha_beta(text, affinity, values, labels, alpha_grid=(0.5, 1.0, 2.0), beta_grid=(1.0,), extend_rounds=4)
    assert found.alpha == 3.0 and found.val_acc == pytest.approx(100.0)
    assert found.extended == {"alpha": [3.0, 4.0]}  # one round: 1.5x and 2x the top; 3.0 is interior, so it stops


def test_interior_optima_and_fixed_values_are_not_extended():
    text, affinity, values, labels = _case()
    inside = select_alpha_beta(text, affinity, values, labels, alpha_grid=(0.5, 3.0, 20.0), beta_grid=(1.0,), extend_rounds=4)
    assert (inside.alpha, inside.extended) == (3.0, {})
    fixed = select_alpha_beta(text, affinity, values, labels, alpha_grid=(2.0,), beta_grid=(1.0,), extend_rounds=4)
    assert (fixed.alpha, fixed.extended) == (2.0, {})


def test_outward_values():
    assert outward_values((0.0, 1.0, 5.0), 5.0) == [7.5, 10.0]
    assert outward_values((1.0, 2.0, 12.0), 1.0) == [pytest.approx(1 / 1.5), 0.5]
    assert outward_values((0.0, 1.0, 5.0), 0.0) == []  # alpha = 0 (no cache) is a natural bound
    assert outward_values((0.0, 1.0, 5.0), 1.0) == []
    assert outward_values((3.0,), 3.0) == []
    assert math.isclose(outward_values((0.1, 7.0), 0.1)[1], 0.05)


def test_extension_is_bounded_by_the_rounds():
    """Image k is right only for alpha > t_k: the more alpha, the better, past every round."""
    thresholds = torch.tensor([1.2, 2.2, 3.2, 4.5, 6.5, 9.0, 13.0])
    text = torch.stack([0.1 * thresholds, torch.zeros(7)], dim=1)  # (7, 2): class 0 ahead by 0.1 t_k
    affinity = torch.tensor([[-60.0, 1.0 + math.log(0.1)]]).repeat(7, 1)  # the cache: class 1 ahead by 0.1
    labels = torch.ones(7, dtype=torch.long)
    choice = select_alpha_beta(text, affinity, torch.eye(2), labels, alpha_grid=(1.0, 2.0), beta_grid=(1.0,), extend_rounds=2)
    assert choice.extended == {"alpha": [3.0, 4.0, 6.0, 8.0]} and choice.alpha == 8.0
    assert choice.val_acc == pytest.approx(500 / 7)  # 1.2 ... 6.5 are passed; two rounds, then it stops


def test_best_grid_pair_plain_argmax_and_smoothed():
    from hgadapter.evaluate import best_grid_pair

    # 3 betas x 3 alphas: a lone spike at (1, 0.1) beside a plateau around (3, 2)
    acc = {
        (1.0, 0.1): 90.0, (1.0, 1.0): 40.0, (1.0, 2.0): 40.0,
        (2.0, 0.1): 40.0, (2.0, 1.0): 80.0, (2.0, 2.0): 85.0,
        (3.0, 0.1): 40.0, (3.0, 1.0): 85.0, (3.0, 2.0): 86.0,
    }
    assert best_grid_pair(acc) == (1.0, 0.1)
    # neighbourhood means: (3, 2) -> (80 + 85 + 85 + 86) / 4 = 84; (1, 0.1) -> (90 + 40 + 40 + 80) / 4 = 62.5
    assert best_grid_pair(acc, smooth=1) == (3.0, 2.0)
    # ties keep the first pair in scan order
    assert best_grid_pair({(1.0, 0.5): 70.0, (2.0, 0.5): 70.0}) == (1.0, 0.5)
