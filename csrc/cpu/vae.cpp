// The 256-way categorical pixel likelihood of the DCGAN VAE on CPU (Table 4.6;
// spec: dgm_fast/vae/reference.py): per sample sum_pixels logsumexp_v logits -
// logits[target], the per-pixel logsumexp, and the logits' gradient.
//
// The eager chain (F.cross_entropy on the permuted logits, or the reference)
// writes the permuted copy and the log-softmax: three or more passes over the
// largest tensor of the model. Here the forward reads the logits once (the
// running logsumexp's chunks come back from L2) and the backward reads them
// once and writes the gradient once. The 256 levels of a pixel are P =
// prod(spatial) elements apart, so a work item is a tile of up to 512
// contiguous pixels of one image channel, and the loops run across the pixels
// (they vectorize: AVX2 + FMA where present, else the portable build), level
// row after level row, each a contiguous run of memory (vae_blocks.h). Each
// item writes its partial NLL to its own slot, summed per sample in a fixed
// order afterwards, so the result does not depend on the number of threads or
// on which thread ran what.
#include "cpu/vae.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "cpu/huge_pages.h"
#include "cpu/isa_switch.h"
#include "cpu/tile_scheduling.h"
#include "cpu/vec_math.h"

#define DGM_INLINE inline __attribute__((always_inline))

namespace dgm_fast {
namespace {

constexpr int64_t kLevels = 256;

// Pixels per work item: a 2 KiB (float32) run of each level row; the forward's
// per-pixel state (6 arrays) stays in L1.
constexpr int64_t kTile = 512;
// Level rows per chunk of the forward's running logsumexp: 64 KiB (float32) that
// the exp-sum rereads from L2 right after the max read it.
constexpr int64_t kChunk = 32;
static_assert(kLevels % kChunk == 0 && kChunk % 4 == 0);

// float: vec_math.h's branchless exp (vectorizes; within 1 ulp); double: libm.
DGM_INLINE float exp_t(float x) { return cpu::exp_f(x); }
DGM_INLINE double exp_t(double x) { return std::exp(x); }
DGM_INLINE float abs_t(float x) { return cpu::abs_f(x); }
DGM_INLINE double abs_t(double x) { return std::abs(x); }
// c ? a : b, as a blend for float (vec_math.h's select_f says why), plainly for double
DGM_INLINE float pick(bool c, float a, float b) { return cpu::select_f(c, a, b); }
DGM_INLINE double pick(bool c, double a, double b) { return c ? a : b; }

// One call's tensors as raw pointers (the forward's or the backward's).
template <typename T>
struct Problem {
  const T* logits = nullptr;
  const int64_t* target = nullptr;
  T* lse = nullptr;            // forward: written
  const T* lse_in = nullptr;   // backward: read
  const T* grad_nll = nullptr;
  const T* grad_lse = nullptr;
  T* grad_logits = nullptr;
  int64_t channels = 0, pixels = 0, blocks = 0;  // nc, P, pixel tiles of P (kTile each)
};

#if defined(__x86_64__)
namespace avx2 {
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include "cpu/vae_blocks.h"
#pragma GCC pop_options
}  // namespace avx2
#endif
namespace portable {
#include "cpu/vae_blocks.h"
}  // namespace portable

cpu::IsaSwitch g_isa;

#if defined(__x86_64__)
#define DGM_ON_THIS_CPU(call) return g_isa.avx2() ? avx2::call : portable::call
#else
#define DGM_ON_THIS_CPU(call) return portable::call
#endif

template <typename T>
void run_forward(const Problem<T>& pr, int64_t i0, int64_t n, double* partial) {
  DGM_ON_THIS_CPU(forward_items(pr, i0, n, partial));
}

template <typename T>
void run_backward(const Problem<T>& pr, int64_t i0, int64_t n) {
  DGM_ON_THIS_CPU(backward_items(pr, i0, n));
}
#undef DGM_ON_THIS_CPU

// (B, nc, P) of the logits and target, after checking every tensor of the call.
struct Shape {
  int64_t batch, channels, pixels;
};

Shape check(const char* fn, const at::Tensor& logits, const at::Tensor& target,
            std::initializer_list<std::pair<const at::Tensor*, int>> like) {
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kDouble, fn,
              ": logits must be float32 or float64, got ", logits.scalar_type());
  TORCH_CHECK(target.scalar_type() == at::kLong, fn, ": target must be int64, got ", target.scalar_type());
  TORCH_CHECK(target.dim() >= 2 && logits.dim() == target.dim(), fn,
              ": target must be (batch, nc, *spatial) and logits (batch, nc * 256, *spatial), got ", target.sizes(),
              " and ", logits.sizes());
  int64_t pixels = 1;
  for (int64_t d = 2; d < target.dim(); ++d) pixels *= target.size(d);
  const Shape s{target.size(0), target.size(1), pixels};
  bool ok = logits.size(0) == s.batch && logits.size(1) == s.channels * kLevels;
  for (int64_t d = 2; d < target.dim(); ++d) ok = ok && logits.size(d) == target.size(d);
  TORCH_CHECK(ok, fn, ": logits ", logits.sizes(), " do not match target ", target.sizes(),
              " (batch, nc * 256, *spatial)");
  auto check_layout = [&](const at::Tensor& t, const char* what) {
    TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), fn, ": ", what, " must be a contiguous CPU tensor");
  };
  check_layout(logits, "logits");
  check_layout(target, "target");
  for (auto [t, kind] : like) {  // kind 0: (B,), 1: target's shape, 2: logits' shape; logits' dtype
    check_layout(*t, "every output and gradient");
    TORCH_CHECK(t->scalar_type() == logits.scalar_type(), fn, ": outputs and gradients must have the logits' dtype");
    const bool shape_ok = kind == 0   ? (t->dim() == 1 && t->size(0) == s.batch)
                          : kind == 1 ? t->sizes() == target.sizes()
                                      : t->sizes() == logits.sizes();
    TORCH_CHECK(shape_ok, fn, ": got a tensor of shape ", t->sizes(), " where ",
                kind == 0 ? "(batch,)" : kind == 1 ? "target's shape" : "logits' shape", " was expected");
  }
  return s;
}

// The inputs both passes read; each pass then sets its outputs.
template <typename T>
Problem<T> problem(const at::Tensor& logits, const at::Tensor& target, const Shape& s) {
  Problem<T> pr;
  pr.logits = logits.const_data_ptr<T>();
  pr.target = target.const_data_ptr<int64_t>();
  pr.channels = s.channels;
  pr.pixels = s.pixels;
  pr.blocks = (s.pixels + kTile - 1) / kTile;
  return pr;
}

}  // namespace

void categorical_pixel_nll_cpu(const at::Tensor& logits, const at::Tensor& target, at::Tensor& nll,
                               at::Tensor& lse) {
  const Shape s = check("categorical_pixel_nll", logits, target, {{&nll, 0}, {&lse, 1}});
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "categorical_pixel_nll_cpu", [&] {
    using T = scalar_t;
    Problem<T> pr = problem<T>(logits, target, s);
    pr.lse = lse.data_ptr<T>();
    const int64_t per_sample = s.channels * pr.blocks, items = s.batch * per_sample;
    at::Tensor partials = at::empty({items}, at::TensorOptions().dtype(at::kDouble));
    double* partial = partials.data_ptr<double>();
    if (items > 0) {
      cpu::over_tiles(items, 1, [&](int64_t, int64_t i0, int64_t n) { run_forward(pr, i0, n, partial); });
    }
    // each sample's partials in item order: the same sum on any number of threads
    T* out = nll.data_ptr<T>();
    for (int64_t b = 0; b < s.batch; ++b) {
      double sum = 0.0;
      for (int64_t k = 0; k < per_sample; ++k) sum += partial[b * per_sample + k];
      out[b] = static_cast<T>(sum);
    }
  });
}

void categorical_pixel_nll_backward_cpu(const at::Tensor& grad_nll, const at::Tensor& grad_lse,
                                        const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                                        at::Tensor& grad_logits) {
  const Shape s = check("categorical_pixel_nll_backward", logits, target,
                        {{&grad_nll, 0}, {&grad_lse, 1}, {&lse, 1}, {&grad_logits, 2}});
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "categorical_pixel_nll_backward_cpu", [&] {
    using T = scalar_t;
    Problem<T> pr = problem<T>(logits, target, s);
    pr.lse_in = lse.const_data_ptr<T>();
    pr.grad_nll = grad_nll.const_data_ptr<T>();
    pr.grad_lse = grad_lse.const_data_ptr<T>();
    pr.grad_logits = grad_logits.data_ptr<T>();
    const int64_t items = s.batch * s.channels * pr.blocks;
    cpu::advise_huge_pages(grad_logits);  // a fresh output: one page fault per 2 MiB, not per 4 KiB
    if (items > 0) {
      cpu::over_tiles(items, 1, [&](int64_t, int64_t i0, int64_t n) { run_backward(pr, i0, n); });
    }
  });
}

const char* vae_isa() { return g_isa.name(); }
void set_vae_portable(bool on) { g_isa.force_portable(on); }

}  // namespace dgm_fast
