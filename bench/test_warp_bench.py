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
* ``keypoint_warp_3d``: ``dgm_fast.keypoint_warp_3d(feature, kp_source, kp_driving, logits,
  jacobian=..., mask_is_logits=True)`` against the chain users run today (face-vid2vid's dense motion:
  the K + 1 motions materialised, softmax-weighted and summed, then ``F.grid_sample``; the
  ``keypoint_warp_chain`` of dgm_fast/warp/eager.py) and its torch.compile, at K = 15
  keypoints for N = 1 and K = 21 for N = 8, keypoints in [-1, 1] with driving = source + noise and
  Jacobians near the identity; ``keypoint_warp_3d_fwd_bwd`` adds the backward to all five inputs.
* ``sparse_motion_features``: ``dgm_fast.sparse_motion_features(feature, kp_source, kp_driving,
  jacobian=...)`` against FOMM's dense-motion input (K + 1 repeated copies through ``F.grid_sample``,
  heatmaps concatenated: ``motion_features_chain`` of dgm_fast/warp/eager.py) and its torch.compile,
  same keypoints; forward only, as the dense motion network consumes it (its backward is tested).
* ``copy``: ``out.copy_(x)`` of an output-sized tensor, the bandwidth yardstick: a forward reads at
  least the input and the grid and writes the output (its ``bytes``), so its GB/s over copy's is
  the fraction of the machine's measured bandwidth it reaches. Rows of a fresh output pay its
  first-touch page faults, which copy into a preallocated buffer does not.

Rows record ``batch``, ``channels``, ``volume``, ``bytes`` (keypoint rows also ``keypoints``) and
``peak_extra_bytes`` (``dgm_fast.benchmark.peak_extra_bytes``: the memory one call holds at its peak
beyond its inputs); ``size`` is the output's elements.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import dgm_fast
from dgm_fast.benchmark import peak_extra_bytes
from dgm_fast.warp.eager import keypoint_warp_chain, motion_features_chain

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


@pytest.mark.parametrize("output", ["volume", "motion_features"])
def test_copy(measure, bench_config, warp_batch, output):
    """Copy bandwidth at each output size: the yardstick of the warp rows (the sampled volume, and
    sparse_motion_features' K + 1 heatmaps and warped copies)."""
    shape = (warp_batch, CHANNELS, *VOLUME)
    if output == "motion_features":
        shape = (warp_batch, keypoint_count(warp_batch) + 1, 1 + CHANNELS, *VOLUME)
    x = torch.randn(shape, dtype=DTYPE, device=bench_config.device)
    out = torch.empty_like(x)
    measure(lambda: out.copy_(x), op="copy", contender="torch", size=x.numel(), dtype=DTYPE,
            bytes=2 * x.numel() * x.element_size())


def test_grid_sample_3d(measure, bench_config, contender, backend, warp_batch):
    batch = warp_batch
    x, grid = _inputs(batch, bench_config.device)
    sample = SAMPLERS[contender]
    with torch.no_grad(), dgm_fast.use_backend(backend or "auto"):
        peak = peak_extra_bytes(lambda: sample(x, grid), bench_config.device)
        measure(lambda: sample(x, grid), op="grid_sample_3d", contender=contender, backend=backend,
                peak_extra_bytes=peak, **_tags(batch, x, grid))


def test_grid_sample_3d_fwd_bwd(measure, bench_config, contender, backend, warp_batch):
    batch = warp_batch
    x, grid = _inputs(batch, bench_config.device, requires_grad=True)
    grad_out = torch.randn(batch, CHANNELS, *grid.shape[1:4], dtype=DTYPE, device=bench_config.device)
    sample = SAMPLERS[contender]

    def step():
        torch.autograd.grad(sample(x, grid), (x, grid), grad_out)

    with dgm_fast.use_backend(backend or "auto"):
        peak = peak_extra_bytes(step, bench_config.device)
    measure(step, op="grid_sample_3d_fwd_bwd", contender=contender, backend=backend, backend_op="grid_sample_3d",
            peak_extra_bytes=peak, **_tags(batch, x, grid))


# --- keypoint-driven warp ------------------------------------------------------------------------
def keypoint_count(batch: int) -> int:
    return 15 if batch == 1 else 21


def eager_keypoint_warp(feature, kp_source, kp_driving, logits, jacobian):
    return keypoint_warp_chain(feature, kp_source, kp_driving, logits, jacobian, True)[0]


compiled_keypoint_warp = torch.compile(eager_keypoint_warp, dynamic=False)
KEYPOINT_WARPS = {
    "dgm_fast": lambda f, s, d, m, j: dgm_fast.keypoint_warp_3d(f, s, d, m, jacobian=j, mask_is_logits=True),
    "eager": eager_keypoint_warp,
    "compiled": compiled_keypoint_warp,
}


def _keypoint_inputs(batch: int, device, requires_grad: bool = False):
    gen = torch.Generator().manual_seed(2)
    k = keypoint_count(batch)

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen, dtype=DTYPE)).to(device)

    feature = randn(batch, CHANNELS, *VOLUME)
    kp_source = (torch.rand(batch, k, 3, generator=gen, dtype=DTYPE) * 2 - 1).to(device)
    kp_driving = kp_source + randn(batch, k, 3, scale=0.1)
    logits = randn(batch, k + 1, *VOLUME)
    jacobian = torch.eye(3, dtype=DTYPE, device=device) + randn(batch, k, 3, 3, scale=0.1)
    return [t.requires_grad_(requires_grad) for t in (feature, kp_source, kp_driving, logits, jacobian)]


def _keypoint_tags(batch: int, inputs) -> dict:
    size = batch * CHANNELS * math.prod(VOLUME)
    traffic = (sum(t.numel() for t in inputs) + size) * inputs[0].element_size()
    return dict(size=size, dtype=DTYPE, batch=batch, channels=CHANNELS, volume=list(VOLUME),
                keypoints=keypoint_count(batch), bytes=traffic)


def test_keypoint_warp_3d(measure, bench_config, contender, backend, warp_batch):
    inputs = _keypoint_inputs(warp_batch, bench_config.device)
    warp = KEYPOINT_WARPS[contender]
    with torch.no_grad(), dgm_fast.use_backend(backend or "auto"):
        peak = peak_extra_bytes(lambda: warp(*inputs), bench_config.device)
        measure(lambda: warp(*inputs), op="keypoint_warp_3d", contender=contender, backend=backend,
                peak_extra_bytes=peak, **_keypoint_tags(warp_batch, inputs))


def test_keypoint_warp_3d_fwd_bwd(measure, bench_config, contender, backend, warp_batch):
    inputs = _keypoint_inputs(warp_batch, bench_config.device, requires_grad=True)
    warp = KEYPOINT_WARPS[contender]
    grad_out = torch.randn(warp_batch, CHANNELS, *VOLUME, dtype=DTYPE, device=bench_config.device)

    def step():
        torch.autograd.grad(warp(*inputs), inputs, grad_out)

    with dgm_fast.use_backend(backend or "auto"):
        peak = peak_extra_bytes(step, bench_config.device)
    measure(step, op="keypoint_warp_3d_fwd_bwd", contender=contender, backend=backend,
            backend_op="keypoint_warp_3d", peak_extra_bytes=peak, **_keypoint_tags(warp_batch, inputs))


# --- the dense motion network's input ------------------------------------------------------------
MOTION_FEATURES = {
    "dgm_fast": lambda f, s, d, j: dgm_fast.sparse_motion_features(f, s, d, jacobian=j),
    "eager": motion_features_chain,
    "compiled": torch.compile(motion_features_chain, dynamic=False),
}


def test_sparse_motion_features(measure, bench_config, contender, backend, warp_batch):
    feature, kp_source, kp_driving, _, jacobian = _keypoint_inputs(warp_batch, bench_config.device)
    inputs = (feature, kp_source, kp_driving, jacobian)
    build = MOTION_FEATURES[contender]
    tags = _keypoint_tags(warp_batch, inputs)
    views = keypoint_count(warp_batch) + 1
    out_elements = views * (1 + CHANNELS) * tags["size"] // CHANNELS  # K + 1 heatmaps and warped copies
    tags.update(size=out_elements, bytes=tags["bytes"] + (out_elements - tags["size"]) * inputs[0].element_size())
    with torch.no_grad(), dgm_fast.use_backend(backend or "auto"):
        peak = peak_extra_bytes(lambda: build(*inputs), bench_config.device)
        measure(lambda: build(*inputs), op="sparse_motion_features", contender=contender, backend=backend,
                peak_extra_bytes=peak, **tags)
