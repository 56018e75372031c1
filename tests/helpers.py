"""Test helpers shared by every op family: tolerances, input makers, op samples, Philox vectors.

``OP_SAMPLES[name](device, dtype)`` lists argument tuples of registered op
``name`` in its validated (op) form; the contract tests run every registered
op on them, so a new op adds its sample maker here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dgm_fast
from dgm_fast.coupling.functional import coupling_args
from dgm_fast.coupling.reference import SCALES, coupling_flow_reference
from dgm_fast.langevin.functional import step_args
from dgm_fast.philox import signed_seed
from dgm_fast.warp.reference import PADDING_MODES

# float32 kernels differ from the references by the rounding of log/sin/cos
# (~1e-6 absolute for unit values); 16-bit types by one ulp of the store.
TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float64: dict(atol=1e-12, rtol=1e-12),
    torch.bfloat16: dict(atol=1e-2, rtol=8e-3),
    torch.float16: dict(atol=1e-3, rtol=1e-3),
}
# 0-d, empty, a single element, odd sizes, a size off the kernels' vector widths
SHAPES = [(), (0,), (1,), (7,), (3, 5, 7), (1001,), (2, 0, 3)]
LAYOUTS = ("contiguous", "transposed", "strided", "channels_last")

# Random123's known-answer vectors for philox4x32_10: (counter, key, result)
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def supports_bfloat16(device: str | torch.device) -> bool:
    device = torch.device(device)
    return device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported())


def dtypes_for(device: str | torch.device) -> list[torch.dtype]:
    return [d for d in TOL if d != torch.bfloat16 or supports_bfloat16(device)]


def make_tensor(shape, dtype=torch.float32, device="cpu", *, layout="contiguous", scale=1.0, seed=0):
    """Standard-normal values (times ``scale``) in ``layout``: a transposed, strided
    (every other element) or channels_last view of the same logical shape."""
    gen = torch.Generator().manual_seed(seed)
    if layout == "transposed" and len(shape) >= 2:
        return make_tensor((*shape[:-2], shape[-1], shape[-2]), dtype, device, scale=scale, seed=seed).mT
    if layout == "strided" and len(shape) >= 1:
        wide = (*shape[:-1], 2 * shape[-1])
        return make_tensor(wide, dtype, device, scale=scale, seed=seed)[..., ::2]
    t = (scale * torch.randn(shape, generator=gen, dtype=torch.float64)).to(device, dtype)
    if layout == "channels_last" and len(shape) == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t


def _langevin_samples(device, dtype) -> list[tuple]:
    """(x, grad, *StepArgs) over shapes, layouts and every option of the step."""
    options = [
        dict(),
        dict(noise_scale=0.0),
        dict(prior_weight=1.0, grad_clip=0.5),
        dict(noise_scale=0.3, clamp=(-1.0, 1.5), offset=3),
        dict(grad_clip=2.0, clamp=(-0.5, 0.5), seed=2**64 - 12345, offset=2**33 + 1),
    ]
    cases = [(shape, "contiguous", opts) for shape in SHAPES for opts in options]
    cases += [((33, 65), layout, dict(offset=5)) for layout in ("transposed", "strided")]
    cases += [((2, 3, 5, 7), "channels_last", dict())]
    samples = []
    for i, (shape, layout, opts) in enumerate(cases):
        x = make_tensor(shape, dtype, device, layout=layout, seed=i)
        g = make_tensor(shape, dtype, device, layout=layout, scale=3.0, seed=1000 + i)
        kw = dict(noise_scale=None, prior_weight=0.0, grad_clip=None, clamp=None, seed=1234, offset=0) | opts
        samples.append((x, g, *step_args(x, g, 0.1, *kw.values())))
    return samples


def _coupling_tensors(device, dtype) -> list[tuple]:
    """(x2, s, t) over batch-first shapes and layouts; s spans the scale functions' interesting range."""
    shapes = [(s, "contiguous") for s in SHAPES if len(s) >= 1] + [((4, 33), "contiguous"), ((64, 257), "contiguous")]
    shapes += [((33, 65), "transposed"), ((17, 9), "strided"), ((2, 3, 5, 7), "channels_last")]
    return [tuple(make_tensor(shape, dtype, device, layout=layout, scale=scale, seed=3 * i + k)
                  for k, scale in enumerate((1.0, 2.5, 1.0)))
            for i, (shape, layout) in enumerate(shapes)]


def _coupling_samples(device, dtype) -> list[tuple]:
    """(x2, s, t, *CouplingArgs): every scale function, both directions, two clamps."""
    tensors = _coupling_tensors(device, dtype)
    options = [(scale, clamp, inverse) for scale in SCALES for clamp in (2.0, 0.7) for inverse in (False, True)]
    return [(*tensors[i % len(tensors)], *coupling_args(*tensors[i % len(tensors)], *o))
            for i, o in enumerate(options + [(s, 2.0, False) for s in SCALES])]


def _coupling_backward_samples(device, dtype) -> list[tuple]:
    """(grad_y2, grad_logdet, x2, s, t, *CouplingArgs)."""
    out = []
    for i, (x2, s, t, *args) in enumerate(_coupling_samples(device, dtype)):
        gy = make_tensor(tuple(x2.shape), dtype, device, seed=500 + i)
        gl = make_tensor(tuple(x2.shape[:1]), dtype, device, seed=900 + i)
        out.append((gy, gl, x2, s, t, *args))
    return out


def flow_parameters(dim, n_blocks, hidden, n_hidden_layers, dtype, device, seed):
    """weights, biases and perms of a CouplingFlow in the op's order (dgm_fast/coupling/op.py)."""
    gen = torch.Generator().manual_seed(seed)
    weights, biases = [], []
    for _ in range(n_blocks):
        for d_in, d_out in ((dim // 2, dim - dim // 2), (dim - dim // 2, dim // 2)):
            widths = [d_in] + [hidden] * n_hidden_layers + [2 * d_out]
            for a, b in zip(widths, widths[1:]):
                weights.append((0.4 * torch.randn(b, a, generator=gen, dtype=torch.float64)).to(device, dtype))
                biases.append((0.4 * torch.randn(b, generator=gen, dtype=torch.float64)).to(device, dtype))
    return weights, biases, [torch.randperm(dim, generator=gen).to(device) for _ in range(n_blocks)]


# (batch, dim, n_blocks, hidden, n_hidden_layers, scale, clamp, activation)
FLOW_CONFIGS = [(7, 6, 2, 7, 2, "atan", 2.0, "relu"), (3, 5, 1, 3, 1, "exp", 2.0, "tanh"),
                (3, 4, 1, 3, 0, "sigmoid", 1.0, "elu"), (10, 9, 3, 5, 2, "tanh", 0.7, "leaky_relu"),
                (0, 6, 1, 4, 2, "atan", 2.0, "relu")]


def _flow_samples(device, dtype) -> list[tuple]:
    """(z, weights, biases, perms, scale, clamp, activation, inverse, store_activations); the fused
    flow is float32/64 only."""
    if dtype not in (torch.float32, torch.float64):
        return []
    samples = []
    for i, (batch, dim, n_blocks, hidden, layers, scale, clamp, act) in enumerate(FLOW_CONFIGS):
        params = flow_parameters(dim, n_blocks, hidden, layers, dtype, device, seed=i)
        for inverse in (False, True):
            z = make_tensor((batch, dim), dtype, device, seed=i)
            samples.append((z, *params, scale, clamp, act, inverse, i % 2 == 0))
    return samples


def _flow_backward_samples(device, dtype) -> list[tuple]:
    """(grad_u, grad_logdet, saved, weights, biases, perms, scale, clamp, activation, store_activations)
    of the forward direction, ``saved`` from the reference."""
    out = []
    for z, *params, scale, clamp, act, inverse, store in _flow_samples(device, dtype):
        if not inverse:
            saved = coupling_flow_reference(z, *params, scale, clamp, act, False, store)[2]
            grads = (make_tensor(tuple(z.shape), dtype, device, seed=7), make_tensor(tuple(z.shape[:1]), dtype, device, seed=8))
            out.append((*grads, saved, *params, scale, clamp, act, store))
    return out


def _grid_sample_samples(device, dtype) -> list[tuple]:
    """(input, grid, padding_mode, align_corners): every padding mode and alignment on the first case,
    one each on the others; grids reaching past [-1, 1] (and, second, NaN, inf and overflowing values),
    empty batches, channels and outputs, a one-voxel volume, non-contiguous and channels_last_3d
    inputs; a small third case for gradcheck. Float32/64 only, as the op."""
    if dtype not in (torch.float32, torch.float64):
        return []
    # (input shape, grid shape, input layout, grid layout)
    cases = [((2, 3, 4, 5, 6), (2, 3, 4, 5, 3), "contiguous", "contiguous"),
             ((1, 1, 1, 1, 1), (1, 2, 3, 4, 3), "contiguous", "contiguous"),
             ((0, 3, 2, 2, 2), (0, 2, 2, 2, 3), "contiguous", "contiguous"),
             ((3, 5, 3, 4, 7), (3, 2, 6, 5, 3), "transposed", "strided"),
             ((2, 0, 3, 3, 3), (2, 2, 2, 2, 3), "contiguous", "contiguous"),
             ((2, 3, 3, 3, 3), (2, 0, 2, 2, 3), "contiguous", "contiguous"),
             ((2, 4, 3, 5, 2), (2, 3, 1, 4, 3), "channels_last", "contiguous")]
    options = [(p, a) for a in (False, True) for p in PADDING_MODES]
    samples = []
    for i, (in_shape, grid_shape, in_layout, grid_layout) in enumerate(cases):
        x = make_tensor(in_shape, dtype, device, layout=in_layout.replace("channels_last", "contiguous"), seed=i)
        if in_layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last_3d)
        grid = make_tensor(grid_shape, dtype, device, layout=grid_layout, scale=0.8, seed=100 + i)
        samples += [(x, grid, *o) for o in (options if i == 0 else [options[i % len(options)]])]
    samples.insert(1, (samples[0][0], _special_grid(samples[0][1]), "border", False))
    # gradcheck's (index 2): small, as the Triton interpreter runs one op call per input element
    samples.insert(2, (make_tensor((2, 2, 2, 3, 2), dtype, device, seed=20),
                       make_tensor((2, 1, 2, 2, 3), dtype, device, scale=0.8, seed=120), "reflection", False))
    return samples


def _special_grid(grid: torch.Tensor) -> torch.Tensor:
    """``grid`` with NaN, infinities and values whose positions overflow planted in it."""
    grid = grid.clone()
    specials = [float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 3e38, 1.0, -1.0]
    grid.view(-1)[torch.arange(len(specials)) * 5 + 1] = torch.tensor(specials, dtype=grid.dtype)
    return grid


def _grid_sample_backward_samples(device, dtype) -> list[tuple]:
    """(grad_output, input, grid, padding_mode, align_corners)."""
    out = []
    for i, (x, grid, *args) in enumerate(_grid_sample_samples(device, dtype)):
        go = make_tensor((x.shape[0], x.shape[1], *grid.shape[1:4]), dtype, device, seed=700 + i)
        out.append((go, x, grid, *args))
    return out


def _keypoint_warp_samples(device, dtype) -> list[tuple]:
    """(feature, kp_source, kp_driving, mask, jacobian, mask_is_logits, padding_mode, align_corners,
    return_deformation): masks and logits, identity and random Jacobians, every padding mode and
    alignment, no keypoints, empty batches and channels, a NaN keypoint, non-contiguous and
    channels_last_3d inputs. Float32/64 only, as the op."""
    if dtype not in (torch.float32, torch.float64):
        return []
    # (N, C, feature volume, K, mask volume, feature layout, options)
    cases = [(2, 3, (4, 5, 6), 3, (3, 4, 5), "contiguous", (False, "zeros", False, False), False),
             (2, 3, (4, 5, 6), 3, (3, 4, 5), "contiguous", (True, "border", True, True), True),
             (1, 2, (2, 3, 2), 2, (2, 2, 2), "contiguous", (True, "reflection", False, True), True),  # gradcheck's
             (0, 3, (2, 2, 2), 2, (2, 2, 2), "contiguous", (False, "zeros", False, True), False),
             (2, 4, (5, 3, 6), 4, (4, 3, 2), "transposed", (True, "reflection", True, True), True),
             (2, 3, (3, 3, 3), 0, (2, 3, 4), "contiguous", (False, "border", False, True), False),
             (1, 0, (3, 3, 3), 2, (2, 2, 3), "contiguous", (True, "zeros", True, False), True),
             (2, 2, (3, 4, 5), 2, (3, 2, 2), "nan_keypoint", (False, "zeros", False, True), True),
             (2, 5, (3, 4, 5), 3, (2, 3, 4), "channels_last", (True, "zeros", False, True), True)]
    samples = []
    for i, (n, c, volume, k, mask_volume, layout, options, random_jacobian) in enumerate(cases):
        feature = make_tensor((n, c, *volume), dtype, device, seed=i,
                              layout="transposed" if layout == "transposed" else "contiguous")
        if layout == "channels_last":
            feature = feature.contiguous(memory_format=torch.channels_last_3d)
        kp_source, kp_driving = (make_tensor((n, k, 3), dtype, device, scale=0.6, seed=50 + 2 * i + j) for j in range(2))
        if layout == "nan_keypoint" and n:
            kp_driving[0, 1, 0] = float("nan")
        mask = make_tensor((n, k + 1, *mask_volume), dtype, device, seed=80 + i)
        if not options[0]:  # weights, not logits: nonnegative, about 1 in sum
            mask = torch.softmax(mask, dim=1)
        eye = torch.eye(3, dtype=dtype, device=device)
        jacobian = (eye + 0.3 * make_tensor((n, k, 3, 3), dtype, device, seed=90 + i) if random_jacobian
                    else eye.expand(n, k, 3, 3).contiguous())
        samples.append((feature, kp_source, kp_driving, mask, jacobian, *options))
    return samples


def _keypoint_warp_backward_samples(device, dtype) -> list[tuple]:
    """(grad_out, grad_deformation, feature, kp_source, kp_driving, mask, jacobian, mask_is_logits,
    padding_mode, align_corners)."""
    out = []
    for i, (feature, kp_s, kp_d, mask, jac, *options) in enumerate(_keypoint_warp_samples(device, dtype)):
        n, c, spatial = feature.shape[0], feature.shape[1], tuple(mask.shape[2:])
        grad_out = make_tensor((n, c, *spatial), dtype, device, seed=300 + i)
        grad_deformation = make_tensor((n, *spatial, 3), dtype, device, seed=400 + i)
        out.append((grad_out, grad_deformation, feature, kp_s, kp_d, mask, jac, *options[:3]))
    return out


def _motion_feature_samples(device, dtype) -> list[tuple]:
    """(feature, kp_source, kp_driving, jacobian, variance, align_corners): identity and random
    Jacobians, both alignments, no keypoints, empty batches and channels, a NaN keypoint,
    non-contiguous and channels_last_3d features. Float32/64 only, as the op."""
    if dtype not in (torch.float32, torch.float64):
        return []
    # (N, C, volume, K, feature layout, variance, align_corners, random jacobian)
    cases = [((2, 3, (3, 4, 5), 3), "contiguous", 0.01, False, False),
             ((2, 3, (3, 4, 5), 3), "contiguous", 0.1, True, True),
             ((1, 2, (2, 2, 2), 2), "contiguous", 0.2, False, True),  # gradcheck's
             ((0, 3, (2, 2, 2), 2), "contiguous", 0.01, False, True),
             ((2, 4, (4, 3, 5), 4), "transposed", 0.05, True, True),
             ((2, 3, (3, 3, 3), 0), "contiguous", 0.01, False, False),
             ((1, 0, (3, 3, 3), 2), "contiguous", 0.01, True, True),
             ((2, 2, (3, 4, 5), 2), "nan_keypoint", 0.01, False, True),
             ((2, 5, (2, 3, 4), 3), "channels_last", 0.3, False, True)]
    samples = []
    for i, ((n, c, volume, k), layout, variance, align, random_jacobian) in enumerate(cases):
        feature = make_tensor((n, c, *volume), dtype, device, seed=i,
                              layout="transposed" if layout == "transposed" else "contiguous")
        if layout == "channels_last":
            feature = feature.contiguous(memory_format=torch.channels_last_3d)
        kp_source, kp_driving = (make_tensor((n, k, 3), dtype, device, scale=0.6, seed=60 + 2 * i + j) for j in range(2))
        if layout == "nan_keypoint" and n:
            kp_source[1, 0, 2] = float("nan")
        eye = torch.eye(3, dtype=dtype, device=device)
        jacobian = (eye + 0.3 * make_tensor((n, k, 3, 3), dtype, device, seed=95 + i) if random_jacobian
                    else eye.expand(n, k, 3, 3).contiguous())
        samples.append((feature, kp_source, kp_driving, jacobian, variance, align))
    return samples


def _motion_feature_backward_samples(device, dtype) -> list[tuple]:
    """(grad_out, feature, kp_source, kp_driving, jacobian, variance, align_corners)."""
    out = []
    for i, (feature, kp_s, kp_d, jac, *options) in enumerate(_motion_feature_samples(device, dtype)):
        n, c, *spatial = feature.shape
        grad_out = make_tensor((n, kp_s.shape[1] + 1, 1 + c, *spatial), dtype, device, seed=500 + i)
        out.append((grad_out, feature, kp_s, kp_d, jac, *options))
    return out


def mlp_parameters(dims, dtype=torch.float64, device="cpu", *, seed=0, layout="contiguous"):
    """weights ((out, in), as nn.Linear) and biases of an MLP energy of widths ``dims``: N(0, 1 / fan_in)
    weights, so pre-activations stay O(1) at any width; ``layout="transposed"`` gives the weights as
    transposed views (the kernels must read or copy them)."""
    gen = torch.Generator().manual_seed(seed)
    weights, biases = [], []
    for a, b in zip(dims[:-1], dims[1:]):
        w = torch.randn((a, b) if layout == "transposed" else (b, a), generator=gen, dtype=torch.float64) / a**0.5
        weights.append((w.mT if layout == "transposed" else w).to(device, dtype))
        biases.append((0.5 * torch.randn(b, generator=gen, dtype=torch.float64)).to(device, dtype))
    return weights, biases


# (batch, dims, activation, negative_slope, x layout, weight layout, x scale): every activation, two
# slopes, an empty batch, a single row, no hidden layer (dims (d, 1); also with a single row, where
# dE/dx is the last weight itself), odd widths, the 2-D toy energy's depth, strided, transposed and
# expanded x, transposed weights, and softplus past its linear threshold (h > 20)
MLP_CONFIGS = [
    (5, (3, 7, 5, 1), "swish", 0.2, "contiguous", "contiguous", 1.0),
    (4, (2, 1), "leaky_relu", 0.2, "contiguous", "contiguous", 1.0),
    (2, (2, 2, 1), "swish", 0.2, "contiguous", "contiguous", 1.0),  # gradcheck's: 13 inputs, ~100 forwards
    (0, (4, 5, 1), "relu", 0.2, "contiguous", "contiguous", 1.0),
    (9, (5, 11, 6, 1), "leaky_relu", 0.01, "strided", "transposed", 1.0),  # the one with every option
    (7, (3, 13, 1), "softplus", 0.2, "contiguous", "contiguous", 30.0),
    (6, (4, 9, 9, 1), "relu", 0.2, "expanded", "contiguous", 1.0),
    (1, (3, 1), "softplus", 0.2, "contiguous", "transposed", 1.0),  # dE/dx is the weight row: copied
    (33, (2, 16, 16, 16, 1), "swish", 0.2, "transposed", "contiguous", 2.0),
]


def _mlp_input(batch, dims, layout, scale, dtype, device, seed):
    if layout == "expanded":  # every row the same storage: (batch, d) with stride (0, 1)
        return make_tensor((1, dims[0]), dtype, device, scale=scale, seed=seed).expand(batch, dims[0])
    return make_tensor((batch, dims[0]), dtype, device, layout=layout, scale=scale, seed=seed)


def _mlp_samples(device, dtype) -> list[tuple]:
    """(x, weights, biases, activation, negative_slope) of MLP_CONFIGS; the ops are float32/64 only."""
    if dtype not in (torch.float32, torch.float64):
        return []
    return [(_mlp_input(batch, dims, x_layout, scale, dtype, device, seed=i),
             *mlp_parameters(dims, dtype, device, seed=i, layout=w_layout), act, slope)
            for i, (batch, dims, act, slope, x_layout, w_layout, scale) in enumerate(MLP_CONFIGS)]


def _mlp_sample_samples(device, dtype) -> list[tuple]:
    """(x0, weights, biases, activation, negative_slope, n_steps, *StepArgs) of MLP_CONFIGS (a few
    steps each), over every option of the step: noise off, prior, clip, clamp, offsets, the largest
    seed, a seed tensor (what a compiled call passes), zero steps."""
    options = [
        dict(),
        dict(noise_scale=0.0),
        dict(prior_weight=1.0, grad_clip=0.5),
        dict(noise_scale=0.3, clamp=(-1.0, 1.5)),
        dict(noise_scale=0.3, prior_weight=1.0, grad_clip=2.0, clamp=(-0.5, 0.5), seed=2**64 - 12345,
             offset=2**33 + 1),
        dict(prior_weight=-0.5, offset=3),
        dict(grad_clip=0.0, step_size=0.5),  # every gradient clipped away: noise and prior only
        dict(seed_tensor=True, noise_scale=0.5),
        dict(n_steps=0),  # the last: opcheck checks that the result does not alias x0
    ]
    samples = []
    for i, (x, weights, biases, act, slope) in enumerate(_mlp_samples(device, dtype)):
        kw = dict(n_steps=3, step_size=0.1, noise_scale=None, prior_weight=0.0, grad_clip=None, clamp=None,
                  seed=1234, offset=0, seed_tensor=False) | options[i]
        n_steps, step_size, seed_tensor = kw.pop("n_steps"), kw.pop("step_size"), kw.pop("seed_tensor")
        step = step_args(x, x, step_size, **kw)
        if seed_tensor:  # a seed past 2**63: a negative int64
            step = step._replace(seed=0, seed_tensor=torch.tensor(signed_seed(2**63 + 987654321)))
        samples.append((x, weights, biases, act, slope, n_steps, *step))
    return samples


# (batch, nc, spatial, logits layout, scale): odd pixel counts, no spatial dims, empty batch, a
# channels_last view, logits far from zero (logsumexp's shift), nc = 3 (the CIFAR decoder)
NLL_CONFIGS = [
    ((2, 1, (5, 3), "contiguous", 1.0)),
    ((3, 3, (4, 4), "channels_last", 3.0)),
    ((1, 1, (1,), "strided", 1.0)),  # the contract tests gradcheck (twice) this one: 256 logits
    ((4, 1, (), "contiguous", 1e3)),
    ((0, 1, (2, 2), "contiguous", 1.0)),
]


def _nll_samples(device, dtype) -> list[tuple]:
    """(logits, int64 target) of NLL_CONFIGS; the op is float32/64 only."""
    if dtype not in (torch.float32, torch.float64):
        return []
    samples = []
    for i, (batch, nc, spatial, layout, scale) in enumerate(NLL_CONFIGS):
        logits = make_tensor((batch, nc * 256, *spatial), dtype, device, layout=layout, scale=scale, seed=i)
        gen = torch.Generator().manual_seed(i)
        samples.append((logits, torch.randint(0, 256, (batch, nc, *spatial), generator=gen).to(device)))
    return samples


def _nll_backward_samples(device, dtype) -> list[tuple]:
    """(grad_nll, grad_lse, logits, target, lse) for the NLL samples, from the reference."""
    from dgm_fast.vae.reference import categorical_pixel_nll_reference

    samples = []
    for i, (logits, target) in enumerate(_nll_samples(device, dtype)):
        _, lse = categorical_pixel_nll_reference(logits, target)
        grad_lse = make_tensor(lse.shape, dtype, device, seed=50 + i) if i % 2 else torch.zeros_like(lse)
        samples.append((make_tensor(target.shape[:1], dtype, device, seed=40 + i), grad_lse, logits, target, lse))
    return samples


OP_SAMPLES = {
    "sparse_motion_features": _motion_feature_samples,
    "sparse_motion_features_backward": _motion_feature_backward_samples,
    "keypoint_warp_3d": _keypoint_warp_samples,
    "keypoint_warp_3d_backward": _keypoint_warp_backward_samples,
    "grid_sample_3d": _grid_sample_samples,
    "grid_sample_3d_backward": _grid_sample_backward_samples,
    "coupling_flow": _flow_samples,
    "coupling_flow_backward": _flow_backward_samples,
    "affine_coupling": _coupling_samples,
    "affine_coupling_backward": _coupling_backward_samples,
    "langevin_step": _langevin_samples,
    "langevin_step_": _langevin_samples,
    "mlp_energy_grad": _mlp_samples,
    "mlp_energy_laplacian": _mlp_samples,
    "mlp_energy_sample": _mlp_sample_samples,
    "categorical_pixel_nll": _nll_samples,
    "categorical_pixel_nll_backward": _nll_backward_samples,
}


def significant_strides(t: torch.Tensor) -> tuple[int, ...]:
    """The strides that matter: a dimension of size 1 (or an empty tensor) may have any."""
    return () if t.numel() == 0 else tuple(s for s, n in zip(t.stride(), t.shape) if n > 1)


def clone_args(args: tuple) -> tuple:
    """Tensors cloned, also inside Tensor[] arguments."""
    return tuple(a.clone() if isinstance(a, torch.Tensor) else
                 [t.clone() for t in a] if isinstance(a, list) else a for a in args)


def gradcheck_fast_mode(device, backend: str) -> bool:
    """gradcheck's fast mode for the Triton interpreter, which pays ~0.1 s a launch: one random
    projection u^T J v of each Jacobian, numerically and analytically, instead of every column (a
    1% error in one weight's gradient still fails it)."""
    return backend == "triton" and torch.device(device).type == "cpu"


def backend_fixture(op):
    """A pytest fixture running its test once per (device, backend) on which ``op`` runs here (CPU,
    and CUDA when there is one), with that backend forced; it yields ``(device, backend)``."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    cases = [(d, b) for d in devices for b, why in op.availability(torch.device(d)).items() if why is None]

    @pytest.fixture(params=cases, ids=lambda c: f"{c[0]}-{c[1]}")
    def backend(request):
        device, name = request.param
        with dgm_fast.use_backend(name):
            yield device, name

    return backend


# Compiling Triton kernels for sm_90 without a GPU: a script run in a fresh Python without
# TRITON_INTERPRET (under which @triton.jit makes no compilable kernel); it prints SKIP where this
# Triton lacks the internals used.
PTX_PREAMBLE = """
import json, sys
import torch, triton

def skip(exc):
    print("SKIP", exc)
    sys.exit()

try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature
except ImportError as exc:
    skip(exc)

launches = []  # (kernel, args, kwargs) of the launches record() intercepted

class Recorder:
    def __init__(self, kernel):
        self.kernel = kernel
    def __getitem__(self, grid):
        return lambda *args, **kwargs: launches.append((self.kernel, args, kwargs))

def record(module, *names):
    \"\"\"The named kernels of module record their launches instead of running.\"\"\"
    for name in names:
        setattr(module, name, Recorder(getattr(module, name)))

def ptx_for_sm90(kernel, args, kwargs):
    \"\"\"A launch's PTX for sm_90; small CPU tensors stand in for the pointers (only their dtype and
    16-byte alignment count).\"\"\"
    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    args = [torch.empty(16, dtype=a.dtype) if isinstance(a, torch.Tensor) else a for a in args]
    try:
        binder = create_function_from_signature(kernel.signature, kernel.params, backend)
        bound, spec, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, spec, options)
    except (AttributeError, TypeError) as exc:  # another Triton's internals
        skip(exc)
    src = ASTSource(kernel, signature, constexprs, attrs)
    return triton.compile(src, target=target, options=options.__dict__).asm["ptx"]
"""


def ptxas_spill_bytes(ptx: str, tmp_path) -> int | None:
    """Bytes of register spill stores when ptxas (CUDA's assembler, beside nvcc) assembles ``ptx`` for
    sm_90a, or None where there is no ptxas. A newer Triton declares a PTX version this ptxas may not
    know; it is lowered to the highest this one accepts, and code that uses anything newer fails to
    assemble: an AssertionError, as any other ptxas failure."""
    ptxas = shutil.which("ptxas")
    if ptxas is None:
        return None
    version = subprocess.run([ptxas, "--version"], capture_output=True, text=True).stdout
    release = re.search(r"release (\d+)\.(\d+)", version)
    path = tmp_path / "kernel.ptx"
    if release:  # CUDA 13.0 assembles PTX ISA 9.0, 12.8 ISA 8.7, ...
        major, minor = int(release.group(1)), int(release.group(2))
        isa = f"{major - 4}.{minor}"
        ptx = re.sub(r"^\.version (\d+\.\d+)", lambda m: f".version {min(m.group(1), isa, key=_isa_key)}", ptx,
                     flags=re.M)
    path.write_text(ptx)
    result = subprocess.run([ptxas, "-arch=sm_90a", "-v", str(path), "-o", os.devnull], capture_output=True, text=True)
    found = re.findall(r"(\d+) bytes spill stores", result.stderr)
    assert result.returncode == 0 and found, f"ptxas did not assemble the kernel:\n{result.stderr[-2000:]}"
    return sum(int(n) for n in found)


def _isa_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


def run_ptx_script(body: str, tmp_path, *argv: str) -> str:
    """What ``PTX_PREAMBLE + body`` prints (run from the repository root, Triton's cache in
    ``tmp_path``); skips the calling test where Triton cannot compile for a GPU here."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", PTX_PREAMBLE + body, *argv], capture_output=True, text=True,
                            env={**env, "TRITON_CACHE_DIR": str(tmp_path)}, cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr[-5000:]
    if result.stdout.startswith("SKIP"):
        pytest.skip(f"cannot compile Triton kernels for sm_90 here: {result.stdout}")
    return result.stdout
