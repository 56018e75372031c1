"""Triton backend of the MLP energy ops (specification: ``dgm_fast/ebm/reference.py``).

    E(x) = w_L . a_{L-1} + b_L,   a_l = act(h_l),   h_l = W_l a_{l-1} + b_l,   a_0 = x
    grad = W_1^T (act'(h_1) * W_2^T (... act'(h_{L-1}) * w_L))

``mlp_energy_grad`` is one forward and one backward; ``mlp_energy_sample`` runs
a whole Langevin chain (2.15) on E (the flow (2.20) without noise, the latent
dynamics (3.8) with ``prior_weight = 1``) without leaving the kernel;
``mlp_energy_laplacian`` adds the Hessian trace of the flow's divergence (2.19).

Design. The launcher packs the layers on each call into one zero-padded
buffer: W_1 as (H_PAD, D_PAD), W_2 .. W_{L-1} as (H_PAD, H_PAD), w_L and the
biases as H_PAD vectors (D_PAD, H_PAD: powers of two >= 16, tl.dot's smallest
tile). Zero padding is exact: padded units get zero weights out, padded inputs
zero weights in. One program owns ``BLOCK_M`` rows (grid: cdiv(B, BLOCK_M)):
their state and the current layer's [BLOCK_M, H_PAD] activations stay in
registers over every step of a chain. A layer's matrix product is
``kernels/mlp_tiles.py``'s: its left operand staged in a per-program scratch
tile, the weights read from global memory (the toys' 256 x 256 layers are
256 KiB in float32: too big for shared memory, and every program rereads
them from L2 each step). The pre-activations h_1 .. h_{L-2} the backward
needs wait in scratch tiles too (h_{L-1} stays in registers). Threads read
scratch elements other threads wrote: barriers fence every staging. The dots
are IEEE float32 (no TF32) or float64, like the reference; elementwise math
is compiled without FMA contraction and uses the IEEE-rounded exp / log1p /
division of ``kernels/coupling.py`` (the interpreter tests what the GPU
computes).

Noise: step k gives element i (row-major r * d + c) the normal of stream index
``offset + k * stride + i`` (stride = numel rounded up to 4, as
``NoiseStream``), i.e. lane ``g % 4`` of Philox counter ``g // 4``: the numbers
``kernels/langevin.py`` draws for the same step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ..ebm.reference import ACTIVATIONS
from ..langevin.stream import stream_stride
from ..philox import split_seed
from .coupling import _const, _exp, _log_sigmoid
from .langevin import _clip
from .mlp_tiles import bias, block_rows, matmul, pad, stage, tile
from .philox import philox_normal4
from .rounding import div_rn

SOFTPLUS_THRESHOLD: tl.constexpr = tl.constexpr(20.0)  # torch's softplus is linear above it

# ---------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------


@triton.jit
def _sigmoid(h):
    """1 / (1 + e^-h) from e^-|h|, which never overflows."""
    e = _exp(-tl.abs(h))
    return tl.where(h >= 0.0, div_rn(_const(1.0, h), e + 1.0), div_rn(e, e + 1.0))


@triton.jit
def _act(h, slope, ACT: tl.constexpr):
    """act(h) for the code ACT (index in ACTIVATIONS); NaN propagates."""
    if ACT == 0:
        a = h * _sigmoid(h)
    elif ACT == 1:
        a = tl.where(h > 0.0, h, h * slope)
    elif ACT == 2:
        a = tl.where(h < 0.0, 0.0, h)
    else:  # softplus(h) = -log_sigmoid(-h)
        a = tl.where(h > SOFTPLUS_THRESHOLD, h, -_log_sigmoid(-h))
    return a


@triton.jit
def _act_derivatives(h, slope, ACT: tl.constexpr):
    """(act'(h), act''(h)) by the reference's formulas (relu' = [h > 0]); GPU code drops an unused one."""
    if ACT == 0:
        s = _sigmoid(h)
        d1 = s * (1.0 + h * (1.0 - s))
        d2 = s * (1.0 - s) * (2.0 + h * (1.0 - 2.0 * s))
    elif ACT == 1:
        d1 = tl.where(h > 0.0, _const(1.0, h), slope)
        d2 = tl.zeros_like(h)
    elif ACT == 2:
        d1 = (h > 0.0).to(h.dtype)
        d2 = tl.zeros_like(h)
    else:
        s = _sigmoid(h)
        linear = h > SOFTPLUS_THRESHOLD
        d1 = tl.where(linear, 1.0, s)
        d2 = tl.where(linear, 0.0, s * (1.0 - s))
    return d1, d2


# ---------------------------------------------------------------------------
# Tiles of the MLP
# ---------------------------------------------------------------------------


@triton.jit
def _real_units(h, units_ptr, H_PAD: tl.constexpr):
    """h with its padded units at 0: their zero weights times an infinite input would be NaN, and the
    next layer's zero weights would carry that NaN into the real units."""
    return tl.where(tl.load(units_ptr + tl.arange(0, H_PAD))[None, :] != 0, h, 0.0)


@triton.jit
def _forward(x_slot, a_slot, h_slots, w_in, w_hidden, b_hidden, units, slope,
             ACT: tl.constexpr, N_HIDDEN: tl.constexpr, D_PAD: tl.constexpr, H_PAD: tl.constexpr,
             BLOCK_M: tl.constexpr):
    """h_{L-1} of the staged x, as F.linear then act layer by layer; h_1 .. h_{L-2} to the h slots."""
    h = _real_units(matmul(x_slot, w_in, D_PAD, H_PAD, True, BLOCK_M) + bias(b_hidden, H_PAD), units, H_PAD)
    for i in tl.static_range(1, N_HIDDEN):
        tl.store(tile(h_slots + (i - 1) * BLOCK_M * H_PAD, BLOCK_M, H_PAD), h)
        stage(a_slot, _act(h, slope, ACT), BLOCK_M, H_PAD)
        h = matmul(a_slot, w_hidden + (i - 1) * H_PAD * H_PAD, H_PAD, H_PAD, True, BLOCK_M)
        h = _real_units(h + bias(b_hidden + i * H_PAD, H_PAD), units + i * H_PAD, H_PAD)
    return h


@triton.jit
def _backward(h_last, a_slot, h_slots, w_in, w_hidden, w_out, slope,
              ACT: tl.constexpr, N_HIDDEN: tl.constexpr, D_PAD: tl.constexpr, H_PAD: tl.constexpr,
              BLOCK_M: tl.constexpr):
    """dE/dx = W_1^T (act'(h_1) * ... W_{L-1}^T (act'(h_{L-1}) * w_L)), in the reference's order."""
    g = w_out[None, :] * _act_derivatives(h_last, slope, ACT)[0]  # dE/dh_{L-1}
    for j in tl.static_range(1, N_HIDDEN):
        i = N_HIDDEN - j  # W_{i+1}: dE/dh_{i+1} -> dE/da_i, then dE/dh_i
        stage(a_slot, g, BLOCK_M, H_PAD)
        g = matmul(a_slot, w_hidden + (i - 1) * H_PAD * H_PAD, H_PAD, H_PAD, False, BLOCK_M)
        h = tl.load(tile(h_slots + (i - 1) * BLOCK_M * H_PAD, BLOCK_M, H_PAD))
        g = g * _act_derivatives(h, slope, ACT)[0]
    stage(a_slot, g, BLOCK_M, H_PAD)
    return matmul(a_slot, w_in, H_PAD, D_PAD, False, BLOCK_M)


@triton.jit
def _energy_grad(x, x_slot, a_slot, h_slots, w_in, w_hidden, w_out_ptr, b_hidden, b_out_ptr, units, slope,
                 ACT: tl.constexpr, N_HIDDEN: tl.constexpr, D_PAD: tl.constexpr, H_PAD: tl.constexpr,
                 BLOCK_M: tl.constexpr):
    """(E, dE/dx) of the rows x [BLOCK_M, D_PAD]."""
    w_out = tl.load(w_out_ptr + tl.arange(0, H_PAD))
    b_out = tl.load(b_out_ptr)
    if N_HIDDEN == 0:  # E = w . x + b: its gradient is w
        energy = tl.sum(x * w_out[None, :], axis=1) + b_out
        grad = tl.broadcast_to(w_out[None, :], (BLOCK_M, D_PAD))
    else:
        stage(x_slot, x, BLOCK_M, D_PAD)
        h = _forward(x_slot, a_slot, h_slots, w_in, w_hidden, b_hidden, units, slope, ACT, N_HIDDEN, D_PAD, H_PAD,
                     BLOCK_M)
        energy = tl.sum(_act(h, slope, ACT) * w_out[None, :], axis=1) + b_out
        grad = _backward(h, a_slot, h_slots, w_in, w_hidden, w_out, slope, ACT, N_HIDDEN, D_PAD, H_PAD, BLOCK_M)
    return energy, grad


@triton.jit
def _rows(B, D, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr):
    """The program's rows, element offsets (int64) and in-bounds mask of its [BLOCK_M, D_PAD] tile."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, D_PAD)
    return rows, rows[:, None] * D + cols[None, :], (rows < B)[:, None] & (cols < D)[None, :]


@triton.jit
def _slots(scratch_ptr, SLOTS: tl.constexpr, D_PAD: tl.constexpr, H_PAD: tl.constexpr, BLOCK_M: tl.constexpr):
    """The program's scratch: x [BLOCK_M, D_PAD], the dot operand and SLOTS tiles [BLOCK_M, H_PAD]."""
    x_slot = scratch_ptr + tl.program_id(0).to(tl.int64) * (BLOCK_M * (D_PAD + (1 + SLOTS) * H_PAD))
    a_slot = x_slot + BLOCK_M * D_PAD
    return x_slot, a_slot, a_slot + BLOCK_M * H_PAD


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------


@triton.jit
def _grad_kernel(x_ptr, w_in, w_hidden, w_out, b_hidden, b_out, units, scratch_ptr, energy_ptr, grad_ptr, B, D,
                 slope: tl.float64, ACC: tl.constexpr, ACT: tl.constexpr, N_HIDDEN: tl.constexpr,
                 SLOTS: tl.constexpr, D_PAD: tl.constexpr, H_PAD: tl.constexpr, BLOCK_M: tl.constexpr):
    slope = tl.full([], slope, ACC)  # rounded once, as torch rounds the reference's Python scalar
    rows, idx, mask = _rows(B, D, D_PAD, BLOCK_M)
    x_slot, a_slot, h_slots = _slots(scratch_ptr, SLOTS, D_PAD, H_PAD, BLOCK_M)
    x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(ACC)
    energy, grad = _energy_grad(x, x_slot, a_slot, h_slots, w_in, w_hidden, w_out, b_hidden, b_out, units, slope,
                                ACT, N_HIDDEN, D_PAD, H_PAD, BLOCK_M)
    tl.store(energy_ptr + rows, energy.to(energy_ptr.dtype.element_ty), mask=rows < B)
    tl.store(grad_ptr + idx, grad.to(grad_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _stream_normal(g, k0, k1, ACC: tl.constexpr):
    """The normal of stream index g >= 0: lane g % 4 of Philox counter g // 4 (dgm_fast/philox.py)."""
    z0, z1, z2, z3 = philox_normal4(g >> 2, k0, k1, ACC)
    lane = g & 3
    return tl.where(lane == 0, z0, tl.where(lane == 1, z1, tl.where(lane == 2, z2, z3)))


@triton.jit(do_not_specialize=["n_steps", "offset", "k0", "k1"])
def _sample_kernel(x_ptr, w_in, w_hidden, w_out, b_hidden, b_out, units, scratch_ptr, out_ptr, B, D,
                   slope: tl.float64, n_steps, decay: tl.float64, half_step: tl.float64, noise_scale: tl.float64,
                   grad_clip: tl.float64, clamp_lo: tl.float64, clamp_hi: tl.float64,
                   offset: tl.int64, stride: tl.int64, k0: tl.uint32, k1: tl.uint32,
                   ACC: tl.constexpr, ACT: tl.constexpr, NOISE: tl.constexpr, N_HIDDEN: tl.constexpr,
                   SLOTS: tl.constexpr, D_PAD: tl.constexpr, H_PAD: tl.constexpr, BLOCK_M: tl.constexpr):
    # float args arrive as fp64: round them once to the compute precision, as torch does with Python scalars
    slope = tl.full([], slope, ACC)
    decay = tl.full([], decay, ACC)
    half_step = tl.full([], half_step, ACC)
    noise_scale = tl.full([], noise_scale, ACC)
    grad_clip = tl.full([], grad_clip, ACC)
    clamp_lo = tl.full([], clamp_lo, ACC)
    clamp_hi = tl.full([], clamp_hi, ACC)
    rows, idx, mask = _rows(B, D, D_PAD, BLOCK_M)
    in_cols = (tl.arange(0, D_PAD) < D)[None, :]
    x_slot, a_slot, h_slots = _slots(scratch_ptr, SLOTS, D_PAD, H_PAD, BLOCK_M)
    x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(ACC)
    for k in range(n_steps):
        grad = _energy_grad(x, x_slot, a_slot, h_slots, w_in, w_hidden, w_out, b_hidden, b_out, units, slope,
                            ACT, N_HIDDEN, D_PAD, H_PAD, BLOCK_M)[1]
        # eq. (2.15) as kernels/langevin.py's _step_tile evaluates it
        y = x * decay - half_step * _clip(grad, -grad_clip, grad_clip)
        if NOISE:
            g = offset + stride * k + idx
            y = y + noise_scale * _stream_normal(g, k0.to(tl.uint32), k1.to(tl.uint32), ACC)
        # padded columns stay 0 (their weights are 0, but 0 * inf would not be)
        x = tl.where(in_cols, _clip(y, clamp_lo, clamp_hi), 0.0)
    tl.store(out_ptr + idx, x.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _laplacian_kernel(x_ptr, w_in, w_hidden, w_out_ptr, b_hidden, b_out, units, scratch_ptr, grad_ptr, trace_ptr, B, D,
                      slope: tl.float64, ACC: tl.constexpr, ACT: tl.constexpr, N_HIDDEN: tl.constexpr,
                      SLOTS: tl.constexpr, D_PAD: tl.constexpr, H_PAD: tl.constexpr, BLOCK_M: tl.constexpr):
    """grad and tr grad^2 E = sum_l sum_j dE/da_lj act''(h_lj) |row j of J_l|^2 (the reference's docstring).

    Slots (N = N_HIDDEN): [0, N) h_l, [N, 2N) act'(h_l), [2N, 3N) dE/da_l * act''(h_l). J_l is
    carried forward one input column c at a time: d tangents of the forward pass.
    """
    slope = tl.full([], slope, ACC)
    rows, idx, mask = _rows(B, D, D_PAD, BLOCK_M)
    x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(ACC)
    w_out = tl.load(w_out_ptr + tl.arange(0, H_PAD))
    trace = tl.zeros([BLOCK_M], ACC)
    if N_HIDDEN == 0:  # E is linear: grad = w, zero trace
        grad = tl.broadcast_to(w_out[None, :], (BLOCK_M, D_PAD))
    else:
        x_slot, a_slot, slots = _slots(scratch_ptr, SLOTS, D_PAD, H_PAD, BLOCK_M)
        slot = BLOCK_M * H_PAD
        stage(x_slot, x, BLOCK_M, D_PAD)
        h = matmul(x_slot, w_in, D_PAD, H_PAD, True, BLOCK_M) + bias(b_hidden, H_PAD)
        h = _real_units(h, units, H_PAD)
        tl.store(tile(slots, BLOCK_M, H_PAD), h)
        for i in tl.static_range(1, N_HIDDEN):
            stage(a_slot, _act(h, slope, ACT), BLOCK_M, H_PAD)
            h = matmul(a_slot, w_hidden + (i - 1) * H_PAD * H_PAD, H_PAD, H_PAD, True, BLOCK_M)
            h = _real_units(h + bias(b_hidden + i * H_PAD, H_PAD), units + i * H_PAD, H_PAD)
            tl.store(tile(slots + i * slot, BLOCK_M, H_PAD), h)
        tl.debug_barrier()  # the last h is visible
        g = tl.broadcast_to(w_out[None, :], (BLOCK_M, H_PAD))  # dE/da_{L-1}
        for j in tl.static_range(N_HIDDEN):
            i = N_HIDDEN - 1 - j
            d1, d2 = _act_derivatives(tl.load(tile(slots + i * slot, BLOCK_M, H_PAD)), slope, ACT)
            tl.store(tile(slots + (N_HIDDEN + i) * slot, BLOCK_M, H_PAD), d1)
            tl.store(tile(slots + (2 * N_HIDDEN + i) * slot, BLOCK_M, H_PAD), g * d2)
            g = g * d1  # dE/dh_i
            if i > 0:
                stage(a_slot, g, BLOCK_M, H_PAD)
                g = matmul(a_slot, w_hidden + (i - 1) * H_PAD * H_PAD, H_PAD, H_PAD, False, BLOCK_M)
        stage(a_slot, g, BLOCK_M, H_PAD)  # (its barriers also publish the slots just stored)
        grad = matmul(a_slot, w_in, H_PAD, D_PAD, False, BLOCK_M)
        units = tl.arange(0, H_PAD)
        for c in range(D):
            jac = tl.broadcast_to(tl.load(w_in + units * D_PAD + c)[None, :], (BLOCK_M, H_PAD))  # J_1 e_c
            trace += tl.sum(tl.load(tile(slots + 2 * N_HIDDEN * slot, BLOCK_M, H_PAD)) * jac * jac, axis=1)
            for l in tl.static_range(1, N_HIDDEN):  # J_{l+1} e_c = W_{l+1} (act'(h_l) * J_l e_c)
                d1 = tl.load(tile(slots + (N_HIDDEN + l - 1) * slot, BLOCK_M, H_PAD))
                stage(a_slot, jac * d1, BLOCK_M, H_PAD)
                jac = matmul(a_slot, w_hidden + (l - 1) * H_PAD * H_PAD, H_PAD, H_PAD, True, BLOCK_M)
                curvature = tl.load(tile(slots + (2 * N_HIDDEN + l) * slot, BLOCK_M, H_PAD))
                trace += tl.sum(curvature * jac * jac, axis=1)
    tl.store(trace_ptr + rows, trace.to(trace_ptr.dtype.element_ty), mask=rows < B)
    tl.store(grad_ptr + idx, grad.to(grad_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------


def _pack(weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor], dtype: torch.dtype):
    """Views (w_in, w_hidden, w_out, b_hidden, b_out, units) of one zero-padded buffer, and (N_HIDDEN,
    D_PAD, H_PAD); ``units`` is 1 for each hidden layer's real units, 0 for its padding.

    Without hidden layers H_PAD = D_PAD: w_out then weighs x itself."""
    n_hidden = len(weights) - 1
    d_pad = pad(weights[0].shape[1])
    h_pad = max(pad(w.shape[0]) for w in weights[:-1]) if n_hidden else d_pad
    sizes = [h_pad * d_pad if n_hidden else 0, max(n_hidden - 1, 0) * h_pad * h_pad, h_pad, n_hidden * h_pad, 1,
             n_hidden * h_pad]
    packed = weights[0].new_zeros(sum(sizes), dtype=dtype).split(sizes)
    w_in, w_hidden, w_out, b_hidden, b_out, units = packed
    for l, (w, b) in enumerate(zip(weights[:-1], biases[:-1])):
        dst = w_in.view(h_pad, d_pad) if l == 0 else w_hidden.view(-1, h_pad, h_pad)[l - 1]
        dst[: w.shape[0], : w.shape[1]] = w
        b_hidden.view(-1, h_pad)[l, : b.shape[0]] = b
        units.view(-1, h_pad)[l, : w.shape[0]] = 1
    w_out[: weights[-1].shape[1]] = weights[-1][0]
    b_out.copy_(biases[-1])
    return packed, (n_hidden, d_pad, h_pad)


def _launch(kernel, x, weights, biases, outputs, scalars, slots, activation_code, **consts):
    """Packs the weights, allocates the scratch (``slots`` hidden-width tiles a program besides x and
    the dot operand) and launches ``kernel`` on the rows of x (none if there are none)."""
    b, d = x.shape
    if b == 0:
        return
    if activation_code not in range(len(ACTIVATIONS)):
        raise ValueError(f"activation_code must be in [0, {len(ACTIVATIONS)}), got {activation_code}")
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    packed, (n_hidden, d_pad, h_pad) = _pack(weights, biases, acc)
    block_m, warps = block_rows(b, h_pad, x)
    programs = triton.cdiv(b, block_m)
    scratch = torch.empty(programs * block_m * (d_pad + (1 + slots) * h_pad), dtype=acc, device=x.device)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        kernel[(programs,)](
            x, *packed, scratch, *outputs, b, d, *scalars,
            ACC=tl.float64 if acc == torch.float64 else tl.float32, ACT=activation_code, N_HIDDEN=n_hidden,
            SLOTS=slots, D_PAD=d_pad, H_PAD=h_pad, BLOCK_M=block_m, **consts,
            # no FMA contraction: the step and the noise round as the reference's (kernels/langevin.py)
            num_warps=warps, num_stages=1, enable_fp_fusion=False,
        )


def mlp_energy_grad_triton(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                           energy_out: torch.Tensor, grad_out: torch.Tensor,
                           activation_code: int, negative_slope: float) -> None:
    """Writes E(x) (B,) and dE/dx (B, d) for contiguous x (B, d) and nn.Linear-layout layers."""
    _launch(_grad_kernel, x, weights, biases, (energy_out, grad_out), (float(negative_slope),),
            max(len(weights) - 2, 0), activation_code)


def mlp_energy_laplacian_triton(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                                grad_out: torch.Tensor, trace_out: torch.Tensor,
                                activation_code: int, negative_slope: float) -> None:
    """Writes dE/dx (B, d) and tr d^2E/dx^2 (B,), the velocity and divergence of the flow (2.16) / (2.19)."""
    _launch(_laplacian_kernel, x, weights, biases, (grad_out, trace_out), (float(negative_slope),),
            3 * (len(weights) - 1), activation_code)


def mlp_energy_sample_triton(x0: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                             out: torch.Tensor, activation_code: int, negative_slope: float, n_steps: int,
                             step_size: float, noise_scale: float, prior_weight: float, grad_clip: float,
                             clamp_lo: float, clamp_hi: float, seed: int, offset: int) -> None:
    """Writes the end of ``n_steps`` Langevin steps (2.15) from x0 into ``out``.

    The scalars of ``langevin_step_triton``: absent bounds are infinite, ``seed`` the int64 two's
    complement of a 64-bit seed; step k draws its noise at ``offset + k * stream_stride(numel)``.
    """
    if x0.numel() == 0:
        return
    k0, k1 = split_seed(seed)
    half_step = 0.5 * step_size
    scalars = (float(negative_slope), int(n_steps), 1.0 - half_step * prior_weight, half_step, float(noise_scale),
               float(grad_clip), float(clamp_lo), float(clamp_hi), int(offset), stream_stride(x0.numel()), k0, k1)
    _launch(_sample_kernel, x0, weights, biases, (out,), scalars, max(len(weights) - 2, 0), activation_code,
            NOISE=noise_scale != 0)
