"""Random planar affine distortions of training images (Sec. III.C), on whole batches.

The paper trained on the 60,000 originals plus 540,000 distorted copies, still 20 passes of 60,000
patterns, so a pattern presented in a pass is an original 1 time in 10 and a distorted copy 9
times in 10. We draw the distortions afresh for every presentation, with that probability, which
is the same distribution without storing 540,000 images.

Each distortion combines the five the paper lists, with ranges of our choosing (it gives none):
  translation  up to +-2 pixels each way: about the residual jitter of MNIST's centring by centre
               of mass, and within the 2-pixel border of the 32x32 field;
  scaling      x0.9 to x1.1: MNIST digits are normalized to a 20x20 box, so +-10% keeps them
               between 18 and 22 pixels, inside the field;
  squeezing    horizontal factor q, vertical 1/q, q in 0.9..1.1 (compress one way, elongate the other);
  shear        horizontal, x' = x + s*y with s in -0.15..0.15 (about +-8.5 degrees of slant).
These are moderate on purpose: each keeps a digit readable as itself and inside the input.
The transform is one affine grid per image (torch affine_grid + grid_sample, bilinear), applied on
the device the batch is on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RandomAffine(nn.Module):
    """Distorts a batch (N, 1, H, W) of network inputs; `probability` of each image being distorted."""

    def __init__(self, translate: float = 2.0, scale: float = 0.1, squeeze: float = 0.1, shear: float = 0.15,
                 probability: float = 0.9) -> None:
        super().__init__()
        self.translate, self.scale, self.squeeze, self.shear = translate, scale, squeeze, shear
        self.probability = probability

    def matrices(self, count: int, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(count, 2, 3) matrices mapping output coordinates to input ones, in affine_grid's
        normalized [-1, 1] coordinates (drawn on the CPU: they are tiny)."""
        def uniform(bound: float) -> torch.Tensor:
            return (torch.rand(count, generator=generator) * 2 - 1) * bound

        zoom = 1 + uniform(self.scale)
        squeeze = 1 + uniform(self.squeeze)
        sx, sy = zoom * squeeze, zoom / squeeze  # the digit's horizontal and vertical size factors
        shear = uniform(self.shear)
        tx, ty = uniform(self.translate) * 2 / size, uniform(self.translate) * 2 / size
        distorted = torch.rand(count, generator=generator) < self.probability
        # forward map p' = A p + t with A = [[sx, shear*sy], [0, sy]]; the grid needs its inverse
        forward = torch.zeros(count, 2, 3)
        forward[:, 0, 0], forward[:, 0, 1], forward[:, 1, 1] = sx, shear * sy, sy
        forward[:, 0, 2], forward[:, 1, 2] = tx, ty
        inverse = torch.zeros_like(forward)
        inverse[:, :, :2] = torch.linalg.inv(forward[:, :, :2])
        inverse[:, :, 2:] = -inverse[:, :, :2] @ forward[:, :, 2:]
        identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        return torch.where(distorted.view(-1, 1, 1), inverse, identity)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        theta = self.matrices(len(images), images.shape[-1], generator).to(images.device, images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        # 'border' repeats the edge pixels, which are background in a padded MNIST field
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def extra_repr(self) -> str:
        return (f"translate=+-{self.translate}px, scale=+-{self.scale}, squeeze=+-{self.squeeze}, "
                f"shear=+-{self.shear}, probability={self.probability}")
