"""Weight initialization (Appendix A).

The paper draws every weight uniformly in [-2.4/F_i, +2.4/F_i], F_i the fan-in of the unit the
weight belongs to, so that weighted sums start in the range where the squashing function is
steepest. For C3, F_i depends on the output map (75, 100 or 150 inputs, Table I).

The paper does not say how biases start. Our rule: a bias is treated as one more weight, on an
input held at 1, so it is drawn from the same range as the weights of its unit; F_i counts the
unit's real inputs only (25 for a C1 unit, 4 for an S2 unit, 120 for an F6 unit).
"""

from __future__ import annotations

import torch
from torch import nn

PAPER_INIT_RANGE = 2.4  # Appendix A


@torch.no_grad()
def paper_init(net: nn.Module) -> None:
    """Re-draw every weight and bias of `net`'s layers uniformly in +-2.4 / fan-in (Appendix A)."""
    for layer in net.modules():
        if not hasattr(layer, "fan_in"):
            continue
        bound = PAPER_INIT_RANGE / layer.fan_in()
        for param in (layer.weight, layer.bias):
            if param is not None:
                shape = (-1,) + (1,) * (param.dim() - 1)
                param.uniform_(-1.0, 1.0).mul_(bound.view(shape))
        if hasattr(layer, "mask"):
            layer.weight.mul_(layer.mask)  # unconnected C3 weights stay exactly zero
