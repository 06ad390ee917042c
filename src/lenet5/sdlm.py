"""Stochastic Diagonal Levenberg-Marquardt, the paper's optimizer (Appendix C, Sec. III.B).

Each parameter w_k takes its own step, eps_k = eta / (mu + h_kk), where h_kk estimates the second
derivative d2E/dw_k2 with three approximations:

1. Off-diagonal terms are dropped. A weight shared by the connections V_k sums theirs, and the
   second derivative of one connection u_ij (from unit j into unit i) is that of its unit's
   weighted sum a_i times the squared input:
       h_kk = sum_{(i,j) in V_k} d2E/du_ij2,    d2E/du_ij2 = d2E/da_i2 * x_j^2        (Eq. 23, 25)
2. Gauss-Newton: second derivatives are back-propagated like first derivatives, but with squared
   activation derivatives and squared weights, so they can never be negative:
       d2E/da_i2 = f'(a_i)^2 * sum_k u_ki^2 * d2E/da_k2                                 (Eq. 27)
3. h_kk is averaged over 500 training patterns, re-estimated before every pass and kept fixed
   during the pass (`CurvatureEstimate`, a Lightning callback, does this).

h_kk is a curvature computed by its own backward pass. It is not a running average of squared
gradients: that is RMSProp (and Adam's denominator), not the paper's method.

Where the second-derivative pass starts. The paper does not say for MAP. We treat the output layer
and the loss together as a loss on the F6 states x and start from the exact diagonal of its
Hessian, d2E/dx_j2, which is non-negative for each head:
  - RBF + MLE (Eq. 8): E = y_D = sum_j (x_j - w_Dj)^2, so d2E/dx_j2 = 2.
  - RBF + MAP (Eq. 9): with g_ij = dy_i/dx_j = 2 (x_j - w_ij) and
    p_i = e^{-y_i} / (e^{-j} + sum_k e^{-y_k}) (the posterior of class i; e^{-j} is the rubbish class),
        d2E/dx_j2 = 2 (1 - sum_i p_i) + sum_i p_i g_ij^2 - (sum_i p_i g_ij)^2 >= 0.
  - Linear + softmax + cross-entropy: the pass starts at the logits z with d2E/dz_i2 = p_i (1 - p_i),
    the diagonal of the cross-entropy Hessian, and goes through the output layer's weights like F6.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from lenet5.layers import AvgPool, Convolution, MaxPool, RBFOutput, ScaledTanh, SoftmaxOutput, Subsampling
from lenet5.losses import MAPLoss, MLELoss

Hessian = dict[nn.Parameter, torch.Tensor]
# A rule takes a stage, the input it saw and d2E/d(its output)2; it adds the second derivatives of
# the stage's own parameters to the Hessian and returns d2E/d(its input)2 (all per pattern).
Rule = Callable[[nn.Module, torch.Tensor, torch.Tensor, Hessian], torch.Tensor]

PAPER_MU = 0.02  # Appendix C
PAPER_PATTERNS = 500  # patterns averaged per estimate (Sec. III.B)


def _accumulate(hessian: Hessian, param: nn.Parameter | None, value: torch.Tensor) -> None:
    if param is not None:
        hessian[param] = hessian[param] + value if param in hessian else value


def _elementwise(f: nn.Module, a: torch.Tensor, g: torch.Tensor, hessian: Hessian) -> torch.Tensor:
    """An activation: d2E/da2 = f'(a)^2 d2E/dx2, with f'(a) from autograd (any elementwise f)."""
    with torch.enable_grad():
        a = a.detach().requires_grad_(True)
        (slope,) = torch.autograd.grad(f(a).sum(), a)
    return slope.square() * g


def _convolution(layer: Convolution, x: torch.Tensor, g: torch.Tensor, hessian: Hessian) -> torch.Tensor:
    """Every kernel weight is shared by all positions of its map: sum d2E/da2 * x^2 over them."""
    weight = layer.weight if layer.table is None else layer.weight * layer.mask
    options = {"stride": layer.stride, "padding": layer.padding}
    h_weight = torch.nn.grad.conv2d_weight(x.square(), weight.shape, g, **options)
    _accumulate(hessian, layer.weight, h_weight if layer.table is None else h_weight * layer.mask)
    _accumulate(hessian, layer.bias, g.sum((0, 2, 3)))
    return torch.nn.grad.conv2d_input(x.shape, weight.square(), g, **options)


def _subsampling(layer: Subsampling, x: torch.Tensor, g: torch.Tensor, hessian: Hessian) -> torch.Tensor:
    """a = w * (x1 + x2 + x3 + x4) + b, then f: the coefficient has 4 connections per unit."""
    k, area = layer.size, layer.size**2
    scale, bias = layer.weight.view(1, -1, 1, 1), layer.bias.view(1, -1, 1, 1)
    g_a = _elementwise(layer.activation, F.avg_pool2d(x, k) * area * scale + bias, g, hessian)
    _accumulate(hessian, layer.weight, (g_a * F.avg_pool2d(x.square(), k) * area).sum((0, 2, 3)))
    _accumulate(hessian, layer.bias, g_a.sum((0, 2, 3)))
    g_x = (g_a * scale.square()).repeat_interleave(k, 2).repeat_interleave(k, 3)
    return F.pad(g_x, (0, x.shape[-1] - g_x.shape[-1], 0, x.shape[-2] - g_x.shape[-2]))


def _pooling(layer: MaxPool, x: torch.Tensor, g: torch.Tensor, hessian: Hessian) -> torch.Tensor:
    """Max pooling passes each unit's value from one input (slope 1); averaging weighs each of the
    size^2 inputs by 1/size^2, whose square is the slope times 1/size^2."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (g_x,) = torch.autograd.grad(layer(x), x, g)
    return g_x / layer.size**2 if isinstance(layer, AvgPool) else g_x


def _linear(layer: nn.Linear, x: torch.Tensor, g: torch.Tensor, hessian: Hessian) -> torch.Tensor:
    _accumulate(hessian, layer.weight, g.t() @ x.square())
    _accumulate(hessian, layer.bias, g.sum(0))
    return g @ layer.weight.square()


def _flatten(layer: nn.Module, x: torch.Tensor, g: torch.Tensor, hessian: Hessian) -> torch.Tensor:
    return g.reshape(x.shape)


# Subclasses before their bases. A new kind of layer needs its rule here to be trained with SDLM.
RULES: dict[type, Rule] = {
    Convolution: _convolution,
    Subsampling: _subsampling,
    MaxPool: _pooling,  # and AvgPool, its subclass
    nn.Linear: _linear,
    nn.Flatten: _flatten,
    ScaledTanh: _elementwise,
    nn.Tanh: _elementwise,
    nn.ReLU: _elementwise,
}


def register_rule(kind: type, rule: Rule) -> None:
    """Teach SDLM the second-derivative pass of a new kind of stage."""
    RULES[kind] = rule


def _rule(stage: nn.Module) -> Rule:
    for kind, rule in RULES.items():
        if isinstance(stage, kind):
            return rule
    raise TypeError(f"SDLM has no second-derivative rule for {type(stage).__name__}; "
                    f"add one with lenet5.sdlm.register_rule")


def output_curvature(output: nn.Module, loss: nn.Module, x: torch.Tensor, outputs: torch.Tensor,
                     labels: torch.Tensor, hessian: Hessian) -> torch.Tensor:
    """d2E/dx2 at the input x of the output layer, per pattern (see the module docstring)."""
    if isinstance(output, RBFOutput) and isinstance(loss, MLELoss):
        return torch.full_like(x, 2.0)
    if isinstance(output, RBFOutput) and isinstance(loss, MAPLoss):
        rubbish = outputs.new_full((len(outputs), 1), -loss.j)
        log_z = torch.logsumexp(torch.cat([rubbish, -outputs], dim=1), dim=1, keepdim=True)
        p = torch.exp(-outputs - log_z).unsqueeze(2)  # (N, 10, 1)
        slopes = 2.0 * (x.unsqueeze(1) - output.centers)  # g_ij, (N, 10, 84)
        mean = (p * slopes).sum(1)
        return (2.0 * (1.0 - p.sum(1)) + (p * slopes.square()).sum(1) - mean.square()).clamp_min(0.0)
    if isinstance(output, SoftmaxOutput) and isinstance(loss, nn.CrossEntropyLoss):
        p = outputs.softmax(dim=1)
        return _linear(output, x, p * (1.0 - p), hessian)
    raise TypeError(f"SDLM cannot start its second-derivative pass from {type(output).__name__} "
                    f"with {type(loss).__name__}")


@torch.no_grad()
def diagonal_hessian(net: nn.Module, loss: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Hessian:
    """h_kk of every parameter of `net` (which lists its `stages()`), averaged over the patterns."""
    stages = net.stages()
    inputs = []
    x = images
    for stage in stages:
        inputs.append(x)
        x = stage(x)
    hessian: Hessian = {}
    g = output_curvature(stages[-1], loss, inputs[-1], x, labels, hessian)
    for stage, x_in in zip(reversed(stages[:-1]), reversed(inputs[:-1])):
        g = _rule(stage)(stage, x_in, g, hessian)
    return {param: h / len(images) for param, h in hessian.items()}


class SDLM(torch.optim.Optimizer):
    """w_k <- w_k - eta / (mu + h_kk) * dE/dw_k (Appendix C).

    `lr` is the paper's eta (5e-4 for its first two passes; `scheduler=paper` follows its schedule).
    The h_kk come from `set_curvature(diagonal_hessian(...))`, which `CurvatureEstimate` calls
    before every epoch; they are kept in the optimizer's state, so they are checkpointed.
    """

    def __init__(self, params: Iterable, lr: float = 5e-4, mu: float = PAPER_MU) -> None:
        if not lr > 0 or not mu > 0:
            raise ValueError(f"SDLM needs lr > 0 and mu > 0, got lr={lr}, mu={mu}")
        super().__init__(params, {"lr": lr, "mu": mu})
        self._denominators: dict[torch.Tensor, tuple[torch.Tensor, float, torch.Tensor]] = {}

    @torch.no_grad()
    def set_curvature(self, hessian: Hessian) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                h = hessian.get(param)
                self.state[param]["curvature"] = torch.zeros_like(param) if h is None else h.detach().clone()

    def effective_rates(self) -> torch.Tensor:
        """eta / (mu + h_kk) of every parameter with a non-zero curvature (the paper quotes their range)."""
        rates = [group["lr"] / (group["mu"] + self.state[p]["curvature"][self.state[p]["curvature"] > 0])
                 for group in self.param_groups for p in group["params"] if "curvature" in self.state[p]]
        return torch.cat([r.flatten() for r in rates]) if rates else torch.empty(0)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any("curvature" not in self.state[p] for p in params):
                raise RuntimeError("SDLM has no curvature estimate: call set_curvature() before step(), "
                                   "or train with the lenet5.sdlm.CurvatureEstimate callback")
            # mu + h_kk is fixed for a whole pass: computed once per estimate (kept out of the saved state)
            denominators = []
            for p in params:
                curvature = self.state[p]["curvature"]
                cached = self._denominators.get(p)
                if cached is None or cached[0] is not curvature or cached[1] != group["mu"]:
                    cached = self._denominators[p] = (curvature, group["mu"], curvature + group["mu"])
                denominators.append(cached[2])
            # w_k <- w_k - eta * g_k / (mu + h_kk), for all parameters in one fused call
            torch._foreach_addcdiv_(params, [p.grad for p in params], denominators, value=-group["lr"])
        return loss


class CurvatureEstimate(L.Callback):
    """Before every pass, re-estimate SDLM's h_kk on `patterns` training patterns (Appendix C) and
    log its cost (sdlm/estimate_seconds) and the range of effective rates (sdlm/rate_min, rate_max).

    The patterns are the first ones of the pass. Under DDP each of the W processes takes its first
    patterns / W (together, the same patterns a single process would take) and the estimates are
    averaged across processes, so every replica steps with the same h_kk and they stay identical.
    """

    def __init__(self, patterns: int = PAPER_PATTERNS) -> None:
        self.patterns = patterns

    def _draw(self, trainer: L.Trainer, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        wanted = -(-self.patterns // trainer.world_size)
        images, labels, count = [], [], 0
        for batch_images, batch_labels in trainer.train_dataloader:
            images.append(batch_images)
            labels.append(batch_labels)
            count += len(batch_labels)
            if count >= wanted:
                break
        return torch.cat(images)[:wanted].to(device), torch.cat(labels)[:wanted].to(device)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        optimizers = [opt for opt in trainer.optimizers if isinstance(opt, SDLM)]
        if not optimizers:
            return
        start = time.perf_counter()
        images, labels = self._draw(trainer, pl_module.device)
        hessian = diagonal_hessian(pl_module.net, pl_module.loss, images, labels)
        if trainer.world_size > 1:
            hessian = {p: trainer.strategy.reduce(h, reduce_op="mean") for p, h in hessian.items()}
        for optimizer in optimizers:
            optimizer.set_curvature(hessian)
        seconds = time.perf_counter() - start
        rates = optimizers[0].effective_rates()
        pl_module.log_dict({"sdlm/estimate_seconds": seconds, "sdlm/rate_min": rates.min(),
                            "sdlm/rate_max": rates.max()}, on_step=False, on_epoch=True, sync_dist=True)
