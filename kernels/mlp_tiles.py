"""Small MLPs inside one Triton program: the staged matrix products that the MLP energy kernels
(kernels/ebm.py) and the whole coupling flow (kernels/coupling.py) share.

A program owns ``BLOCK_M`` rows. A layer's left operand is staged in a
per-program scratch tile (global memory, L1/L2-resident) and multiplied over K
in chunks of ``BLOCK_K``, with the weights read from global memory in
nn.Linear's (out, in) layout, zero-padded to powers of two >= ``MIN_DOT`` (tl.dot's
smallest tile): only [BLOCK_M + N, BLOCK_K] operands pass through shared memory,
so 256-wide layers fit. The dots are IEEE float32 (no TF32, which rounds inputs
to 10 bits) or float64, like the references.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MIN_DOT = 16  # tl.dot's smallest M, N, K on every Triton version we support
BLOCK_K: tl.constexpr = tl.constexpr(MIN_DOT)  # the K chunk of the dots (matmul)
GPU_BLOCK_M = 32  # rows a program; MIN_DOT when that leaves SMs idle
INTERPRETER_MAX_M = 1024  # the interpreter pays per program, not per row


@triton.jit
def tile(ptr, BLOCK_M: tl.constexpr, WIDTH: tl.constexpr):
    """Pointers of a row-major [BLOCK_M, WIDTH] scratch tile."""
    return ptr + tl.arange(0, BLOCK_M)[:, None] * WIDTH + tl.arange(0, WIDTH)[None, :]


@triton.jit
def stage(ptr, value, BLOCK_M: tl.constexpr, WIDTH: tl.constexpr):
    """Stores a dot's left operand for matmul. Other threads read it: a barrier before the store
    (the slot's previous readers are done) and one after (the store is visible)."""
    tl.debug_barrier()
    tl.store(tile(ptr, BLOCK_M, WIDTH), value)
    tl.debug_barrier()


@triton.jit
def matmul(a_ptr, w_ptr, K: tl.constexpr, N: tl.constexpr, TRANSPOSED: tl.constexpr, BLOCK_M: tl.constexpr):
    """A W^T (TRANSPOSED: W packed (N, K), a forward layer) or A W (W packed (K, N); with the same
    (out, in) buffer, a backward layer) for the staged [BLOCK_M, K] tile A."""
    rows = tl.arange(0, BLOCK_M)
    kk = tl.arange(0, BLOCK_K)
    n = tl.arange(0, N)
    acc = tl.zeros([BLOCK_M, N], a_ptr.dtype.element_ty)
    for k0 in range(0, K, BLOCK_K):
        a = tl.load(a_ptr + rows[:, None] * K + (k0 + kk)[None, :])
        if TRANSPOSED:
            w = tl.load(w_ptr + n[None, :] * K + (k0 + kk)[:, None])
        else:
            w = tl.load(w_ptr + (k0 + kk)[:, None] * N + n[None, :])
        acc = tl.dot(a, w, acc, input_precision="ieee")
    return acc


@triton.jit
def bias(b_ptr, N: tl.constexpr):
    return tl.load(b_ptr + tl.arange(0, N))[None, :]


def pad(n: int) -> int:
    """A layer width padded for tl.dot."""
    return max(MIN_DOT, triton.next_power_of_2(n))


def block_rows(b: int, width: int, x: torch.Tensor) -> tuple[int, int]:
    """(BLOCK_M, num_warps) for ``b`` rows of tiles ``width`` wide: GPU_BLOCK_M rows (MIN_DOT in
    float64, whose tiles take twice the registers, or where GPU_BLOCK_M would leave SMs idle); 8 warps
    past 2048 elements a tile. The interpreter takes as few programs as possible."""
    if x.device.type == "cpu":
        return min(INTERPRETER_MAX_M, pad(b)), 1
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    wide = x.dtype != torch.float64 and triton.cdiv(b, GPU_BLOCK_M) >= sms
    block_m = GPU_BLOCK_M if wide else MIN_DOT
    return block_m, 4 if block_m * width <= 2048 else 8
