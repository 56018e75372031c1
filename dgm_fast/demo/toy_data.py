"""The 2-D toy distributions of §2.4.6, sampled in code (no downloads).

Both live in roughly [-3, 3]^2, the range that short-run dynamics started at
the N(0, I) prior of §2.4.6 can reach:

* ``gaussian_grid``: an equal mixture of 9 isotropic Gaussians (std 0.1)
  centred on the grid {-2, 0, 2}^2;
* ``swiss_roll``: the 2-D Swiss roll of FFJORD (Grathwohl et al., 2018),
  ``t (cos t, sin t)`` for ``t ~ U[1.5 pi, 4.5 pi]`` plus N(0, 1) noise, all
  divided by 5 (so the noise std is 0.2 and the radius at most ~2.8).

The latent EBM booster of §3.3 adds Figure 3.9's 25-Gaussians (``gaussian_grid_25``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

GRID_SPACING = 2.0
GRID_STD = 0.1
ROLL_NOISE = 1.0
ROLL_SCALE = 5.0


def grid_centres() -> torch.Tensor:
    """The 9 mode centres of ``gaussian_grid``, shape (9, 2)."""
    axis = GRID_SPACING * torch.tensor([-1.0, 0.0, 1.0])
    return torch.cartesian_prod(axis, axis)


def gaussian_grid(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    centres = grid_centres()
    which = torch.randint(len(centres), (n,), generator=generator)
    return centres[which] + GRID_STD * torch.randn(n, 2, generator=generator)


def gaussian_grid_25(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Figure 3.9's 25-Gaussians (after Tanaka, 2019): a 5 x 5 grid of spacing 1 in [-2, 2]^2, std 0.05."""
    axis = torch.arange(-2.0, 3.0)
    centres = torch.cartesian_prod(axis, axis)
    return centres[torch.randint(len(centres), (n,), generator=generator)] + 0.05 * torch.randn(n, 2, generator=generator)


def swiss_roll(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    t = 1.5 * math.pi * (1.0 + 2.0 * torch.rand(n, generator=generator))
    curve = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1)
    return (curve + ROLL_NOISE * torch.randn(n, 2, generator=generator)) / ROLL_SCALE


DATASETS: dict[str, Callable[[int, torch.Generator | None], torch.Tensor]] = {
    "9-gaussians": gaussian_grid,
    "swiss-roll": swiss_roll,
}
