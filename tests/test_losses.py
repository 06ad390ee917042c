"""The paper's losses on the RBF penalties (Sec. II.C, Eq. 8 and 9)."""

import math

import pytest
import torch

from lenet5 import MAPLoss, MLELoss


def test_map_loss_matches_a_hand_computation_of_eq_9():
    penalties = torch.tensor([[1.0, 4.0, 9.0], [2.0, 0.5, 3.0]])
    targets = torch.tensor([0, 2])
    j = 0.5
    by_hand = []
    for y, d in zip(penalties.tolist(), targets.tolist()):
        by_hand.append(y[d] + math.log(math.exp(-j) + sum(math.exp(-yi) for yi in y)))
    expected = sum(by_hand) / len(by_hand)
    assert MAPLoss(j=j)(penalties, targets).item() == pytest.approx(expected, rel=1e-6)


def test_map_loss_stays_finite_for_huge_penalties():
    penalties = torch.tensor([[500.0, 800.0, 900.0]])
    loss = MAPLoss(j=0.1)(penalties, torch.tensor([0]))
    assert loss.item() == pytest.approx(500.0 - 0.1, rel=1e-6)  # log(e^-j + ~0) = -j


def test_map_loss_pushes_the_correct_penalty_down_and_the_others_up():
    penalties = torch.tensor([[1.0, 1.5, 2.0]], requires_grad=True)
    MAPLoss(j=0.1)(penalties, torch.tensor([1])).backward()
    grad = penalties.grad[0]
    assert grad[1] > 0 and grad[0] < 0 and grad[2] < 0


def test_mle_loss_is_the_mean_penalty_of_the_correct_class():
    penalties = torch.tensor([[1.0, 4.0], [2.0, 0.5], [3.0, 7.0]])
    assert MLELoss()(penalties, torch.tensor([1, 0, 1])).item() == pytest.approx((4.0 + 2.0 + 7.0) / 3)


@pytest.mark.parametrize("j", [0.0, -1.0])
def test_map_constant_j_must_be_positive(j):
    with pytest.raises(ValueError, match="positive"):
        MAPLoss(j=j)
