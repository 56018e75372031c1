// Fused Langevin step on CUDA, eq. (2.15) (and (2.20) when noise_scale = 0):
//   out = clamp(x * keep - half_step * clip(grad) + noise_scale * xi, lo, hi)
// with keep = 1 - step/2 * prior_weight. Each thread owns one group of four
// consecutive stream indices, so one Philox call (csrc/philox.h) yields its four
// normals in registers and no noise ever touches memory.
#include "langevin.cuh"

#include <algorithm>
#include <type_traits>

#include "philox.h"
#include "rounded.cuh"

namespace dgm_fast {
namespace {

using namespace rounded;  // acc_t, widen, narrow, mul_rn & co.

constexpr int kBlock = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // beyond, threads loop (grid stride)

template <typename acc>
struct Coefs {
  acc keep, half_step, noise, clip, lo, hi;
};

// Four elements of one stream group; the alignment makes loads vector loads.
template <typename T>
struct alignas(4 * sizeof(T)) Quad {
  T v[4];
};

// min(max(v, lo), hi) as torch.clamp; NaN compares false and passes through.
template <typename acc>
__device__ __forceinline__ acc clamp_nan(acc v, acc lo, acc hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

// Box-Muller on one (radius, angle) pair of uniforms, the expression of
// dgm_fast/philox.py: rho = sqrt(-2 log u_rad), t = 2pi * u_ang with 2pi rounded
// to the compute precision and the product rounded once (__fmul_rn/__dmul_rn: no
// contraction), then the accurate (not fast-math) sincos, log and sqrt.
constexpr double kTwoPi = 6.283185307179586;  // fl64(2pi), the reference's 2.0 * math.pi

DGM_HD void box_muller(float u_rad, float u_ang, float& z_cos, float& z_sin) {
  const float rho = sqrtf(-2.0f * logf(u_rad));
  float s, c;
  sincosf(mul_rn(static_cast<float>(kTwoPi), u_ang), &s, &c);
  z_cos = rho * c;
  z_sin = rho * s;
}

// Float64 compute (double tensors): every step in double, as the reference's
// float64 path; u_rad and u_ang are exact in float.
DGM_HD void box_muller(float u_rad, float u_ang, double& z_cos, double& z_sin) {
  const double rho = sqrt(-2.0 * log(static_cast<double>(u_rad)));
  double s, c;
  sincos(mul_rn(kTwoPi, static_cast<double>(u_ang)), &s, &c);
  z_cos = rho * c;
  z_sin = rho * s;
}

// The four normals of stream group q (stream indices 4q .. 4q+3), dgm_fast/philox.py.
template <typename acc>
DGM_HD void gaussian4(uint64_t q, uint32_t k0, uint32_t k1, acc z[4]) {
  uint32_t c0 = static_cast<uint32_t>(q), c1 = static_cast<uint32_t>(q >> 32), c2 = 0, c3 = 0;
  philox4x32_10(c0, c1, c2, c3, k0, k1);
  box_muller(uniform_from_bits(c0), uniform_from_bits(c1), z[0], z[1]);
  box_muller(uniform_from_bits(c2), uniform_from_bits(c3), z[2], z[3]);
}

template <bool kNoise, typename acc>
__device__ __forceinline__ acc step(acc x, acc g, acc xi, const Coefs<acc>& k) {
  acc y = sub_rn(mul_rn(x, k.keep), mul_rn(k.half_step, clamp_nan(g, -k.clip, k.clip)));
  if constexpr (kNoise) y = add_rn(y, mul_rn(k.noise, xi));
  return clamp_nan(y, k.lo, k.hi);
}

// Group k covers elements i0 = 4k - lead .. i0 + 3 (lead = offset % 4), masked
// to [0, n). `vec`: lead == 0 and all pointers Quad-aligned, so full groups use
// vector loads and stores. Each element is read before it is written by the
// same thread, so out may alias x or grad.
template <typename T, bool kNoise>
__global__ void __launch_bounds__(kBlock)
    langevin_kernel(const T* x, const T* grad, T* out, int64_t n, int64_t groups, int lead,
                    bool vec, Coefs<acc_t<T>> k, uint64_t q0, uint32_t k0, uint32_t k1) {
  using acc = acc_t<T>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kBlock;
  for (int64_t gi = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x; gi < groups;
       gi += stride) {
    acc z[4] = {};
    if constexpr (kNoise) gaussian4(q0 + static_cast<uint64_t>(gi), k0, k1, z);
    const int64_t i0 = 4 * gi - lead;
    if (vec && i0 + 4 <= n) {
      // Indexed by 4 * gi (== i0 as lead == 0): with i0 nvcc loses the
      // alignment and splits the store into scalar ones.
      const int64_t iv = 4 * gi;
      const Quad<T> xq = *reinterpret_cast<const Quad<T>*>(x + iv);
      const Quad<T> gq = *reinterpret_cast<const Quad<T>*>(grad + iv);
      Quad<T> oq;
#pragma unroll
      for (int j = 0; j < 4; ++j) narrow(step<kNoise>(widen(xq.v[j]), widen(gq.v[j]), z[j], k), oq.v[j]);
      *reinterpret_cast<Quad<T>*>(out + iv) = oq;
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t i = i0 + j;
        if (i >= 0 && i < n) narrow(step<kNoise>(widen(x[i]), widen(grad[i]), z[j], k), out[i]);
      }
    }
  }
}

template <typename T>
bool quad_aligned(const T* p) {
  return reinterpret_cast<uintptr_t>(p) % alignof(Quad<T>) == 0;
}

// Coefficients rounded once from double, as the reference's Python scalars are.
template <typename acc>
Coefs<acc> make_coefs(const LangevinParams& p) {
  const double half_step = 0.5 * p.step_size;
  return {static_cast<acc>(1.0 - half_step * p.prior_weight), static_cast<acc>(half_step),
          static_cast<acc>(p.noise_scale), static_cast<acc>(p.grad_clip),
          static_cast<acc>(p.clamp_lo), static_cast<acc>(p.clamp_hi)};
}

}  // namespace

template <typename T>
cudaError_t langevin_step_cuda_launch(const T* x, const T* grad, T* out, int64_t n,
                                      const LangevinParams& p, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const int lead = static_cast<int>(p.offset & 3);
  const int64_t groups = (n + lead + 3) / 4;
  const bool vec = lead == 0 && quad_aligned(x) && quad_aligned(grad) && quad_aligned(out);
  const auto blocks =
      static_cast<unsigned>(std::min((groups + kBlock - 1) / kBlock, kMaxBlocks));
  const Coefs<acc_t<T>> k = make_coefs<acc_t<T>>(p);
  const uint64_t q0 = p.offset >> 2;
  const auto k0 = static_cast<uint32_t>(p.seed), k1 = static_cast<uint32_t>(p.seed >> 32);
  // noise_scale == 0 is the gradient flow (2.20): no Philox at all.
  if (p.noise_scale != 0) {
    langevin_kernel<T, true><<<blocks, kBlock, 0, stream>>>(x, grad, out, n, groups, lead, vec, k,
                                                            q0, k0, k1);
  } else {
    langevin_kernel<T, false><<<blocks, kBlock, 0, stream>>>(x, grad, out, n, groups, lead, vec,
                                                             k, q0, k0, k1);
  }
  return cudaGetLastError();
}

#define DGM_INSTANTIATE(T)                                                                   \
  template cudaError_t langevin_step_cuda_launch<T>(const T*, const T*, T*, int64_t,         \
                                                    const LangevinParams&, cudaStream_t);
DGM_INSTANTIATE(float)
DGM_INSTANTIATE(double)
DGM_INSTANTIATE(__half)
DGM_INSTANTIATE(__nv_bfloat16)
#undef DGM_INSTANTIATE

}  // namespace dgm_fast
