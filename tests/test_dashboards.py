"""TensorBoard panels, read back with TensorBoard's own EventAccumulator."""

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lenet5 import LeNet5Module, MNISTDataModule
from lenet5.dashboards import confusion_matrix

from conftest import run_train, tiny_run_overrides

IMAGES = {"model/rbf_bitmaps", "data/distorted_samples", "val/misclassified", "val/confusion_matrix",
          "test/misclassified", "test/confusion_matrix", "features/c1", "features/c3", "features/f6_state"}
SCALARS = {"train/loss", "train/error", "val/loss", "val/error", "val/error_best", "test/loss", "test/error",
           "time/epoch_seconds", "time/images_per_second", "lr-Adam"}


def events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir / "tensorboard"),
                                   size_guidance={"images": 0, "histograms": 0, "tensors": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


@pytest.fixture(scope="module")
def dashboard_run(tiny_mnist, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("dashboards")
    result = run_train(*tiny_run_overrides(tiny_mnist, run_dir, "trainer.max_epochs=3", "optimizer=adam",
                                           "data.distort=true", "callbacks.histograms.every_n_steps=5", "speed.batches_per_step=2",
                                           "seed=0"))
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_every_panel_is_in_the_event_files(dashboard_run):
    tags = events(dashboard_run).Tags()
    assert IMAGES <= set(tags["images"])
    assert SCALARS <= set(tags["scalars"])
    layers = ["c1", "s2", "c3", "s4", "c5", "f6"]
    assert {f"{kind}/{layer}.weight" for kind in ("weights", "gradients") for layer in layers} <= set(tags["histograms"])
    assert {"val/confusion_matrix_counts/text_summary", "test/misclassified_count/text_summary"} <= set(tags["tensors"])
    assert tags["graph"]


def test_panels_are_drawn_each_epoch_and_histograms_at_their_interval(dashboard_run):
    accumulator = events(dashboard_run)
    assert [event.step for event in accumulator.Images("val/misclassified")] == [0, 1, 2]
    steps = [event.step for event in accumulator.Histograms("weights/c1.weight")]
    # 36 updates, 2 to a training step: one write in each stretch of 5 updates, at the end of the
    # step that enters it (2, 6, 10, 16, ...), none in between
    assert [step // 5 for step in steps] == list(range(36 // 5 + 1))


def read_counts(accumulator: EventAccumulator, tag: str) -> torch.Tensor:
    text = accumulator.Tensors(tag)[-1].tensor_proto.string_val[0].decode()
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    return torch.tensor([[int(cell) for cell in row.strip("| ").split(" | ")[1:]] for row in rows])


def test_confusion_matrix_counts_match_predictions_made_independently(dashboard_run, tiny_mnist):
    tested = next((dashboard_run / "checkpoints").glob("epoch*.ckpt"))  # the best checkpoint, which was tested
    module = LeNet5Module.load_from_checkpoint(tested, map_location="cpu").eval()
    data = MNISTDataModule(tiny_mnist, verify=False)
    data.setup()
    images, labels = data.splits["test"]
    with torch.no_grad():
        predictions = module.net(images).argmin(1)  # by hand: the smallest RBF penalty
    expected = torch.zeros(10, 10, dtype=torch.long)
    for true, predicted in zip(labels.tolist(), predictions.tolist()):
        expected[true, predicted] += 1
    logged = read_counts(events(dashboard_run), "test/confusion_matrix_counts/text_summary")
    assert torch.equal(logged, expected)
    assert torch.equal(confusion_matrix(labels, predictions), expected)


@pytest.mark.parametrize(("switch", "absent"), [
    ("callbacks=minimal", IMAGES),
    ("callbacks.histograms=null", set()),
    ("callbacks.misclassified=null", {"val/misclassified", "test/misclassified"}),
])
def test_each_panel_can_be_switched_off(tiny_mnist, tmp_path, switch, absent):
    result = run_train(*tiny_run_overrides(tiny_mnist, tmp_path, switch, "data.distort=true"))
    assert result.returncode == 0, result.stderr[-3000:]
    tags = events(tmp_path).Tags()
    assert not absent & set(tags["images"])
    if switch == "callbacks.histograms=null":
        assert not tags["histograms"]
        assert IMAGES <= set(tags["images"])


def test_results_time_every_epoch_also_when_an_earlier_checkpoint_is_tested(tiny_mnist, tmp_path):
    """Testing the best checkpoint restores the callbacks' state saved with it; the run's
    seconds_per_epoch must still average all its epochs. The rate is 0 in epoch 2, so its val/error
    ties epoch 1's and the best checkpoint (a strict improvement) stays epoch 1's."""
    result = run_train(*tiny_run_overrides(tiny_mnist, tmp_path, "trainer.max_epochs=2", "optimizer=sgd",
                                           "scheduler=step", "scheduler.step_size=1", "scheduler.gamma=0",
                                           "callbacks=minimal"))
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["tested"].startswith("epoch000") and results["epochs"] == 2
    seconds = [event.value for event in events(tmp_path).Scalars("time/epoch_seconds")]
    assert len(seconds) == 2
    assert results["seconds_per_epoch"] == pytest.approx(sum(seconds) / 2, rel=1e-5)
