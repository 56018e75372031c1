// Philox4x32-10 of philox.h on a run of consecutive counters, with explicit
// SIMD on x86. Bit-identical to philox4x32_10 for every key and counter.
//
// Why intrinsics: gcc vectorizes the scalar loop badly (it emulates the
// 32x32->64 multiply with three vpmuludq plus shuffles, or strength-reduces the
// constant into shifts and adds). Here each counter sits in one 64-bit lane
// with its 32-bit word in the low half: vpmuludq reads exactly those halves, so
// a round is 2 multiplies, 2 shifts and 4 xors per vector (3-input vpternlogq
// on AVX-512) and the counter's carry into its high word is a plain 64-bit add.
//
// Why a run-time dispatch: the callers are target_clones functions, and the
// preprocessor runs once per translation unit, so __AVX2__ / __AVX512F__ say
// nothing about the clone being compiled (checked with gcc 12). Each kernel is
// therefore a function with its own target attribute, picked per call from the
// CPU's features. A call covers a whole noise tile (~129 counters, ~0.4 us on
// AVX2), so the two predictable branches cost nothing measurable.
#pragma once

#include <cstdint>

#include "philox.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define DGM_PHILOX_X86 1
#endif

namespace dgm_fast {
namespace cpu {

constexpr int kPhiloxRounds = 10;

// Output layout of every kernel: word w of Philox(seed, c_first + k) goes to
// words[w * stride + k] for 0 <= k < count; nothing else is written.

// Portable kernel: the reference loop (gcc autovectorizes it, if slowly).
// Only CPUs without AVX2 run it, so it is kept out of the callers' clones.
__attribute__((noinline)) inline void philox_words_scalar(uint64_t seed, uint64_t c_first, int64_t count,
                                                          uint32_t* words, int64_t stride) {
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#pragma GCC ivdep
  for (int64_t k = 0; k < count; ++k) {
    const uint64_t c = c_first + k;
    uint32_t c0 = static_cast<uint32_t>(c), c1 = static_cast<uint32_t>(c >> 32), c2 = 0, c3 = 0;
    philox4x32_10(c0, c1, c2, c3, k0, k1);
    words[k] = c0;
    words[stride + k] = c1;
    words[2 * stride + k] = c2;
    words[3 * stride + k] = c3;
  }
}

#if defined(DGM_PHILOX_X86)

// ---------------------------------------------------------------- AVX2 ----
namespace avx2 {

#define DGM_AVX2 __attribute__((target("avx2"))) inline
#define DGM_AVX2_INLINE __attribute__((target("avx2"), always_inline)) inline

using V = __m256i;
constexpr int kLanes = 4;   // counters per vector
constexpr int kBlock = 2;   // vectors in flight, to hide the multiply latency

// Four counter words, one counter per 64-bit lane (word in the low half).
struct State {
  V c0, c1, c2, c3;
};

// Per-round keys, broadcast once per call.
struct Keys {
  V k0[kPhiloxRounds], k1[kPhiloxRounds];
};

DGM_AVX2_INLINE Keys make_keys(uint64_t seed) {
  Keys keys;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < kPhiloxRounds; ++r, k0 += kPhiloxW0, k1 += kPhiloxW1) {
    keys.k0[r] = _mm256_set1_epi32(static_cast<int>(k0));
    keys.k1[r] = _mm256_set1_epi32(static_cast<int>(k1));
  }
  return keys;
}

// Round 0 on counter (c, 0, 0) for the lanes c, c + 1, ...: with c2 = c3 = 0
// the M1 product vanishes: one multiply, two shifts and two xors.
DGM_AVX2_INLINE State first_round(uint64_t c, const Keys& keys) {
  const V ctr = _mm256_add_epi64(_mm256_set1_epi64x(static_cast<int64_t>(c)), _mm256_setr_epi64x(0, 1, 2, 3));
  const V p0 = _mm256_mul_epu32(ctr, _mm256_set1_epi64x(kPhiloxM0));
  const V hi_word = _mm256_srli_epi64(ctr, 32);
  return {_mm256_xor_si256(hi_word, keys.k0[0]),
          _mm256_setzero_si256(),
          _mm256_xor_si256(_mm256_srli_epi64(p0, 32), keys.k1[0]),
          p0};
}

// One later Philox round. The low word of a product is the product itself: its high
// half is garbage that no later vpmuludq or stored low word ever reads.
DGM_AVX2_INLINE void next_round(State& s, V k0, V k1) {
  const V p0 = _mm256_mul_epu32(s.c0, _mm256_set1_epi64x(kPhiloxM0));
  const V p1 = _mm256_mul_epu32(s.c2, _mm256_set1_epi64x(kPhiloxM1));
  s.c0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1, 32), s.c1), k0);
  s.c2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0, 32), s.c3), k1);
  s.c1 = p1;
  s.c3 = p0;
}

// The low halves of the four lanes, packed into 32-bit words.
DGM_AVX2_INLINE __m128i low_words(V v) {
  return _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6)));
}

// Stores the first n (1..kLanes) counters of s.
DGM_AVX2_INLINE void store(const State& s, int64_t n, uint32_t* words, int64_t stride) {
  const V* c[4] = {&s.c0, &s.c1, &s.c2, &s.c3};
  const __m128i mask = _mm_cmpgt_epi32(_mm_set1_epi32(static_cast<int>(n)), _mm_setr_epi32(0, 1, 2, 3));
  for (int w = 0; w < 4; ++w) {
    __m128i* out = reinterpret_cast<__m128i*>(words + w * stride);
    if (n == kLanes) {
      _mm_storeu_si128(out, low_words(*c[w]));
    } else {
      _mm_maskstore_epi32(reinterpret_cast<int*>(out), mask, low_words(*c[w]));
    }
  }
}

// Counters c, ..., c + kLanes * nv - 1 as nv vectors, rounds interleaved.
template <int nv>
DGM_AVX2_INLINE void philox(uint64_t c, const Keys& keys, State (&s)[nv]) {
  for (int v = 0; v < nv; ++v) s[v] = first_round(c + kLanes * v, keys);
  for (int r = 1; r < kPhiloxRounds; ++r) {
    for (int v = 0; v < nv; ++v) next_round(s[v], keys.k0[r], keys.k1[r]);
  }
}

DGM_AVX2 void philox_words(uint64_t seed, uint64_t c_first, int64_t count, uint32_t* words, int64_t stride) {
  const Keys keys = make_keys(seed);
  int64_t k = 0;
  for (; k + kBlock * kLanes <= count; k += kBlock * kLanes) {
    State s[kBlock];
    philox(c_first + k, keys, s);
    for (int v = 0; v < kBlock; ++v) store(s[v], kLanes, words + k + kLanes * v, stride);
  }
  for (; k < count; k += kLanes) {
    State s[1];
    philox(c_first + k, keys, s);
    store(s[0], count - k < kLanes ? count - k : kLanes, words + k, stride);
  }
}

#undef DGM_AVX2
#undef DGM_AVX2_INLINE

}  // namespace avx2

// ------------------------------------------------------------- AVX-512 ----
// The AVX2 kernel at twice the width; vpternlogq merges each round's two xors
// and vpmovqd packs the low words (masked, for the tail).
namespace avx512 {

// gcc 12's avx512fintrin.h seeds its "undefined" vectors from themselves,
// which -Wall reports as maybe-uninitialized (gcc PR 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define DGM_AVX512 __attribute__((target("avx512f"))) inline
#define DGM_AVX512_INLINE __attribute__((target("avx512f"), always_inline)) inline

using V = __m512i;
constexpr int kLanes = 8;
constexpr int kBlock = 2;
constexpr int kXor3 = 0x96;  // vpternlogq truth table of a ^ b ^ c

struct State {
  V c0, c1, c2, c3;
};

struct Keys {
  V k0[kPhiloxRounds], k1[kPhiloxRounds];
};

DGM_AVX512_INLINE Keys make_keys(uint64_t seed) {
  Keys keys;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < kPhiloxRounds; ++r, k0 += kPhiloxW0, k1 += kPhiloxW1) {
    keys.k0[r] = _mm512_set1_epi32(static_cast<int>(k0));
    keys.k1[r] = _mm512_set1_epi32(static_cast<int>(k1));
  }
  return keys;
}

DGM_AVX512_INLINE State first_round(uint64_t c, const Keys& keys) {
  const V ctr = _mm512_add_epi64(_mm512_set1_epi64(static_cast<int64_t>(c)), _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7));
  const V p0 = _mm512_mul_epu32(ctr, _mm512_set1_epi64(kPhiloxM0));
  const V hi_word = _mm512_srli_epi64(ctr, 32);
  return {_mm512_xor_si512(hi_word, keys.k0[0]),
          _mm512_setzero_si512(),
          _mm512_xor_si512(_mm512_srli_epi64(p0, 32), keys.k1[0]),
          p0};
}

DGM_AVX512_INLINE void next_round(State& s, V k0, V k1) {
  const V p0 = _mm512_mul_epu32(s.c0, _mm512_set1_epi64(kPhiloxM0));
  const V p1 = _mm512_mul_epu32(s.c2, _mm512_set1_epi64(kPhiloxM1));
  s.c0 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p1, 32), s.c1, k0, kXor3);
  s.c2 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p0, 32), s.c3, k1, kXor3);
  s.c1 = p1;
  s.c3 = p0;
}

DGM_AVX512_INLINE void store(const State& s, int64_t n, uint32_t* words, int64_t stride) {
  const V* c[4] = {&s.c0, &s.c1, &s.c2, &s.c3};
  const __mmask8 mask = static_cast<__mmask8>((1u << n) - 1u);
  for (int w = 0; w < 4; ++w) {
    uint32_t* out = words + w * stride;
    if (n == kLanes) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm512_cvtepi64_epi32(*c[w]));
    } else {
      _mm512_mask_cvtepi64_storeu_epi32(out, mask, *c[w]);
    }
  }
}

template <int nv>
DGM_AVX512_INLINE void philox(uint64_t c, const Keys& keys, State (&s)[nv]) {
  for (int v = 0; v < nv; ++v) s[v] = first_round(c + kLanes * v, keys);
  for (int r = 1; r < kPhiloxRounds; ++r) {
    for (int v = 0; v < nv; ++v) next_round(s[v], keys.k0[r], keys.k1[r]);
  }
}

DGM_AVX512 void philox_words(uint64_t seed, uint64_t c_first, int64_t count, uint32_t* words, int64_t stride) {
  const Keys keys = make_keys(seed);
  int64_t k = 0;
  for (; k + kBlock * kLanes <= count; k += kBlock * kLanes) {
    State s[kBlock];
    philox(c_first + k, keys, s);
    for (int v = 0; v < kBlock; ++v) store(s[v], kLanes, words + k + kLanes * v, stride);
  }
  for (; k < count; k += kLanes) {
    State s[1];
    philox(c_first + k, keys, s);
    store(s[0], count - k < kLanes ? count - k : kLanes, words + k, stride);
  }
}

#undef DGM_AVX512
#undef DGM_AVX512_INLINE
#pragma GCC diagnostic pop

}  // namespace avx512

#endif  // DGM_PHILOX_X86

// Words of Philox(seed, c_first + k) for 0 <= k < count, with the widest
// kernel this CPU runs; all kernels give the same bits.
inline void philox_words(uint64_t seed, uint64_t c_first, int64_t count, uint32_t* words, int64_t stride) {
#if defined(DGM_PHILOX_X86)
  if (__builtin_cpu_supports("avx512f")) return avx512::philox_words(seed, c_first, count, words, stride);
  if (__builtin_cpu_supports("avx2")) return avx2::philox_words(seed, c_first, count, words, stride);
#endif
  philox_words_scalar(seed, c_first, count, words, stride);
}

}  // namespace cpu
}  // namespace dgm_fast
