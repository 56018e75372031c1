"""Triton backend of the 3-D warping ops of face reenactment (dissertation §4.3.3).

Three ops share one trilinear sampler (specification: ``dgm_fast/warp/reference.py``; the C++ CPU
kernels ``csrc/cpu/warp.cpp`` + ``warp_sampler.h`` compute the same formulas in the same order):

* ``grid_sample_3d``: ``F.grid_sample(input, grid, mode="bilinear")`` on (N, C, D, H, W) input and
  an (N, Do, Ho, Wo, 3) grid;
* ``keypoint_warp_3d``: the feature sampled at the deformation phi(p) = sum_k m_k(p) T_k(p) over the
  identity grid p of the mask's volume, T_0(p) = p, T_k(p) = J_k (p - kp_driving_k) + kp_source_k,
  m the mask or its softmax over the K + 1 motions: phi is computed per block and never stored;
* ``sparse_motion_features``: per motion k the heatmap channel and the feature sampled at T_k(p)
  (zeros padding), the dense motion network's input (N, K + 1, 1 + C, D, H, W).

Sampler. Per output voxel and axis the coordinate is unnormalized to a voxel position and moved
inside by the padding mode (zeros: left; border: clipped; reflection: reflected, then clipped); the
output is the sum over the 8 corners k = dx + 2 dy + 4 dz, in that order, of value * (fx * fy * fz),
with (x1 - x) and (x - x0) the per-axis weights and corners outside the volume contributing nothing.
A non-finite position reads nothing (zeros) or the edge (border: 0 for -inf, else n - 1;
reflection: n - 1), and its gradient is 0. A program computes its voxels' corners once, as
[BLOCK_V, 2, 2, 2] (voxel, dz, dy, dx) tiles of int64 offsets (N * C * D * H * W may exceed 2^31),
in-volume masks and weights, then loops over the channels: 8 masked gathers (``other=0``) and one
coalesced store per channel.

Blocking. ``grid_sample_3d`` indexes (sample, voxel) as one flat index, so small outputs still fill
programs. The keypoint ops run a 2-D grid (voxel block, sample): a program's keypoints, Jacobians
and mask rows are then one sample's (scalar loads), and the backward's per-keypoint sums are one
sample's. ``keypoint_warp_3d`` recomputes per block the identity grid, the mask weights (the softmax
as the CPU kernel: max, then the sum of exp(l - max) in motion order, then each weight
exp(l - max) / sum, recomputed where needed rather than held: K is a runtime size), and phi.
``sparse_motion_features`` loops over the K + 1 motions inside the program, so the neighbourhood
of the block's voxels stays in cache across motions. On GPUs BLOCK_V is 256 (forward) / 128
(backward) voxels on 4 warps; under the Triton interpreter, which pays per program and per
operation rather than per element, a program takes up to ``INTERPRETER_BLOCK_V`` voxels.

Backward. The input (feature) gradient is a scatter: every in-volume corner adds weight * grad_out
into it (zeroed by the launcher first) with ``tl.atomic_add``, as voxels share corners. On GPUs
the order of those additions depends on scheduling, so it is NOT deterministic (it agrees with the
deterministic CPU kernels to rounding); the interpreter runs programs and the elements of one
atomic in order, voxel by voxel and corner by corner (for ``grid_sample_3d`` the CPU kernel's order:
it reproduces that kernel's float32 bits). The position gradient, d out / d position
(differences of corners times the other axes' weights, the CPU kernel's expression) times the
position's derivative (``mult``: (n - 1) / 2 or n / 2; 0 on and past a clipped edge; the
reflection's sign), is summed over channels in registers: no atomics. ``keypoint_warp_3d`` then
takes, in the same program, the mask's (or logits') gradient per voxel, d loss / d m_k =
grad_phi . T_k (with the softmax's backward m_k (g_k - sum_j m_j g_j)), and the per-keypoint sums
A_k = sum_v m_k grad_phi and B_k = sum_v m_k grad_phi p^T; ``sparse_motion_features`` the sums
of each motion's position gradient and of the heatmap's (H_d = sum_v dL/dh e_d (p - kd), H_s
likewise). Those sums are reduced over the block (``tl.sum``) and written per program to a buffer,
which torch reduces across blocks in float64 (as the CPU kernel: per block in the dtype, across
blocks in double): fixed order, no float atomics. The keypoints' and Jacobians' gradients follow
from them in plain torch (``_keypoint_gradients``).

Deterministic mode. Under ``torch.use_deterministic_algorithms(True)`` the feature gradient is
gathered, not scattered: the backward kernel writes per output entry (view, voxel) its per-axis
weights and the key of the input cell of its low corner (sample, z0 + 1, y0 + 1, x0 + 1; a last
key for entries with no corner inside); a stable sort of the keys (``torch.sort``) lists each
cell's entries in entry order and ``searchsorted`` gives each cell's range; then one program per
block of input voxels and channels adds, for its 8 neighbouring cells in corner order, every
entry's weight * grad_out in sorted order and stores once. O(entries) memory beyond the outputs
(an int64 key, 6 weights and the sort's two int64 arrays per entry, one int64 per cell). Time
is bounded by the fullest cell in a block: a warp that sends many voxels to one cell (a collapse,
or border padding far outside) serialises on it.

Numerics. Compute in the tensors' dtype (float32 or float64, taken from the pointers), no FMA
contraction (``enable_fp_fusion=False``) and only IEEE-rounded operations (float32 division by
``tl.div_rn``; halving as a product by 0.5, which is exact), so positions, weights and the corner
sum round as the reference's: ``grid_sample_3d``'s forward equals it to the bit. ``tl.exp`` (no
libdevice, which the interpreter lacks) for the softmax and the heatmaps. The reflection's
fmod(u, span) (span = n - 1 or n rounded to the dtype, an integer) is exact, as torch's is: floor(u)
mod span in int64 plus the fraction, and for u >= 2^62 from u's mantissa and exponent by modular
exponentiation (exact for spans up to 2^31).
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

from .rounding import div_rn

PADDING_MODES = ("zeros", "border", "reflection")  # padding codes: dgm_fast.warp.reference.PADDING_MODES' order
GPU_BLOCK_V = 256  # output voxels of a forward program (4 warps: two a thread)
GPU_BLOCK_V_BACKWARD = 128  # the backward also holds 8 values and 3 sums a voxel
GPU_BLOCK_GATHER = 64  # input voxels of a deterministic-gradient program, times GPU_BLOCK_CHANNELS channels
GPU_BLOCK_CHANNELS = 16
GPU_WARPS = 4
INTERPRETER_BLOCK_V = 1 << 14  # the interpreter pays per program and per op, not per element
KEYPOINT_SUMS = tl.constexpr(12)  # per keypoint and block: A_k (3) and B_k (3 x 3)
MOTION_SUMS = tl.constexpr(18)  # and the heatmap's H_d, H_s (3 each)


# ---------------------------------------------------------------------------
# Positions (reference.py: source_position). Each returns the position and
# mult, the derivative of the position with respect to the grid coordinate.
# ---------------------------------------------------------------------------


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
    q = tl.floor(div_rn(a, span))
    half = q * 0.5
    even = tl.floor(half) == half  # remainder(floor(a / span), 2) == 0, exactly
    r = tl.where(even, extra + low, (span - extra) + low)
    return tl.where(degenerate, 0.0, r), mult * tl.where(even, sign, -sign)


@triton.jit
def _position(c, size, PADDING: tl.constexpr, ALIGN: tl.constexpr):
    """Along an axis of ``size`` voxels, for grid coordinate c: (the voxel position, mult).

    csrc/cpu/warp.cpp's source_position: reference.py's formulas, order of operations and
    gradients, with one representational choice that changes nothing sampled: a zeros-padded
    position outside (-2, size + 1), or a non-finite one, is -2 (every corner outside; floor
    stays in int64).
    """
    n = tl.full([], size, c.dtype)
    zero = tl.full(c.shape, 0, c.dtype)  # (tl.zeros is a jit function: a nested call, slow interpreted)
    if ALIGN:
        u = (c + 1.0) * 0.5 * (n - 1.0)
        mult = zero + (n - 1.0) * 0.5
    else:
        u = ((c + 1.0) * n - 1.0) * 0.5
        mult = zero + n * 0.5
    # neither NaN nor +-inf (the interpreter has no libdevice isfinite)
    if u.dtype == tl.float64:
        finite = tl.abs(u) <= 1.7976931348623157e308
    else:
        finite = tl.abs(u) <= 3.4028234663852886e38
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
    return p, tl.where(finite, mult, zero)


@triton.jit
def _split(p):
    """A position's low corner (int64) and the two weights, torch's (x1 - x) and (x - x0)."""
    lo = tl.floor(p)
    return lo.to(tl.int64), (lo + 1.0) - p, p - lo


# ---------------------------------------------------------------------------
# Corners and the sampler
# ---------------------------------------------------------------------------


@triton.jit
def _corners(cx, cy, cz, valid, D, H, W, PADDING: tl.constexpr, ALIGN: tl.constexpr):
    """The geometry of sampling at grid coordinates (cx, cy, cz) [BLOCK_V] (``valid`` ones): the
    [BLOCK_V, 2, 2, 2] (voxel, dz, dy, dx) corner offsets in a channel's volume (0 where outside),
    in-volume masks and weights fx * fy * fz (torch's product order); per axis the two weights,
    mult and the low corner."""
    px, mx = _position(cx, W, PADDING, ALIGN)
    py, my = _position(cy, H, PADDING, ALIGN)
    pz, mz = _position(cz, D, PADDING, ALIGN)
    x0, fx0, fx1 = _split(px)
    y0, fy0, fy1 = _split(py)
    z0, fz0, fz1 = _split(pz)
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
    return offsets, inside, weights, fx0, fx1, fy0, fy1, fz0, fz1, mx, my, mz, x0, y0, z0


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


@triton.jit
def _sample(src, dst, C, volume, V, offsets, inside, weights, valid):
    """dst[c] = sum over corners in order of src[c][corner] * weight, for the C channels of src
    (``volume`` apart) and dst (V apart)."""
    o0, o1, o2, o3, o4, o5, o6, o7 = _columns(offsets)
    m0, m1, m2, m3, m4, m5, m6, m7 = _columns(inside)
    w0, w1, w2, w3, w4, w5, w6, w7 = _columns(weights)
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
def _sample_backward(go, src, gin, C, volume, V, offsets, inside, weights, fx0, fx1, fy0, fy1, fz0, fz1, valid,
                     SCATTER: tl.constexpr):
    """_sample's backward for grad_out ``go`` (like dst): with SCATTER, grad_in[corner] += weight *
    go for every in-volume corner (``gin``: grad_in's pointer, broadcastable against the offsets);
    returns d out / d position summed over channels, per axis (mult not applied)."""
    o0, o1, o2, o3, o4, o5, o6, o7 = _columns(offsets)
    m0, m1, m2, m3, m4, m5, m6, m7 = _columns(inside)
    tile = gin + offsets
    acc_x = tl.full(fx0.shape, 0, fx0.dtype)
    acc_y = tl.full(fx0.shape, 0, fx0.dtype)
    acc_z = tl.full(fx0.shape, 0, fx0.dtype)
    for _c in range(0, C):
        g = tl.load(go, mask=valid, other=0.0)
        v0 = tl.load(src + o0, mask=m0, other=0.0)
        v1 = tl.load(src + o1, mask=m1, other=0.0)
        v2 = tl.load(src + o2, mask=m2, other=0.0)
        v3 = tl.load(src + o3, mask=m3, other=0.0)
        v4 = tl.load(src + o4, mask=m4, other=0.0)
        v5 = tl.load(src + o5, mask=m5, other=0.0)
        v6 = tl.load(src + o6, mask=m6, other=0.0)
        v7 = tl.load(src + o7, mask=m7, other=0.0)
        if SCATTER:
            # atomics (voxels share corners), in one [BLOCK_V, 2, 2, 2] call, voxel by voxel and corner by corner
            tl.atomic_add(tile, weights * g[:, None, None, None], mask=inside, sem="relaxed")
        # d out / d position along x, y, z: corner differences times the other axes' weights
        # (csrc/cpu/warp_sampler.h's expression and order)
        acc_x += g * ((v1 - v0) * fy0 * fz0 + (v3 - v2) * fy1 * fz0 + (v5 - v4) * fy0 * fz1
                      + (v7 - v6) * fy1 * fz1)
        acc_y += g * ((v2 - v0) * fx0 * fz0 + (v3 - v1) * fx1 * fz0 + (v6 - v4) * fx0 * fz1
                      + (v7 - v5) * fx1 * fz1)
        acc_z += g * ((v4 - v0) * fx0 * fy0 + (v5 - v1) * fx1 * fy0 + (v6 - v2) * fx0 * fy1
                      + (v7 - v3) * fx1 * fy1)
        src += volume
        tile += volume
        go += V
    return acc_x, acc_y, acc_z


@triton.jit
def _store_entry(key_ptr, weight_ptr, e, n, x0, y0, z0, fx0, fx1, fy0, fy1, fz0, fz1, valid, N, D, H, W):
    """Deterministic mode: entry e's per-axis weights (fx0, fx1, fy0, fy1, fz0, fz1) and the key of the
    input cell of its low corner, n * cells + ((z0 + 1) (H + 1) + y0 + 1) (W + 1) + x0 + 1, or
    N * cells when no corner is inside."""
    w1 = tl.full([], W, tl.int64) + 1
    h1 = tl.full([], H, tl.int64) + 1
    cells = (tl.full([], D, tl.int64) + 1) * h1 * w1
    near = ((x0 >= -1) & (x0 < W)) & ((y0 >= -1) & (y0 < H)) & ((z0 >= -1) & (z0 < D))
    key = tl.where(near, n * cells + ((z0 + 1) * h1 + (y0 + 1)) * w1 + (x0 + 1), N * cells)
    tl.store(key_ptr + e, key, mask=valid)
    w = weight_ptr + e * 6
    tl.store(w, fx0, mask=valid)
    tl.store(w + 1, fx1, mask=valid)
    tl.store(w + 2, fy0, mask=valid)
    tl.store(w + 3, fy1, mask=valid)
    tl.store(w + 4, fz0, mask=valid)
    tl.store(w + 5, fz1, mask=valid)


@triton.jit
def _gather_kernel(go_ptr, weight_ptr, order_ptr, starts_ptr, gin_ptr, C, D, H, W, V, view_stride, total,
                   BLOCK_X: tl.constexpr, BLOCK_C: tl.constexpr):
    """Deterministic mode: grad_in at a block of input voxels (flat (sample, voxel)) and channels,
    from the entries of the 8 cells that have the voxel as a corner (corner order; a cell's entries
    in entry order). Entry e is voxel e % V of view e // V, whose channel c has its gradient at
    go + view * view_stride + c * V."""
    i = tl.program_id(0).to(tl.int64) * BLOCK_X + tl.arange(0, BLOCK_X)
    c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    valid = i < total
    both = valid[:, None] & (c < C)[None, :]
    w = tl.full([], W, tl.int64)
    h = tl.full([], H, tl.int64)
    volume = tl.full([], D, tl.int64) * h * w
    n = i // volume
    r = i % volume
    x = r % w
    y = r // w % h
    z = r // (w * h)
    cells = (tl.full([], D, tl.int64) + 1) * (h + 1) * (w + 1)
    go_c = go_ptr + c[None, :] * V
    acc = tl.full([BLOCK_X, BLOCK_C], 0, gin_ptr.dtype.element_ty)
    for corner in tl.static_range(8):
        dx = corner & 1
        dy = (corner >> 1) & 1
        dz = corner >> 2
        cell = n * cells + ((z - dz + 1) * (h + 1) + (y - dy + 1)) * (w + 1) + (x - dx + 1)
        start = tl.load(starts_ptr + cell, mask=valid, other=0)
        count = tl.load(starts_ptr + cell + 1, mask=valid, other=0) - start
        for t in range(0, tl.max(count, axis=0)):
            has = t < count
            e = tl.load(order_ptr + start + t, mask=has, other=0)
            f = weight_ptr + e * 6
            # the scatter's weight of this corner, fx * fy * fz
            weight = (tl.load(f + dx, mask=has, other=0.0) * tl.load(f + 2 + dy, mask=has, other=0.0)
                      * tl.load(f + 4 + dz, mask=has, other=0.0))
            g = tl.load(go_c + ((e // V) * view_stride + e % V)[:, None], mask=has[:, None] & both, other=0.0)
            acc += weight[:, None] * g  # the scatter's term, weight * grad_out
    tl.store(gin_ptr + ((n * C)[:, None] + c[None, :]) * volume + r[:, None], acc, mask=both)


# ---------------------------------------------------------------------------
# The keypoint motions of §4.3.3
# ---------------------------------------------------------------------------


@triton.jit
def _identity(v, D, H, W, dtype: tl.constexpr):
    """The identity grid p at flat voxels v of a (D, H, W) volume: 2 * (i / (n - 1)) - 1 per axis
    (reference.py identity_grid, FOMM's make_coordinate_grid), in ``dtype``."""
    w = tl.full([], W, tl.int64)
    h = tl.full([], H, tl.int64)
    px = 2.0 * div_rn((v % w).to(dtype), tl.full([], W, dtype) - 1.0) - 1.0
    py = 2.0 * div_rn((v // w % h).to(dtype), tl.full([], H, dtype) - 1.0) - 1.0
    pz = 2.0 * div_rn((v // (w * h)).to(dtype), tl.full([], D, dtype) - 1.0) - 1.0
    return px, py, pz


@triton.jit
def _motion(kp_s, kp_d, jac, nk, px, py, pz):
    """T_k(p) = J_k (p - kp_driving_k) + kp_source_k for keypoint row nk = n * K + k, in the CPU
    kernel's order: ((j0 dx + j1 dy) + j2 dz) + shift."""
    dx = px - tl.load(kp_d + nk * 3)
    dy = py - tl.load(kp_d + nk * 3 + 1)
    dz = pz - tl.load(kp_d + nk * 3 + 2)
    j = jac + nk * 9
    tx = tl.load(j) * dx + tl.load(j + 1) * dy + tl.load(j + 2) * dz + tl.load(kp_s + nk * 3)
    ty = tl.load(j + 3) * dx + tl.load(j + 4) * dy + tl.load(j + 5) * dz + tl.load(kp_s + nk * 3 + 1)
    tz = tl.load(j + 6) * dx + tl.load(j + 7) * dy + tl.load(j + 8) * dz + tl.load(kp_s + nk * 3 + 2)
    return tx, ty, tz


@triton.jit
def _weight(row, valid, top, total, LOGITS: tl.constexpr):
    """A motion's mask weight at ``row``: the mask itself, or exp(l - max) / sum of its logits."""
    m = tl.load(row, mask=valid, other=0.0)
    if LOGITS:
        m = div_rn(tl.exp(m - top), total)
    return m


@triton.jit
def _deformation(kp_s, kp_d, jac, row, nk, K, V, px, py, pz, valid, LOGITS: tl.constexpr):
    """phi(p) = m_0 p + sum_k m_k T_k(p) in motion order, ``row`` pointing at motion 0's mask entry
    of each voxel (motions V apart), nk = n * K; and the logits' (max, sum of exp(l - max)), with
    which _weight recomputes any m_k."""
    top = tl.full(px.shape, 0, px.dtype)
    total = top
    if LOGITS:  # the CPU kernel's softmax: std::max over the motions in order, then the sum in order
        top = tl.load(row, mask=valid, other=0.0)
        r = row
        for _k in range(0, K):
            r += V
            logit = tl.load(r, mask=valid, other=0.0)
            top = tl.where(top < logit, logit, top)
        r = row
        for _k in range(0, K + 1):
            total += tl.exp(tl.load(r, mask=valid, other=0.0) - top)
            r += V
    m = _weight(row, valid, top, total, LOGITS)
    phix = m * px
    phiy = m * py
    phiz = m * pz
    r = row
    for k in range(0, K):
        r += V
        m = _weight(r, valid, top, total, LOGITS)
        tx, ty, tz = _motion(kp_s, kp_d, jac, nk + k, px, py, pz)
        phix += m * tx
        phiy += m * ty
        phiz += m * tz
    return phix, phiy, phiz, top, total


@triton.jit
def _store_motion_sums(s, gx, gy, gz, px, py, pz):
    """A = sum_v g and B = sum_v g p^T over a block (12 values at s, B row-major) for a motion's
    position gradient g: the sums the gradients of T_k(p) = J_k (p - kp_driving_k) + kp_source_k follow from."""
    tl.store(s, tl.sum(gx, axis=0))
    tl.store(s + 1, tl.sum(gy, axis=0))
    tl.store(s + 2, tl.sum(gz, axis=0))
    tl.store(s + 3, tl.sum(gx * px, axis=0))
    tl.store(s + 4, tl.sum(gx * py, axis=0))
    tl.store(s + 5, tl.sum(gx * pz, axis=0))
    tl.store(s + 6, tl.sum(gy * px, axis=0))
    tl.store(s + 7, tl.sum(gy * py, axis=0))
    tl.store(s + 8, tl.sum(gy * pz, axis=0))
    tl.store(s + 9, tl.sum(gz * px, axis=0))
    tl.store(s + 10, tl.sum(gz * py, axis=0))
    tl.store(s + 11, tl.sum(gz * pz, axis=0))


@triton.jit
def _gaussian(px, py, pz, kp, variance):
    """exp(-0.5 |p - kp|^2 / variance), the heatmap's Gaussian (reference.py keypoint_heatmap_3d_reference)."""
    dx = px - tl.load(kp)
    dy = py - tl.load(kp + 1)
    dz = pz - tl.load(kp + 2)
    return tl.exp(div_rn(-0.5 * (dx * dx + dy * dy + dz * dz), variance))


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
    g = grid_ptr + i * 3
    offsets, inside, weights, _fx0, _fx1, _fy0, _fy1, _fz0, _fz1, _mx, _my, _mz, _x0, _y0, _z0 = _corners(
        tl.load(g, mask=valid, other=0.0), tl.load(g + 1, mask=valid, other=0.0),
        tl.load(g + 2, mask=valid, other=0.0), valid, D, H, W, PADDING, ALIGN)
    volume = tl.full([], D, tl.int64) * H * W  # int64: one channel may pass 2^31 elements
    # (n * C + c) * V + v, with i = n * V + v
    _sample(in_ptr + n * C * volume, out_ptr + n * (C - 1) * V + i, C, volume, V, offsets, inside, weights, valid)


@triton.jit
def _grid_sample_3d_backward_kernel(
    go_ptr, in_ptr, grid_ptr, gin_ptr, ggrid_ptr, key_ptr, weight_ptr, C, D, H, W, V, total, N,
    PADDING: tl.constexpr, ALIGN: tl.constexpr, DETERMINISTIC: tl.constexpr, BLOCK_V: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
    valid = i < total
    n = i // V
    g = grid_ptr + i * 3
    offsets, inside, weights, fx0, fx1, fy0, fy1, fz0, fz1, mx, my, mz, x0, y0, z0 = _corners(
        tl.load(g, mask=valid, other=0.0), tl.load(g + 1, mask=valid, other=0.0),
        tl.load(g + 2, mask=valid, other=0.0), valid, D, H, W, PADDING, ALIGN)
    volume = tl.full([], D, tl.int64) * H * W
    base = n * C * volume
    acc_x, acc_y, acc_z = _sample_backward(
        go_ptr + n * (C - 1) * V + i, in_ptr + base, (gin_ptr + base)[:, None, None, None], C, volume, V,
        offsets, inside, weights, fx0, fx1, fy0, fy1, fz0, fz1, valid, not DETERMINISTIC)
    if DETERMINISTIC:
        _store_entry(key_ptr, weight_ptr, i, n, x0, y0, z0, fx0, fx1, fy0, fy1, fz0, fz1, valid, N, D, H, W)
    # one store per voxel and axis, no atomics: the grid gradient is deterministic
    gg = ggrid_ptr + i * 3
    tl.store(gg, acc_x * mx, mask=valid)
    tl.store(gg + 1, acc_y * my, mask=valid)
    tl.store(gg + 2, acc_z * mz, mask=valid)


@triton.jit
def _keypoint_warp_3d_kernel(
    feat_ptr, kp_s_ptr, kp_d_ptr, mask_ptr, jac_ptr, out_ptr, def_ptr, C, D, H, W, MD, MH, MW, K,
    LOGITS: tl.constexpr, PADDING: tl.constexpr, ALIGN: tl.constexpr, RETURN_DEFORMATION: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    v = tl.program_id(0).to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)  # voxel of the mask's volume
    n = tl.program_id(1).to(tl.int64)
    V = tl.full([], MD, tl.int64) * MH * MW
    valid = v < V
    px, py, pz = _identity(v, MD, MH, MW, out_ptr.dtype.element_ty)
    phix, phiy, phiz, _top, _total = _deformation(kp_s_ptr, kp_d_ptr, jac_ptr, mask_ptr + n * (K + 1) * V + v,
                                                  n * K, K, V, px, py, pz, valid, LOGITS)
    if RETURN_DEFORMATION:
        d = def_ptr + (n * V + v) * 3
        tl.store(d, phix, mask=valid)
        tl.store(d + 1, phiy, mask=valid)
        tl.store(d + 2, phiz, mask=valid)
    offsets, inside, weights, _fx0, _fx1, _fy0, _fy1, _fz0, _fz1, _mx, _my, _mz, _x0, _y0, _z0 = _corners(
        phix, phiy, phiz, valid, D, H, W, PADDING, ALIGN)
    volume = tl.full([], D, tl.int64) * H * W
    _sample(feat_ptr + n * C * volume, out_ptr + n * C * V + v, C, volume, V, offsets, inside, weights, valid)


@triton.jit
def _keypoint_warp_3d_backward_kernel(
    go_ptr, gd_ptr, feat_ptr, kp_s_ptr, kp_d_ptr, mask_ptr, jac_ptr, gfeat_ptr, gmask_ptr, sums_ptr, key_ptr,
    weight_ptr, C, D, H, W, MD, MH, MW, K, N,
    LOGITS: tl.constexpr, PADDING: tl.constexpr, ALIGN: tl.constexpr, DETERMINISTIC: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    v = tl.program_id(0).to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
    n = tl.program_id(1).to(tl.int64)
    V = tl.full([], MD, tl.int64) * MH * MW
    valid = v < V
    px, py, pz = _identity(v, MD, MH, MW, go_ptr.dtype.element_ty)
    row = mask_ptr + n * (K + 1) * V + v
    phix, phiy, phiz, top, total = _deformation(kp_s_ptr, kp_d_ptr, jac_ptr, row, n * K, K, V, px, py, pz, valid,
                                                LOGITS)
    offsets, inside, weights, fx0, fx1, fy0, fy1, fz0, fz1, mx, my, mz, x0, y0, z0 = _corners(
        phix, phiy, phiz, valid, D, H, W, PADDING, ALIGN)
    volume = tl.full([], D, tl.int64) * H * W
    acc_x, acc_y, acc_z = _sample_backward(
        go_ptr + n * C * V + v, feat_ptr + n * C * volume, gfeat_ptr + n * C * volume, C, volume, V,
        offsets, inside, weights, fx0, fx1, fy0, fy1, fz0, fz1, valid, not DETERMINISTIC)
    if DETERMINISTIC:
        _store_entry(key_ptr, weight_ptr, n * V + v, n, x0, y0, z0, fx0, fx1, fy0, fy1, fz0, fz1, valid, N, D, H,
                     W)
    # grad_phi: the sampler's plus the caller's gradient of the returned deformation
    gd = gd_ptr + (n * V + v) * 3
    gx = acc_x * mx + tl.load(gd, mask=valid, other=0.0)
    gy = acc_y * my + tl.load(gd + 1, mask=valid, other=0.0)
    gz = acc_z * mz + tl.load(gd + 2, mask=valid, other=0.0)
    # d loss / d m_k = grad_phi . T_k; the per-keypoint sums A_k, B_k of this block
    out = gmask_ptr + n * (K + 1) * V + v
    g0 = gx * px + gy * py + gz * pz
    if LOGITS:
        dot = _weight(row, valid, top, total, LOGITS) * g0  # sum_j m_j g_j, in motion order
    else:
        tl.store(out, g0, mask=valid)
    sums = sums_ptr + (n * tl.num_programs(0) + tl.program_id(0)) * K * KEYPOINT_SUMS
    r = row
    for k in range(0, K):
        r += V
        tx, ty, tz = _motion(kp_s_ptr, kp_d_ptr, jac_ptr, n * K + k, px, py, pz)
        m = _weight(r, valid, top, total, LOGITS)
        gk = gx * tx + gy * ty + gz * tz
        if LOGITS:
            dot += m * gk
        else:
            tl.store(out + (k + 1) * V, gk, mask=valid)
        # m_k grad_phi, 0 past the volume (p is finite there: so are the products below)
        mgx = tl.where(valid, m * gx, 0.0)
        mgy = tl.where(valid, m * gy, 0.0)
        mgz = tl.where(valid, m * gz, 0.0)
        _store_motion_sums(sums + k * KEYPOINT_SUMS, mgx, mgy, mgz, px, py, pz)
    if LOGITS:  # the softmax's backward m_k (g_k - sum_j m_j g_j), g_k and m_k recomputed
        tl.store(out, _weight(row, valid, top, total, LOGITS) * (g0 - dot), mask=valid)
        r = row
        for k in range(0, K):
            r += V
            tx, ty, tz = _motion(kp_s_ptr, kp_d_ptr, jac_ptr, n * K + k, px, py, pz)
            gk = gx * tx + gy * ty + gz * tz
            tl.store(out + (k + 1) * V, _weight(r, valid, top, total, LOGITS) * (gk - dot), mask=valid)


@triton.jit
def _sparse_motion_features_kernel(
    feat_ptr, kp_s_ptr, kp_d_ptr, jac_ptr, out_ptr, C, D, H, W, K, variance: tl.float64,
    ALIGN: tl.constexpr, BLOCK_V: tl.constexpr,
):
    v = tl.program_id(0).to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
    n = tl.program_id(1).to(tl.int64)
    V = tl.full([], D, tl.int64) * H * W
    valid = v < V
    dtype = out_ptr.dtype.element_ty
    var = tl.full([], variance, dtype)  # the variance rounded to the dtype, as the CPU kernel's
    px, py, pz = _identity(v, D, H, W, dtype)
    src = feat_ptr + n * C * V
    view = (C + 1) * V  # one motion's (1 + C, D, H, W) block of out
    dst = out_ptr + n * (K + 1) * view + v
    for k in range(0, K + 1):
        if k == 0:  # T_0 = p, heatmap 0
            tx, ty, tz = px, py, pz
            heat = tl.full(px.shape, 0, px.dtype)
        else:
            nk = n * K + k - 1
            tx, ty, tz = _motion(kp_s_ptr, kp_d_ptr, jac_ptr, nk, px, py, pz)
            heat = _gaussian(px, py, pz, kp_d_ptr + nk * 3, var) - _gaussian(px, py, pz, kp_s_ptr + nk * 3, var)
        tl.store(dst, heat, mask=valid)
        offsets, inside, weights, _fx0, _fx1, _fy0, _fy1, _fz0, _fz1, _mx, _my, _mz, _x0, _y0, _z0 = _corners(
            tx, ty, tz, valid, D, H, W, 0, ALIGN)
        _sample(src, dst + V, C, V, V, offsets, inside, weights, valid)
        dst += view


@triton.jit
def _sparse_motion_features_backward_kernel(
    go_ptr, feat_ptr, kp_s_ptr, kp_d_ptr, jac_ptr, gfeat_ptr, sums_ptr, key_ptr, weight_ptr, C, D, H, W, K, N,
    variance: tl.float64, ALIGN: tl.constexpr, DETERMINISTIC: tl.constexpr, BLOCK_V: tl.constexpr,
):
    v = tl.program_id(0).to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
    n = tl.program_id(1).to(tl.int64)
    V = tl.full([], D, tl.int64) * H * W
    valid = v < V
    dtype = go_ptr.dtype.element_ty
    var = tl.full([], variance, dtype)
    px, py, pz = _identity(v, D, H, W, dtype)
    src = feat_ptr + n * C * V
    gin = gfeat_ptr + n * C * V
    view = (C + 1) * V
    go = go_ptr + n * (K + 1) * view + v  # motion k's heatmap channel; its feature channels follow
    sums = sums_ptr + (n * tl.num_programs(0) + tl.program_id(0)) * K * MOTION_SUMS
    for k in range(0, K + 1):
        nk = n * K + k - 1
        if k == 0:
            tx, ty, tz = px, py, pz
        else:
            tx, ty, tz = _motion(kp_s_ptr, kp_d_ptr, jac_ptr, nk, px, py, pz)
        offsets, inside, weights, fx0, fx1, fy0, fy1, fz0, fz1, mx, my, mz, x0, y0, z0 = _corners(
            tx, ty, tz, valid, D, H, W, 0, ALIGN)
        # every motion's warped copy adds into the one feature gradient
        acc_x, acc_y, acc_z = _sample_backward(go + V, src, gin, C, V, V, offsets, inside, weights,
                                               fx0, fx1, fy0, fy1, fz0, fz1, valid, not DETERMINISTIC)
        if DETERMINISTIC:
            _store_entry(key_ptr, weight_ptr, (n * (K + 1) + k) * V + v, n, x0, y0, z0, fx0, fx1, fy0, fy1, fz0,
                         fz1, valid, N, D, H, W)
        if k > 0:  # T_0 = p has no parameters
            # the position gradient dL/dT_k and the heatmap's dL/dh e, 0 past the volume
            gx = tl.where(valid, acc_x * mx, 0.0)
            gy = tl.where(valid, acc_y * my, 0.0)
            gz = tl.where(valid, acc_z * mz, 0.0)
            gh = tl.load(go, mask=valid, other=0.0)
            kd = kp_d_ptr + nk * 3
            ks = kp_s_ptr + nk * 3
            hd = tl.where(valid, gh * _gaussian(px, py, pz, kd, var), 0.0)
            hs = tl.where(valid, gh * _gaussian(px, py, pz, ks, var), 0.0)
            s = sums + (k - 1) * MOTION_SUMS
            _store_motion_sums(s, gx, gy, gz, px, py, pz)
            tl.store(s + 12, tl.sum(hd * (px - tl.load(kd)), axis=0))
            tl.store(s + 13, tl.sum(hd * (py - tl.load(kd + 1)), axis=0))
            tl.store(s + 14, tl.sum(hd * (pz - tl.load(kd + 2)), axis=0))
            tl.store(s + 15, tl.sum(hs * (px - tl.load(ks)), axis=0))
            tl.store(s + 16, tl.sum(hs * (py - tl.load(ks + 1)), axis=0))
            tl.store(s + 17, tl.sum(hs * (pz - tl.load(ks + 2)), axis=0))
        go += view


# ---------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------


def _padding(padding_code: int) -> int:
    padding_code = int(padding_code)
    if not 0 <= padding_code < len(PADDING_MODES):
        raise ValueError(f"padding code must be in [0, {len(PADDING_MODES)}), got {padding_code}")
    return padding_code


def _block(t: torch.Tensor, items: int, gpu_block: int) -> tuple[int, int]:
    """(block, warps) for programs of up to ``gpu_block`` items on GPUs; under the interpreter as few
    programs as possible."""
    if t.device.type == "cpu" or os.environ.get("TRITON_INTERPRET") == "1":
        return min(INTERPRETER_BLOCK_V, triton.next_power_of_2(max(items, 1))), 1
    return gpu_block, GPU_WARPS


def _launch(kernel, grid: tuple, t: torch.Tensor, *args, warps: int, **constexprs) -> None:
    # launch on the tensors' GPU, not the current one
    with torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext():
        # no FMA contraction: positions, weights and the corner sum round as the reference's
        kernel[grid](*args, **constexprs, num_warps=warps, enable_fp_fusion=False)


def _entries(t: torch.Tensor, count: int, deterministic: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic mode's per-entry keys and weights (``t`` itself, unused, otherwise)."""
    if not deterministic:
        return t, t
    return torch.empty(count, dtype=torch.int64, device=t.device), t.new_empty((count, 6))


def _gather_gradient(grad_input: torch.Tensor, grad_out: torch.Tensor, keys: torch.Tensor, weights: torch.Tensor,
                     voxels: int, view_stride: int) -> None:
    """Deterministic mode: writes grad_input (N, C, D, H, W) from the entries' keys and weights and
    ``grad_out`` (entry e's channel c at e // voxels * view_stride + c * voxels + e % voxels)."""
    n, c, d, h, w = grad_input.shape
    if grad_input.numel() == 0:
        return
    cells = n * (d + 1) * (h + 1) * (w + 1)
    sorted_keys, order = torch.sort(keys, stable=True)  # each cell's entries together, in entry order
    starts = torch.searchsorted(sorted_keys, torch.arange(cells + 1, dtype=torch.int64, device=keys.device))
    total = n * d * h * w
    block, warps = _block(grad_input, total, GPU_BLOCK_GATHER)
    block_c = min(_block(grad_input, c, GPU_BLOCK_CHANNELS)[0], triton.next_power_of_2(c))
    _launch(_gather_kernel, (triton.cdiv(total, block), triton.cdiv(c, block_c)), grad_input,
            grad_out, weights, order, starts, grad_input, c, d, h, w, voxels, view_stride, total,
            warps=warps, BLOCK_X=block, BLOCK_C=block_c)


def _keypoint_gradients(sums: torch.Tensor, kp_driving: torch.Tensor, jacobian: torch.Tensor,
                        grad_kp_source: torch.Tensor, grad_kp_driving: torch.Tensor, grad_jacobian: torch.Tensor,
                        variance: float | None = None) -> None:
    """The keypoints' and Jacobians' gradients from the per-keypoint sums (N, K, 12 or 18) in float64
    (csrc/cpu/warp.cpp's algebra): T_k = J (p - kd) + ks gives d/d ks = A, d/d kd = -J^T A and
    d/d J = B - A kd^T; the heatmap h = e_d - e_s adds -H_s / variance to d/d ks and H_d / variance
    to d/d kd. Elementwise products and sums: a matmul would go to cuBLAS, which deterministic mode
    refuses unless CUBLAS_WORKSPACE_CONFIG is set."""
    a = sums[..., 0:3]
    jta = (jacobian.double() * a.unsqueeze(-1)).sum(-2)  # sum_r J[r][q] a[r]
    g_ks, g_kd = a, -jta
    if variance is not None:
        inv_var = 1.0 / variance
        g_ks = a - sums[..., 15:18] * inv_var
        g_kd = sums[..., 12:15] * inv_var - jta
    grad_kp_source.copy_(g_ks)
    grad_kp_driving.copy_(g_kd)
    grad_jacobian.copy_(sums[..., 3:12].unflatten(-1, (3, 3)) - a.unsqueeze(-1) * kp_driving.double().unsqueeze(-2))


def grid_sample_3d_triton(input: torch.Tensor, grid: torch.Tensor, out: torch.Tensor, padding_code: int,
                          align_corners: bool) -> None:
    """Writes ``out`` (N, C, Do, Ho, Wo): trilinear samples of ``input`` (N, C, D, H, W) at ``grid``
    (N, Do, Ho, Wo, 3). Contiguous tensors of one dtype (float32/64) on one device; ``padding_code``
    the index in PADDING_MODES."""
    padding = _padding(padding_code)
    if out.numel() == 0:
        return
    n, c, d, h, w = input.shape
    voxels = grid.shape[1] * grid.shape[2] * grid.shape[3]
    block, warps = _block(input, n * voxels, GPU_BLOCK_V)
    _launch(_grid_sample_3d_kernel, (triton.cdiv(n * voxels, block),), input,
            input, grid, out, c, d, h, w, voxels, n * voxels,
            warps=warps, PADDING=padding, ALIGN=bool(align_corners), BLOCK_V=block)


def grid_sample_3d_backward_triton(grad_out: torch.Tensor, input: torch.Tensor, grid: torch.Tensor,
                                   grad_input: torch.Tensor, grad_grid: torch.Tensor, padding_code: int,
                                   align_corners: bool) -> None:
    """Writes ``grad_input`` (like input) and ``grad_grid`` (like grid) for ``grad_out`` (like the
    forward's output). grad_input is scattered with atomics (not deterministic on GPUs), or gathered
    under torch.use_deterministic_algorithms(True)."""
    padding = _padding(padding_code)
    if grad_out.numel() == 0:  # nothing sampled (N, C or the output empty): zero gradients
        grad_input.zero_()
        grad_grid.zero_()
        return
    n, c, d, h, w = input.shape
    voxels = grid.shape[1] * grid.shape[2] * grid.shape[3]
    deterministic = torch.are_deterministic_algorithms_enabled()
    keys, weights = _entries(input, n * voxels, deterministic)
    if not deterministic:
        grad_input.zero_()
    block, warps = _block(input, n * voxels, GPU_BLOCK_V_BACKWARD)
    _launch(_grid_sample_3d_backward_kernel, (triton.cdiv(n * voxels, block),), input,
            grad_out, input, grid, grad_input, grad_grid, keys, weights, c, d, h, w, voxels, n * voxels, n,
            warps=warps, PADDING=padding, ALIGN=bool(align_corners), DETERMINISTIC=deterministic, BLOCK_V=block)
    if deterministic:
        _gather_gradient(grad_input, grad_out, keys, weights, voxels, c * voxels)


def keypoint_warp_3d_triton(feature: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor,
                            mask: torch.Tensor, jacobian: torch.Tensor, out: torch.Tensor, deformation: torch.Tensor,
                            mask_is_logits: bool, padding_code: int, align_corners: bool,
                            return_deformation: bool) -> None:
    """Writes ``out`` (N, C, D, H, W): ``feature`` (N, C, Df, Hf, Wf) sampled at the deformation of
    §4.3.3 over the mask's volume (D, H, W), from kp_source, kp_driving (N, K, 3), mask (N, K + 1,
    D, H, W; logits when ``mask_is_logits``) and jacobian (N, K, 3, 3); and, when
    ``return_deformation``, ``deformation`` (N, D, H, W, 3)."""
    padding = _padding(padding_code)
    n, c, d, h, w = feature.shape
    md, mh, mw = mask.shape[2:]
    voxels = md * mh * mw
    if n == 0:
        return
    block, warps = _block(feature, voxels, GPU_BLOCK_V)
    _launch(_keypoint_warp_3d_kernel, (triton.cdiv(voxels, block), n), feature,
            feature, kp_source, kp_driving, mask, jacobian, out, deformation,
            c, d, h, w, md, mh, mw, kp_source.shape[1],
            warps=warps, LOGITS=bool(mask_is_logits), PADDING=padding, ALIGN=bool(align_corners),
            RETURN_DEFORMATION=bool(return_deformation), BLOCK_V=block)


def keypoint_warp_3d_backward_triton(grad_out: torch.Tensor, grad_deformation: torch.Tensor, feature: torch.Tensor,
                                     kp_source: torch.Tensor, kp_driving: torch.Tensor, mask: torch.Tensor,
                                     jacobian: torch.Tensor, grad_feature: torch.Tensor, grad_kp_source: torch.Tensor,
                                     grad_kp_driving: torch.Tensor, grad_mask: torch.Tensor,
                                     grad_jacobian: torch.Tensor, mask_is_logits: bool, padding_code: int,
                                     align_corners: bool) -> None:
    """The gradients of keypoint_warp_3d's inputs for ``grad_out`` and ``grad_deformation`` (N, D, H,
    W, 3; zeros when the deformation was not returned). grad_feature is scattered with atomics (not
    deterministic on GPUs), or gathered under torch.use_deterministic_algorithms(True); the rest is
    deterministic."""
    padding = _padding(padding_code)
    n, c, d, h, w = feature.shape
    k = kp_source.shape[1]
    md, mh, mw = mask.shape[2:]
    voxels = md * mh * mw
    if n == 0:
        return
    deterministic = torch.are_deterministic_algorithms_enabled()
    keys, weights = _entries(feature, n * voxels, deterministic)
    if not deterministic:
        grad_feature.zero_()
    block, warps = _block(feature, voxels, GPU_BLOCK_V_BACKWARD)
    blocks = triton.cdiv(voxels, block)
    sums = feature.new_empty((n, blocks, k, KEYPOINT_SUMS))  # per program: the block's sums in the dtype
    _launch(_keypoint_warp_3d_backward_kernel, (blocks, n), feature,
            grad_out, grad_deformation, feature, kp_source, kp_driving, mask, jacobian, grad_feature, grad_mask,
            sums, keys, weights, c, d, h, w, md, mh, mw, k, n,
            warps=warps, LOGITS=bool(mask_is_logits), PADDING=padding, ALIGN=bool(align_corners),
            DETERMINISTIC=deterministic, BLOCK_V=block)
    if deterministic:
        _gather_gradient(grad_feature, grad_out, keys, weights, voxels, c * voxels)
    # across blocks in float64, in a fixed order
    _keypoint_gradients(sums.sum(1, dtype=torch.float64), kp_driving, jacobian, grad_kp_source, grad_kp_driving,
                        grad_jacobian)


def sparse_motion_features_triton(feature: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor,
                                  jacobian: torch.Tensor, out: torch.Tensor, variance: float,
                                  align_corners: bool) -> None:
    """Writes ``out`` (N, K + 1, 1 + C, D, H, W): per motion k of §4.3.3 the heatmap channel and
    ``feature`` (N, C, D, H, W) sampled at T_k(p) (zeros padding)."""
    n, c, d, h, w = feature.shape
    if n == 0:
        return
    voxels = d * h * w
    block, warps = _block(feature, voxels, GPU_BLOCK_V)
    _launch(_sparse_motion_features_kernel, (triton.cdiv(voxels, block), n), feature,
            feature, kp_source, kp_driving, jacobian, out, c, d, h, w, kp_source.shape[1], float(variance),
            warps=warps, ALIGN=bool(align_corners), BLOCK_V=block)


def sparse_motion_features_backward_triton(grad_out: torch.Tensor, feature: torch.Tensor, kp_source: torch.Tensor,
                                           kp_driving: torch.Tensor, jacobian: torch.Tensor,
                                           grad_feature: torch.Tensor, grad_kp_source: torch.Tensor,
                                           grad_kp_driving: torch.Tensor, grad_jacobian: torch.Tensor,
                                           variance: float, align_corners: bool) -> None:
    """The gradients of sparse_motion_features' inputs for ``grad_out`` (like its output). grad_feature
    is scattered with atomics (not deterministic on GPUs), or gathered under
    torch.use_deterministic_algorithms(True); the rest is deterministic."""
    n, c, d, h, w = feature.shape
    k = kp_source.shape[1]
    if n == 0:
        return
    voxels = d * h * w
    deterministic = torch.are_deterministic_algorithms_enabled()
    keys, weights = _entries(feature, n * (k + 1) * voxels, deterministic)
    if not deterministic:
        grad_feature.zero_()
    block, warps = _block(feature, voxels, GPU_BLOCK_V_BACKWARD)
    blocks = triton.cdiv(voxels, block)
    sums = feature.new_empty((n, blocks, k, MOTION_SUMS))
    _launch(_sparse_motion_features_backward_kernel, (blocks, n), feature,
            grad_out, feature, kp_source, kp_driving, jacobian, grad_feature, sums, keys, weights,
            c, d, h, w, k, n, float(variance),
            warps=warps, ALIGN=bool(align_corners), DETERMINISTIC=deterministic, BLOCK_V=block)
    if deterministic:  # the feature channels of view u start at grad_out + u * (1 + C) V + V
        _gather_gradient(grad_feature, grad_out.view(-1)[voxels:], keys, weights, voxels, (1 + c) * voxels)
    _keypoint_gradients(sums.sum(1, dtype=torch.float64), kp_driving, jacobian, grad_kp_source, grad_kp_driving,
                        grad_jacobian, float(variance))
