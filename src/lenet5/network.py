"""LeNet-5 (Sec. II.B, Fig. 2), and the per-layer table of parameters and connections (p.7-8)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lenet5.init import paper_init
from lenet5.layers import TABLE_I, Convolution, Linear, RBFOutput, ScaledTanh, Subsampling

# The paper's own totals (p.7); the summary of the paper model must reproduce them.
PAPER_PARAMETERS = 60_000
PAPER_CONNECTIONS = 340_908


class LeNet5(nn.Module):
    """LeNet-5: C1 -> S2 -> C3 -> S4 -> C5 -> F6 -> output, on a 1x32x32 input.

    The defaults are the paper's choices. Each argument builds one kind of part, so a variant
    swaps a part rather than adding a branch here:
      activation  () -> module, the squashing function after every layer up to F6
      pooling     (maps, activation) -> module, S2 and S4
      c3_table    the S2 maps feeding each C3 map (Table I); None connects all 6
      output      (84) -> module, the output layer; it also names its decision rule (`predict`)
      init        a function applied to the built network; None keeps PyTorch's defaults
      input_size  32 (the paper: MNIST's 28x28 digits padded to 32x32), or 28 with C1 padded
                  ('same') instead, as in the Keras write-ups; every later layer is unchanged
    """

    def __init__(
        self,
        activation: Callable[[], nn.Module] = ScaledTanh,
        pooling: Callable[[int, nn.Module], nn.Module] = Subsampling,
        c3_table: Sequence[Sequence[int]] | None = TABLE_I,
        output: Callable[[int], nn.Module] = RBFOutput,
        init: Callable[[nn.Module], None] | None = paper_init,
        input_size: int = 32,
    ) -> None:
        super().__init__()
        if input_size not in (28, 32):
            raise ValueError(f"LeNet-5 takes 32x32 inputs, or 28x28 with a padded C1; got {input_size}")
        self.input_shape = (1, input_size, input_size)
        self.act = activation()
        self.c1 = Convolution(1, 6, 5, padding=(32 - input_size) // 2)
        self.s2 = pooling(6, activation())
        self.c3 = Convolution(6, 16, 5, table=c3_table)
        self.s4 = pooling(16, activation())
        self.c5 = Convolution(16, 120, 5)
        self.flatten = nn.Flatten()
        self.f6 = Linear(120, 84)
        self.output = output(84)
        if init is not None:
            init(self)

    def stages(self) -> tuple[nn.Module, ...]:
        """The network in order: what `forward` runs, and what SDLM's second-order pass walks back.
        S2 and S4 apply their own squashing (plain pooling variants apply none)."""
        return (self.c1, self.act, self.s2,
                self.c3, self.act, self.s4,
                self.c5, self.act, self.flatten,
                self.f6, self.act,
                self.output)  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages():
            x = stage(x)
        return x

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted digit for each image: the output layer's decision (smallest RBF penalty)."""
        return self.output.predict(self(x))

    def layers(self) -> dict[str, nn.Module]:
        return {name: getattr(self, name) for name in ("c1", "s2", "c3", "s4", "c5", "f6", "output")}

    @torch.no_grad()
    def summary(self) -> Summary:
        """Trainable parameters and connections of every layer, as in the paper's layer list."""
        shapes: dict[str, tuple[int, ...]] = {}
        hooks = [layer.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:])))
                 for name, layer in self.layers().items()]
        try:
            param = next(self.parameters())
            self(torch.zeros(1, *self.input_shape, device=param.device, dtype=param.dtype))
        finally:
            for hook in hooks:
                hook.remove()
        rows = [LayerCount(name.upper() if name != "output" else "output", shapes[name],
                           layer.num_parameters(), layer.connections(shapes[name]))
                for name, layer in self.layers().items()]
        return Summary(self.input_shape, rows)


@dataclass(frozen=True)
class LayerCount:
    name: str
    output_shape: tuple[int, ...]
    parameters: int
    connections: int


@dataclass(frozen=True)
class Summary:
    input_shape: tuple[int, ...]
    rows: list[LayerCount]

    @property
    def parameters(self) -> int:
        return sum(row.parameters for row in self.rows)

    @property
    def connections(self) -> int:
        return sum(row.connections for row in self.rows)

    def __getitem__(self, name: str) -> LayerCount:
        return next(row for row in self.rows if row.name.lower() == name.lower())

    def __str__(self) -> str:
        def shape(s: tuple[int, ...]) -> str:
            return f"{s[0]}@{s[1]}x{s[2]}" if len(s) == 3 else str(s[0])

        lines = [f"{'layer':<8}{'output':>10}{'parameters':>13}{'connections':>14}",
                 f"{'input':<8}{shape(self.input_shape):>10}"]
        lines += [f"{r.name:<8}{shape(r.output_shape):>10}{r.parameters:>13,}{r.connections:>14,}" for r in self.rows]
        lines.append(f"{'total':<8}{'':>10}{self.parameters:>13,}{self.connections:>14,}")
        return "\n".join(lines)
