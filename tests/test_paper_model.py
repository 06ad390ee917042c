"""LeNet-5 as the paper specifies it (Sec. II.B, Appendix A): these tests read as that specification."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from lenet5 import LeNet5
from lenet5.layers import RBFOutput, ScaledTanh

ROOT = Path(__file__).resolve().parents[1]

# p.7-8: trainable parameters and connections of each layer.
PAPER_LAYERS = {
    "C1": ((6, 28, 28), 156, 122_304),
    "S2": ((6, 14, 14), 12, 5_880),
    "C3": ((16, 10, 10), 1_516, 151_600),
    "S4": ((16, 5, 5), 32, 2_000),
    "C5": ((120, 1, 1), 48_120, 48_120),
    "F6": ((84,), 10_164, 10_164),
    "output": ((10,), 0, 840),
}

# Table I (p.8), written out here independently of the package's copy.
TABLE_I_COLUMNS = [
    "012", "123", "234", "345", "045", "015",
    "0123", "1234", "2345", "0345", "0145", "0125",
    "0134", "1245", "0235", "012345",
]

# Digit 1's 7x12 bitmap from Fig. 3, row by row ('#' = +1, '.' = -1).
DIGIT_ONE = ["...##..", "..###..", ".####..", "...##..", "...##..", "...##..",
             "...##..", "...##..", "...##..", ".######", ".......", "......."]


@pytest.fixture(scope="module")
def net() -> LeNet5:
    torch.manual_seed(0)
    return LeNet5()


def test_paper_model_has_60000_parameters_and_340908_connections(net):
    summary = net.summary()
    assert summary.parameters == 60_000
    assert summary.connections == 340_908


@pytest.mark.parametrize("layer", PAPER_LAYERS)
def test_each_layer_matches_the_papers_counts(net, layer):
    shape, parameters, connections = PAPER_LAYERS[layer]
    row = net.summary()[layer]
    assert (row.output_shape, row.parameters, row.connections) == (shape, parameters, connections)


def test_summary_prints_every_layer_and_the_totals(net):
    text = str(net.summary())
    for layer in PAPER_LAYERS:
        assert layer in text
    assert "60,000" in text and "340,908" in text


def test_unconnected_c3_weights_are_not_trainable_parameters(net):
    stored = sum(p.numel() for p in net.parameters())
    unconnected = int((net.c3.mask == 0).sum()) * 25
    assert stored - unconnected == 60_000


def test_layers_are_named_as_in_the_paper(net):
    for name in ("c1", "s2", "c3", "s4", "c5", "f6", "output"):
        assert isinstance(getattr(net, name), torch.nn.Module)


def test_c3_follows_table_1(net):
    expected = torch.zeros(16, 6)
    for out_map, inputs in enumerate(TABLE_I_COLUMNS):
        expected[out_map, [int(i) for i in inputs]] = 1
    assert torch.equal(net.c3.mask.view(16, 6), expected)


def test_c3_map_responds_only_to_the_s2_maps_table_1_gives_it(net):
    """Behaviour, not bookkeeping: changing one S2 map moves exactly the C3 maps it feeds."""
    base = torch.randn(1, 6, 14, 14)
    for s2_map in range(6):
        changed = base.clone()
        changed[0, s2_map] += torch.randn(14, 14)
        moved = (net.c3(changed) - net.c3(base)).abs().flatten(2).amax(2)[0] > 0
        fed = torch.tensor([str(s2_map) in inputs for inputs in TABLE_I_COLUMNS])
        assert torch.equal(moved, fed), f"S2 map {s2_map}"


def test_c3_table_in_the_paper_config_is_table_1():
    table = yaml.safe_load((ROOT / "conf/model/c3/table1.yaml").read_text())["c3_table"]
    assert ["".join(map(str, row)) for row in table] == TABLE_I_COLUMNS


def test_masked_c3_weights_stay_exactly_zero_through_training():
    torch.manual_seed(0)
    net = LeNet5()
    unconnected = net.c3.mask.expand_as(net.c3.weight) == 0
    optimizers = [torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-3),
                  torch.optim.Adam(net.parameters(), lr=0.01, weight_decay=1e-3)]
    for optimizer in optimizers:
        for _ in range(5):
            loss = net(torch.randn(8, 1, 32, 32)).min(1).values.mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert net.c3.weight[unconnected].abs().max() == 0
    assert net.c3.weight[~unconnected].abs().min() > 0


def test_rbf_bitmaps_are_the_papers_fixed_buffer(net):
    assert "centers" in dict(net.output.named_buffers())
    assert all("centers" not in name for name, _ in net.named_parameters())
    shipped = json.loads((ROOT / "src/lenet5/rbf_bitmaps.json").read_text())["digits"]
    expected = torch.tensor([[1.0 if c == "#" else -1.0 for row in shipped[str(d)] for c in row] for d in range(10)])
    assert torch.equal(net.output.centers, expected)
    assert torch.equal(net.output.centers[1], torch.tensor([1.0 if c == "#" else -1.0 for row in DIGIT_ONE for c in row]))


def test_rbf_output_is_the_squared_distance_to_each_bitmap():
    rbf = RBFOutput()
    x = torch.randn(3, 84)
    expected = torch.stack([((x - rbf.centers[i]) ** 2).sum(1) for i in range(10)], dim=1)
    torch.testing.assert_close(rbf(x), expected)


def test_prediction_is_the_smallest_penalty():
    """A network whose F6 output equals digit 7's bitmap predicts 7 (y_7 = 0)."""
    rbf = RBFOutput()
    penalties = rbf(rbf.centers[[7, 2]])
    assert penalties[0, 7] == 0 and penalties[1, 2] == 0
    assert RBFOutput.predict(penalties).tolist() == [7, 2]


def test_scaled_tanh_maps_1_to_1_and_minus_1_to_minus_1():
    f = ScaledTanh()
    values = f(torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(values, torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64), atol=1e-4, rtol=0)
    assert f(torch.tensor(100.0)) == pytest.approx(1.7159)


@pytest.mark.parametrize(("layer", "fan_ins"), [
    ("c1", [25] * 6), ("s2", [4] * 6), ("c3", [75] * 6 + [100] * 9 + [150]), ("s4", [4] * 16),
    ("c5", [400] * 120), ("f6", [120] * 84),
])
def test_paper_init_draws_each_weight_within_2_4_over_its_fan_in(layer, fan_ins):
    torch.manual_seed(0)
    module = getattr(LeNet5(), layer)
    bound = 2.4 / torch.tensor(fan_ins, dtype=torch.float32)
    for param in (module.weight, module.bias):
        spread = param.detach().abs().reshape(len(fan_ins), -1).amax(1)
        assert torch.all(spread <= bound + 1e-7)
    weights = module.weight.detach().reshape(len(fan_ins), -1)
    if weights.shape[1] >= 25:  # enough draws per unit to see that the range is used
        assert torch.all(weights.abs().amax(1) > 0.8 * bound)


def test_forward_maps_a_batch_of_32x32_images_to_ten_penalties(net):
    penalties = net(torch.randn(5, 1, 32, 32))
    assert penalties.shape == (5, 10) and torch.all(penalties >= 0)
    assert math.isfinite(penalties.sum().item())
