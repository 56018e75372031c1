"""dgm_fast's 3-D warping ops against F.grid_sample, eager and compiled, in the same run.

Measures only; correctness is asserted in tests/. The timing helper ``measure`` and the
``contender``/``backend`` parameters (dgm_fast per backend, eager, compiled) come from conftest.py.

* ``grid_sample_3d``: ``dgm_fast.grid_sample_3d(x, grid)`` against ``F.grid_sample(x, grid,
  mode="bilinear", align_corners=False)`` and its torch.compile, on the feature volume of face
  reenactment (§4.3; face-vid2vid's appearance features): (N, 32, 16, 64, 64) float32, N = 1 and
  8 (1 only with --bench-quick; ``warp_batch`` of conftest.py), sampled at a keypoint-like warp of the identity grid (a small
  random rotation and shift plus noise, so that neighbouring voxels read neighbouring input).
* ``grid_sample_3d_fwd_bwd``: the same forward and the backward to input and grid for a fixed
  output gradient.
* ``copy``: ``out.copy_(x)`` of an output-sized tensor, the bandwidth yardstick: a forward reads at
  least the input and the grid and writes the output (its ``bytes``), so its GB/s over copy's is
  the fraction of the machine's measured bandwidth it reaches. Rows of a fresh output pay its
  first-touch page faults, which copy into a preallocated buffer does not.

Rows record ``batch``, ``channels``, ``volume`` and ``bytes``; ``size`` is the output's elements.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dgm_fast

DTYPE = torch.float32
CHANNELS, VOLUME = 32, (16, 64, 64)


def warp_grid(batch: int, device) -> torch.Tensor:
    """A keypoint-like warp: the identity grid rotated by ~0.1 rad about z, shifted, plus noise."""
    gen = torch.Generator().manual_seed(0)
    theta = torch.zeros(batch, 3, 4, dtype=torch.float64)
    angle = 0.1 * torch.randn(batch, generator=gen, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = angle.cos(), -angle.sin(), angle.sin(), angle.cos()
    theta[:, 2, 2] = 1
    theta[:, :, 3] = 0.05 * torch.randn(batch, 3, generator=gen, dtype=torch.float64)
    grid = F.affine_grid(theta, (batch, 1, *VOLUME), align_corners=False)
    grid = grid + 0.01 * torch.randn(grid.shape, generator=gen, dtype=torch.float64)
    return grid.to(device, DTYPE)


def eager(x, grid):
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


compiled = torch.compile(eager, dynamic=False)
SAMPLERS = {"dgm_fast": lambda x, g: dgm_fast.grid_sample_3d(x, g), "eager": eager, "compiled": compiled}


def _inputs(batch: int, device, requires_grad: bool = False):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, CHANNELS, *VOLUME, generator=gen, dtype=DTYPE).to(device)
    grid = warp_grid(batch, device)
    return x.requires_grad_(requires_grad), grid.requires_grad_(requires_grad)


def _tags(batch: int, x: torch.Tensor, grid: torch.Tensor) -> dict:
    size = batch * CHANNELS * grid.shape[1:4].numel()
    traffic = (x.numel() + grid.numel() + size) * x.element_size()
    return dict(size=size, dtype=DTYPE, batch=batch, channels=CHANNELS, volume=list(VOLUME), bytes=traffic)


def test_copy(measure, bench_config, warp_batch):
    """Copy bandwidth at each output size: the yardstick of the warp rows."""
    batch = warp_batch
    x = torch.randn(batch, CHANNELS, *VOLUME, dtype=DTYPE, device=bench_config.device)
    out = torch.empty_like(x)
    measure(lambda: out.copy_(x), op="copy", contender="torch", size=x.numel(), dtype=DTYPE,
            bytes=2 * x.numel() * x.element_size())


def test_grid_sample_3d(measure, bench_config, contender, backend, warp_batch):
    batch = warp_batch
    x, grid = _inputs(batch, bench_config.device)
    sample = SAMPLERS[contender]
    with torch.no_grad():
        measure(lambda: sample(x, grid), op="grid_sample_3d", contender=contender, backend=backend,
                **_tags(batch, x, grid))


def test_grid_sample_3d_fwd_bwd(measure, bench_config, contender, backend, warp_batch):
    batch = warp_batch
    x, grid = _inputs(batch, bench_config.device, requires_grad=True)
    grad_out = torch.randn(batch, CHANNELS, *grid.shape[1:4], dtype=DTYPE, device=bench_config.device)
    sample = SAMPLERS[contender]

    def step():
        torch.autograd.grad(sample(x, grid), (x, grid), grad_out)

    measure(step, op="grid_sample_3d_fwd_bwd", contender=contender, backend=backend, backend_op="grid_sample_3d",
            **_tags(batch, x, grid))
