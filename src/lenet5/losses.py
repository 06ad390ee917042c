"""The paper's loss functions on the RBF penalties y_i (Sec. II.C)."""

from __future__ import annotations

import math

import torch
from torch import nn


class MLELoss(nn.Module):
    """Maximum likelihood, Eq. 8: E = mean over samples of y_D, the correct class's penalty.

    The paper warns that it gives no competition between classes.
    """

    def forward(self, penalties: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return penalties.gather(1, target.unsqueeze(1)).mean()


class MAPLoss(nn.Module):
    """Maximum a posteriori, Eq. 9:

        E = mean_p [ y_D + log( e^{-j} + sum_i e^{-y_i} ) ]

    The log term pulls up the penalties of the wrong classes; e^{-j} acts as a "rubbish class"
    of penalty j, so a wrong class whose penalty is already well above j is barely pushed further.
    The paper gives no value for j: conf/model/head/rbf_map.yaml gives ours, 0.1, and why.
    """

    def __init__(self, j: float = 0.1) -> None:
        super().__init__()
        if not j > 0:
            raise ValueError(f"MAP's constant j must be positive (Eq. 9), got {j}")
        self.j = float(j)

    def forward(self, penalties: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        rubbish = penalties.new_full((penalties.shape[0], 1), -self.j)
        competition = torch.logsumexp(torch.cat([rubbish, -penalties], dim=1), dim=1)
        return (penalties.gather(1, target.unsqueeze(1)).squeeze(1) + competition).mean()

    def extra_repr(self) -> str:
        return f"j={self.j:g} (e^-j = {math.exp(-self.j):.4g})"
