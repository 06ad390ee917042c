"""The paper's building blocks, one small module per concept.

Every layer that carries weights also answers two questions the paper's layer table asks
(p.7-8): how many trainable parameters it has (`num_parameters`) and how many connections it
makes for a given output shape (`connections`). `fan_in` gives, per output unit, the number of
inputs that Appendix A's initialization divides by.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources

import torch
import torch.nn.functional as F
from torch import nn

# Eq. 6 / Appendix A: f(a) = A tanh(S a), chosen so that f(1) = 1 and f(-1) = -1.
SQUASH_AMPLITUDE = 1.7159
SQUASH_SLOPE = 2.0 / 3.0

# Table I (p.8): the S2 maps that feed each of the 16 C3 maps.
TABLE_I: tuple[tuple[int, ...], ...] = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)  # fmt: skip


class ScaledTanh(nn.Module):
    """The paper's squashing function f(a) = 1.7159 tanh(2a/3) (Eq. 6, Appendix A)."""

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return SQUASH_AMPLITUDE * torch.tanh(SQUASH_SLOPE * a)


class Convolution(nn.Conv2d):
    """A convolution whose output maps may each see only some input maps (C1, C3, C5; p.7-8).

    `table[o]` lists the input maps of output map `o` (Table I for C3); `None` connects all.
    The kernel is dense and multiplied by a fixed 0/1 mask in `forward`, so an unconnected
    weight gets no gradient, stays exactly zero and is not counted as a parameter.
    """

    def __init__(self, in_maps: int, out_maps: int, kernel_size: int = 5,
                 table: Sequence[Sequence[int]] | None = None, padding: int | str = 0) -> None:
        super().__init__(in_maps, out_maps, kernel_size, padding=padding)
        self.table = None if table is None else tuple(tuple(int(i) for i in row) for row in table)
        if self.table is not None and (len(self.table) != out_maps
                                       or any(not 0 <= i < in_maps for row in self.table for i in row)):
            raise ValueError(f"a connection table needs {out_maps} rows of input maps in 0..{in_maps - 1}, "
                             f"got {self.table}")
        mask = torch.ones(out_maps, in_maps, 1, 1)
        if self.table is not None:
            mask.zero_()
            for out, inputs in enumerate(self.table):
                mask[out, list(inputs)] = 1.0
        self.register_buffer("mask", mask, persistent=False)
        with torch.no_grad():
            self.weight.mul_(self.mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight if self.table is None else self.weight * self.mask
        return self._conv_forward(x, weight, self.bias)

    def fan_in(self) -> torch.Tensor:
        """Inputs per unit of each output map: 25 x the connected input maps (75, 100, 150 in C3)."""
        return self.mask.flatten(1).sum(1) * self.weight[0, 0].numel()

    def num_parameters(self) -> int:
        return int(self.fan_in().sum()) + self.out_channels

    def connections(self, out_shape: Sequence[int]) -> int:
        height, width = out_shape[-2:]
        return height * width * self.num_parameters()


class Subsampling(nn.Module):
    """S2 and S4 (p.7): each unit sums a 2x2 patch of its map, multiplies the sum by the map's
    trainable coefficient, adds the map's trainable bias and passes the result through f."""

    def __init__(self, maps: int, activation: nn.Module, size: int = 2) -> None:
        super().__init__()
        self.size = size
        self.weight = nn.Parameter(torch.empty(maps))
        self.bias = nn.Parameter(torch.empty(maps))
        self.activation = activation
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / self.size  # PyTorch's convention for a layer of fan-in size**2: 1/sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The sum of a patch is its average times size**2; the factor folds into the coefficient.
        pooled = F.avg_pool2d(x, self.size)
        scale = (self.weight * self.size**2).view(1, -1, 1, 1)
        return self.activation(torch.addcmul(self.bias.view(1, -1, 1, 1), pooled, scale))

    def fan_in(self) -> torch.Tensor:
        return torch.full_like(self.weight, self.size**2)

    def num_parameters(self) -> int:
        return self.weight.numel() + self.bias.numel()

    def connections(self, out_shape: Sequence[int]) -> int:
        maps, height, width = out_shape[-3:]
        return maps * height * width * (self.size**2 + 1)


class MaxPool(nn.Module):
    """Modern pooling: the largest value of each 2x2 patch; no parameters and no squashing after
    it (the layer before it has already applied its activation)."""

    pool = staticmethod(F.max_pool2d)

    def __init__(self, maps: int, activation: nn.Module | None = None, size: int = 2) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x, self.size)

    def num_parameters(self) -> int:
        return 0

    def connections(self, out_shape: Sequence[int]) -> int:
        maps, height, width = out_shape[-3:]
        return maps * height * width * self.size**2


class AvgPool(MaxPool):
    """Plain average pooling of each 2x2 patch: the paper's subsampling without its trainable
    coefficient, bias and squashing (as in the Keras write-ups)."""

    pool = staticmethod(F.avg_pool2d)


class Linear(nn.Linear):
    """A fully connected layer (F6, p.8): every parameter is one connection."""

    def fan_in(self) -> torch.Tensor:
        return torch.full((self.out_features,), float(self.in_features))

    def num_parameters(self) -> int:
        return self.weight.numel() + (0 if self.bias is None else self.bias.numel())

    def connections(self, out_shape: Sequence[int]) -> int:
        return self.num_parameters()


def load_bitmaps() -> torch.Tensor:
    """The fixed 7x12 digit bitmaps of Fig. 3 as a 10x84 tensor of +1 (ink) / -1 (background)."""
    text = resources.files("lenet5").joinpath("rbf_bitmaps.json").read_text()
    digits = json.loads(text)["digits"]
    rows = [[1.0 if cell == "#" else -1.0 for line in digits[str(d)] for cell in line] for d in range(10)]
    return torch.tensor(rows)


class RBFOutput(nn.Module):
    """The output layer: 10 Euclidean RBF units, y_i = sum_j (x_j - w_ij)^2 (Eq. 7, Fig. 3).

    The w_ij are the fixed bitmaps of Fig. 3, kept as a buffer: 840 connections, no parameters.
    Each y_i is a penalty, so the predicted class is the smallest one.
    """

    def __init__(self, in_features: int = 84) -> None:
        super().__init__()
        bitmaps = load_bitmaps()
        if bitmaps.shape[1] != in_features:
            raise ValueError(f"the RBF bitmaps have {bitmaps.shape[1]} cells, F6 has {in_features} units")
        self.register_buffer("centers", bitmaps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.unsqueeze(1) - self.centers).pow(2).sum(-1)

    @staticmethod
    def predict(penalties: torch.Tensor) -> torch.Tensor:
        return penalties.argmin(dim=1)

    def num_parameters(self) -> int:
        return 0

    def connections(self, out_shape: Sequence[int]) -> int:
        return self.centers.numel()


class SoftmaxOutput(Linear):
    """The modern output layer: 84 -> 10 scores (logits) for softmax and cross-entropy.
    The predicted class is the largest score."""

    def __init__(self, in_features: int = 84, classes: int = 10) -> None:
        super().__init__(in_features, classes)

    @staticmethod
    def predict(logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=1)
