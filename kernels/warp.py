"""Triton backend of trilinear 5-D grid sampling, the warp of face reenactment (dissertation §4.3).

``grid_sample_3d`` is ``F.grid_sample(input, grid, mode="bilinear")`` on (N, C, D, H, W) input
and an (N, Do, Ho, Wo, 3) grid (specification: ``dgm_fast/warp/reference.py``; the C++ CPU
kernel ``csrc/cpu/warp.cpp`` computes the same formulas). Per output voxel and axis the grid
coordinate is unnormalized to a voxel position and moved inside by the padding mode (zeros: left;
border: clipped; reflection: reflected, then clipped); the output is the sum over the 8 corners
k = dx + 2 dy + 4 dz, in that order, of value * (fx * fy * fz), with (x1 - x) and (x - x0) the
per-axis weights and corners outside the volume contributing nothing. A non-finite position reads
nothing (zeros) or the edge (border: 0 for -inf, else n - 1; reflection: n - 1), and its grid
gradient is 0.

Blocking. The batch and the output voxels are one flat index (sample, voxel), so small outputs
still fill programs. A program owns ``BLOCK_V`` of them: it loads their grid coordinates once and
computes once, as [BLOCK_V, 2, 2, 2] (voxel, dz, dy, dx) tiles, the 8 corners' int64 offsets
(N * C * D * H * W may exceed 2^31), in-volume masks and weights; then it loops over the C
channels, the forward doing 8 masked gathers (``other=0``: an outside corner reads nothing) and
one coalesced store per channel. On GPUs BLOCK_V is 256 (forward) / 128 (backward) voxels on 4
warps; under the Triton interpreter, which pays per program and per operation rather than per
element, one program takes up to ``INTERPRETER_BLOCK_V`` voxels.

Backward. The input gradient is a scatter: every in-volume corner adds weight * grad_out into
grad_input (zeroed by the launcher first) with ``tl.atomic_add``, as voxels share corners. On
GPUs the order of those additions depends on scheduling, so grad_input is NOT deterministic
(it agrees with the deterministic CPU kernel to rounding). The interpreter runs programs and the
elements of one atomic in order, voxel by voxel and corner by corner: the CPU kernel's order, so
it reproduces that kernel's float32 bits. The grid gradient, d out / d position (differences of
corners times the other axes' weights, the CPU kernel's expression) times the position's
derivative (``mult``: (n - 1) / 2 or n / 2; 0 on and past a clipped edge; the reflection's sign),
is summed over channels in registers and stored once per voxel: no atomics, deterministic.

Numerics. Compute in the tensors' dtype (float32 or float64, taken from the pointers), no FMA
contraction (``enable_fp_fusion=False``) and only IEEE-rounded operations (float32 division by
``tl.div_rn``; halving as a product by 0.5, which is exact), so positions, weights and the corner
sum round as the reference's: the forward equals it to the bit. The reflection's fmod(u, span)
(span = n - 1 or n rounded to the dtype, an integer) is exact, as torch's is, without libdevice
(which the interpreter lacks): floor(u) mod span in int64 plus the fraction, and for u >= 2^62
from u's mantissa and exponent by modular exponentiation (exact for spans up to 2^31).
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

PADDING_MODES = ("zeros", "border", "reflection")  # padding codes: dgm_fast.warp.reference.PADDING_MODES' order
GPU_BLOCK_V = 256  # output voxels of a forward program (4 warps: two a thread)
GPU_BLOCK_V_BACKWARD = 128  # the backward also holds 8 values and 3 sums a voxel
GPU_WARPS = 4
INTERPRETER_BLOCK_V = 1 << 14  # the interpreter pays per program and per op, not per element


# ---------------------------------------------------------------------------
# Positions (reference.py: source_position). Each returns the position and
# mult, the derivative of the position with respect to the grid coordinate.
# ---------------------------------------------------------------------------


@triton.jit
def _div(a, b):
    """IEEE-rounded a / b: in float32 plain ``/`` lowers to the approximate div.full on NVIDIA."""
    if a.dtype == tl.float64:
        q = a / b
    else:
        q = tl.div_rn(a, b)
    return q


@triton.jit
def _is_finite(u):
    """Neither NaN nor +-inf (the interpreter has no libdevice isfinite)."""
    if u.dtype == tl.float64:
        finite = tl.abs(u) <= 1.7976931348623157e308
    else:
        finite = tl.abs(u) <= 3.4028234663852886e38
    return finite


@triton.jit
def _fmod_by_int(a, span_i):
    """fmod(a, span) exactly, for finite a >= 0 and an integer span in [1, 2^31] (int64 span_i).

    Below 2^62: floor(a) mod span in int64, plus a's fraction (the sum is fmod's value, which is
    representable, so it rounds exactly). From 2^62 on a = m 2^e (integers, e < 1024) and
    fmod = (m mod span) (2^e mod span) mod span, by square-and-multiply on e's bits.
    """
    big = a >= 4.611686018427387904e18  # 2^62
    low = tl.where(big, 0.0, a)
    whole = tl.floor(low)
    r = (whole.to(tl.int64) % span_i).to(a.dtype) + (low - whole)
    if tl.max(big.to(tl.int32), axis=0) > 0:  # a grid far outside in this block: rare
        if a.dtype == tl.float64:
            bits = a.to(tl.int64, bitcast=True)
            e = ((bits >> 52) & 0x7FF) - 1075
            m = (bits & 0xFFFFFFFFFFFFF) | 0x10000000000000
        else:
            bits32 = a.to(tl.int32, bitcast=True)
            e = (((bits32 >> 23) & 0xFF) - 150).to(tl.int64)
            m = ((bits32 & 0x7FFFFF) | 0x800000).to(tl.int64)
        e = tl.where(big, e, 0)
        power = tl.full(a.shape, 1, tl.int64) % span_i
        base = tl.full(a.shape, 2, tl.int64) % span_i
        for i in tl.static_range(10):  # e <= 971 (float64), 104 (float32)
            power = tl.where(((e >> i) & 1) != 0, power * base % span_i, power)
            base = base * base % span_i
        r = tl.where(big, ((m % span_i) * power % span_i).to(a.dtype), r)
    return r


@triton.jit
def _reflect(u, mult, size, ALIGN: tl.constexpr):
    """reference.py _reflect of a finite u about the voxel centres (align) or faces, and mult times
    its derivative (the sign of u - low, flipped on odd reflections)."""
    if ALIGN:
        low = 0.0
        span_i = tl.full([], size, tl.int64) - 1
    else:
        low = -0.5
        span_i = tl.full([], size, tl.int64)
    span = span_i.to(u.dtype)  # the reference's span is a Python number rounded to the dtype
    degenerate = span_i == 0  # one voxel with align_corners: the reflection is 0
    span_i = tl.maximum(span.to(tl.int64), 1)
    span = span_i.to(u.dtype)
    shifted = u - low
    sign = tl.where(shifted > 0.0, 1.0, tl.where(shifted < 0.0, -1.0, 0.0))  # |.|'s derivative as autograd's
    a = tl.abs(shifted)
    extra = _fmod_by_int(a, span_i)
    q = tl.floor(_div(a, span))
    half = q * 0.5
    even = tl.floor(half) == half  # remainder(floor(a / span), 2) == 0, exactly
    r = tl.where(even, extra + low, (span - extra) + low)
    return tl.where(degenerate, 0.0, r), mult * tl.where(even, sign, -sign)


@triton.jit
def _axis(c, size, PADDING: tl.constexpr, ALIGN: tl.constexpr):
    """Along an axis of ``size`` voxels, for grid coordinate c: (low corner as int64, its weight
    (x1 - x), the high corner's (x - x0), mult).

    csrc/cpu/warp.cpp's source_position: reference.py's formulas, order of operations and
    gradients, with one representational choice that changes nothing sampled: a zeros-padded
    position outside (-2, size + 1), or a non-finite one, is -2 (every corner outside; floor
    stays in int64).
    """
    n = tl.full([], size, c.dtype)
    zero = tl.zeros_like(c)
    if ALIGN:
        u = (c + 1.0) * 0.5 * (n - 1.0)
        mult = zero + (n - 1.0) * 0.5
    else:
        u = ((c + 1.0) * n - 1.0) * 0.5
        mult = zero + n * 0.5
    finite = _is_finite(u)
    if PADDING == 0:  # zeros
        p = tl.where(finite & (u > -2.0) & (u < n + 1.0), u, -2.0)
    else:
        top = n - 1.0
        safe = tl.where(finite, u, zero)
        if PADDING == 2:
            safe, mult = _reflect(safe, mult, size, ALIGN)
        # clip to [0, n - 1], gradient 0 on the edges themselves (torch's clip_coordinates_set_grad)
        mult = tl.where((safe <= 0.0) | (safe >= top), zero, mult)
        clipped = tl.where(safe <= 0.0, zero, tl.where(safe >= top, top, safe))
        if PADDING == 1:
            edge = tl.where(u < 0.0, 0.0, top)  # border: -inf takes 0, NaN and +inf n - 1
        else:
            edge = top + zero
        p = tl.where(finite, clipped, edge)
    mult = tl.where(finite, mult, zero)
    lo = tl.floor(p)
    return lo.to(tl.int64), (lo + 1.0) - p, p - lo, mult


# ---------------------------------------------------------------------------
# Corners
# ---------------------------------------------------------------------------


@triton.jit
def _corners(grid_ptr, i, valid, D, H, W, PADDING: tl.constexpr, ALIGN: tl.constexpr):
    """The geometry of flat voxels ``i`` (``valid`` ones): their [BLOCK_V, 2, 2, 2] (voxel, dz, dy,
    dx) corner offsets in a channel's volume (0 where outside), in-volume masks and weights
    fx * fy * fz (torch's product order), and per axis the two weights and mult."""
    g = grid_ptr + i * 3
    x0, fx0, fx1, mx = _axis(tl.load(g, mask=valid, other=0.0), W, PADDING, ALIGN)
    y0, fy0, fy1, my = _axis(tl.load(g + 1, mask=valid, other=0.0), H, PADDING, ALIGN)
    z0, fz0, fz1, mz = _axis(tl.load(g + 2, mask=valid, other=0.0), D, PADDING, ALIGN)
    dx = tl.arange(0, 2)[None, None, None, :]
    dy = tl.arange(0, 2)[None, None, :, None]
    dz = tl.arange(0, 2)[None, :, None, None]
    x = x0[:, None, None, None] + dx
    y = y0[:, None, None, None] + dy
    z = z0[:, None, None, None] + dz
    inside = (((x >= 0) & (x < W)) & ((y >= 0) & (y < H))) & (((z >= 0) & (z < D)) & valid[:, None, None, None])
    offsets = tl.where(inside, (z * H + y) * W + x, 0)
    weights = (tl.where(dx == 1, fx1[:, None, None, None], fx0[:, None, None, None])
               * tl.where(dy == 1, fy1[:, None, None, None], fy0[:, None, None, None])
               * tl.where(dz == 1, fz1[:, None, None, None], fz0[:, None, None, None]))
    return offsets, inside, weights, fx0, fx1, fy0, fy1, fz0, fz1, mx, my, mz


@triton.jit
def _columns(a):
    """The 8 corners k = dx + 2 dy + 4 dz of a [BLOCK_V, 2, 2, 2] (voxel, dz, dy, dx) tile, as [BLOCK_V] tensors."""
    even, odd = tl.split(a)  # dx = 0, 1: [BLOCK_V, dz, dy]
    e0, e1 = tl.split(even)  # dy = 0, 1: [BLOCK_V, dz]
    o0, o1 = tl.split(odd)
    a0, a4 = tl.split(e0)
    a1, a5 = tl.split(o0)
    a2, a6 = tl.split(e1)
    a3, a7 = tl.split(o1)
    return a0, a1, a2, a3, a4, a5, a6, a7


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------


@triton.jit
def _grid_sample_3d_kernel(
    in_ptr, grid_ptr, out_ptr, C, D, H, W, V, total,
    PADDING: tl.constexpr, ALIGN: tl.constexpr, BLOCK_V: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)  # flat (sample, output voxel)
    valid = i < total
    n = i // V
    offsets, inside, weights, _fx0, _fx1, _fy0, _fy1, _fz0, _fz1, _mx, _my, _mz = _corners(
        grid_ptr, i, valid, D, H, W, PADDING, ALIGN)
    o0, o1, o2, o3, o4, o5, o6, o7 = _columns(offsets)
    m0, m1, m2, m3, m4, m5, m6, m7 = _columns(inside)
    w0, w1, w2, w3, w4, w5, w6, w7 = _columns(weights)
    volume = tl.full([], D, tl.int64) * H * W  # int64: one channel may pass 2^31 elements
    src = in_ptr + n * C * volume
    dst = out_ptr + n * (C - 1) * V + i  # (n * C + c) * V + v, with i = n * V + v
    for _c in range(0, C):
        # the reference's sum in corner order (an outside corner reads 0, times a finite weight)
        acc = tl.load(src + o0, mask=m0, other=0.0) * w0
        acc = acc + tl.load(src + o1, mask=m1, other=0.0) * w1
        acc = acc + tl.load(src + o2, mask=m2, other=0.0) * w2
        acc = acc + tl.load(src + o3, mask=m3, other=0.0) * w3
        acc = acc + tl.load(src + o4, mask=m4, other=0.0) * w4
        acc = acc + tl.load(src + o5, mask=m5, other=0.0) * w5
        acc = acc + tl.load(src + o6, mask=m6, other=0.0) * w6
        acc = acc + tl.load(src + o7, mask=m7, other=0.0) * w7
        tl.store(dst, acc, mask=valid)
        src += volume
        dst += V


@triton.jit
def _grid_sample_3d_backward_kernel(
    go_ptr, in_ptr, grid_ptr, gin_ptr, ggrid_ptr, C, D, H, W, V, total,
    PADDING: tl.constexpr, ALIGN: tl.constexpr, BLOCK_V: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
    valid = i < total
    n = i // V
    offsets, inside, weights, fx0, fx1, fy0, fy1, fz0, fz1, mx, my, mz = _corners(
        grid_ptr, i, valid, D, H, W, PADDING, ALIGN)
    o0, o1, o2, o3, o4, o5, o6, o7 = _columns(offsets)
    m0, m1, m2, m3, m4, m5, m6, m7 = _columns(inside)
    volume = tl.full([], D, tl.int64) * H * W
    base = n * C * volume
    src = in_ptr + base
    gin = gin_ptr + base[:, None, None, None] + offsets
    go_p = go_ptr + n * (C - 1) * V + i
    acc_x = tl.zeros_like(fx0)
    acc_y = tl.zeros_like(fx0)
    acc_z = tl.zeros_like(fx0)
    for _c in range(0, C):
        go = tl.load(go_p, mask=valid, other=0.0)
        v0 = tl.load(src + o0, mask=m0, other=0.0)
        v1 = tl.load(src + o1, mask=m1, other=0.0)
        v2 = tl.load(src + o2, mask=m2, other=0.0)
        v3 = tl.load(src + o3, mask=m3, other=0.0)
        v4 = tl.load(src + o4, mask=m4, other=0.0)
        v5 = tl.load(src + o5, mask=m5, other=0.0)
        v6 = tl.load(src + o6, mask=m6, other=0.0)
        v7 = tl.load(src + o7, mask=m7, other=0.0)
        # grad_input[corner] += w * grad_out for in-volume corners: atomics (voxels share corners),
        # in one [BLOCK_V, 2, 2, 2] call, voxel by voxel and corner by corner
        tl.atomic_add(gin, weights * go[:, None, None, None], mask=inside, sem="relaxed")
        # d out / d position along x, y, z: corner differences times the other axes' weights
        # (csrc/cpu/warp.cpp's expression and order)
        acc_x += go * ((v1 - v0) * fy0 * fz0 + (v3 - v2) * fy1 * fz0 + (v5 - v4) * fy0 * fz1
                       + (v7 - v6) * fy1 * fz1)
        acc_y += go * ((v2 - v0) * fx0 * fz0 + (v3 - v1) * fx1 * fz0 + (v6 - v4) * fx0 * fz1
                       + (v7 - v5) * fx1 * fz1)
        acc_z += go * ((v4 - v0) * fx0 * fy0 + (v5 - v1) * fx1 * fy0 + (v6 - v2) * fx0 * fy1
                       + (v7 - v3) * fx1 * fy1)
        src += volume
        gin += volume
        go_p += V
    # one store per voxel and axis, no atomics: the grid gradient is deterministic
    gg = ggrid_ptr + i * 3
    tl.store(gg, acc_x * mx, mask=valid)
    tl.store(gg + 1, acc_y * my, mask=valid)
    tl.store(gg + 2, acc_z * mz, mask=valid)


# ---------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------


def _launch(kernel, input: torch.Tensor, grid: torch.Tensor, tensors: tuple, padding_code: int,
            align_corners: bool, gpu_block_v: int) -> None:
    padding_code = int(padding_code)
    if not 0 <= padding_code < len(PADDING_MODES):
        raise ValueError(f"padding code must be in [0, {len(PADDING_MODES)}), got {padding_code}")
    n, c, d, h, w = input.shape
    voxels = grid.shape[1] * grid.shape[2] * grid.shape[3]
    total = n * voxels
    if input.device.type == "cpu" or os.environ.get("TRITON_INTERPRET") == "1":  # as few programs as possible
        block_v, warps = min(INTERPRETER_BLOCK_V, triton.next_power_of_2(total)), 1
    else:
        block_v, warps = gpu_block_v, GPU_WARPS
    # launch on the tensors' GPU, not the current one
    with torch.cuda.device(input.device) if input.is_cuda else contextlib.nullcontext():
        kernel[(triton.cdiv(total, block_v),)](
            *tensors, c, d, h, w, voxels, total,
            PADDING=padding_code, ALIGN=bool(align_corners), BLOCK_V=block_v, num_warps=warps,
            # no FMA contraction: positions, weights and the corner sum round as the reference's
            enable_fp_fusion=False,
        )


def grid_sample_3d_triton(input: torch.Tensor, grid: torch.Tensor, out: torch.Tensor, padding_code: int,
                          align_corners: bool) -> None:
    """Writes ``out`` (N, C, Do, Ho, Wo): trilinear samples of ``input`` (N, C, D, H, W) at ``grid``
    (N, Do, Ho, Wo, 3). Contiguous tensors of one dtype (float32/64) on one device; ``padding_code``
    the index in PADDING_MODES."""
    if out.numel() == 0:
        return
    _launch(_grid_sample_3d_kernel, input, grid, (input, grid, out), padding_code, align_corners, GPU_BLOCK_V)


def grid_sample_3d_backward_triton(grad_out: torch.Tensor, input: torch.Tensor, grid: torch.Tensor,
                                   grad_input: torch.Tensor, grad_grid: torch.Tensor, padding_code: int,
                                   align_corners: bool) -> None:
    """Writes ``grad_input`` (like input; zeroed, then scattered into with atomics: not deterministic on
    GPUs) and ``grad_grid`` (like grid) for ``grad_out`` (like the forward's output)."""
    grad_input.zero_()
    if grad_out.numel() == 0:  # nothing sampled (N, C or the output empty): zero gradients
        grad_grid.zero_()
        return
    _launch(_grid_sample_3d_backward_kernel, input, grid, (grad_out, input, grid, grad_input, grad_grid),
            padding_code, align_corners, GPU_BLOCK_V_BACKWARD)
