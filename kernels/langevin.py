"""Triton backend of the fused Langevin step, dissertation eq. (2.15).

    out = clamp(x * (1 - eta/2 * prior_weight) - eta/2 * clip(grad) + noise_scale * xi, lo, hi)

with ``noise_scale = 0`` the noise-free gradient flow (2.20). One read of x and
grad and one write of out; the noise xi is generated in registers.

A program owns ``ROWS`` consecutive Philox counters, i.e. the ``4 * ROWS``
consecutive stream indices they feed (one Philox call per four elements).
In memory that range starts ``phase = offset % 4`` elements before the
program's first group. Programs whose tile lies wholly inside the tensor
(all but the last, when phase is 0) load and store without a mask; with phase
0 (which Triton specialises as a multiple of 16) those tiles stay 16-byte
aligned and vectorise whatever the element count. The tiles at either end are
masked. Other phases still coalesce but load element by element.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from ..philox import split_seed
from .philox import philox_normal4

GPU_ROWS = 256  # 1024 elements per program
GPU_WARPS = 4
INTERPRETER_MAX_ROWS = 1 << 14  # the interpreter pays per program, not per element


@triton.jit
def _clip(v, lo, hi):
    # where, not min/max: NaN must propagate
    return tl.where(v < lo, lo, tl.where(v > hi, hi, v))


@triton.jit
def _step_tile(x_ptr, grad_ptr, out_ptr, idx, mask, xi,
               decay, half_step, noise_scale, grad_clip, clamp_lo, clamp_hi,
               ACC: tl.constexpr, NOISE: tl.constexpr):
    """Eq. (2.15) on elements ``idx`` (all of them when ``mask`` is None)."""
    x = tl.load(x_ptr + idx, mask=mask).to(ACC)
    g = tl.load(grad_ptr + idx, mask=mask).to(ACC)
    y = x * decay - half_step * _clip(g, -grad_clip, grad_clip)
    if NOISE:
        y = y + noise_scale * xi
    y = _clip(y, clamp_lo, clamp_hi)
    tl.store(out_ptr + idx, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["c_base", "k0", "k1"])
def _langevin_kernel(
    x_ptr, grad_ptr, out_ptr, n, phase,
    c_base: tl.int64, k0: tl.uint32, k1: tl.uint32,
    decay: tl.float64, half_step: tl.float64, noise_scale: tl.float64,
    grad_clip: tl.float64, clamp_lo: tl.float64, clamp_hi: tl.float64,
    ACC: tl.constexpr, NOISE: tl.constexpr, ROWS: tl.constexpr,
):
    # float args arrive as fp64 (plain Python floats in the interpreter): round
    # them once to the compute precision, as torch does with Python scalars
    decay = tl.full([], decay, ACC)
    half_step = tl.full([], half_step, ACC)
    noise_scale = tl.full([], noise_scale, ACC)
    grad_clip = tl.full([], grad_clip, ACC)
    clamp_lo = tl.full([], clamp_lo, ACC)
    clamp_hi = tl.full([], clamp_hi, ACC)

    row0 = tl.program_id(0).to(tl.int64) * ROWS
    start = 4 * row0 - phase  # element index of stream index 4 * (c_base + row0)
    local = tl.arange(0, 4 * ROWS)
    xi = None
    if NOISE:
        c = c_base.to(tl.int64) + row0 + tl.arange(0, ROWS)
        z0, z1, z2, z3 = philox_normal4(c, k0.to(tl.uint32), k1.to(tl.uint32), ACC)
        # interleave to z0[0], z1[0], z2[0], z3[0], z0[1], ...
        xi = tl.reshape(tl.join(tl.join(z0, z2), tl.join(z1, z3)), [4 * ROWS])
    args = (decay, half_step, noise_scale, grad_clip, clamp_lo, clamp_hi)
    if (start >= 0) & (start + 4 * ROWS <= n):  # whole tile inside: no mask, vector loads
        _step_tile(x_ptr + start, grad_ptr + start, out_ptr + start, local, None, xi, *args, ACC, NOISE)
    else:
        mask = (local >= -start) & (local < n - start)
        _step_tile(x_ptr + start, grad_ptr + start, out_ptr + start, local, mask, xi, *args, ACC, NOISE)


def langevin_step_triton(
    x: torch.Tensor, grad: torch.Tensor, out: torch.Tensor,
    step_size: float, noise_scale: float, prior_weight: float,
    grad_clip: float, clamp_lo: float, clamp_hi: float, seed: int, offset: int,
) -> None:
    """Writes the step into ``out`` (which may be ``x``); contiguous tensors of one shape and dtype.

    The arguments of ``_C.langevin_step_cpu``: absent bounds are infinite, ``seed``
    is the int64 two's complement of a 64-bit seed (``split_seed`` takes it mod 2**64).
    """
    n = x.numel()
    if n == 0:
        return
    phase = offset % 4
    groups = (phase + n + 3) // 4
    if x.device.type == "cpu":  # interpreter
        rows, warps = min(INTERPRETER_MAX_ROWS, triton.next_power_of_2(groups)), 1
    else:
        rows, warps = GPU_ROWS, GPU_WARPS
    k0, k1 = split_seed(seed)
    half_step = 0.5 * step_size
    # launch on the tensors' GPU, not the current one
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _langevin_kernel[(triton.cdiv(groups, rows),)](
            x, grad, out, n, phase, offset // 4, k0, k1,
            1.0 - half_step * prior_weight, half_step, noise_scale,
            grad_clip, clamp_lo, clamp_hi,
            ACC=tl.float64 if x.dtype == torch.float64 else tl.float32,
            NOISE=noise_scale != 0, ROWS=rows, num_warps=warps,
            # no FMA contraction: rounds like the reference, so the flow (2.20) matches it bit for bit
            enable_fp_fusion=False,
        )
