// Counter-based Gaussian noise shared by the CPU and CUDA kernels.
// The specification (and the tested reference) is dgm_fast/philox.py: element g
// of the stream under a 64-bit seed takes word g % 4 of Box-Muller applied to
// Philox4x32-10(key = seed, counter = (g / 4, 0, 0)).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define DGM_HD __host__ __device__ __forceinline__
#else
#define DGM_HD inline __attribute__((always_inline))
#endif

namespace dgm_fast {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

// Philox4x32-10 in place on the four counter words c0..c3. Written on scalars
// so that compilers vectorize loops over it (vpmuludq on x86).
DGM_HD void philox4x32_10(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3,
                          uint32_t k0, uint32_t k1) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
}

// 23 random bits to ((r >> 9) + 0.5) * 2^-23: exact in float32, inside (0, 1).
DGM_HD float uniform_from_bits(uint32_t r) {
  return static_cast<float>(r >> 9) * 0x1p-23f + 0x1p-24f;
}

}  // namespace dgm_fast
