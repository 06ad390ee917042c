"""SDLM, the paper's optimizer (Appendix C), checked against brute force."""

import itertools

import pytest
import torch
from torch import nn

from lenet5 import LeNet5, MAPLoss, MLELoss
from lenet5.layers import SQUASH_AMPLITUDE, SQUASH_SLOPE, Convolution, Linear, RBFOutput, ScaledTanh, SoftmaxOutput, \
    Subsampling
from lenet5.schedules import PAPER_ETA, PaperSchedule
from lenet5.sdlm import SDLM, diagonal_hessian, output_curvature


class TinyLeNet(nn.Module):
    """LeNet-5's kinds of layer at a size an explicit loop over every connection can handle:
    1x8x8 -> conv 3x3 -> 2@6x6 -> subsampling -> 2@3x3 -> partial conv 2x2 -> 3@2x2 -> 84 -> RBF."""

    def __init__(self, output: nn.Module) -> None:
        super().__init__()
        self.c1 = Convolution(1, 2, 3)
        self.s2 = Subsampling(2, ScaledTanh())
        self.c3 = Convolution(2, 3, 2, table=((0,), (1,), (0, 1)))
        self.f6 = Linear(12, 84)
        self.act, self.flatten, self.output = ScaledTanh(), nn.Flatten(), output
        for p in self.parameters():  # larger than the paper's init, so that every term matters
            nn.init.uniform_(p, -0.8, 0.8)
        with torch.no_grad():
            self.c3.weight.mul_(self.c3.mask)

    def stages(self):
        return (self.c1, self.act, self.s2, self.c3, self.act, self.flatten, self.f6, self.act, self.output)

    def forward(self, x):
        for stage in self.stages():
            x = stage(x)
        return x


def slope(a: float) -> float:
    """f'(a) of the scaled tanh, by hand."""
    t = torch.tanh(torch.tensor(SQUASH_SLOPE * a, dtype=torch.float64)).item()
    return SQUASH_AMPLITUDE * SQUASH_SLOPE * (1 - t * t)


def reference_hessian(net: TinyLeNet, loss: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Eq. 23-27 one connection at a time, in plain Python loops, for each pattern; the output
    seed is the diagonal of the loss's Hessian with respect to F6's states, taken by autograd."""
    h = {name: torch.zeros_like(p) for name, p in net.named_parameters()}
    for image, label in zip(images, labels):
        x0 = image.unsqueeze(0)
        a1 = net.c1(x0)[0]
        x1 = net.act(a1)
        x2 = net.s2(x1.unsqueeze(0))[0]
        a3 = net.c3(x2.unsqueeze(0))[0]
        x3 = net.act(a3).flatten()
        a6 = net.f6(x3)
        x6 = net.act(a6)

        def loss_of_f6(state):
            return loss(net.output(state.unsqueeze(0)), label.view(1))

        if isinstance(net.output, SoftmaxOutput):
            logits = net.output(x6)
            p = logits.softmax(0)
            d2z = (torch.autograd.functional.hessian(lambda z: nn.functional.cross_entropy(z.unsqueeze(0), label.view(1)),
                                                     logits).diagonal())
            assert torch.allclose(d2z, p * (1 - p))
            d2x6 = torch.zeros(84, dtype=torch.float64)
            for i, j in itertools.product(range(10), range(84)):
                w = net.output.weight[i, j].item()
                d2x6[j] += w * w * d2z[i]
                h["output.weight"][i, j] += d2z[i] * x6[j] ** 2
            for i in range(10):
                h["output.bias"][i] += d2z[i]
        else:
            d2x6 = torch.autograd.functional.hessian(loss_of_f6, x6).diagonal()

        d2a6 = torch.tensor([slope(a6[i].item()) ** 2 * d2x6[i] for i in range(84)], dtype=torch.float64)
        d2x3 = torch.zeros(12, dtype=torch.float64)
        for i, j in itertools.product(range(84), range(12)):
            w = net.f6.weight[i, j].item()
            d2x3[j] += w * w * d2a6[i]
            h["f6.weight"][i, j] += d2a6[i] * x3[j] ** 2
        for i in range(84):
            h["f6.bias"][i] += d2a6[i]

        d2a3 = (d2x3 * torch.tensor([slope(a) ** 2 for a in a3.flatten().tolist()], dtype=torch.float64)).view(3, 2, 2)
        d2x2 = torch.zeros(2, 3, 3, dtype=torch.float64)
        for o, r, c in itertools.product(range(3), range(2), range(2)):
            h["c3.bias"][o] += d2a3[o, r, c]
            for m in net.c3.table[o]:
                for p, q in itertools.product(range(2), range(2)):
                    w = net.c3.weight[o, m, p, q].item()
                    d2x2[m, r + p, c + q] += w * w * d2a3[o, r, c]
                    h["c3.weight"][o, m, p, q] += d2a3[o, r, c] * x2[m, r + p, c + q] ** 2

        d2x1 = torch.zeros(2, 6, 6, dtype=torch.float64)
        for m, r, c in itertools.product(range(2), range(3), range(3)):
            patch = [(2 * r + p, 2 * c + q) for p in range(2) for q in range(2)]
            a = net.s2.weight[m].item() * sum(x1[m, i, j].item() for i, j in patch) + net.s2.bias[m].item()
            d2a = slope(a) ** 2 * d2x2[m, r, c]
            h["s2.bias"][m] += d2a
            for i, j in patch:
                d2x1[m, i, j] += net.s2.weight[m].item() ** 2 * d2a
                h["s2.weight"][m] += d2a * x1[m, i, j] ** 2

        d2a1 = d2x1 * torch.tensor([slope(a) ** 2 for a in a1.flatten().tolist()], dtype=torch.float64).view(2, 6, 6)
        for o, r, c in itertools.product(range(2), range(6), range(6)):
            h["c1.bias"][o] += d2a1[o, r, c]
            for p, q in itertools.product(range(3), range(3)):
                h["c1.weight"][o, 0, p, q] += d2a1[o, r, c] * image[0, r + p, c + q] ** 2
    return {name: value / len(images) for name, value in h.items()}


@pytest.mark.parametrize(("output", "loss"), [
    (RBFOutput, MAPLoss(j=1.0)), (RBFOutput, MLELoss()), (SoftmaxOutput, nn.CrossEntropyLoss()),
], ids=["rbf_map", "rbf_mle", "softmax_ce"])
def test_curvature_equals_the_per_connection_gauss_newton_recursion(output, loss):
    torch.manual_seed(0)
    with torch.no_grad():
        net = TinyLeNet(output()).double()
        images, labels = torch.rand(3, 1, 8, 8, dtype=torch.float64) * 2 - 0.5, torch.tensor([3, 7, 0])
        fast = diagonal_hessian(net, loss, images, labels)
    slow = reference_hessian(net, loss, images, labels)
    for name, param in net.named_parameters():
        torch.testing.assert_close(fast[param], slow[name], rtol=1e-9, atol=1e-12, msg=name)


def test_map_and_mle_seeds_are_the_exact_diagonal_of_the_loss_hessian():
    torch.manual_seed(1)
    rbf = RBFOutput().double()
    for loss in (MAPLoss(j=0.1), MAPLoss(j=10.0), MLELoss()):
        for label in (0, 4, 9):
            # F6 states near a bitmap, so that several classes have non-negligible posteriors
            x = rbf.centers[label] * 0.6 + torch.randn(84, dtype=torch.float64) * 0.4
            exact = torch.autograd.functional.hessian(lambda s: loss(rbf(s.unsqueeze(0)), torch.tensor([label])), x)
            seed = output_curvature(rbf, loss, x.unsqueeze(0), rbf(x.unsqueeze(0)), torch.tensor([label]), {})
            torch.testing.assert_close(seed[0], exact.diagonal())
            assert torch.all(seed >= 0)


def test_curvature_of_the_paper_model_is_non_negative_and_zero_only_off_table_1():
    torch.manual_seed(0)
    net = LeNet5()
    hessian = diagonal_hessian(net, MAPLoss(), torch.randn(20, 1, 32, 32), torch.randint(0, 10, (20,)))
    assert set(hessian) == set(net.parameters())
    assert all(torch.all(h >= 0) for h in hessian.values())
    c3 = hessian[net.c3.weight]
    assert torch.all(c3[net.c3.mask.expand_as(c3) == 0] == 0)
    assert torch.all(c3[net.c3.mask.expand_as(c3) == 1] > 0)


def test_one_step_on_a_quadratic_lands_where_the_formula_says():
    """E = sum_k a_k (w_k - c_k)^2 / 2 has h_kk = a_k: one step moves w_k by eta / (mu + a_k) * dE/dw_k."""
    a = torch.tensor([0.5, 2.0, 10.0])
    c = torch.tensor([1.0, -2.0, 3.0])
    w = nn.Parameter(torch.zeros(3))
    eta, mu = 0.3, 0.02
    optimizer = SDLM([w], lr=eta, mu=mu)
    optimizer.set_curvature({w: a})
    (0.5 * a * (w - c) ** 2).sum().backward()
    optimizer.step()
    expected = -eta / (mu + a) * (a * (0 - c))
    torch.testing.assert_close(w.detach(), expected)


def test_with_eta_1_and_no_damping_sdlm_is_newtons_method():
    a, c = torch.tensor([0.5, 2.0, 10.0]), torch.tensor([1.0, -2.0, 3.0])
    w = nn.Parameter(torch.zeros(3))
    optimizer = SDLM([w], lr=1.0, mu=1e-12)
    optimizer.set_curvature({w: a})
    (0.5 * a * (w - c) ** 2).sum().backward()
    optimizer.step()
    torch.testing.assert_close(w.detach(), c)


def test_sdlm_without_a_curvature_estimate_says_what_to_do():
    w = nn.Parameter(torch.ones(2))
    w.sum().backward()
    with pytest.raises(RuntimeError, match="CurvatureEstimate"):
        SDLM([w]).step()


def test_effective_rates_are_eta_over_mu_plus_h():
    w = nn.Parameter(torch.zeros(3))
    optimizer = SDLM([w], lr=5e-4, mu=0.02)
    optimizer.set_curvature({w: torch.tensor([0.0, 0.011, 7.1])})
    rates = optimizer.effective_rates()
    torch.testing.assert_close(rates, 5e-4 / (0.02 + torch.tensor([0.011, 7.1])))  # h = 0: no connection


def test_paper_schedule_gives_the_papers_eta_for_each_of_the_20_passes():
    w = nn.Parameter(torch.zeros(1))
    optimizer = SDLM([w], lr=5e-4)
    schedule = PaperSchedule(optimizer)
    rates = []
    for _ in range(22):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradient: nothing moves, the schedule alone is under test
        schedule.step()
    expected = [5e-4] * 2 + [2e-4] * 3 + [1e-4] * 3 + [5e-5] * 4 + [1e-5] * 8
    assert rates[:20] == pytest.approx(expected) and rates[20:] == pytest.approx([1e-5, 1e-5])
    assert list(PAPER_ETA) == pytest.approx(expected)


def test_curvature_is_estimated_before_every_pass_and_kept_fixed_during_it(tiny_mnist, monkeypatch):
    import lightning as L

    from lenet5 import LeNet5Module, MNISTDataModule
    from lenet5 import sdlm

    estimates = []

    def spy(net, loss, images, labels):
        hessian = diagonal_hessian(net, loss, images, labels)
        estimates.append((len(images), trainer.global_step, {p: h.clone() for p, h in hessian.items()}))
        return hessian

    monkeypatch.setattr(sdlm, "diagonal_hessian", spy)
    module = LeNet5Module(optimizer={"_target_": "lenet5.sdlm.SDLM", "_partial_": True, "lr": 5e-4})
    data = MNISTDataModule(tiny_mnist, verify=False, batch_size=32, eval_batch_size=128)
    fixed_during_pass = []

    class CheckFixed(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            optimizer = trainer.optimizers[0]
            fixed_during_pass.append(all(torch.equal(optimizer.state[p]["curvature"], h)
                                         for p, h in estimates[-1][2].items()))

    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[sdlm.CurvatureEstimate(patterns=100), CheckFixed()])
    trainer.fit(module, datamodule=data)
    steps_per_pass = 384 // 32
    assert [(count, step) for count, step, _ in estimates] == [(100, 0), (100, steps_per_pass), (100, 2 * steps_per_pass)]
    assert fixed_during_pass == [True, True, True]
    assert sdlm.CurvatureEstimate().patterns == 500


def test_train_py_with_sdlm_and_the_paper_schedule(tiny_mnist, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from conftest import run_train, tiny_run_overrides

    result = run_train(*tiny_run_overrides(tiny_mnist, tmp_path, "optimizer=sdlm", "scheduler=paper",
                                           "trainer.max_epochs=3", "callbacks=minimal"))
    assert result.returncode == 0, result.stderr[-3000:]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [round(e.value, 8) for e in events.Scalars("lr-SDLM")] == [5e-4, 5e-4, 2e-4]
    assert len(events.Scalars("sdlm/estimate_seconds")) == 3
    assert all(e.value <= 5e-4 / 0.02 + 1e-9 for e in events.Scalars("sdlm/rate_max"))
    assert all(0 < e.value for e in events.Scalars("sdlm/rate_min"))
