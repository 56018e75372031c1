// Float32 elementary functions for the CPU kernels, written to vectorize: no
// libm calls and no data-dependent branches (every path is computed and the
// result picked by select_f), so a loop over any of them vectorizes under
// gcc -O3 in every target clone. Only IEEE basic operations are used, so with
// -ffp-contract=off every clone (and the scalar code) returns the same bits.
// Needs IEEE evaluation: no -ffast-math (the 1.5 * 2^23 rounding and the NaN
// and infinity handling rely on it). Each comment gives the max error over
// every float input, measured against libm in double; all propagate NaN.
#pragma once

#include <cstdint>
#include <cstring>

#include "philox.h"

namespace dgm_fast {
namespace cpu {

DGM_HD float bits_to_float(uint32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}

DGM_HD uint32_t float_to_bits(float f) {
  uint32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}

constexpr uint32_t kSignBit = 0x80000000u;
constexpr float kInf = __builtin_inff();

// |x|, and |mag| with the sign bit of s ORed in: bit operations, NaN kept.
DGM_HD float abs_f(float x) { return bits_to_float(float_to_bits(x) & ~kSignBit); }
DGM_HD float with_sign_of(float mag, float s) {
  return bits_to_float(float_to_bits(mag) | (float_to_bits(s) & kSignBit));
}

// c ? a : b as a bit mask. A ternary becomes a branch in gcc's IR, and when an
// arm is a constant, jump threading copies the code after it into that arm and
// folds it there; with -ftrapping-math (the default) the folded float ops that
// may raise stay conditional, which if-conversion refuses, and the loop stays
// scalar in the clones without masked arithmetic (seen with gcc 12). Masks
// leave no branch to thread; they compile to a blend (and/andn/or on SSE2).
DGM_HD float select_f(bool c, float a, float b) {
  const uint32_t m = 0u - static_cast<uint32_t>(c);
  return bits_to_float((float_to_bits(a) & m) | (float_to_bits(b) & ~m));
}

// Natural log for u in (0, 1]. Integer bit arithmetic instead of branches so
// that gcc vectorizes the loop: shifting the bits by those of sqrt(1/2) splits
// u = 2^e * (1 + m) with 1 + m in [sqrt(1/2), sqrt(2)); then the Cephes logf
// minimax polynomial in m (about 1 ulp). The split holds for every positive
// normal u, so log1p_f reuses it; zero, subnormals, infinity and NaN give
// finite garbage, so callers must pick those out. The Langevin noise stream
// depends on its exact bits: do not touch.
DGM_HD float log_unit(float u) {
  const uint32_t i = float_to_bits(u) + (0x3F800000u - 0x3F3504F3u);
  const float e = static_cast<float>(static_cast<int32_t>(i >> 23) - 127);
  const float m = bits_to_float((i & 0x007FFFFFu) + 0x3F3504F3u) - 1.0f;
  const float z = m * m;
  float p = 7.0376836292e-2f;
  p = p * m - 1.1514610310e-1f;
  p = p * m + 1.1676998740e-1f;
  p = p * m - 1.2420140846e-1f;
  p = p * m + 1.4249322787e-1f;
  p = p * m - 1.6668057665e-1f;
  p = p * m + 2.0000714765e-1f;
  p = p * m - 2.4999993993e-1f;
  p = p * m + 3.3333331174e-1f;
  const float y = p * m * z - 2.12194440e-4f * e - 0.5f * z;
  return m + y + 0.693359375f * e;
}

// e^x, within 0.99 ulp, with gradual underflow: x < -103.97 gives 0,
// x > 88.722 gives +inf, exp(-inf) = 0, exp(+inf) = +inf.
// Cephes expf: n = nearbyint(x / ln 2) (by the 1.5 * 2^23 trick, whose bits
// also hold n as an integer, so no float-to-int conversion), r = x - n ln 2
// with ln 2 split in two (Cody-Waite: n * 0.693359375 is exact), a degree-7
// minimax polynomial on |r| <= ln(2)/2, then a multiply by 2^n. 2^n is applied
// as 2^(n/2) * 2^(n - n/2) because both halves are normal floats over the
// whole clamped range: results overflow to inf and round correctly into the
// subnormals in the last multiply, with no exponent-field special cases.
// The clamp keeps n in [-150, 128]; NaN fails both comparisons and passes.
DGM_HD float exp_f(float x) {
  float xc = select_f(x > 89.0f, 89.0f, x);
  xc = select_f(xc < -104.0f, -104.0f, xc);
  const float t = xc * 1.44269504088896341f + 0x1.8p23f;
  const float n = t - 0x1.8p23f;
  const int32_t ni = static_cast<int32_t>(float_to_bits(t) - 0x4B400000u);  // bits of 1.5 * 2^23
  const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  const float z = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * z + r + 1.0f;
  const int32_t n1 = ni >> 1;  // arithmetic shift: floor(n / 2)
  const float s1 = bits_to_float(static_cast<uint32_t>(n1 + 127) << 23);
  const float s2 = bits_to_float(static_cast<uint32_t>(ni - n1 + 127) << 23);
  return y * s1 * s2;
}

// atan(x), within 1.75 ulp; atan(+-inf) = +-pi/2 (rounded), exact for +-0 and
// tiny x. Cephes atanf on a = |x|: reduced to |q| <= tan(pi/8) by
//   a > tan(3pi/8):  atan(a) = pi/2 + atan(q), q = -1/a
//   a > tan(pi/8):   atan(a) = pi/4 + atan(q), q = (a-1)/(a+1)
// with one division for all three cases, then the Cephes minimax polynomial.
// pi/2 and pi/4 go in as hi + lo pairs, lo first. Two corrections for the
// middle case, where pi/4 cancels half of atan(q) (ulps of q count double):
// a - 1 is rounded for a < 1/2, and its exact error e = a - (fl(a - 1) + 1)
// goes into q as e / (a + 1) = e * (1 - q) / 2, with no second division
// (max error 2.09 ulp without it). The sign of x goes back as a bit, so atan
// is exactly odd and NaN (whose compares fail) stays NaN.
DGM_HD float atan_f(float x) {
  const float a = abs_f(x);
  const bool big = a > 2.414213562373095f, mid = a > 0.4142135623730950f;
  const float a_minus_1 = a - 1.0f, a_plus_1 = a + 1.0f;
  float num = select_f(mid, a_minus_1, a), den = select_f(mid, a_plus_1, 1.0f);
  float hi = select_f(mid, 7.85398185e-1f, 0.0f), lo = select_f(mid, -2.18556941e-8f, 0.0f);
  num = select_f(big, -1.0f, num);
  den = select_f(big, a, den);
  hi = select_f(big, 1.57079637e+0f, hi);
  lo = select_f(big, -4.37113883e-8f, lo);
  const float e = select_f(mid != big, a - (a_minus_1 + 1.0f), 0.0f);  // mid != big: middle case
  const float q = num / den;
  const float z = q * q;
  float p = 8.05374449538e-2f;
  p = p * z - 1.38776856032e-1f;
  p = p * z + 1.99777106478e-1f;
  p = p * z - 3.33329491539e-1f;
  const float y = hi + (((lo + e * (1.0f - q) * 0.5f) + p * z * q) + q);
  return with_sign_of(y, x);
}

// tanh(x), within 1.33 ulp; tanh(+-inf) = +-1, exactly +-1 for |x| > 9.01,
// exact for +-0 and tiny x. Cephes tanhf: for |x| < 0.625 an odd minimax
// polynomial (there 1 - 2 / (e^2|x| + 1) would cancel), else that formula on
// |x| (e^2|x| = inf gives exactly 1), with the sign of x put back as a bit.
// NaN fails |x| < 0.625 and flows through exp_f.
DGM_HD float tanh_f(float x) {
  const float a = abs_f(x);
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = p * z * a + a;
  const float large = 1.0f - 2.0f / (exp_f(a + a) + 1.0f);
  return with_sign_of(select_f(a < 0.625f, small, large), x);
}

// log(1 + x), within 1.44 ulp for every x > -1 (so also tiny x);
// log1p(-1) = -inf, x < -1 gives NaN, log1p(+inf) = +inf, and x itself where
// fl(1 + x) = 1 (+-0, tiny x). u = fl(1 + x) loses the low bits of x; u - 1 is
// exact, so c = x - (u - 1) is exactly that rounding error, and log(1 + x) =
// log(u) + c / u to first order (fdlibm's correction). u >= 2^-24 is normal,
// as log_unit needs.
DGM_HD float log1p_f(float x) {
  const float u = 1.0f + x;
  const float c = x - (u - 1.0f);
  const float r = log_unit(u) + c / u;
  const float finite = select_f(u == 1.0f, x, r);
  // u outside (0, inf): -inf at u = 0, NaN below, u itself for +inf and NaN.
  float special = select_f(u < 0.0f, bits_to_float(0x7FC00000u), u);
  special = select_f(u == 0.0f, -kInf, special);
  const bool positive_finite = float_to_bits(u) - 1u < 0x7F7FFFFFu;  // no && (a branch)
  return select_f(positive_finite, finite, special);
}

// log(sigmoid(u)) = -(max(-u, 0) + log1p(e^-|u|)), within 1.99 ulp for every u:
// about u - e^u for u -> -inf (-inf at -inf), -e^-u for u -> +inf (a
// subnormal near 100, then -0; -0 at +inf). NaN flows through log1p_f.
DGM_HD float log_sigmoid_f(float u) {
  const float neg = select_f(u < 0.0f, -u, 0.0f);
  return -(neg + log1p_f(exp_f(-abs_f(u))));
}

}  // namespace cpu
}  // namespace dgm_fast
