"""Triton building blocks of the counter-based noise specified in ``dgm_fast/philox.py``.

Philox4x32-10 on blocks of uint32 counters, the 23-bit uniform and Box-Muller,
so that every Triton op draws the same stream as the reference and the C++
kernels (``csrc/philox.h``). One Philox call yields the four normals of one
counter, i.e. of stream indices ``4c .. 4c + 3``.
"""

from __future__ import annotations

import triton
import triton.language as tl

PHILOX_M0: tl.constexpr = tl.constexpr(0xD2511F53)
PHILOX_M1: tl.constexpr = tl.constexpr(0xCD9E8D57)
PHILOX_W0: tl.constexpr = tl.constexpr(0x9E3779B9)
PHILOX_W1: tl.constexpr = tl.constexpr(0xBB67AE85)
TWO_PI: tl.constexpr = tl.constexpr(6.283185307179586)


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 (Salmon et al., SC'11) on uint32 blocks ``c0..c3``, uint32 key ``(k0, k1)``."""
    for _ in tl.static_range(10):
        # mulhi/mullo of the round: uint32 arithmetic wraps, as the spec wants
        n0 = tl.umulhi(c2, PHILOX_M1) ^ c1 ^ k0
        n2 = tl.umulhi(c0, PHILOX_M0) ^ c3 ^ k1
        c1 = c2 * PHILOX_M1
        c3 = c0 * PHILOX_M0
        c0 = n0
        c2 = n2
        k0 = k0 + PHILOX_W0
        k1 = k1 + PHILOX_W1
    return c0, c1, c2, c3


@triton.jit
def uniform_from_bits(r, dtype: tl.constexpr):
    """((r >> 9) + 0.5) * 2^-23: exact in float32 and never 0, so log(u) is finite."""
    return (r >> 9).to(dtype) * 1.1920928955078125e-07 + 5.960464477539063e-08


@triton.jit
def box_muller(u_even, u_odd):
    """Two standard normals from two uniforms in (0, 1), by the expression of dgm_fast/philox.py.

    ``t`` is 2pi rounded to the compute precision times ``u_odd``, rounded once:
    kernels compile with ``enable_fp_fusion=False`` so that it is never contracted.
    """
    r2 = -2.0 * tl.log(u_even)
    # sqrt correctly rounded, as torch.sqrt: on GPUs tl.sqrt is sqrt.approx in
    # float32 (and sqrt.rn in float64, where tl.sqrt_rn does not exist)
    if u_even.dtype == tl.float64:
        rho = tl.sqrt(r2)
    else:
        rho = tl.sqrt_rn(r2)
    t = TWO_PI * u_odd
    return rho * tl.cos(t), rho * tl.sin(t)


@triton.jit
def philox_normal4(c, k0, k1, dtype: tl.constexpr):
    """The normals of stream indices 4c .. 4c + 3 for int64 counters ``c`` >= 0, in ``dtype``."""
    zero = tl.zeros(c.shape, tl.uint32)
    r0, r1, r2, r3 = philox4x32_10(c.to(tl.uint32), (c >> 32).to(tl.uint32), zero, zero, k0, k1)
    z0, z1 = box_muller(uniform_from_bits(r0, dtype), uniform_from_bits(r1, dtype))
    z2, z3 = box_muller(uniform_from_bits(r2, dtype), uniform_from_bits(r3, dtype))
    return z0, z1, z2, z3
