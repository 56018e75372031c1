// Fused Langevin step on CPU, eq. (2.15) (and (2.20) when noise_scale = 0):
//   out = clamp(x * keep + drift * clip(grad) + noise_scale * xi, lo, hi)
// with keep = 1 - step/2 * prior_weight, drift = -step/2. One pass over x and
// grad; the N(0, 1) noise xi is generated per tile in L1 from the counter-based
// stream of csrc/philox.h, so it never touches memory.
#include "cpu/langevin.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "cpu/normal_noise.h"
#include "ops.h"

#define DGM_INLINE inline __attribute__((always_inline))

namespace dgm_fast {
namespace {

using cpu::kNoiseTile;
constexpr int64_t kGrain = 32 * kNoiseTile;

template <typename acc_t>
struct Coefs {
  acc_t keep, drift, noise, clip, lo, hi;
};

template <typename acc_t>
DGM_INLINE acc_t clamp_nan(acc_t v, acc_t lo, acc_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);  // NaN compares false and passes through
}

template <typename scalar_t, typename acc_t>
DGM_INLINE void update_tile(const scalar_t* x, const scalar_t* g, scalar_t* out, int64_t n,
                            const Coefs<acc_t>& k, const acc_t* noise) {
  // ivdep: out is either a separate buffer or exactly x (in place); both are
  // safe for an elementwise read-then-write, so skip gcc's overlap versioning.
#pragma GCC ivdep
  for (int64_t j = 0; j < n; ++j) {
    const acc_t gj = clamp_nan(static_cast<acc_t>(g[j]), -k.clip, k.clip);
    acc_t y = k.keep * static_cast<acc_t>(x[j]) + k.drift * gj;
    if (noise != nullptr) y += k.noise * noise[j];
    out[j] = static_cast<scalar_t>(clamp_nan(y, k.lo, k.hi));
  }
}

template <typename scalar_t, typename acc_t>
DGM_INLINE void step_range(const scalar_t* x, const scalar_t* g, scalar_t* out, int64_t begin,
                           int64_t end, const Coefs<acc_t>& k, uint64_t seed, uint64_t offset) {
  cpu::NoiseTile<acc_t> tile;
  for (int64_t t = begin; t < end; t += kNoiseTile) {
    const int64_t n = std::min(kNoiseTile, end - t);
    const acc_t* z = k.noise != 0 ? cpu::fill_noise_tile(seed, offset + t, n, tile) : nullptr;
    update_tile(x + t, g + t, out + t, n, k, z);
  }
}

// One compiled clone per instruction set, picked at load time by the CPU:
// AVX-512 where present, AVX2+FMA, and a portable baseline.
#define DGM_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define DGM_DEFINE_RANGE(name, scalar_t, acc_t)                                                \
  DGM_CLONES void name(const scalar_t* x, const scalar_t* g, scalar_t* out, int64_t begin,    \
                       int64_t end, const Coefs<acc_t>& k, uint64_t seed, uint64_t offset) { \
    step_range(x, g, out, begin, end, k, seed, offset);                                        \
  }
DGM_DEFINE_RANGE(step_range_clones, float, float)
DGM_DEFINE_RANGE(step_range_clones, double, double)
DGM_DEFINE_RANGE(step_range_clones, at::BFloat16, float)
DGM_DEFINE_RANGE(step_range_clones, at::Half, float)
#undef DGM_DEFINE_RANGE

template <typename acc_t>
Coefs<acc_t> make_coefs(const LangevinParams& p) {
  const double half_step = 0.5 * p.step_size;
  return {static_cast<acc_t>(1.0 - half_step * p.prior_weight), static_cast<acc_t>(-half_step),
          static_cast<acc_t>(p.noise_scale), static_cast<acc_t>(p.grad_clip),
          static_cast<acc_t>(p.clamp_lo), static_cast<acc_t>(p.clamp_hi)};
}

}  // namespace

void langevin_step_cpu(const at::Tensor& x, const at::Tensor& grad, at::Tensor& out,
                       const LangevinParams& p) {
  TORCH_CHECK(x.device().is_cpu() && grad.device().is_cpu() && out.device().is_cpu(),
              "langevin_step_cpu: tensors must be on the CPU");
  TORCH_CHECK(x.is_contiguous() && grad.is_contiguous() && out.is_contiguous(),
              "langevin_step_cpu: tensors must be contiguous");
  TORCH_CHECK(x.sizes() == grad.sizes() && x.sizes() == out.sizes(),
              "langevin_step_cpu: x, grad and out must have one shape");
  TORCH_CHECK(x.scalar_type() == grad.scalar_type() && x.scalar_type() == out.scalar_type(),
              "langevin_step_cpu: x, grad and out must have one dtype");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "langevin_step_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Coefs<acc_t> k = make_coefs<acc_t>(p);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      step_range_clones(xp, gp, op, begin, end, k, p.seed, p.offset);
    });
  });
}

namespace {

// The dispatcher kernels of dgm_fast::langevin_step and langevin_step_ on CPU
// (schemas: dgm_fast/langevin/op.py). The kernel indexes the noise stream
// row-major, so it runs on contiguous buffers; other layouts are copied.
LangevinParams params(double step_size, double noise_scale, double prior_weight, double grad_clip,
                      double clamp_lo, double clamp_hi, int64_t seed, int64_t offset,
                      const std::optional<at::Tensor>& seed_tensor) {
  return {step_size, noise_scale, prior_weight, grad_clip, clamp_lo, clamp_hi,
          noise_seed(seed, seed_tensor), static_cast<uint64_t>(offset)};
}

at::Tensor langevin_step_op(const at::Tensor& x, const at::Tensor& grad, double step_size,
                            double noise_scale, double prior_weight, double grad_clip,
                            double clamp_lo, double clamp_hi, int64_t seed, int64_t offset,
                            const std::optional<at::Tensor>& seed_tensor) {
  const LangevinParams p = params(step_size, noise_scale, prior_weight, grad_clip, clamp_lo,
                                  clamp_hi, seed, offset, seed_tensor);
  at::Tensor out = empty_output(x);  // keeps x's memory format, as the reference does
  at::Tensor buf = out.is_contiguous() ? out : empty_output(x, at::MemoryFormat::Contiguous);
  langevin_step_cpu(x.contiguous(), grad.contiguous(), buf, p);
  if (!buf.is_same(out)) out.copy_(buf);
  return out;
}

void langevin_step_inplace_op(const at::Tensor& x, const at::Tensor& grad, double step_size,
                              double noise_scale, double prior_weight, double grad_clip,
                              double clamp_lo, double clamp_hi, int64_t seed, int64_t offset,
                              const std::optional<at::Tensor>& seed_tensor) {
  const LangevinParams p = params(step_size, noise_scale, prior_weight, grad_clip, clamp_lo,
                                  clamp_hi, seed, offset, seed_tensor);
  at::Tensor buf = x.contiguous();  // x itself when contiguous
  langevin_step_cpu(buf, grad.contiguous(), buf, p);
  if (!buf.is_same(x)) x.copy_(buf);
}

}  // namespace

TORCH_LIBRARY_IMPL(dgm_fast, CPU, m) {
  m.impl("langevin_step", &langevin_step_op);
  m.impl("langevin_step_", &langevin_step_inplace_op);
}

}  // namespace dgm_fast
