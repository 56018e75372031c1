"""scikit-learn's 8x8 handwritten digits as a small, download-free image set for the GLF demo (§3.2).

1797 greyscale images with 17 grey levels (0..16), scaled to [0, 1] by /16
and optionally upsampled (bilinear) so that the InfoGAN auto-encoder's sizes
(28, 32, 64) can be used. A fixed seeded permutation splits train and test.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from dgm_fast import _checks

NATIVE_SIZE = 8
SPLITS = ("train", "test")


@lru_cache(maxsize=1)
def _raw() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits as sklearn_digits  # bundled with scikit-learn

    bunch = sklearn_digits()
    images = torch.from_numpy(bunch.images).float().div_(16.0).unsqueeze(1)  # (N, 1, 8, 8)
    return images, torch.from_numpy(bunch.target).long()


def load_digits(image_size: int = NATIVE_SIZE, split: str = "train", test_fraction: float = 0.2,
                seed: int = 0) -> tuple[Tensor, Tensor]:
    """``(images, labels)``: float32 images (N, 1, image_size, image_size) in [0, 1] and int64 labels.

    ``image_size`` above 8 upsamples with ``F.interpolate`` (bilinear,
    ``align_corners=False``, no antialias). The test split is the first
    ``round(test_fraction * 1797)`` images of a permutation drawn from
    ``seed``, the train split the rest: the same seed gives the same split.
    """
    image_size = _checks.integer("image_size", image_size, low=NATIVE_SIZE)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    test_fraction = _checks.real("test_fraction", test_fraction, low=0.0, high=1.0, low_open=True)
    if test_fraction == 1.0:
        raise ValueError("test_fraction must be < 1, so that the train split is not empty")
    seed = _checks.integer("seed", seed, low=0, high=2**64)
    images, labels = _raw()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, round(test_fraction * len(images)))
    idx = order[:n_test] if split == "test" else order[n_test:]
    images = images[idx]
    if image_size != NATIVE_SIZE:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear",
                               align_corners=False, antialias=False)
        images = images.clamp_(0.0, 1.0)  # convex weights keep [0, 1] up to rounding
    return images, labels[idx]
