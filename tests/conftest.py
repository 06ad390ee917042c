"""Shared fixtures: a small IDX data set written by the tests, the real MNIST files, and a
helper that runs `python train.py` as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lenet5.layers import load_bitmaps
from lenet5.mnist import fetch, write_idx

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = ROOT / "data" / "mnist"


def synthetic_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 uint8 images of the paper's 7x12 digit bitmaps (Fig. 3), doubled to 14x24 and placed
    at random offsets with noise: learnable, unlike random pixels, and a few KB in size."""
    rng = np.random.default_rng(seed)
    glyphs = (load_bitmaps().numpy().reshape(10, 12, 7) > 0).repeat(2, axis=1).repeat(2, axis=2)
    labels = rng.integers(0, 10, count)
    images = np.zeros((count, 28, 28), dtype=np.float32)
    for image, label in zip(images, labels):
        top, left = rng.integers(0, 5), rng.integers(0, 15)
        image[top:top + 24, left:left + 14] = glyphs[label] * 255.0
    images += rng.normal(0, 20, images.shape)
    return images.clip(0, 255).astype(np.uint8), labels.astype(np.uint8)


def write_mnist_like(directory: Path, train: int = 384, test: int = 128) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, count, seed in (("train", train, 0), ("t10k", test, 1)):
        images, labels = synthetic_digits(count, seed)
        write_idx(directory / f"{prefix}-images-idx3-ubyte", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels)
    return directory


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few hundred IDX images the tests write themselves (use with data.verify=false)."""
    return write_mnist_like(tmp_path_factory.mktemp("tiny-mnist"))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST files in the project's default data directory, obtained and verified."""
    return fetch(MNIST_DIR)


def run_train(*overrides: str, script: str = "train.py", timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python train.py <overrides>` from the project root, as a user would."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, script, *overrides], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def tiny_run_overrides(data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    """Overrides for a short run on the tiny data set, written into run_dir."""
    return [f"data.data_dir={data_dir}", "data.verify=false", "data.eval_batch_size=64",
            "trainer.max_epochs=1", f"hydra.run.dir={run_dir}", *extra]
