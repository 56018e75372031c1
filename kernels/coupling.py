"""Triton backend of the affine coupling layer, dissertation §2.2.3 ("Coupling Layers"), and of the
whole CouplingFlow of §3.2 (its section below).

The layer keeps z1 and maps the other part x2 with a scale and a shift that a
network computed from z1 (specification: ``dgm_fast/coupling/reference.py``):

    forward  y2 = x2 * exp(l) + t,       logdet =  sum_row(l)
    inverse  y2 = (x2 - t) * exp(-l),    logdet = -sum_row(l)

with l = g(s) the bounded log-scale ("exp", "atan", "tanh", "sigmoid"), and the
logdet the log of the diagonal Jacobian's determinant, prod_j exp(l_j), as
§2.2.3 says. The forward pass reads x2, s, t once and writes y2 and one logdet
per row; the backward pass recomputes l, exp(+-l) and g'(s) in registers, so
nothing but the three gradients is written.

Blocking. Rows of D elements (batch first). A program owns ``ROWS`` whole rows
and walks them in ``[ROWS, BLOCK_D]`` tiles, BLOCK_D = next_pow2(D) capped:
the logdet row sum is then a per-lane accumulation over the column chunks and
one ``tl.sum`` at the end, in-program, without atomics (deterministic: the order
only depends on D and the block shape). On GPUs a tile holds ``GPU_TILE`` =
1024 elements (4 warps: 8 per thread, two 16-byte vectors of float32; float64
tiles are half that, as its atan / tanh need ~200 registers at 8 a thread), so

* (256, 32):    BLOCK_D = 32, 32 rows a program, 8 programs: the launch is the
  cost at this size, and the whole problem is one wave of small programs;
* (4096, 1024): BLOCK_D = 1024, one row a program, 4096 programs: many waves
  over 132 SMs, each thread with 3 x 2 vector loads in flight in the forward
  (4 x 2 in the backward), which is what saturates HBM in a memory-bound op
  (float64: two 512-element chunks a row);
* rows longer than ``GPU_MAX_BLOCK_D`` loop over BLOCK_D = 1024 chunks, still
  one program a row (few long rows give few programs: B programs for B rows).

Tiles wholly inside the tensor load and store without a mask (16-byte vectors
when D, which Triton specialises as a multiple of 16, allows it); the last
chunk of a row and the rows of the last program are masked. Offsets are int64
(``row * D``), so B * D may exceed 2^31.

Numerics. float32 / float64 compute precision (16-bit types are computed in
float32 and rounded once at the store), no FMA contraction
(``enable_fp_fusion=False``) and only IEEE-rounded basic operations: on NVIDIA
``tl.exp`` in float32 is ``ex2.approx`` of a rounded product and float32 ``/``
is ``div.full`` (both fast-math), and ``tl.math`` has no atan, tanh or log1p;
the Triton interpreter has no libdevice. So exp, atan, tanh and log1p are
written here from +, -, *, IEEE division (``tl.div_rn`` in float32) and bit
operations: in float32 the branchless Cephes-based functions of
``csrc/cpu/vec_math.h`` operation for operation (so they round as the CPU
kernel does), in float64 Cephes atan / tanh, a Cody-Waite exp with a degree-13
Taylor polynomial and an atanh-series log1p. The GPU therefore computes
exactly what the interpreter tests, elementwise bit for bit (the PTX has only
add/sub/mul/div.rn, no ftz, no fma; only the logdet's tl.sum may associate
differently), and float32 y2 and gradients equal the C++ CPU kernel's bits.
g(s) is evaluated in the
reference's order of operations: ``(clamp * 2/pi) * atan(s / clamp)`` (the
product in double, rounded once), ``clamp * tanh(s / clamp)``, and
``logsigmoid(s + 2) = -(max(-u, 0) + log1p(exp(-|u|)))``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ..coupling.reference import ACTIVATIONS
from .mlp_tiles import BLOCK_K, bias, block_rows, matmul, pad, stage, tile
from .rounding import div_rn

SCALES = ("exp", "atan", "tanh", "sigmoid")  # scale codes: the order of dgm_fast.coupling.reference.SCALES
GPU_TILE = 1024  # elements of a [ROWS, BLOCK_D] tile (float64: half, to stay in registers)
GPU_MAX_BLOCK_D = 1024  # longer rows loop over chunks of this many elements
GPU_WARPS = 4
INTERPRETER_TILE = 1 << 16  # the interpreter pays per program and per op, not per element

TWO_OVER_PI = 2.0 / math.pi

# ---------------------------------------------------------------------------
# Elementary functions (see the module docstring). Each takes and returns a
# float32 or float64 tensor and propagates NaN.
# ---------------------------------------------------------------------------


@triton.jit
def _const(value: tl.constexpr, like):
    """``value`` rounded once to the dtype of ``like`` (never through float32 first)."""
    return tl.full([], value, like.dtype)


@triton.jit
def _with_sign_of(mag, x):
    """|mag| with the sign bit of x ORed in (mag >= 0 or NaN): odd functions stay exactly odd."""
    if x.dtype == tl.float64:
        bits = mag.to(tl.uint64, bitcast=True) | (x.to(tl.uint64, bitcast=True) & 0x8000000000000000)
        r = bits.to(tl.float64, bitcast=True)
    else:
        bits = mag.to(tl.uint32, bitcast=True) | (x.to(tl.uint32, bitcast=True) & 0x80000000)
        r = bits.to(tl.float32, bitcast=True)
    return r


@triton.jit
def _exp_f32(x):
    """e^x within 1 ulp with gradual underflow; vec_math.h exp_f operation for operation.

    n = nearbyint(x / ln 2) by the 1.5 * 2^23 trick (whose bits hold n), Cody-Waite
    r = x - n ln 2, Cephes' degree-7 minimax polynomial, times 2^(n/2) * 2^(n - n/2)
    (both normal over the clamped range, so overflow and subnormals round once).
    """
    xc = tl.where(x > 89.0, 89.0, x)
    xc = tl.where(xc < -104.0, -104.0, xc)
    t = xc * 1.44269504088896341 + 12582912.0
    n = t - 12582912.0
    ni = t.to(tl.int32, bitcast=True) - 0x4B400000
    r = (xc - n * 0.693359375) - n * -2.12194440e-4
    z = r * r
    p = r * 1.9875691500e-4 + 1.3981999507e-3
    p = p * r + 8.3334519073e-3
    p = p * r + 4.1665795894e-2
    p = p * r + 1.6666665459e-1
    p = p * r + 5.0000001201e-1
    y = p * z + r + 1.0
    n1 = ni >> 1  # arithmetic shift: floor(n / 2)
    s1 = ((n1 + 127) << 23).to(tl.float32, bitcast=True)
    s2 = ((ni - n1 + 127) << 23).to(tl.float32, bitcast=True)
    return y * s1 * s2


@triton.jit
def _exp_f64(x):
    """e^x in float64 (about 1 ulp): the scheme of _exp_f32 with ln 2 split as fdlibm's
    (n * LN2_HI exact) and the Taylor polynomial of degree 13 on |r| <= ln(2)/2
    (truncation below 5e-18 relative)."""
    xc = tl.where(x > 710.0, 710.0, x)
    xc = tl.where(xc < -746.0, -746.0, xc)
    t = xc * 1.4426950408889634 + 6755399441055744.0  # 1.5 * 2^52
    n = t - 6755399441055744.0
    ni = t.to(tl.int64, bitcast=True) - 0x4338000000000000
    r = (xc - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10
    z = r * r
    p = r * (1.0 / 6227020800.0) + (1.0 / 479001600.0)  # 1/13!, 1/12!
    p = p * r + (1.0 / 39916800.0)
    p = p * r + (1.0 / 3628800.0)
    p = p * r + (1.0 / 362880.0)
    p = p * r + (1.0 / 40320.0)
    p = p * r + (1.0 / 5040.0)
    p = p * r + (1.0 / 720.0)
    p = p * r + (1.0 / 120.0)
    p = p * r + (1.0 / 24.0)
    p = p * r + (1.0 / 6.0)
    p = p * r + 0.5
    y = p * z + r + 1.0
    n1 = ni >> 1
    s1 = ((n1 + 1023) << 52).to(tl.float64, bitcast=True)
    s2 = ((ni - n1 + 1023) << 52).to(tl.float64, bitcast=True)
    return y * s1 * s2


@triton.jit
def _exp(x):
    if x.dtype == tl.float64:
        y = _exp_f64(x)
    else:
        y = _exp_f32(x)
    return y


@triton.jit
def _log_unit_f32(u):
    """log(u) for positive normal u (finite garbage otherwise): vec_math.h log_unit.

    u = 2^e (1 + m) with 1 + m in [sqrt(1/2), sqrt(2)) by integer arithmetic on the
    bits, then Cephes' logf minimax polynomial in m.
    """
    i = u.to(tl.uint32, bitcast=True) + (0x3F800000 - 0x3F3504F3)
    e = ((i >> 23).to(tl.int32) - 127).to(tl.float32)
    m = ((i & 0x007FFFFF) + 0x3F3504F3).to(tl.float32, bitcast=True) - 1.0
    z = m * m
    p = m * 7.0376836292e-2 - 1.1514610310e-1
    p = p * m + 1.1676998740e-1
    p = p * m - 1.2420140846e-1
    p = p * m + 1.4249322787e-1
    p = p * m - 1.6668057665e-1
    p = p * m + 2.0000714765e-1
    p = p * m - 2.4999993993e-1
    p = p * m + 3.3333331174e-1
    y = p * m * z - 2.12194440e-4 * e - 0.5 * z
    return m + y + 0.693359375 * e


@triton.jit
def _log1p_unit(x):
    """log(1 + x) for x in [0, 1] or NaN (the log-sigmoid's argument e^-|u|).

    float32: vec_math.h log1p_f on that domain, log(fl(1 + x)) plus the rounding
    correction c / u (within 2 ulp). float64: 2 atanh(f / (2 + f)) by its series,
    after log1p(x) = ln 2 + log1p((x - 1) / 2) for x > 1/2 (exact reduction), so
    |f / (2 + f)| <= 1/5 and 11 terms reach 2e-17.
    """
    if x.dtype == tl.float64:
        big = x > 0.5
        f = tl.where(big, (x - 1.0) * 0.5, x)
        s = f / (f + 2.0)
        s2 = s * s
        p = s2 * (1.0 / 21.0) + (1.0 / 19.0)
        p = p * s2 + (1.0 / 17.0)
        p = p * s2 + (1.0 / 15.0)
        p = p * s2 + (1.0 / 13.0)
        p = p * s2 + (1.0 / 11.0)
        p = p * s2 + (1.0 / 9.0)
        p = p * s2 + (1.0 / 7.0)
        p = p * s2 + (1.0 / 5.0)
        p = p * s2 + (1.0 / 3.0)
        r = (s + s * (s2 * p)) * 2.0
        r = tl.where(big, r + 0.6931471805599453, r)
    else:
        u = x + 1.0
        c = x - (u - 1.0)
        r = _log_unit_f32(u) + tl.div_rn(c, u)
        r = tl.where(u == 1.0, x, r)
        r = tl.where(u == u, r, u)  # NaN
    return r


@triton.jit
def _atan(x):
    """atan(x); atan(+-inf) = +-pi/2 rounded, odd exactly, NaN kept.

    Cephes on a = |x|, reduced by atan(a) = pi/2 + atan(-1/a) above tan(3pi/8) and
    pi/4 + atan((a-1)/(a+1)) above tan(pi/8) (float32) or 0.66 (float64), one
    division for the three cases. float32: vec_math.h atan_f (minimax polynomial,
    pi/2 and pi/4 added as hi + lo pairs, within 1.5 ulp). float64: Cephes atan's
    rational P(z)/Q(z) and its MOREBITS correction of pi/2, pi/4.
    (vec_math.h also corrects the float32 middle case for the rounding of a - 1.)
    """
    a = tl.abs(x)
    if x.dtype == tl.float64:
        big = a > 2.41421356237309504880
        mid = a > 0.66
        num = tl.where(big, -1.0, tl.where(mid, a - 1.0, a))
        den = tl.where(big, a, tl.where(mid, a + 1.0, 1.0))
        zero = _const(0.0, a)
        hi = tl.where(mid, _const(0.78539816339744830962, a), zero)
        hi = tl.where(big, _const(1.57079632679489661923, a), hi)
        lo = tl.where(mid, _const(3.061616997868382943065e-17, a), zero)  # Cephes' MOREBITS / 2
        lo = tl.where(big, _const(6.123233995736765886130e-17, a), lo)
        ar = num / den
        z = ar * ar
        p = z * -8.750608600031904122785e-1 - 1.615753718733365076637e1
        p = p * z - 7.500855792314704667340e1
        p = p * z - 1.228866684490136173410e2
        p = p * z - 6.485021904942025371773e1
        q = z + 2.485846490142306297962e1
        q = q * z + 1.650270098316988542046e2
        q = q * z + 4.328810604912902668951e2
        q = q * z + 4.853903996359136964868e2
        q = q * z + 1.945506571482613964425e2
        w = z * p / q
        w = ar * w + ar
        y = hi + (w + lo)
    else:
        big = a > 2.414213562373095
        mid = a > 0.4142135623730950
        a_minus_1 = a - 1.0
        num = tl.where(big, -1.0, tl.where(mid, a_minus_1, a))
        den = tl.where(big, a, tl.where(mid, a + 1.0, 1.0))
        zero = _const(0.0, a)
        hi = tl.where(big, _const(1.57079637e+0, a), tl.where(mid, _const(7.85398185e-1, a), zero))
        lo = tl.where(big, _const(-4.37113883e-8, a), tl.where(mid, _const(-2.18556941e-8, a), zero))
        # middle case: the rounding error of a - 1, whose first-order effect on atan is e (1 - q) / 2
        e = tl.where(mid != big, a - (a_minus_1 + 1.0), 0.0)
        ar = tl.div_rn(num, den)
        z = ar * ar
        p = z * 8.05374449538e-2 - 1.38776856032e-1
        p = p * z + 1.99777106478e-1
        p = p * z - 3.33329491539e-1
        y = hi + (((lo + e * (1.0 - ar) * 0.5) + p * z * ar) + ar)
    return _with_sign_of(y, x)


@triton.jit
def _tanh(x):
    """tanh(x); +-1 for large |x| and +-inf, odd exactly, NaN kept.

    Cephes: below |x| = 0.625 an odd polynomial (float32, vec_math.h tanh_f) or
    rational function (float64) in x^2, where 1 - 2 / (e^2|x| + 1) would cancel;
    that formula above (e^2|x| = inf gives exactly 1). NaN fails |x| >= 0.625.
    """
    a = tl.abs(x)
    large = 1.0 - div_rn(_const(2.0, a), _exp(a + a) + 1.0)
    if x.dtype == tl.float64:
        # the rational branch on 0 where |x| >= 0.625 (no overflow in a * a); NaN stays
        xs = tl.where(a >= 0.625, 0.0, a)
        z = xs * xs
        p = z * -9.64399179425052238628e-1 - 9.92877231001918586564e1
        p = p * z - 1.61468768441708447952e3
        q = z + 1.12811678491632931402e2
        q = q * z + 2.23548839060100448583e3
        q = q * z + 4.84406305325125486048e3
        small = xs + xs * z * (p / q)
        y = _with_sign_of(tl.where(a >= 0.625, large, small), x)
    else:
        z = x * x
        p = z * -5.70498872745e-3 + 2.06390887954e-2
        p = p * z - 5.37397155531e-2
        p = p * z + 1.33314422036e-1
        p = p * z - 3.33332819422e-1
        small = p * z * a + a
        y = _with_sign_of(tl.where(a < 0.625, small, large), x)
    return y


@triton.jit
def _log_sigmoid(u):
    """log(sigmoid(u)) = -(max(-u, 0) + log1p(exp(-|u|))), stable for every u."""
    neg = tl.where(u < 0.0, -u, 0.0)
    return -(neg + _log1p_unit(_exp(-tl.abs(u))))


@triton.jit
def _log_scale(s, clamp, gain, SCALE: tl.constexpr):
    """l = g(s) in the reference's order of operations (gain = clamp * 2/pi, rounded once)."""
    if SCALE == 0:
        l = s
    elif SCALE == 1:
        l = gain * _atan(div_rn(s, clamp))
    elif SCALE == 2:
        l = clamp * _tanh(div_rn(s, clamp))
    else:
        l = _log_sigmoid(s + 2.0)
    return l


@triton.jit
def _log_scale_and_derivative(s, clamp, gain, SCALE: tl.constexpr):
    """(g(s), g'(s)), sharing s / clamp and tanh; for "exp" g' = 1 and the caller skips the product."""
    if SCALE == 0:
        l = s
        dl = s  # unused: g' = 1
    elif SCALE == 1:
        q = div_rn(s, clamp)
        l = gain * _atan(q)
        # the reference's TWO_OVER_PI / (1 + q^2) is torch's reciprocal(1 + q^2) * TWO_OVER_PI
        dl = div_rn(_const(1.0, q), q * q + 1.0) * _const(0.6366197723675814, q)
    elif SCALE == 2:
        th = _tanh(div_rn(s, clamp))
        l = clamp * th
        dl = 1.0 - th * th
    else:
        u = s + 2.0
        l = _log_sigmoid(u)
        # sigmoid(-u) from e^-|u|, which never overflows: far out it is subnormal, not 0 (as torch's)
        e = _exp(-tl.abs(u))
        dl = tl.where(u <= 0.0, div_rn(_const(1.0, u), e + 1.0), div_rn(e, e + 1.0))
    return l, dl


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------


@triton.jit
def _forward_tile(x2_ptr, s_ptr, t_ptr, y2_ptr, offs, mask, clamp, gain,
                  ACC: tl.constexpr, SCALE: tl.constexpr, INVERSE: tl.constexpr):
    """y2 on one tile (every element when ``mask`` is None); returns l (garbage where masked)."""
    s = tl.load(s_ptr + offs, mask=mask).to(ACC)
    x = tl.load(x2_ptr + offs, mask=mask).to(ACC)
    t = tl.load(t_ptr + offs, mask=mask).to(ACC)
    l = _log_scale(s, clamp, gain, SCALE)
    if INVERSE:
        y = (x - t) * _exp(-l)
    else:
        y = x * _exp(l) + t
    tl.store(y2_ptr + offs, y.to(y2_ptr.dtype.element_ty), mask=mask)
    return l


@triton.jit
def _backward_tile(gy_ptr, x2_ptr, s_ptr, t_ptr, gx_ptr, gs_ptr, gt_ptr, offs, mask, g_log, clamp, gain,
                   ACC: tl.constexpr, SCALE: tl.constexpr, INVERSE: tl.constexpr):
    """The three gradients of the reference's docstring on one tile; g_log is [ROWS, 1]."""
    gy = tl.load(gy_ptr + offs, mask=mask).to(ACC)
    x = tl.load(x2_ptr + offs, mask=mask).to(ACC)
    s = tl.load(s_ptr + offs, mask=mask).to(ACC)
    l, dl = _log_scale_and_derivative(s, clamp, gain, SCALE)
    if INVERSE:
        t = tl.load(t_ptr + offs, mask=mask).to(ACC)
        e = _exp(-l)
        gx = gy * e
        gt = -gx
        gs = -(gy * (x - t) * e + g_log)  # gy * y2, y2 = (x2 - t) e^-l, in autograd's order
    else:
        e = _exp(l)
        gx = gy * e
        gt = gy
        gs = gy * x * e + g_log
    if SCALE != 0:
        gs = gs * dl
    tl.store(gx_ptr + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)
    tl.store(gs_ptr + offs, gs.to(gs_ptr.dtype.element_ty), mask=mask)
    tl.store(gt_ptr + offs, gt.to(gt_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _affine_coupling_kernel(
    x2_ptr, s_ptr, t_ptr, y2_ptr, logdet_ptr, B, D,
    clamp: tl.float64, gain: tl.float64,
    ACC: tl.constexpr, SCALE: tl.constexpr, INVERSE: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # float args arrive as fp64: round them once to the compute precision, as
    # torch does with the reference's Python scalars
    clamp = tl.full([], clamp, ACC)
    gain = tl.full([], gain, ACC)
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_in = rows < B
    base = rows[:, None] * D  # int64: B * D may exceed 2^31
    cols = tl.arange(0, BLOCK_D)[None, :]
    acc = tl.zeros([ROWS, BLOCK_D], ACC)
    d_full = (D // BLOCK_D) * BLOCK_D
    if tl.program_id(0).to(tl.int64) * ROWS + ROWS <= B:
        # every row of the program inside: whole chunks load and store unmasked
        for d0 in range(0, d_full, BLOCK_D):
            acc += _forward_tile(x2_ptr, s_ptr, t_ptr, y2_ptr, base + (d0 + cols), None, clamp, gain,
                                 ACC, SCALE, INVERSE)
        for d0 in range(d_full, D, BLOCK_D):  # the row tails
            mask = d0 + cols < D
            l = _forward_tile(x2_ptr, s_ptr, t_ptr, y2_ptr, base + (d0 + cols), mask, clamp, gain,
                              ACC, SCALE, INVERSE)
            acc += tl.where(mask, l, 0.0)
    else:  # the last program: rows past B masked too
        for d0 in range(0, D, BLOCK_D):
            mask = row_in[:, None] & (d0 + cols < D)
            l = _forward_tile(x2_ptr, s_ptr, t_ptr, y2_ptr, base + (d0 + cols), mask, clamp, gain,
                              ACC, SCALE, INVERSE)
            acc += tl.where(mask, l, 0.0)
    logdet = tl.sum(acc, axis=1)
    if INVERSE:
        logdet = -logdet
    tl.store(logdet_ptr + rows, logdet.to(logdet_ptr.dtype.element_ty), mask=row_in)


@triton.jit
def _affine_coupling_backward_kernel(
    gy_ptr, gl_ptr, x2_ptr, s_ptr, t_ptr, gx_ptr, gs_ptr, gt_ptr, B, D,
    clamp: tl.float64, gain: tl.float64,
    ACC: tl.constexpr, SCALE: tl.constexpr, INVERSE: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    clamp = tl.full([], clamp, ACC)
    gain = tl.full([], gain, ACC)
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_in = rows < B
    g_log = tl.load(gl_ptr + rows, mask=row_in, other=0.0).to(ACC)[:, None]
    base = rows[:, None] * D
    cols = tl.arange(0, BLOCK_D)[None, :]
    d_full = (D // BLOCK_D) * BLOCK_D
    if tl.program_id(0).to(tl.int64) * ROWS + ROWS <= B:
        for d0 in range(0, d_full, BLOCK_D):
            _backward_tile(gy_ptr, x2_ptr, s_ptr, t_ptr, gx_ptr, gs_ptr, gt_ptr, base + (d0 + cols), None,
                           g_log, clamp, gain, ACC, SCALE, INVERSE)
        for d0 in range(d_full, D, BLOCK_D):
            _backward_tile(gy_ptr, x2_ptr, s_ptr, t_ptr, gx_ptr, gs_ptr, gt_ptr, base + (d0 + cols),
                           d0 + cols < D, g_log, clamp, gain, ACC, SCALE, INVERSE)
    else:
        for d0 in range(0, D, BLOCK_D):
            _backward_tile(gy_ptr, x2_ptr, s_ptr, t_ptr, gx_ptr, gs_ptr, gt_ptr, base + (d0 + cols),
                           row_in[:, None] & (d0 + cols < D), g_log, clamp, gain, ACC, SCALE, INVERSE)


# ---------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------


def _rows(x2: torch.Tensor) -> tuple[int, int]:
    """(B, D): batch first, D = numel // B (a 1-D x2 has D = 1)."""
    b = x2.shape[0] if x2.dim() > 0 else 1
    return b, (x2.numel() // b if b else 0)


def _blocks(b: int, d: int, device: torch.device, dtype: torch.dtype) -> tuple[int, int, int]:
    """(ROWS, BLOCK_D, num_warps): see the module docstring."""
    if device.type == "cpu":  # interpreter: as few programs as possible
        tile, max_block_d, warps = INTERPRETER_TILE, INTERPRETER_TILE, 1
    else:
        # float64 math (atan, tanh backward) needs ~200 registers a thread at 8 elements
        shrink = 2 if dtype == torch.float64 else 1
        tile, max_block_d, warps = GPU_TILE // shrink, GPU_MAX_BLOCK_D // shrink, GPU_WARPS
    block_d = min(triton.next_power_of_2(max(d, 1)), max_block_d)
    rows = min(max(tile // block_d, 1), triton.next_power_of_2(max(b, 1)))
    return rows, block_d, warps


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _scalars(scale: int, clamp: float) -> tuple[int, float, float]:
    scale = int(scale)
    if not 0 <= scale < len(SCALES):
        raise ValueError(f"scale code must be in [0, {len(SCALES)}), got {scale}")
    clamp = float(clamp)
    return scale, clamp, clamp * TWO_OVER_PI  # the reference's Python product, rounded in the kernel


def affine_coupling_triton(
    x2: torch.Tensor, s: torch.Tensor, t: torch.Tensor, y2: torch.Tensor, logdet: torch.Tensor,
    scale: int, clamp: float, inverse: bool,
) -> None:
    """Writes y2 (the shape of x2) and logdet (B,) of the affine coupling (forward or inverse).

    Contiguous tensors on one device, of one dtype; ``scale`` the index in SCALES.
    """
    scale, clamp, gain = _scalars(scale, clamp)
    b, d = _rows(x2)
    if b == 0:
        return
    rows, block_d, warps = _blocks(b, d, x2.device, x2.dtype)
    with torch.cuda.device(x2.device) if x2.is_cuda else contextlib.nullcontext():
        _affine_coupling_kernel[(triton.cdiv(b, rows),)](
            x2, s, t, y2, logdet, b, d, clamp, gain,
            ACC=_acc(x2.dtype), SCALE=scale, INVERSE=bool(inverse), ROWS=rows, BLOCK_D=block_d,
            num_warps=warps,
            # no FMA contraction: every product and sum rounds as the reference's
            enable_fp_fusion=False,
        )


def affine_coupling_backward_triton(
    grad_y2: torch.Tensor, grad_logdet: torch.Tensor, x2: torch.Tensor, s: torch.Tensor, t: torch.Tensor,
    grad_x2: torch.Tensor, grad_s: torch.Tensor, grad_t: torch.Tensor,
    scale: int, clamp: float, inverse: bool,
) -> None:
    """Writes grad_x2, grad_s, grad_t of the affine coupling given grad_y2 and grad_logdet (B,)."""
    scale, clamp, gain = _scalars(scale, clamp)
    b, d = _rows(x2)
    if b == 0 or d == 0:
        return
    rows, block_d, warps = _blocks(b, d, x2.device, x2.dtype)
    with torch.cuda.device(x2.device) if x2.is_cuda else contextlib.nullcontext():
        _affine_coupling_backward_kernel[(triton.cdiv(b, rows),)](
            grad_y2, grad_logdet, x2, s, t, grad_x2, grad_s, grad_t, b, d, clamp, gain,
            ACC=_acc(x2.dtype), SCALE=scale, INVERSE=bool(inverse), ROWS=rows, BLOCK_D=block_d,
            num_warps=warps, enable_fp_fusion=False,
        )


# ---------------------------------------------------------------------------
# The whole flow (CouplingFlow, §3.2 Figure 3.1(b); spec: coupling_flow_reference
# in dgm_fast/coupling/reference.py), one kernel per direction and one for the
# backward.
#
# A program owns BLOCK_M rows and runs them through every block: the halves
# z1, z2 stay in registers as [BLOCK_M, P] tiles (P: the larger half padded
# for tl.dot), each coupling's subnet is a chain of kernels/mlp_tiles.py
# products with the packed weights read from L2, and a permutation is one
# store of both halves to a scratch row and one gather load back (the column
# indices as data: no data-dependent register shuffles). The backward runs
# the blocks in reverse, recomputing each block from its input in `saved`
# (the forward's activations are never read back), with the subnets'
# activations kept in per-program scratch slots; weight gradients go to a
# per-program partial buffer (no atomics: deterministic), summed at the end.
# ---------------------------------------------------------------------------
LEAKY_SLOPE: tl.constexpr = tl.constexpr(0.01)  # F.leaky_relu's default, the reference's
PARTIAL_BYTES = 64 << 20  # the backward's per-program weight-gradient partials, at most (all programs)


@triton.jit
def _flow_act(h, ACT: tl.constexpr):
    """ACTIVATIONS[ACT] of the reference (relu, leaky_relu, tanh, elu); NaN propagates."""
    if ACT == 0:
        a = tl.where(h < 0.0, 0.0, h)
    elif ACT == 1:
        a = tl.where(h < 0.0, h * _const(LEAKY_SLOPE, h), h)
    elif ACT == 2:
        a = _tanh(h)
    else:
        a = tl.where(h < 0.0, _exp(h) - 1.0, h)
    return a


@triton.jit
def _flow_act_grad(g, a, ACT: tl.constexpr):
    """The activation's backward from its output a, as torch's threshold_backward / leaky_relu_backward /
    tanh_backward / elu_backward (csrc/cpu/coupling_math.h activation_grad)."""
    if ACT == 0:
        r = tl.where(a <= 0.0, 0.0, g)
    elif ACT == 1:
        r = tl.where(a > 0.0, g, g * _const(LEAKY_SLOPE, g))
    elif ACT == 2:
        r = g * (1.0 - a * a)
    else:
        r = tl.where(a <= 0.0, g * (a + 1.0), g)
    return r


@triton.jit
def _save(ptr, value, rows, row_ok, WIDTH, P: tl.constexpr):
    """value's real [rows, WIDTH] part to a row-major matrix of WIDTH columns."""
    cols = tl.arange(0, P)[None, :]
    tl.store(ptr + rows[:, None] * WIDTH + cols, value.to(ptr.dtype.element_ty), mask=row_ok[:, None] & (cols < WIDTH))


@triton.jit
def _subnet(cond, slots, w_c, b_c, saved_c, rows, row_ok, n_rows,
            ACT: tl.constexpr, N_LAYERS: tl.constexpr, CW: tl.constexpr, XW: tl.constexpr, HIDDEN: tl.constexpr,
            P: tl.constexpr, H_PAD: tl.constexpr, K_LAST: tl.constexpr, SLOT: tl.constexpr, BLOCK_M: tl.constexpr,
            KEEP: tl.constexpr, SAVE: tl.constexpr):
    """(s, t) [BLOCK_M, P] of one coupling's subnet Linear -> act -> ... -> Linear on cond.

    Layer k's input is staged in slot k (KEEP: the backward reads them) or always in the first slot;
    SAVE writes cond, each hidden output and (s, t) to saved_c in the reference's layout."""
    stage(slots, cond, BLOCK_M, P)
    if SAVE:
        _save(saved_c, cond, rows, row_ok, CW, P)
    slot = slots
    w_last = w_c
    if N_LAYERS > 1:
        saved_h = saved_c + n_rows * CW
        a = _flow_act(matmul(slots, w_c, P, H_PAD, True, BLOCK_M) + bias(b_c, H_PAD), ACT)
        a = tl.where((tl.arange(0, H_PAD)[None, :] < HIDDEN), a, 0.0)  # padded units: 0 (their zero weights times inf is NaN)
        for k in tl.static_range(1, N_LAYERS - 1):
            if KEEP:
                slot = slots + k * SLOT
            stage(slot, a, BLOCK_M, H_PAD)
            if SAVE:
                _save(saved_h + (k - 1) * n_rows * HIDDEN, a, rows, row_ok, HIDDEN, H_PAD)
            h = matmul(slot, w_c + H_PAD * P + (k - 1) * H_PAD * H_PAD, H_PAD, H_PAD, True, BLOCK_M)
            a = _flow_act(h + bias(b_c + k * H_PAD, H_PAD), ACT)
            a = tl.where((tl.arange(0, H_PAD)[None, :] < HIDDEN), a, 0.0)
        if KEEP:
            slot = slots + (N_LAYERS - 1) * SLOT
        stage(slot, a, BLOCK_M, H_PAD)
        if SAVE:
            _save(saved_h + (N_LAYERS - 2) * n_rows * HIDDEN, a, rows, row_ok, HIDDEN, H_PAD)
        w_last = w_c + H_PAD * P + (N_LAYERS - 2) * H_PAD * H_PAD
    b_last = b_c + (N_LAYERS - 1) * H_PAD
    real = (tl.arange(0, P)[None, :] < XW)
    s = tl.where(real, matmul(slot, w_last, K_LAST, P, True, BLOCK_M) + bias(b_last, P), 0.0)
    t = tl.where(real, matmul(slot, w_last + P * K_LAST, K_LAST, P, True, BLOCK_M) + bias(b_last + P, P), 0.0)
    if SAVE:
        saved_st = saved_c + n_rows * (CW + (N_LAYERS - 1) * HIDDEN)
        cols = tl.arange(0, P)[None, :]
        at = saved_st + rows[:, None] * (2 * XW) + cols
        mask = row_ok[:, None] & (cols < XW)
        tl.store(at, s.to(saved_st.dtype.element_ty), mask=mask)
        tl.store(at + XW, t.to(saved_st.dtype.element_ty), mask=mask)
    return s, t


@triton.jit
def _couple(cond, x, slots, w_c, b_c, saved_c, rows, row_ok, n_rows, clamp, gain,
            SCALE: tl.constexpr, ACT: tl.constexpr, INVERSE: tl.constexpr, N_LAYERS: tl.constexpr,
            CW: tl.constexpr, XW: tl.constexpr, HIDDEN: tl.constexpr, P: tl.constexpr, H_PAD: tl.constexpr,
            K_LAST: tl.constexpr, SLOT: tl.constexpr, BLOCK_M: tl.constexpr, KEEP: tl.constexpr,
            SAVE: tl.constexpr):
    """One affine coupling (§2.2.3) of x from cond: (y, this coupling's logdet per row, s)."""
    s, t = _subnet(cond, slots, w_c, b_c, saved_c, rows, row_ok, n_rows, ACT, N_LAYERS, CW, XW, HIDDEN, P, H_PAD,
                   K_LAST, SLOT, BLOCK_M, KEEP, SAVE)
    real = (tl.arange(0, P)[None, :] < XW)
    l = tl.where(real, _log_scale(s, clamp, gain, SCALE), 0.0)
    if INVERSE:
        y = (x - t) * _exp(-l)
        logdet = -tl.sum(l, axis=1)
    else:
        y = x * _exp(l) + t
        logdet = tl.sum(l, axis=1)
    return tl.where(real, y, 0.0), logdet, s


@triton.jit
def _permute(x1, x2, z_slot, idx_ptr, D1: tl.constexpr, D2: tl.constexpr, P: tl.constexpr,
             BLOCK_M: tl.constexpr):
    """The halves of cat(x1, x2)[:, idx]: both halves to a scratch row, then a gather load."""
    at = z_slot + tl.arange(0, BLOCK_M)[:, None] * (2 * P)  # a row holds D1 + D2 <= 2P values
    cols = tl.arange(0, P)[None, :]
    tl.debug_barrier()  # the previous gather's reads are done
    tl.store(at + cols, x1, mask=cols < D1)
    tl.store(at + D1 + cols, x2, mask=cols < D2)
    tl.debug_barrier()
    i1 = tl.load(idx_ptr + cols, mask=cols < D1, other=0)
    i2 = tl.load(idx_ptr + D1 + cols, mask=cols < D2, other=0)
    return tl.load(at + i1, mask=cols < D1, other=0.0), tl.load(at + i2, mask=cols < D2, other=0.0)


@triton.jit
def _load_halves(ptr, rows, row_ok, D1: tl.constexpr, D2: tl.constexpr, P: tl.constexpr, ACC: tl.constexpr):
    """The [BLOCK_M, P] halves of rows of a (n, D1 + D2) matrix, 0 outside it."""
    at = ptr + rows[:, None] * (D1 + D2) + tl.arange(0, P)[None, :]
    x1 = tl.load(at, mask=row_ok[:, None] & (tl.arange(0, P)[None, :] < D1), other=0.0).to(ACC)
    x2 = tl.load(at + D1, mask=row_ok[:, None] & (tl.arange(0, P)[None, :] < D2), other=0.0).to(ACC)
    return x1, x2


@triton.jit
def _store_halves(ptr, x1, x2, rows, row_ok, D1: tl.constexpr, D2: tl.constexpr, P: tl.constexpr):
    at = ptr + rows[:, None] * (D1 + D2) + tl.arange(0, P)[None, :]
    tl.store(at, x1.to(ptr.dtype.element_ty), mask=row_ok[:, None] & (tl.arange(0, P)[None, :] < D1))
    tl.store(at + D1, x2.to(ptr.dtype.element_ty), mask=row_ok[:, None] & (tl.arange(0, P)[None, :] < D2))


@triton.jit(do_not_specialize=["n_rows"])  # a batch of 1 would be a constexpr, without .to
def _coupling_flow_kernel(
    z_ptr, w_ptr, b_ptr, idx_ptr, scratch_ptr, out_ptr, logdet_ptr, saved_ptr, n_rows,
    clamp: tl.float64, gain: tl.float64,
    ACC: tl.constexpr, SCALE: tl.constexpr, ACT: tl.constexpr, INVERSE: tl.constexpr, SAVE: tl.constexpr,
    N_BLOCKS: tl.constexpr, N_LAYERS: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr, HIDDEN: tl.constexpr,
    P: tl.constexpr, H_PAD: tl.constexpr, K_LAST: tl.constexpr, W_MAX: tl.constexpr,
    W_STRIDE: tl.constexpr, B_STRIDE: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """out, logdet (and the forward's saved: block inputs, then with SAVE the activations) of the flow."""
    clamp = tl.full([], clamp, ACC)  # rounded once, as torch rounds the reference's Python scalars
    gain = tl.full([], gain, ACC)
    pid = tl.program_id(0).to(tl.int64)
    n_rows = n_rows.to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    z_slot = scratch_ptr + pid * (BLOCK_M * (2 * P + W_MAX))
    a_slot = z_slot + BLOCK_M * 2 * P
    x1, x2 = _load_halves(z_ptr, rows, row_ok, D1, D2, P, ACC)
    logdet = tl.zeros([BLOCK_M], ACC)
    # per block, the saved activations of its two couplings: cond, hidden outputs, (s, t) each
    act_block = n_rows * (3 * (D1 + D2) + 2 * (N_LAYERS - 1) * HIDDEN)
    act_odd = n_rows * (D1 + (N_LAYERS - 1) * HIDDEN + 2 * D2)
    act_base = saved_ptr + N_BLOCKS * n_rows * (D1 + D2)
    for i in range(N_BLOCKS):
        if INVERSE:
            b = N_BLOCKS - 1 - i
            x1, x2 = _permute(x1, x2, z_slot, idx_ptr + (2 * b + 1) * (D1 + D2), D1, D2, P, BLOCK_M)
            x1, ld1, _s = _couple(x2, x1, a_slot, w_ptr + (2 * b + 1) * W_STRIDE, b_ptr + (2 * b + 1) * B_STRIDE,
                                  saved_ptr, rows, row_ok, n_rows, clamp, gain, SCALE, ACT, True, N_LAYERS, D2, D1,
                                  HIDDEN, P, H_PAD, K_LAST, 0, BLOCK_M, False, False)
            x2, ld2, _s = _couple(x1, x2, a_slot, w_ptr + 2 * b * W_STRIDE, b_ptr + 2 * b * B_STRIDE,
                                  saved_ptr, rows, row_ok, n_rows, clamp, gain, SCALE, ACT, True, N_LAYERS, D1, D2,
                                  HIDDEN, P, H_PAD, K_LAST, 0, BLOCK_M, False, False)
            logdet = logdet + ld1 + ld2
        else:
            b = i
            _store_halves(saved_ptr + b * n_rows * (D1 + D2), x1, x2, rows, row_ok, D1, D2, P)
            saved_c = act_base + b * act_block
            x2, ld2, _s = _couple(x1, x2, a_slot, w_ptr + 2 * b * W_STRIDE, b_ptr + 2 * b * B_STRIDE,
                                  saved_c, rows, row_ok, n_rows, clamp, gain, SCALE, ACT, False, N_LAYERS, D1, D2,
                                  HIDDEN, P, H_PAD, K_LAST, 0, BLOCK_M, False, SAVE)
            x1, ld1, _s = _couple(x2, x1, a_slot, w_ptr + (2 * b + 1) * W_STRIDE, b_ptr + (2 * b + 1) * B_STRIDE,
                                  saved_c + act_odd, rows, row_ok, n_rows, clamp, gain, SCALE, ACT, False, N_LAYERS,
                                  D2, D1, HIDDEN, P, H_PAD, K_LAST, 0, BLOCK_M, False, SAVE)
            logdet = logdet + ld2 + ld1
            x1, x2 = _permute(x1, x2, z_slot, idx_ptr + 2 * b * (D1 + D2), D1, D2, P, BLOCK_M)
    _store_halves(out_ptr, x1, x2, rows, row_ok, D1, D2, P)
    tl.store(logdet_ptr + rows, logdet.to(logdet_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _weight_grad(gw_ptr, gb_ptr, d_ptr, a_ptr, N: tl.constexpr, K: tl.constexpr, BLOCK_M: tl.constexpr):
    """gw (N, K) += d^T a and gb (N,) += d's column sums, for the staged tiles d [BLOCK_M, N] and
    a [BLOCK_M, K], MIN_DOT rows of gw at a time (a whole 256 x 256 tile would not fit in registers)."""
    rows = tl.arange(0, BLOCK_M)
    kk = tl.arange(0, K)
    a = tl.load(a_ptr + rows[:, None] * K + kk[None, :])
    for n0 in range(0, N, BLOCK_K):
        nn = n0 + tl.arange(0, BLOCK_K)
        d = tl.load(d_ptr + rows[:, None] * N + nn[None, :])
        at = gw_ptr + nn[:, None] * K + kk[None, :]
        tl.store(at, tl.load(at) + tl.dot(tl.trans(d), a, input_precision="ieee"))
        tl.store(gb_ptr + nn, tl.load(gb_ptr + nn) + tl.sum(d, axis=0))


@triton.jit
def _couple_backward(gy, g_log, x, s, slots, d_slot, w_c, gw_c, gb_c, row_ok, clamp, gain,
                     SCALE: tl.constexpr, ACT: tl.constexpr, N_LAYERS: tl.constexpr, XW: tl.constexpr,
                     HIDDEN: tl.constexpr, P: tl.constexpr, H_PAD: tl.constexpr, K_LAST: tl.constexpr,
                     SLOT: tl.constexpr, BLOCK_M: tl.constexpr):
    """(dL/dx, dL/dcond) of the forward coupling y = x e^l + t, l = g(s), (s, t) = subnet(cond), given
    dL/dy and dL/dlogdet (the formulas of affine_coupling_backward_reference), with the subnet's weight
    gradients added to gw_c, gb_c; its inputs are in slots (_subnet's KEEP)."""
    real = row_ok[:, None] & (tl.arange(0, P)[None, :] < XW)
    l, dl = _log_scale_and_derivative(s, clamp, gain, SCALE)
    e = _exp(l)
    gx = gy * e
    gs = gy * x * e + g_log[:, None]
    if SCALE != 0:
        gs = gs * dl
    gs = tl.where(real, gs, 0.0)
    gt = tl.where(real, gy, 0.0)
    # the output layer (s rows, then t rows, of a (2P, K_LAST) packed weight)
    last = 0
    if N_LAYERS > 1:
        last = H_PAD * P + (N_LAYERS - 2) * H_PAD * H_PAD
    w_last, gw_last = w_c + last, gw_c + last
    gb_last = gb_c + (N_LAYERS - 1) * H_PAD
    a_last = slots + (N_LAYERS - 1) * SLOT
    stage(d_slot, gs, BLOCK_M, P)
    _weight_grad(gw_last, gb_last, d_slot, a_last, P, K_LAST, BLOCK_M)
    delta = matmul(d_slot, w_last, P, K_LAST, False, BLOCK_M)
    stage(d_slot, gt, BLOCK_M, P)
    _weight_grad(gw_last + P * K_LAST, gb_last + P, d_slot, a_last, P, K_LAST, BLOCK_M)
    delta += matmul(d_slot, w_last + P * K_LAST, P, K_LAST, False, BLOCK_M)
    if N_LAYERS > 1:
        for j in tl.static_range(N_LAYERS - 2):  # hidden layers L-2 .. 1: H_PAD -> H_PAD
            k = N_LAYERS - 2 - j  # input in slot k, output (post-activation) in slot k + 1
            a_out = tl.load(tile(slots + (k + 1) * SLOT, BLOCK_M, H_PAD))
            delta = tl.where((tl.arange(0, H_PAD)[None, :] < HIDDEN), _flow_act_grad(delta, a_out, ACT), 0.0)
            stage(d_slot, delta, BLOCK_M, H_PAD)
            offset = H_PAD * P + (k - 1) * H_PAD * H_PAD
            _weight_grad(gw_c + offset, gb_c + k * H_PAD, d_slot, slots + k * SLOT, H_PAD, H_PAD, BLOCK_M)
            delta = matmul(d_slot, w_c + offset, H_PAD, H_PAD, False, BLOCK_M)
        # layer 0: P -> H_PAD
        a_out = tl.load(tile(slots + SLOT, BLOCK_M, H_PAD))
        delta = tl.where((tl.arange(0, H_PAD)[None, :] < HIDDEN), _flow_act_grad(delta, a_out, ACT), 0.0)
        stage(d_slot, delta, BLOCK_M, H_PAD)
        _weight_grad(gw_c, gb_c, d_slot, slots, H_PAD, P, BLOCK_M)
        delta = matmul(d_slot, w_c, H_PAD, P, False, BLOCK_M)
    return gx, delta


@triton.jit(do_not_specialize=["n_rows"])
def _coupling_flow_backward_kernel(
    gu_ptr, gl_ptr, saved_ptr, w_ptr, b_ptr, idx_ptr, scratch_ptr, gz_ptr, gw_ptr, gb_ptr, n_rows,
    clamp: tl.float64, gain: tl.float64,
    ACC: tl.constexpr, SCALE: tl.constexpr, ACT: tl.constexpr,
    N_BLOCKS: tl.constexpr, N_LAYERS: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr, HIDDEN: tl.constexpr,
    P: tl.constexpr, H_PAD: tl.constexpr, K_LAST: tl.constexpr,
    W_STRIDE: tl.constexpr, B_STRIDE: tl.constexpr, SLOT: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """dL/dz and (added to this program's partials) dL/dweights, dL/dbiases of the forward flow, for the
    row blocks pid, pid + programs, ..."""
    clamp = tl.full([], clamp, ACC)
    gain = tl.full([], gain, ACC)
    pid = tl.program_id(0)
    n_rows = n_rows.to(tl.int64)
    z_slot = scratch_ptr + pid.to(tl.int64) * (BLOCK_M * 2 * P + (1 + 2 * N_LAYERS) * SLOT)
    d_slot = z_slot + BLOCK_M * 2 * P
    slots_a = d_slot + SLOT  # coupling 2b's subnet inputs
    slots_b = slots_a + N_LAYERS * SLOT  # coupling 2b + 1's
    gw_ptr += pid.to(tl.int64) * (2 * N_BLOCKS * W_STRIDE)
    gb_ptr += pid.to(tl.int64) * (2 * N_BLOCKS * B_STRIDE)
    for rb in range(pid, tl.cdiv(n_rows, BLOCK_M), tl.num_programs(0)):
        rows = tl.arange(0, BLOCK_M).to(tl.int64) + rb * BLOCK_M  # int64 element offsets below
        row_ok = rows < n_rows
        g1, g2 = _load_halves(gu_ptr, rows, row_ok, D1, D2, P, ACC)
        g_log = tl.load(gl_ptr + rows, mask=row_ok, other=0.0).to(ACC)
        for i in range(N_BLOCKS):
            b = N_BLOCKS - 1 - i
            # through the permutation, then recompute the block from its input
            g1, g2 = _permute(g1, g2, z_slot, idx_ptr + (2 * b + 1) * (D1 + D2), D1, D2, P, BLOCK_M)
            x1, x2 = _load_halves(saved_ptr + b * n_rows * (D1 + D2), rows, row_ok, D1, D2, P, ACC)
            c_a, c_b = 2 * b, 2 * b + 1
            y2, _ld, s_a = _couple(x1, x2, slots_a, w_ptr + c_a * W_STRIDE, b_ptr + c_a * B_STRIDE, saved_ptr,
                                   rows, row_ok, n_rows, clamp, gain, SCALE, ACT, False, N_LAYERS, D1, D2, HIDDEN,
                                   P, H_PAD, K_LAST, SLOT, BLOCK_M, True, False)
            s_b, _t = _subnet(y2, slots_b, w_ptr + c_b * W_STRIDE, b_ptr + c_b * B_STRIDE, saved_ptr, rows,
                              row_ok, n_rows, ACT, N_LAYERS, D2, D1, HIDDEN, P, H_PAD, K_LAST, SLOT, BLOCK_M,
                              True, False)
            gx1, g_cond = _couple_backward(g1, g_log, x1, s_b, slots_b, d_slot, w_ptr + c_b * W_STRIDE,
                                           gw_ptr + c_b * W_STRIDE, gb_ptr + c_b * B_STRIDE, row_ok, clamp, gain,
                                           SCALE, ACT, N_LAYERS, D1, HIDDEN, P, H_PAD, K_LAST, SLOT, BLOCK_M)
            gx2, g_cond = _couple_backward(g2 + g_cond, g_log, x2, s_a, slots_a, d_slot, w_ptr + c_a * W_STRIDE,
                                           gw_ptr + c_a * W_STRIDE, gb_ptr + c_a * B_STRIDE, row_ok, clamp, gain,
                                           SCALE, ACT, N_LAYERS, D2, HIDDEN, P, H_PAD, K_LAST, SLOT, BLOCK_M)
            g1, g2 = gx1 + g_cond, gx2
        _store_halves(gz_ptr, g1, g2, rows, row_ok, D1, D2, P)


class _FlowShape(NamedTuple):
    """A flow's sizes and its packed layout: per coupling, layer 0 (H_PAD, P), the hidden layers
    (H_PAD, H_PAD), the output layer (2P, K_LAST) with s in rows [0, P) and t in rows [P, 2P); biases
    alike. Zero padding is exact (padded units are masked to 0; padded s, t columns too)."""

    n_blocks: int
    n_layers: int
    d1: int
    d2: int
    hidden: int
    p: int
    h_pad: int
    k_last: int

    @property
    def w_stride(self) -> int:
        first = self.h_pad * self.p if self.n_layers > 1 else 0
        return first + max(self.n_layers - 2, 0) * self.h_pad**2 + 2 * self.p * self.k_last

    @property
    def b_stride(self) -> int:
        return (self.n_layers - 1) * self.h_pad + 2 * self.p

    @property
    def w_max(self) -> int:
        return max(self.p, self.h_pad)

    def constexprs(self) -> dict:
        return {"N_BLOCKS": self.n_blocks, "N_LAYERS": self.n_layers, "D1": self.d1, "D2": self.d2,
                "HIDDEN": self.hidden, "P": self.p, "H_PAD": self.h_pad, "K_LAST": self.k_last,
                "W_STRIDE": self.w_stride, "B_STRIDE": self.b_stride}


def _flow_shape(weights: Sequence[torch.Tensor], perms: Sequence[torch.Tensor]) -> _FlowShape:
    n_blocks = len(perms)
    n_layers = len(weights) // (2 * n_blocks)
    dim = perms[0].numel()
    hidden = weights[0].shape[0] if n_layers > 1 else 0
    widths = {w.shape[0] for c in range(2 * n_blocks) for w in weights[c * n_layers:(c + 1) * n_layers - 1]}
    if widths and widths != {hidden}:
        raise ValueError(f"the Triton coupling flow needs one hidden width in every subnet, got {sorted(widths)}")
    p = pad(dim - dim // 2)
    h_pad = pad(hidden) if n_layers > 1 else p
    return _FlowShape(n_blocks, n_layers, dim // 2, dim - dim // 2, hidden, p, h_pad, h_pad if n_layers > 1 else p)


def _layer_views(w_row: torch.Tensor, b_row: torch.Tensor, shape: _FlowShape) -> list:
    """(weight view, bias view) of each layer of one coupling in its packed rows; the output layer's are
    (2, P, K_LAST) and (2, P): s, then t."""
    views, w_at, b_at = [], 0, 0
    for k in range(shape.n_layers - 1):
        n_in = shape.p if k == 0 else shape.h_pad
        views.append((w_row[w_at:w_at + shape.h_pad * n_in].view(shape.h_pad, n_in), b_row[b_at:b_at + shape.h_pad]))
        w_at, b_at = w_at + shape.h_pad * n_in, b_at + shape.h_pad
    views.append((w_row[w_at:].view(2, shape.p, shape.k_last), b_row[b_at:].view(2, shape.p)))
    return views


def _real_part(w_view: torch.Tensor, b_view: torch.Tensor, weight: torch.Tensor, last: bool):
    """The views' parts that hold ``weight``'s layer (the rest is padding)."""
    n_out, n_in = weight.shape
    if last:
        return w_view[:, : n_out // 2, :n_in], b_view[:, : n_out // 2]
    return w_view[:n_out, :n_in], b_view[:n_out]


def _pack_flow(weights, biases, shape: _FlowShape, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    n_c = 2 * shape.n_blocks
    w = weights[0].new_zeros(n_c, shape.w_stride, dtype=dtype)
    b = weights[0].new_zeros(n_c, shape.b_stride, dtype=dtype)
    for c in range(n_c):
        for k, (wv, bv) in enumerate(_layer_views(w[c], b[c], shape)):
            layer = c * shape.n_layers + k
            dst_w, dst_b = _real_part(wv, bv, weights[layer], k == shape.n_layers - 1)
            dst_w.copy_(weights[layer].view(dst_w.shape))
            dst_b.copy_(biases[layer].view(dst_b.shape))
    return w, b


def _unpack_flow(w: torch.Tensor, b: torch.Tensor, shape: _FlowShape, grad_w, grad_b) -> None:
    """Writes the layers of packed gradients w, b into the lists grad_w, grad_b (shaped as the layers)."""
    for c in range(2 * shape.n_blocks):
        for k, (wv, bv) in enumerate(_layer_views(w[c], b[c], shape)):
            layer = c * shape.n_layers + k
            src_w, src_b = _real_part(wv, bv, grad_w[layer], k == shape.n_layers - 1)
            grad_w[layer].copy_(src_w.reshape(grad_w[layer].shape))
            grad_b[layer].copy_(src_b.reshape(grad_b[layer].shape))


def _permutation_indices(perms: Sequence[torch.Tensor]) -> torch.Tensor:
    """(n_blocks, 2, dim) int32: each block's permutation and its inverse."""
    return torch.stack([torch.stack([p, torch.argsort(p)]) for p in perms]).to(torch.int32)


def _flow_codes(scale: int, clamp: float, activation: int) -> tuple[int, float, float, int]:
    scale, clamp, gain = _scalars(scale, clamp)
    activation = int(activation)
    if not 0 <= activation < len(ACTIVATIONS):
        raise ValueError(f"activation code must be in [0, {len(ACTIVATIONS)}), got {activation}")
    return scale, clamp, gain, activation


def coupling_flow_triton(z, weights, biases, perms, out, logdet, saved, scale: int, clamp: float, activation: int,
                         inverse: bool, store_activations: bool) -> None:
    """Writes out, logdet and (forward) saved of ``dgm_fast::coupling_flow`` (layout: its reference).

    Contiguous z (B, dim) and nn.Linear-layout layers, float32 or float64; scale and activation codes are
    indices in SCALES and ACTIVATIONS."""
    scale, clamp, gain, activation = _flow_codes(scale, clamp, activation)
    n = z.shape[0]
    if n == 0:
        return
    shape = _flow_shape(weights, perms)
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    w, b = _pack_flow(weights, biases, shape, acc)
    block_m, warps = block_rows(n, shape.w_max, z)
    programs = triton.cdiv(n, block_m)
    scratch = torch.empty(programs * block_m * (2 * shape.p + shape.w_max), dtype=acc, device=z.device)
    with torch.cuda.device(z.device) if z.is_cuda else contextlib.nullcontext():
        _coupling_flow_kernel[(programs,)](
            z, w, b, _permutation_indices(perms), scratch, out, logdet, saved if saved.numel() else out, n,
            clamp, gain, ACC=_acc(z.dtype), SCALE=scale, ACT=activation, INVERSE=bool(inverse),
            SAVE=bool(store_activations) and not inverse, W_MAX=shape.w_max, BLOCK_M=block_m,
            **shape.constexprs(), num_warps=warps, num_stages=1, enable_fp_fusion=False,
        )


def coupling_flow_backward_triton(grad_u, grad_logdet, saved, weights, biases, perms, grad_z, grad_w, grad_b,
                                  scale: int, clamp: float, activation: int, store_activations: bool) -> None:
    """Writes grad_z and the lists grad_w, grad_b of ``dgm_fast::coupling_flow_backward``. Only the block
    inputs at the head of ``saved`` are read: the backward recomputes the rest in registers and
    scratch, which is cheaper on a GPU than reading stored activations back."""
    scale, clamp, gain, activation = _flow_codes(scale, clamp, activation)
    n = grad_u.shape[0]
    if n == 0:
        for g in (*grad_w, *grad_b):
            g.zero_()
        return
    shape = _flow_shape(weights, perms)
    acc = torch.float64 if grad_u.dtype == torch.float64 else torch.float32
    w, b = _pack_flow(weights, biases, shape, acc)
    # 8 warps: the backward holds two couplings' tiles at once (at 4 warps, hidden 64 spills on sm_90)
    block_m, warps = block_rows(n, shape.w_max, grad_u)[0], 8
    programs = triton.cdiv(n, block_m)
    n_c = 2 * shape.n_blocks
    # one partial per program: PARTIAL_BYTES in all and (GPU) one program a SM, each looping over row blocks
    per_program = n_c * (shape.w_stride + shape.b_stride) * grad_u.element_size()
    programs = max(1, min(programs, PARTIAL_BYTES // per_program))
    if grad_u.is_cuda:
        programs = min(programs, torch.cuda.get_device_properties(grad_u.device).multi_processor_count)
    gw = grad_u.new_zeros(programs, n_c, shape.w_stride, dtype=acc)
    gb = grad_u.new_zeros(programs, n_c, shape.b_stride, dtype=acc)
    slot = block_m * shape.w_max
    scratch = torch.empty(programs * (block_m * 2 * shape.p + (1 + 2 * shape.n_layers) * slot), dtype=acc,
                          device=grad_u.device)
    with torch.cuda.device(grad_u.device) if grad_u.is_cuda else contextlib.nullcontext():
        _coupling_flow_backward_kernel[(programs,)](
            grad_u, grad_logdet, saved, w, b, _permutation_indices(perms), scratch, grad_z, gw, gb, n,
            clamp, gain, ACC=_acc(grad_u.dtype), SCALE=scale, ACT=activation, SLOT=slot, BLOCK_M=block_m,
            **shape.constexprs(), num_warps=warps, num_stages=1, enable_fp_fusion=False,
        )
    _unpack_flow(gw.sum(0), gb.sum(0), shape, grad_w, grad_b)
