"""Triton backend of the categorical pixel likelihood (specification: ``dgm_fast/vae/reference.py``).

Logits (B, nc * 256, *spatial), channel ``c * 256 + v`` the logit of value
``v`` of image channel ``c``; with P = prod(spatial) pixels, level v of pixel p
of image channel bc = b * nc + c is element ``(bc * 256 + v) * P + p``:

    lse[bc, p] = logsumexp_v logits[bc, v, p]
    nll[b]     = sum_{c, p} lse[bc, p] - logits[bc, target[bc, p], p]
    grad[bc, v, p] = exp(logits[bc, v, p] - lse[bc, p]) * (grad_nll[b] + grad_lse[bc, p])
                     - grad_nll[b] * [v == target[bc, p]]

Blocking. A program owns ``BLOCK_P`` contiguous pixels of one image channel
(grid: B * nc * cdiv(P, BLOCK_P), one flat axis, int64 offsets) and loads all
256 level rows at once as a [256, BLOCK_P] tile, each row a contiguous,
coalesced run: the max, the exp-sum and the picked logit (a masked sum over
the levels, no gather, so a target outside [0, 255] is never read through;
it gives NaN) are reductions over the tile's first axis, so the logits are
read once. The per-sample sum is deterministic without atomics: each program
writes its partial sum (float64) to its own slot, and the launcher sums each
sample's slots with torch (a fixed-shape reduction). The backward reads and
writes each element once, in [BLOCK_V, BLOCK_P] chunks of levels.

Numerics. torch.logsumexp's: max + log(sum exp(x - max)), with a max of +-inf
taken as 0 (all -inf gives -inf, any +inf gives +inf) and NaN propagated. exp
is kernels/coupling.py's IEEE-rounded ``_exp`` (tl.exp in float32 is
``ex2.approx`` on NVIDIA, and the interpreter has no libdevice); log (one per
pixel) splits the sum's exponent off by bit operations and uses the float32
Cephes log / float64 atanh series of kernels/coupling.py. No FMA contraction.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .coupling import _exp, _log1p_unit, _log_unit_f32

LEVELS: tl.constexpr = tl.constexpr(256)
GPU_BLOCK_P = {torch.float32: 64, torch.float64: 32}  # [256, BLOCK_P] tiles: 64 (32) values a thread
GPU_WARPS = 8
GPU_BLOCK_V = 64  # the backward's level chunk
INTERPRETER_MAX_BLOCK_P = 1024  # the interpreter pays per program and per op, not per element


@triton.jit
def _log_sum(s):
    """log(s) for a sum of exponentials: s >= 1 (a positive normal) or 0, +inf, NaN."""
    if s.dtype == tl.float64:
        bits = s.to(tl.int64, bitcast=True)
        e = ((bits >> 52) & 0x7FF) - 1023
        m = ((bits & 0x000FFFFFFFFFFFFF) | 0x3FF0000000000000).to(tl.float64, bitcast=True)  # [1, 2)
        r = _log1p_unit(m - 1.0) + e.to(tl.float64) * 0.6931471805599453
    else:
        r = _log_unit_f32(s)
    r = tl.where(s == 0.0, -float("inf"), r)
    r = tl.where(s == float("inf"), float("inf"), r)
    return tl.where(s == s, r, s)


@triton.jit
def _pixels(P, n_blocks, BLOCK_P: tl.constexpr):
    """(image channel, pixel offsets, their mask) of this program."""
    pid = tl.program_id(0).to(tl.int64)
    bc = pid // n_blocks
    p = (pid % n_blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    return pid, bc, p, p < P


@triton.jit
def _nll_kernel(logits_ptr, target_ptr, lse_ptr, partial_ptr, P, n_blocks, BLOCK_P: tl.constexpr):
    pid, bc, p, pmask = _pixels(P, n_blocks, BLOCK_P)
    v = tl.arange(0, LEVELS)
    x = tl.load(logits_ptr + bc * LEVELS * P + v[:, None] * P + p[None, :], mask=pmask[None, :], other=0.0)
    m = tl.max(x, axis=0)
    shift = tl.where(tl.abs(m) == float("inf"), 0.0, m)
    lse = shift + _log_sum(tl.sum(_exp(x - shift[None, :]), axis=0))
    t = tl.load(target_ptr + bc * P + p, mask=pmask, other=0)
    picked = tl.sum(tl.where(v[:, None] == t[None, :], x, 0.0), axis=0)
    valid = (t >= 0) & (t < LEVELS)
    d = tl.where(valid, lse - picked, float("nan"))
    tl.store(lse_ptr + bc * P + p, lse, mask=pmask)
    tl.store(partial_ptr + pid, tl.sum(tl.where(pmask, d, 0.0).to(tl.float64), axis=0))


@triton.jit
def _nll_backward_kernel(grad_nll_ptr, grad_lse_ptr, logits_ptr, target_ptr, lse_ptr, grad_ptr, P, n_blocks,
                         NC, BLOCK_P: tl.constexpr, BLOCK_V: tl.constexpr):
    pid, bc, p, pmask = _pixels(P, n_blocks, BLOCK_P)
    g = tl.load(grad_nll_ptr + bc // NC)
    lse = tl.load(lse_ptr + bc * P + p, mask=pmask, other=0.0)
    gl = tl.load(grad_lse_ptr + bc * P + p, mask=pmask, other=0.0)
    t = tl.load(target_ptr + bc * P + p, mask=pmask, other=0)
    valid = (t >= 0) & (t < LEVELS)
    c = tl.where(valid, g + gl, float("nan"))  # a target outside [0, 255]: the pixel's column is NaN
    base = bc * LEVELS * P
    for v0 in tl.static_range(0, LEVELS, BLOCK_V):
        v = v0 + tl.arange(0, BLOCK_V)
        offs = base + v[:, None] * P + p[None, :]
        x = tl.load(logits_ptr + offs, mask=pmask[None, :], other=0.0)
        onehot = tl.where(v[:, None] == t[None, :], 1.0, 0.0).to(x.dtype)
        tl.store(grad_ptr + offs, _exp(x - lse[None, :]) * c[None, :] - g * onehot, mask=pmask[None, :])


def _shape(target: torch.Tensor) -> tuple[int, int, int]:
    """(B, nc, P) of a (B, nc, *spatial) target."""
    p = 1
    for s in target.shape[2:]:
        p *= s
    return target.shape[0], target.shape[1], p


def _block_p(p: int, device: torch.device, dtype: torch.dtype) -> tuple[int, int]:
    """(BLOCK_P, num_warps)."""
    limit, warps = (INTERPRETER_MAX_BLOCK_P, 1) if device.type == "cpu" else (GPU_BLOCK_P[dtype], GPU_WARPS)
    return min(triton.next_power_of_2(max(p, 1)), limit), warps


def categorical_pixel_nll_triton(logits: torch.Tensor, target: torch.Tensor, nll: torch.Tensor,
                                 lse: torch.Tensor) -> None:
    """Writes nll (B,) and lse (target's shape). Contiguous tensors, target int64."""
    b, nc, p = _shape(target)
    block_p, warps = _block_p(p, logits.device, logits.dtype)
    n_blocks = triton.cdiv(p, block_p)
    programs = b * nc * n_blocks
    partial = torch.empty(programs, dtype=torch.float64, device=logits.device)
    if programs:
        with torch.cuda.device(logits.device) if logits.is_cuda else contextlib.nullcontext():
            _nll_kernel[(programs,)](logits, target, lse, partial, p, n_blocks, BLOCK_P=block_p,
                                     num_warps=warps, enable_fp_fusion=False)
    # each sample's partials, summed by one fixed-shape reduction: no atomics, the same bits every run
    nll.copy_(partial.view(b, nc * n_blocks).sum(1))


def categorical_pixel_nll_backward_triton(grad_nll: torch.Tensor, grad_lse: torch.Tensor, logits: torch.Tensor,
                                          target: torch.Tensor, lse: torch.Tensor, grad_logits: torch.Tensor) -> None:
    """Writes grad_logits (logits' shape). Contiguous tensors, target int64."""
    b, nc, p = _shape(target)
    block_p, warps = _block_p(p, logits.device, logits.dtype)
    n_blocks = triton.cdiv(p, block_p)
    programs = b * nc * n_blocks
    if programs == 0:
        return
    block_v = 256 if logits.device.type == "cpu" else GPU_BLOCK_V
    with torch.cuda.device(logits.device) if logits.is_cuda else contextlib.nullcontext():
        _nll_backward_kernel[(programs,)](grad_nll, grad_lse, logits, target, lse, grad_logits, p, n_blocks, nc,
                                          BLOCK_P=block_p, BLOCK_V=block_v, num_warps=warps, enable_fp_fusion=False)
