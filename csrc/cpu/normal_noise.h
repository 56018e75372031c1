// The counter-based N(0, 1) stream of philox.h, generated a tile at a time on
// the CPU so fused kernels consume noise from L1 and never from memory.
// Every loop here is written to vectorize (gcc -O3, any x86 target clone).
#pragma once

#include <cmath>
#include <cstdint>

#include "cpu/philox_simd.h"
#include "cpu/vec_math.h"
#include "philox.h"

namespace dgm_fast {
namespace cpu {

// Stream indices per tile: a multiple of 4 (one Philox call makes 4 normals),
// small enough that a tile's noise and Philox words stay in L1.
constexpr int64_t kNoiseTile = 512;

// sin and cos of the reference's Box-Muller angle a = fl32(fl32(2pi) * t), t in
// [0, 1] (dgm_fast/philox.py; CUDA and Triton round it the same way), so that
// every backend evaluates one expression. a is reduced by its nearest quarter
// turn q with pi/2 split in three (Cody-Waite: q * P1 and q * P2 are exact for
// q <= 4), then Cephes sinf/cosf polynomials on [-pi/4, pi/4] and a quadrant
// rotation done with bit masks (no branches, so it vectorizes).
// q = nearbyint(a * 2/pi) is computed by adding and subtracting 1.5 * 2^23,
// which rounds half-to-even exactly as nearbyint does but vectorizes without
// SSE4.1 roundps (the baseline clone would call libm per element). It needs
// IEEE evaluation: no -ffast-math.
DGM_HD void sincos_angle(float t, float& s, float& c) {
  const float angle = 6.28318530717958648f * t;
  const float q = (angle * 0.636619772367581343f + 0x1.8p23f) - 0x1.8p23f;
  const float a = ((angle - q * 1.5703125f) - q * 4.837512969970703125e-4f) - q * 7.54978995489188216e-8f;
  const float a2 = a * a;
  const float sa = a + a * a2 * (-1.6666654611e-1f + a2 * (8.3321608736e-3f + a2 * -1.9515295891e-4f));
  const float ca = 1.0f - 0.5f * a2 +
                   a2 * a2 * (4.166664568298827e-2f + a2 * (-1.388731625493765e-3f + a2 * 2.443315711809948e-5f));
  const uint32_t quadrant = static_cast<uint32_t>(static_cast<int32_t>(q));
  const uint32_t swap = 0u - (quadrant & 1u);  // all ones in odd quadrants
  const uint32_t sa_bits = float_to_bits(sa), ca_bits = float_to_bits(ca);
  const uint32_t s_bits = (sa_bits & ~swap) | (ca_bits & swap);
  const uint32_t c_bits = (ca_bits & ~swap) | (sa_bits & swap);
  s = bits_to_float(s_bits ^ ((quadrant & 2u) << 30));
  c = bits_to_float(c_bits ^ (((quadrant + 1u) & 2u) << 30));
}

// Box-Muller on one (radius, angle) pair of uniforms, in the compute precision:
// float uses the vectorizable polynomials above, double uses libm exactly as
// the reference (dgm_fast/philox.py) does.
DGM_HD void box_muller(float u_rad, float u_ang, float& z_cos, float& z_sin) {
  const float rho = std::sqrt(-2.0f * log_unit(u_rad));
  float s, c;
  sincos_angle(u_ang, s, c);
  z_cos = rho * c;
  z_sin = rho * s;
}

DGM_HD void box_muller(float u_rad, float u_ang, double& z_cos, double& z_sin) {
  const double rho = std::sqrt(-2.0 * std::log(static_cast<double>(u_rad)));
  const double t = 6.283185307179586 * static_cast<double>(u_ang);
  z_cos = rho * std::cos(t);
  z_sin = rho * std::sin(t);
}

// Scratch for one tile; a tile may straddle one extra group of four.
template <typename acc_t>
struct NoiseTile {
  static constexpr int64_t kCounters = kNoiseTile / 4 + 1;
  alignas(64) uint32_t bits[4][kCounters];
  alignas(64) acc_t normal[4][kCounters];
  alignas(64) acc_t out[4 * kCounters];
};

// Returns z with z[j] = xi(seed, g0 + j) for 0 <= j < n <= kNoiseTile.
template <typename acc_t>
DGM_HD const acc_t* fill_noise_tile(uint64_t seed, uint64_t g0, int64_t n, NoiseTile<acc_t>& t) {
  const uint64_t c_first = g0 >> 2;
  const int64_t count = static_cast<int64_t>(((g0 + n - 1) >> 2) - c_first) + 1;
  philox_words(seed, c_first, count, t.bits[0], NoiseTile<acc_t>::kCounters);
#pragma GCC ivdep
  for (int64_t k = 0; k < count; ++k) {
    box_muller(uniform_from_bits(t.bits[0][k]), uniform_from_bits(t.bits[1][k]), t.normal[0][k], t.normal[1][k]);
    box_muller(uniform_from_bits(t.bits[2][k]), uniform_from_bits(t.bits[3][k]), t.normal[2][k], t.normal[3][k]);
  }
  for (int64_t k = 0; k < count; ++k) {
    for (int w = 0; w < 4; ++w) t.out[4 * k + w] = t.normal[w][k];
  }
  return t.out + (g0 & 3);
}

}  // namespace cpu
}  // namespace dgm_fast
