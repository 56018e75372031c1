"""Counter-based Gaussian noise: the specification every backend reproduces.

Element ``g`` of a noise stream (``g = offset + flat index``) under a 64-bit
``seed`` is defined as:

1. Philox4x32-10 (Salmon et al., SC'11) with key ``(seed_lo, seed_hi)`` and
   counter ``(c_lo, c_hi, 0, 0)`` where ``c = g // 4``; it yields four 32-bit
   words ``r0..r3``.
2. Each word becomes a uniform ``u = ((r >> 9) + 0.5) * 2**-23``, which is
   exact in float32 and lies in ``[2**-24, 1 - 2**-24]`` (never 0, so the
   logarithm below is finite; the largest |noise| is sqrt(48 ln 2) ~ 5.77).
3. Box-Muller turns ``(u0, u1)`` into ``(rho cos t, rho sin t)`` and
   ``(u2, u3)`` likewise, with ``rho = sqrt(-2 ln u_even)``, ``t = 2 pi u_odd``.
4. The element takes word ``g % 4`` of those four normals.

So the noise depends only on ``(seed, g)``: any backend, any blocking, any
``offset`` gives the same numbers up to float rounding, and no noise tensor
ever has to be written to memory (the point of the fused Langevin step,
dissertation eq. (2.15)).

This module computes the stream with int64 tensor arithmetic, carefully kept
free of signed overflow, so it runs on any device torch supports.
``normal_noise`` is registered as the op ``dgm_fast::philox_normal`` so that
torch.compile treats it as one opaque node: inlined, Philox's hundreds of
integer ops overwhelm inductor (minutes and gigabytes of compile time).
"""

from __future__ import annotations

import math

import torch

from dgm_fast import _extension

MASK32 = 0xFFFFFFFF
PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
PHILOX_ROUNDS = 10


def split_seed(seed: int) -> tuple[int, int]:
    """The Philox key ``(lo, hi)`` of a seed taken modulo 2**64."""
    seed %= 1 << 64
    return seed & MASK32, seed >> 32


def draw_seed() -> int:
    """A seed in [0, 2**62) from torch's default CPU generator (torch.manual_seed makes runs
    repeat): the value and generator advance of ``int(torch.randint(2**62, ()))``, which the
    extension gives without creating a tensor (microseconds on every seed=None call)."""
    if _extension._C is not None:
        return _extension._C.draw_seed()
    return int(torch.randint(2**62, ()))


def signed_seed(seed: int) -> int:
    """A seed modulo 2**64 as the int64 that ops and kernels carry (two's complement)."""
    seed %= 1 << 64
    return seed - (1 << 64) if seed >= 1 << 63 else seed


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product of 32-bit ``a`` and ``m``.

    The product can reach 2**64, past int64, so ``a`` is split in 16-bit halves
    whose partial products stay below 2**49.
    """
    p_lo = (a & 0xFFFF) * m
    p_hi = (a >> 16) * m
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (p_lo + ((p_hi & 0xFFFF) << 16)) & MASK32
    return hi, lo


def philox4x32(
    counter: tuple[torch.Tensor, ...], key: tuple[int, int]
) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 on int64 tensors holding 32-bit words."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(PHILOX_ROUNDS):
        if r:
            k0, k1 = (k0 + PHILOX_W[0]) & MASK32, (k1 + PHILOX_W[1]) & MASK32
        hi0, lo0 = _mulhilo(c0, PHILOX_M[0])
        hi1, lo1 = _mulhilo(c2, PHILOX_M[1])
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def uniform_from_bits(r: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Step 2 of the module docstring: 23 random bits to an open-interval uniform."""
    return ((r >> 9).to(dtype) + 0.5) * 2.0**-23


def normal_noise(
    numel: int,
    seed: int,
    offset: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    seed_tensor: torch.Tensor | None = None,
) -> torch.Tensor:
    """Elements ``offset .. offset + numel - 1`` of the stream, as a flat tensor.

    ``dtype`` is the arithmetic precision of Box-Muller (float32 or float64).
    ``seed_tensor`` (a 0-d int64 tensor), if given, is the seed instead of ``seed``.
    """
    return _philox_normal(numel, signed_seed(seed), offset, seed_tensor, dtype, torch.device(device))


@torch.library.custom_op("dgm_fast::philox_normal", mutates_args=())
def _philox_normal(numel: int, seed: int, offset: int, seed_tensor: torch.Tensor | None,
                   dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if seed_tensor is not None:
        seed = int(seed_tensor)
    return normal_at(torch.arange(numel, dtype=torch.int64, device=device) + offset, seed, dtype)


def normal_at(g: torch.Tensor, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Elements ``g`` (an int64 tensor of stream indices >= 0, any shape) of the stream of ``seed``."""
    c = g >> 2
    zero = torch.zeros_like(c)
    r = philox4x32((c & MASK32, c >> 32, zero, zero), split_seed(seed))
    u = [uniform_from_bits(w, dtype) for w in r]
    rho01 = torch.sqrt(-2.0 * torch.log(u[0]))
    rho23 = torch.sqrt(-2.0 * torch.log(u[2]))
    t01 = (2.0 * math.pi) * u[1]
    t23 = (2.0 * math.pi) * u[3]
    z = torch.stack(
        [rho01 * torch.cos(t01), rho01 * torch.sin(t01),
         rho23 * torch.cos(t23), rho23 * torch.sin(t23)]
    )
    return z.gather(0, (g & 3).unsqueeze(0)).squeeze(0)


@_philox_normal.register_fake
def _(numel, seed, offset, seed_tensor, dtype, device):
    return torch.empty(numel, dtype=dtype, device=device)
