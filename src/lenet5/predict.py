"""Classify your own digit images with a trained checkpoint.

    python predict.py --ckpt outputs/runs/<date>/<time>/checkpoints/last.ckpt my_digit.png more/ [--json]

Any PNG or JPG of one digit, any size, dark on light or light on dark, is prepared as MNIST
prepared its digits (Sec. III.A): the ink is cropped, scaled to fit a 20x20 box keeping its aspect
ratio, centred by its centre of mass in a 28x28 field, then padded to 32x32 and scaled as the
checkpoint's run scaled its training images. A directory means every PNG or JPG in it.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from lenet5.checkpoints import CheckpointError
from lenet5.data import scale_input, to_unit_field
from lenet5.layers import RBFOutput

EXTENSIONS = {".png", ".jpg", ".jpeg"}
MAX_PIXELS = 40_000_000  # far beyond any photo of a digit; a larger image is refused, not decompressed


class ImageError(Exception):
    """An input that is not a usable image of a digit; the message names the file and the problem."""


def load_grayscale(path: Path) -> np.ndarray:
    """The image as float ink in [0, 1] (1 = ink), whatever its mode and polarity."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise Image.DecompressionBombError(f"{image.width}x{image.height}")
                image.load()
                if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                    # transparent pixels are background: put the image on white
                    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
                    image = Image.alpha_composite(background, image.convert("RGBA"))
                gray = np.asarray(ImageOps.grayscale(image), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{path} is not an image that can be read as PNG or JPG "
                         f"({type(error).__name__}); give a PNG or JPG of one digit") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"{path} is too large to decode safely ({error}, more than {MAX_PIXELS:,} pixels); "
                         f"crop or shrink it to the digit") from None
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    ink = 1.0 - gray if np.median(border) > 0.5 else gray  # dark on light: invert
    low, high = np.percentile(ink, 1), ink.max()
    if high - low < 0.1:
        raise ImageError(f"{path} has no visible digit (it is nearly uniform); give an image with a digit in it")
    return np.clip((ink - low) / (high - low), 0.0, 1.0)


def mnist_field(ink: np.ndarray) -> torch.Tensor:
    """Crop to the ink, fit in 20x20 keeping the aspect ratio, centre by centre of mass in 28x28."""
    rows, cols = np.nonzero(ink > 0.2)
    crop = ink[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
    height, width = crop.shape
    factor = 20.0 / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    box = np.asarray(Image.fromarray((crop * 255).astype(np.uint8)).resize(size, Image.LANCZOS), dtype=np.float32)
    ys, xs = np.indices(box.shape)
    mass = box.sum()
    cy, cx = (ys * box).sum() / mass, (xs * box).sum() / mass
    top, left = int(round(14 - cy)), int(round(14 - cx))
    field = np.zeros((28, 28), dtype=np.float32)
    top, left = min(max(top, 0), 28 - box.shape[0]), min(max(left, 0), 28 - box.shape[1])
    field[top: top + box.shape[0], left: left + box.shape[1]] = box
    return torch.from_numpy(np.clip(field, 0, 255).round().astype(np.uint8))


def images_in(paths: list[Path]) -> list[Path]:
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in EXTENSIONS)
        else:
            found.append(path)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python predict.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", type=Path, help="image files or directories of them")
    parser.add_argument("--ckpt", required=True, type=Path, help="a checkpoint written by train.py")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of lines")
    args = parser.parse_args(argv)

    from lenet5.evaluate import module_from_checkpoint

    try:
        module, checkpoint = module_from_checkpoint(args.ckpt)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    spec = checkpoint.get("input") or {"size": module.net.input_shape[-1], "scaling": "paper", "mean": 0.0, "std": 1.0}
    rbf = isinstance(module.net.output, RBFOutput)
    results, failures = [], 0
    for path in images_in(args.images):
        try:
            if not path.is_file():
                raise ImageError(f"{path} does not exist")
            field = to_unit_field(mnist_field(load_grayscale(path)).unsqueeze(0), spec["size"])
            with torch.no_grad():
                outputs = module.net(scale_input(field, spec))[0]
        except ImageError as error:
            failures += 1
            print(f"error: {error}", file=sys.stderr)
            continue
        digit = int(module.net.output.predict(outputs.unsqueeze(0))[0])
        scores = outputs if rbf else outputs.softmax(0)
        result = {"file": str(path), "digit": digit,
                  "penalties" if rbf else "probabilities": [round(float(v), 4) for v in scores]}
        results.append(result)
        if not args.json:
            kind = "penalties (smallest wins)" if rbf else "probabilities"
            values = " ".join(f"{d}:{v:.3g}" for d, v in enumerate(scores.tolist()))
            print(f"{path}: {digit}    {kind}: {values}", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failures else 0
