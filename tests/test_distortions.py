"""Random affine distortions of training images (Sec. III.C)."""

import lightning as L
import pytest
import torch

from lenet5 import LeNet5Module, MNISTDataModule
from lenet5.distortions import RandomAffine


def digit_bar() -> torch.Tensor:
    """A 32x32 paper-scaled field (background -0.1) with a 6x4 block of ink (1.175)."""
    image = torch.full((1, 1, 32, 32), -0.1)
    image[0, 0, 10:16, 12:16] = 1.175
    return image


def centre_of_ink(images: torch.Tensor) -> torch.Tensor:
    ink = (images + 0.1).clamp_min(0)[:, 0]
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    mass = ink.sum((1, 2))
    return torch.stack([(ink * cols).sum((1, 2)) / mass, (ink * rows).sum((1, 2)) / mass], dim=1)


def test_no_distortion_leaves_images_unchanged():
    images = digit_bar().repeat(4, 1, 1, 1)
    for distort in (RandomAffine(probability=0.0), RandomAffine(0.0, 0.0, 0.0, 0.0, probability=1.0)):
        torch.testing.assert_close(distort(images), images)


def test_translation_moves_the_ink_by_the_drawn_number_of_pixels():
    distort = RandomAffine(translate=2.0, scale=0.0, squeeze=0.0, shear=0.0, probability=1.0)
    images = digit_bar().repeat(64, 1, 1, 1)
    theta = distort.matrices(64, 32, torch.Generator().manual_seed(0))
    moved = distort(images, torch.Generator().manual_seed(0))
    shift = centre_of_ink(moved) - centre_of_ink(images)
    expected = -theta[:, :, 2] * 32 / 2  # the grid maps output to input: the image moves the other way
    torch.testing.assert_close(shift, expected, atol=0.05, rtol=0)
    assert shift.abs().max() <= 2.0 + 0.05 and shift.abs().max() > 1.0


def test_scaling_and_squeezing_stay_within_their_ranges_and_keep_the_background():
    distort = RandomAffine(translate=0.0, scale=0.1, squeeze=0.1, shear=0.15, probability=1.0)
    images = digit_bar().repeat(256, 1, 1, 1)
    out = distort(images, torch.Generator().manual_seed(1))
    assert out.shape == images.shape
    assert torch.allclose(out[:, :, :2], torch.tensor(-0.1)) and torch.allclose(out[:, :, -2:], torch.tensor(-0.1))
    ink = ((out + 0.1) / 1.275).sum((1, 2, 3))  # the area of ink scales with the determinant
    area = 24.0
    assert ink.min() > area * 0.9**2 * 0.9 and ink.max() < area * 1.1**2 * 1.1
    assert not torch.allclose(out[0], out[1])


def test_probability_sets_the_share_of_distorted_images():
    distort = RandomAffine(probability=0.9)
    theta = distort.matrices(10_000, 32, torch.Generator().manual_seed(2))
    untouched = (theta == torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])).flatten(1).all(1).float().mean()
    assert 0.08 < untouched.item() < 0.12


def test_only_training_batches_are_distorted(tiny_mnist):
    seen = {"train": [], "val": [], "test": []}

    class Spy(LeNet5Module):
        def training_step(self, batch, batch_idx):
            seen["train"].append(batch[0].clone())
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            seen["val"].append(batch[0].clone())
            return super().validation_step(batch, batch_idx)

        def test_step(self, batch, batch_idx):
            seen["test"].append(batch[0].clone())
            return super().test_step(batch, batch_idx)

    L.seed_everything(0)
    data = MNISTDataModule(tiny_mnist, verify=False, batch_size=384, eval_batch_size=128, distort=True)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(Spy(), datamodule=data)
    trainer.test(Spy(), datamodule=data, verbose=False)
    stored_train, stored_test = data.splits["train"][0], data.splits["test"][0]
    assert torch.equal(seen["val"][0], stored_test) and torch.equal(seen["test"][0], stored_test)
    presented = seen["train"][0]
    unchanged = sum(bool((stored_train == image).flatten(1).all(1).any()) for image in presented)
    # about 1 in 10 of the 384 presented as it is, the rest distorted (seeded above: not left to chance)
    assert 10 < unchanged < 80, unchanged
