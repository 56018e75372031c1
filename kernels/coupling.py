"""Triton backend of the affine coupling layer, dissertation §2.2.3 ("Coupling Layers").

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

import torch
import triton
import triton.language as tl

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
