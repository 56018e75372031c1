// The trilinear sampler shared by the CPU warp kernels (csrc/cpu/warp.cpp): the forward and the
// backward of sampling a 5-D volume at grid positions, in the specification's formulas and order
// of operations (dgm_fast/warp/reference.py, which equals F.grid_sample). Where the positions come
// from is a policy: a grid tensor (grid_sample_3d), or the keypoint motion of §4.3.3 computed per
// block and never stored (keypoint_warp_3d).
//
// Work is cut into blocks of kBlock output voxels. A block's corner offsets and trilinear
// weights are computed once and reused for every channel, so the channel loop is 8 loads and 8
// products per voxel; voxels with a corner outside the volume (only at the edges, under "zeros"
// padding or past the border) are redone with bounds checks.
//
// * Forward: parallel over (batch, voxel block), so at N = 1 every thread has work (PyTorch's
//   3-D CPU kernel parallelises over the batch only).
// * Backward: the input gradient is a scatter. Each task owns whole channels of one sample, so
//   the scatter needs no atomics and no per-thread copies of the volume and is deterministic;
//   samples are split into channel groups when the batch alone has fewer items than threads,
//   each group adding up its own part of the position gradient, summed in a fixed order at the end.
#pragma once

#include <ATen/Parallel.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

namespace dgm_fast {
namespace cpu {
namespace warp {

enum Padding : int64_t { kZeros = 0, kBorder = 1, kReflection = 2 };  // PADDING_MODES' order
constexpr int64_t kBlock = 512;  // output voxels per block: its offsets and weights stay in L1/L2
constexpr uint8_t kAllInside = 0xFF;
constexpr int64_t kInt32Volume = int64_t{1} << 31;  // channel volumes below this get 32-bit gather offsets

// Sizes of one sample's volumes. Each input sample is sampled in `views` views (one per motion
// of sparse_motion_features; 1 otherwise); view u reads sample u / views and writes its C
// channels of V voxels at out + u * view_stride (positions policies are indexed by view).
struct Geometry {
  int64_t c, d, h, w;  // input channels and spatial sizes
  int64_t voxels;      // output voxels per view, Do * Ho * Wo
  int64_t padding;
  bool align_corners;
  int64_t views = 1;
  int64_t view_stride = c * voxels;  // elements from one view's output to the next
  int64_t in_volume() const { return d * h * w; }
  // int64 offsets throughout: a volume may pass 2^31 elements
  int64_t channel_offset(int64_t n, int64_t channel) const { return (n * c + channel) * in_volume(); }
  int64_t voxel_offset(int64_t z, int64_t y, int64_t x) const { return (z * h + y) * w + x; }
};

// --- positions (reference.py: source_position) ---------------------------------------------
// Each returns the voxel position and multiplies `grad` by its derivative, as autograd of the
// reference does.
template <typename T>
T clip(T u, int64_t n, T& grad) {
  if (u <= T(0)) {
    grad = 0;
    return 0;
  }
  const T high = static_cast<T>(n - 1);
  if (u >= high) {
    grad = 0;
    return high;
  }
  return u;
}

template <typename T>
T reflect(T u, int64_t twice_low, int64_t twice_high, T& grad) {
  if (twice_low == twice_high) {
    grad = 0;
    return 0;
  }
  const T low = static_cast<T>(twice_low) / 2, span = static_cast<T>(twice_high - twice_low) / 2;
  T in = u - low;
  const T sign = in > 0 ? T(1) : in < 0 ? T(-1) : T(0);  // |.|'s derivative as autograd takes it
  in = std::fabs(in);
  const T extra = std::fmod(in, span);
  const bool even = std::fmod(std::floor(in / span), T(2)) == 0;
  grad *= even ? sign : -sign;
  return even ? extra + low : span - extra + low;
}

template <typename T>
T source_position(T c, int64_t n, int64_t padding, bool align_corners, T& grad) {
  T u;
  if (align_corners) {
    u = (c + 1) / 2 * static_cast<T>(n - 1);
    grad = static_cast<T>(n - 1) / 2;
  } else {
    u = ((c + 1) * static_cast<T>(n) - 1) / 2;
    grad = static_cast<T>(n) / 2;
  }
  if (!std::isfinite(u)) {  // NaN, inf or an overflowed position: read nothing, or the edge
    grad = 0;
    if (padding == kZeros) return -2;
    return padding == kBorder && u < 0 ? T(0) : static_cast<T>(n - 1);
  }
  if (padding == kZeros) {
    // every corner of a position at or past -1 or n is outside; -2 also keeps floor() in int64
    return u > -2 && u < static_cast<T>(n + 1) ? u : T(-2);
  }
  if (padding == kReflection) {
    u = align_corners ? reflect(u, 0, 2 * (n - 1), grad) : reflect(u, -1, 2 * n - 1, grad);
  }
  return clip(u, n, grad);
}

// --- one block's corners -----------------------------------------------------------------
// Corner k = (x0 + (k & 1), y0 + (k >> 1 & 1), z0 + (k >> 2)): the reference's order.
template <typename T>
struct Block {
  int64_t n = 0;                        // voxels in this block
  alignas(64) T coord[3][kBlock];       // grid coordinates (x, y, z) in [-1, 1], from the policy
  alignas(64) int64_t off[8][kBlock];   // offset in a channel's volume (0 where outside)
  alignas(64) int32_t off32[8][kBlock];  // the same in 32 bits, for AVX2 gathers (small volumes only)
  alignas(64) T w[8][kBlock];           // trilinear weight
  uint8_t inside[kBlock];               // bit k: corner k inside the volume
  int64_t edge[kBlock];                 // the voxels with a corner outside
  int64_t n_edge = 0;
  // backward only: the per-axis weights (lo, hi) and d position / d grid coordinate
  alignas(64) T f[3][2][kBlock];
  alignas(64) T mult[3][kBlock];
  std::vector<T> scratch;  // the policy's (keypoint_warp_3d: the block's mask weights)

  // The first `count` coordinates as rows (x, y, z) at dst: a deformation's layout.
  void store_coords(int64_t count, T* dst) const {
    for (int64_t j = 0; j < count; ++j) {
      for (int a = 0; a < 3; ++a) dst[3 * j + a] = coord[a][j];
    }
  }

  // The corners of the block's `count` voxels, from `coord`.
  void compute_corners(int64_t count, const Geometry& g) {
    n = count;
    n_edge = 0;
    const int64_t sizes[3] = {g.w, g.h, g.d};
    for (int64_t j = 0; j < count; ++j) {
      int64_t lo[3];
      for (int a = 0; a < 3; ++a) {
        const T p = source_position(coord[a][j], sizes[a], g.padding, g.align_corners, mult[a][j]);
        const T fl = std::floor(p);
        lo[a] = static_cast<int64_t>(fl);
        f[a][0][j] = (fl + 1) - p;  // torch's (x1 - x)
        f[a][1][j] = p - fl;        // and (x - x0)
      }
      uint8_t mask = 0;
      for (int k = 0; k < 8; ++k) {
        const int64_t x = lo[0] + (k & 1), y = lo[1] + (k >> 1 & 1), z = lo[2] + (k >> 2);
        const bool in = x >= 0 && x < g.w && y >= 0 && y < g.h && z >= 0 && z < g.d;
        mask |= static_cast<uint8_t>(in) << k;
        off[k][j] = in ? g.voxel_offset(z, y, x) : 0;
        off32[k][j] = static_cast<int32_t>(off[k][j]);  // used only where g.in_volume() < kInt32Volume
        w[k][j] = f[0][k & 1][j] * f[1][k >> 1 & 1][j] * f[2][k >> 2][j];
      }
      inside[j] = mask;
      if (mask != kAllInside) edge[n_edge++] = j;
    }
  }
};

// A policy `positions(n, v0, count, block)` writes block.coord for output voxels [v0, v0 + count)
// of sample n.

// --- sums over a block ---------------------------------------------------------------------
// sums[q] += the q-th term of every voxel j < count, where add(j, l, part) adds voxel j's terms to
// part[q][l]: kLanes interleaved partial sums, so that the loop vectorizes (one float accumulator is
// a chain of dependent adds, 4 cycles each), then the lanes in order. In T, as the block's values.
constexpr int64_t kLanes = 8;

template <typename T, int kTerms, typename Add>
inline void block_sums(int64_t count, T (&sums)[kTerms], const Add& add) {
  alignas(64) T part[kTerms][kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= count; j += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) add(j + l, l, part);
  }
  for (; j < count; ++j) add(j, j % kLanes, part);
  for (int q = 0; q < kTerms; ++q) {
    for (int64_t l = 0; l < kLanes; ++l) sums[q] += part[q][l];
  }
}

// --- forward -----------------------------------------------------------------------------
template <typename T>
inline T sample_all_inside(const T* src, const Block<T>& b, int64_t j) {
  T acc = src[b.off[0][j]] * b.w[0][j];
  for (int k = 1; k < 8; ++k) acc += src[b.off[k][j]] * b.w[k][j];
  return acc;
}

template <typename T>
inline T sample_edge(const T* src, const Block<T>& b, int64_t j) {
  T acc = 0;
  for (int k = 0; k < 8; ++k) {
    if (b.inside[j] >> k & 1) acc += src[b.off[k][j]] * b.w[k][j];
  }
  return acc;
}

// One channel of a block: dst[j] = sum_k src[off_k] w_k, corners in order; edge voxels redone.
template <typename T>
void sample_channel(const T* src, T* dst, const Block<T>& b) {
  for (int64_t j = 0; j < b.n; ++j) dst[j] = sample_all_inside(src, b, j);  // offset 0 is a safe read
  for (int64_t e = 0; e < b.n_edge; ++e) dst[b.edge[e]] = sample_edge(src, b, b.edge[e]);
}

#if defined(__x86_64__)
// float32 with AVX2: 8 voxels a step, each corner one gather; the same products and sums in the
// same order (separate multiply and add, no FMA), so the same bits as the scalar loop.
__attribute__((target("avx2"))) inline void sample_channel_avx2(const float* src, float* dst, const Block<float>& b) {
  int64_t j = 0;
  for (; j + 8 <= b.n; j += 8) {
    __m256 acc = _mm256_setzero_ps();
    for (int k = 0; k < 8; ++k) {  // (no lambda: it would not inherit the target)
      const __m256i index = _mm256_load_si256(reinterpret_cast<const __m256i*>(b.off32[k] + j));
      const __m256 term = _mm256_mul_ps(_mm256_i32gather_ps(src, index, 4), _mm256_load_ps(b.w[k] + j));
      acc = k == 0 ? term : _mm256_add_ps(acc, term);
    }
    _mm256_storeu_ps(dst + j, acc);
  }
  for (; j < b.n; ++j) dst[j] = sample_all_inside(src, b, j);
  for (int64_t e = 0; e < b.n_edge; ++e) dst[b.edge[e]] = sample_edge(src, b, b.edge[e]);
}

#endif  // __x86_64__

inline std::atomic<bool> g_force_portable{false};  // tests: the scalar loops even where AVX2 is present

inline bool has_avx2() {
#if defined(__x86_64__)
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes && !g_force_portable.load(std::memory_order_relaxed);
#else
  return false;
#endif
}

// Each view's (C, V) output = the input sampled at the policy's positions; `visit(u, v0, block)`
// sees each block's coordinates (keypoint_warp_3d writes them out when asked).
template <typename T, typename Positions, typename Visit>
void forward(const T* input, T* out, int64_t batch, const Geometry& g, const Positions& positions,
             const Visit& visit) {
  const int64_t blocks = (g.voxels + kBlock - 1) / kBlock;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, kBlock * g.c));
  [[maybe_unused]] const bool gather = has_avx2() && g.in_volume() < kInt32Volume;
  at::parallel_for(0, batch * g.views * blocks, grain, [&](int64_t begin, int64_t end) {
    auto block = std::make_unique<Block<T>>();
    Block<T>& b = *block;
    for (int64_t item = begin; item < end; ++item) {
      // one block's views back to back (sparse_motion_features: the K + 1 motions of the same voxels),
      // so the feature neighbourhood they read stays in cache between them
      const int64_t n = item / (g.views * blocks), rest = item % (g.views * blocks);
      const int64_t u = n * g.views + rest % g.views, v0 = rest / g.views * kBlock;
      const int64_t count = std::min(kBlock, g.voxels - v0);
      positions(u, v0, count, b);
      b.compute_corners(count, g);
      visit(u, v0, b);
      for (int64_t c = 0; c < g.c; ++c) {
        const T* src = input + g.channel_offset(u / g.views, c);
        T* dst = out + u * g.view_stride + c * g.voxels + v0;
#if defined(__x86_64__)
        if constexpr (std::is_same_v<T, float>) {
          if (gather) {
            sample_channel_avx2(src, dst, b);
            continue;
          }
        }
#endif
        sample_channel(src, dst, b);
      }
    }
  });
}

// --- backward ----------------------------------------------------------------------------
// Voxel j of one channel: grad_input[corner] += w * grad_out for its in-volume corners, corner by
// corner, and into acc the channel's d out / d position along x, y, z (differences of corners times
// the other axes' weights) for the values v of its 8 corners (0 outside).
template <typename T>
inline void scatter_voxel(T* gin, const Block<T>& b, int64_t j, T gj) {
  for (int k = 0; k < 8; ++k) {
    if (b.inside[j] >> k & 1) gin[b.off[k][j]] += b.w[k][j] * gj;
  }
}

template <typename T>
inline void position_gradient(const T* v, const Block<T>& b, int64_t j, T gj, T (*acc)[kBlock]) {
  const T fx0 = b.f[0][0][j], fx1 = b.f[0][1][j], fy0 = b.f[1][0][j], fy1 = b.f[1][1][j];
  const T fz0 = b.f[2][0][j], fz1 = b.f[2][1][j];
  acc[0][j] += gj * ((v[1] - v[0]) * fy0 * fz0 + (v[3] - v[2]) * fy1 * fz0 + (v[5] - v[4]) * fy0 * fz1 +
                     (v[7] - v[6]) * fy1 * fz1);
  acc[1][j] += gj * ((v[2] - v[0]) * fx0 * fz0 + (v[3] - v[1]) * fx1 * fz0 + (v[6] - v[4]) * fx0 * fz1 +
                     (v[7] - v[5]) * fx1 * fz1);
  acc[2][j] += gj * ((v[4] - v[0]) * fx0 * fy0 + (v[5] - v[1]) * fx1 * fy0 + (v[6] - v[2]) * fx0 * fy1 +
                     (v[7] - v[3]) * fx1 * fy1);
}

template <typename T>
inline void channel_backward_voxel(const T* src, T* gin, const T* go, const Block<T>& b, int64_t j,
                                   T (*acc)[kBlock]) {
  T v[8];
  for (int k = 0; k < 8; ++k) v[k] = b.inside[j] >> k & 1 ? src[b.off[k][j]] : T(0);
  scatter_voxel(gin, b, j, go[j]);
  position_gradient(v, b, j, go[j], acc);
}

template <typename T>
void channel_backward(const T* src, T* gin, const T* go, const Block<T>& b, T (*acc)[kBlock]) {
  for (int64_t j = 0; j < b.n; ++j) channel_backward_voxel(src, gin, go, b, j, acc);
}

#if defined(__x86_64__)
// float32 with AVX2: 8 voxels a step, each corner one masked gather (0 outside) and the position
// gradient in vectors, with the scalar loop's products and sums in its order (no FMA), so the same
// bits; the scatter stays scalar (neighbouring voxels share corners), in the scalar loop's order.
__attribute__((target("avx2"))) inline __m256 position_term(__m256 hi, __m256 lo, __m256 f, __m256 g) {
  return _mm256_mul_ps(_mm256_mul_ps(_mm256_sub_ps(hi, lo), f), g);
}

__attribute__((target("avx2"))) inline void channel_backward_avx2(const float* src, float* gin, const float* go,
                                                                  const Block<float>& b, float (*acc)[kBlock]) {
  int64_t j = 0;
  for (; j + 8 <= b.n; j += 8) {
    const __m256i inside = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b.inside + j)));
    __m256 v[8];
    for (int k = 0; k < 8; ++k) {  // (no lambda: it would not inherit the target)
      const __m256i bit = _mm256_set1_epi32(1 << k);
      const __m256 in = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(inside, bit), bit));
      const __m256i index = _mm256_load_si256(reinterpret_cast<const __m256i*>(b.off32[k] + j));
      v[k] = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), src, index, in, 4);
    }
    for (int64_t l = j; l < j + 8; ++l) scatter_voxel(gin, b, l, go[l]);
    const __m256 gj = _mm256_loadu_ps(go + j);
    const __m256 fx0 = _mm256_load_ps(b.f[0][0] + j), fx1 = _mm256_load_ps(b.f[0][1] + j);
    const __m256 fy0 = _mm256_load_ps(b.f[1][0] + j), fy1 = _mm256_load_ps(b.f[1][1] + j);
    const __m256 fz0 = _mm256_load_ps(b.f[2][0] + j), fz1 = _mm256_load_ps(b.f[2][1] + j);
    const __m256 sx = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(position_term(v[1], v[0], fy0, fz0),
                                                                position_term(v[3], v[2], fy1, fz0)),
                                                  position_term(v[5], v[4], fy0, fz1)),
                                    position_term(v[7], v[6], fy1, fz1));
    const __m256 sy = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(position_term(v[2], v[0], fx0, fz0),
                                                                position_term(v[3], v[1], fx1, fz0)),
                                                  position_term(v[6], v[4], fx0, fz1)),
                                    position_term(v[7], v[5], fx1, fz1));
    const __m256 sz = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(position_term(v[4], v[0], fx0, fy0),
                                                                position_term(v[5], v[1], fx1, fy0)),
                                                  position_term(v[6], v[2], fx0, fy1)),
                                    position_term(v[7], v[3], fx1, fy1));
    const __m256 sums[3] = {sx, sy, sz};
    for (int a = 0; a < 3; ++a) {
      _mm256_store_ps(acc[a] + j, _mm256_add_ps(_mm256_load_ps(acc[a] + j), _mm256_mul_ps(gj, sums[a])));
    }
  }
  for (; j < b.n; ++j) channel_backward_voxel(src, gin, go, b, j, acc);
}
#endif  // __x86_64__

// One block of view u's voxels, for channels [c0, c1).
template <typename T, typename Positions>
void backward_block(const T* grad_out, const T* input, T* grad_input, T* grad_coord, int64_t u, int64_t v0,
                    int64_t c0, int64_t c1, const Geometry& g, const Positions& positions, Block<T>& b) {
  const int64_t n = u / g.views, count = std::min(kBlock, g.voxels - v0);
  positions(u, v0, count, b);
  b.compute_corners(count, g);
  alignas(64) T acc[3][kBlock] = {};
  [[maybe_unused]] const bool gather = has_avx2() && g.in_volume() < kInt32Volume;
  for (int64_t c = c0; c < c1; ++c) {
    const T* src = input + g.channel_offset(n, c);
    T* gin = grad_input + g.channel_offset(n, c);
    const T* go = grad_out + u * g.view_stride + c * g.voxels + v0;
#if defined(__x86_64__)
    if constexpr (std::is_same_v<T, float>) {
      if (gather) {
        channel_backward_avx2(src, gin, go, b, acc);
        continue;
      }
    }
#endif
    channel_backward(src, gin, go, b, acc);
  }
  T* gg = grad_coord + (u * g.voxels + v0) * 3;
  for (int64_t j = 0; j < b.n; ++j) {
    for (int a = 0; a < 3; ++a) gg[3 * j + a] = acc[a][j] * b.mult[a][j];
  }
}

// Channels [c0, c1) of sample n: their input gradient (zeroed here, then scattered into from
// every view of n) and their part of the gradient of each view's grid coordinates, written to
// grad_coord (view u's (V, 3) rows at u * V * 3).
template <typename T, typename Positions>
void backward_channels(const T* grad_out, const T* input, T* grad_input, T* grad_coord, int64_t n, int64_t c0,
                       int64_t c1, const Geometry& g, const Positions& positions) {
  std::fill(grad_input + g.channel_offset(n, c0), grad_input + g.channel_offset(n, c1), T(0));
  auto block = std::make_unique<Block<T>>();
  Block<T>& b = *block;
  for (int64_t u = n * g.views; u < (n + 1) * g.views; ++u) {
    for (int64_t v0 = 0; v0 < g.voxels; v0 += kBlock) {
      backward_block(grad_out, input, grad_input, grad_coord, u, v0, c0, c1, g, positions, b);
    }
  }
}

// grad_input (N, C, D, H, W) and grad_coord (N * views, V, 3), the gradient of the grid coordinates.
template <typename T, typename Positions>
void backward(const T* grad_out, const T* input, T* grad_input, T* grad_coord, int64_t batch, const Geometry& g,
              const Positions& positions) {
  // channel groups per sample: enough tasks for every thread, none smaller than one channel
  const int64_t threads = at::get_num_threads();
  const int64_t groups = batch >= threads ? 1 : std::max<int64_t>(1, std::min(g.c, (threads + batch - 1) / batch));
  const int64_t coord_size = batch * g.views * g.voxels * 3;
  std::vector<T> parts(groups > 1 ? groups * coord_size : 0);  // each group's coordinate gradient
  at::parallel_for(0, batch * groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / groups, group = item % groups;
      const int64_t c0 = g.c * group / groups, c1 = g.c * (group + 1) / groups;
      T* gc = groups > 1 ? parts.data() + group * coord_size : grad_coord;
      backward_channels(grad_out, input, grad_input, gc, n, c0, c1, g, positions);
    }
  });
  if (groups > 1) {
    at::parallel_for(0, coord_size, 1 << 14, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        T sum = parts[i];
        for (int64_t group = 1; group < groups; ++group) sum += parts[group * coord_size + i];
        grad_coord[i] = sum;
      }
    });
  }
}

}  // namespace warp
}  // namespace cpu
}  // namespace dgm_fast
