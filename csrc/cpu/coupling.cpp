// Fused affine coupling layer on CPU (dissertation §2.2.3), forward and
// backward in one pass each: with l = g(s),
//   forward  y2 = x2 * exp(l) + t,     logdet =  sum_row(l)
//   inverse  y2 = (x2 - t) * exp(-l),  logdet = -sum_row(l)
// in the reference's order of operations (dgm_fast/coupling/reference.py).
// Rows are cut into L1 tiles; float math uses the branchless polynomials of
// vec_math.h so that every loop vectorizes (libm calls would not).
#include "cpu/coupling.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/StringUtil.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <numbers>
#include <tuple>

#include "cpu/coupling_math.h"
#include "cpu/coupling_rows.h"
#include "ops.h"

namespace dgm_fast {
namespace {

using cpu::kAtan;
using cpu::kExp;
using cpu::kSigmoid;
using cpu::kTanh;
using cpu::log_scale;
using cpu::LogScale;
using cpu::m_exp;
constexpr int64_t kTile = 256;    // elements of a row per pass: l, e stay in L1
constexpr int kLanes = 16;        // partial sums of a row: a vectorizable reduction
constexpr int64_t kGrain = 1 << 15;  // elements per parallel task

template <int S, bool kInverse, typename T, typename A>
DGM_INLINE void forward_rows(const cpu::ForwardRows<T>& v, int64_t r0, int64_t r1, int64_t d,
                             const LogScale<S, A>& g) {
  alignas(64) A l[kTile];
  for (int64_t r = r0; r < r1; ++r) {
    const T *x = v.x.row(r), *s = v.s.row(r), *t = v.t.row(r);
    T* y = v.y.row(r);
    A part[kLanes] = {};
    for (int64_t j0 = 0; j0 < d; j0 += kTile) {
      const int64_t n = std::min(kTile, d - j0);
      for (int64_t j = 0; j < n; ++j) l[j] = g.value(static_cast<A>(s[j0 + j]));
#pragma GCC ivdep
      for (int64_t j = 0; j < n; ++j) {
        const A xj = static_cast<A>(x[j0 + j]), tj = static_cast<A>(t[j0 + j]);
        y[j0 + j] = static_cast<T>(kInverse ? (xj - tj) * m_exp(-l[j]) : xj * m_exp(l[j]) + tj);
      }
      int64_t j = 0;
      for (; j + kLanes <= n; j += kLanes) {
        for (int k = 0; k < kLanes; ++k) part[k] += l[j + k];
      }
      for (int k = 0; j < n; ++j, ++k) part[k] += l[j];
    }
    for (int w = kLanes / 2; w > 0; w /= 2) {
      for (int k = 0; k < w; ++k) part[k] += part[k + w];
    }
    const A sum = kInverse ? -part[0] : part[0];
    v.logdet[r] = static_cast<T>(sum);
  }
}

// forward:  dx2 = gy * e^l,   dt = gy,          ds = (gy * x2 * e^l + gL) * g'(s)
// inverse:  dx2 = gy * e^-l,  dt = -gy * e^-l,  ds = -(gy * (x2 - t) * e^-l + gL) * g'(s)
// (products in autograd's order, so (x2 - t) * e^-l cannot overflow on its own)
template <int S, bool kInverse, typename T, typename A>
DGM_INLINE void backward_rows(const cpu::BackwardRows<T>& v, int64_t r0, int64_t r1, int64_t d,
                              const LogScale<S, A>& g) {
  for (int64_t r = r0; r < r1; ++r) {
    const T *gy = v.gy.row(r), *x = v.x.row(r), *s = v.s.row(r), *t = v.t.row(r);
    T *gx = v.gx.row(r), *gs = v.gs.row(r), *gt = v.gt.row(r);
    const A g_log = static_cast<A>(v.gl[r]);
#pragma GCC ivdep
    for (int64_t j = 0; j < d; ++j) {
      const A sj = static_cast<A>(s[j]), gyj = static_cast<A>(gy[j]), xj = static_cast<A>(x[j]);
      const A l = g.value(sj), dl = g.derivative(sj);
      if constexpr (kInverse) {
        const A e = m_exp(-l);
        const A gxj = gyj * e;
        gx[j] = static_cast<T>(gxj);
        gt[j] = static_cast<T>(-gxj);
        gs[j] = static_cast<T>(-(gyj * (xj - static_cast<A>(t[j])) * e + g_log) * dl);
      } else {
        const A e = m_exp(l);
        gx[j] = static_cast<T>(gyj * e);
        gt[j] = static_cast<T>(gyj);
        gs[j] = static_cast<T>((gyj * xj * e + g_log) * dl);
      }
    }
  }
}

// The eight (scale, inverse) variants of `rows` as cases of one switch. No
// lambdas: everything must inline into the target clone to vectorize for it.
#define DGM_VARIANT(S, INV, rows, ...) \
  case 2 * S + INV: return rows<S, INV>(__VA_ARGS__, log_scale<S, A>(clamp));
#define DGM_SWITCH(rows, ...)                                                                      \
  switch (2 * scale + (inverse ? 1 : 0)) {                                                        \
    DGM_VARIANT(kExp, false, rows, __VA_ARGS__) DGM_VARIANT(kExp, true, rows, __VA_ARGS__)         \
    DGM_VARIANT(kAtan, false, rows, __VA_ARGS__) DGM_VARIANT(kAtan, true, rows, __VA_ARGS__)       \
    DGM_VARIANT(kTanh, false, rows, __VA_ARGS__) DGM_VARIANT(kTanh, true, rows, __VA_ARGS__)       \
    DGM_VARIANT(kSigmoid, false, rows, __VA_ARGS__) DGM_VARIANT(kSigmoid, true, rows, __VA_ARGS__) \
    default: return;                                                                              \
  }

template <typename T, typename A>
DGM_INLINE void forward_any(const cpu::ForwardRows<T>& v, int64_t r0, int64_t r1, int64_t d, int64_t scale,
                            double clamp, bool inverse) {
  DGM_SWITCH(forward_rows, v, r0, r1, d)
}

template <typename T, typename A>
DGM_INLINE void backward_any(const cpu::BackwardRows<T>& v, int64_t r0, int64_t r1, int64_t d, int64_t scale,
                             double clamp, bool inverse) {
  DGM_SWITCH(backward_rows, v, r0, r1, d)
}
#undef DGM_SWITCH
#undef DGM_VARIANT

}  // namespace

// One compiled clone per instruction set, picked at load time by the CPU:
// AVX-512 where present, AVX2+FMA, and a portable baseline.
#define DGM_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define DGM_DEFINE(T, A)                                                                                  \
  DGM_CLONES void cpu::coupling_forward_rows(const cpu::ForwardRows<T>& v, int64_t r0, int64_t r1,         \
                                             int64_t d, int64_t scale, double clamp, bool inverse) {        \
    forward_any<T, A>(v, r0, r1, d, scale, clamp, inverse);                                                 \
  }                                                                                                         \
  DGM_CLONES void cpu::coupling_backward_rows(const cpu::BackwardRows<T>& v, int64_t r0, int64_t r1,       \
                                              int64_t d, int64_t scale, double clamp, bool inverse) {       \
    backward_any<T, A>(v, r0, r1, d, scale, clamp, inverse);                                                \
  }
DGM_DEFINE(float, float)
DGM_DEFINE(double, double)
DGM_DEFINE(at::BFloat16, float)
DGM_DEFINE(at::Half, float)
#undef DGM_DEFINE
namespace {

void check(const char* fn, std::initializer_list<const at::Tensor*> same_shape,
           std::initializer_list<const at::Tensor*> rows, int64_t scale, double clamp) {
  const at::Tensor& first = **same_shape.begin();
  TORCH_CHECK(first.dim() >= 1, fn, ": tensors need a batch dimension");
  for (const at::Tensor* v : same_shape) {
    TORCH_CHECK(v->sizes() == first.sizes(), fn, ": x2, s, t and their results must have one shape");
  }
  for (const at::Tensor* v : rows) {
    TORCH_CHECK(v->dim() == 1 && v->size(0) == first.size(0), fn, ": logdet must have shape (batch,)");
  }
  for (auto list : {same_shape, rows}) {
    for (const at::Tensor* v : list) {
      TORCH_CHECK(v->device().is_cpu() && v->is_contiguous(), fn, ": tensors must be contiguous on the CPU");
      TORCH_CHECK(v->scalar_type() == first.scalar_type(), fn, ": tensors must have one dtype");
    }
  }
  TORCH_CHECK(scale >= kExp && scale <= kSigmoid, fn, ": unknown scale code ", scale);
  TORCH_CHECK(clamp > 0 && std::isfinite(clamp), fn, ": clamp must be positive and finite");
}

// Parallel over whole rows, about kGrain elements per task.
template <typename Fn>
void over_rows(const at::Tensor& x2, Fn&& fn) {
  const int64_t rows = x2.size(0), d = rows == 0 ? 0 : x2.numel() / rows;
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(d, 1)),
                   [&](int64_t r0, int64_t r1) { fn(r0, r1, d); });
}

}  // namespace

void affine_coupling_cpu(const at::Tensor& x2, const at::Tensor& s, const at::Tensor& t, at::Tensor& y2,
                         at::Tensor& logdet, int64_t scale, double clamp, bool inverse) {
  check("affine_coupling_cpu", {&x2, &s, &t, &y2}, {&logdet}, scale, clamp);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x2.scalar_type(), "affine_coupling_cpu", [&] {
    const scalar_t *xp = x2.const_data_ptr<scalar_t>(), *sp = s.const_data_ptr<scalar_t>(),
                   *tp = t.const_data_ptr<scalar_t>();
    scalar_t *yp = y2.data_ptr<scalar_t>(), *lp = logdet.data_ptr<scalar_t>();
    over_rows(x2, [&](int64_t r0, int64_t r1, int64_t d) {
      const cpu::ForwardRows<scalar_t> v{{xp, d}, {sp, d}, {tp, d}, {yp, d}, lp};
      cpu::coupling_forward_rows(v, r0, r1, d, scale, clamp, inverse);
    });
  });
}

void affine_coupling_backward_cpu(const at::Tensor& grad_y2, const at::Tensor& grad_logdet,
                                  const at::Tensor& x2, const at::Tensor& s, const at::Tensor& t,
                                  at::Tensor& grad_x2, at::Tensor& grad_s, at::Tensor& grad_t,
                                  int64_t scale, double clamp, bool inverse) {
  check("affine_coupling_backward_cpu", {&x2, &grad_y2, &s, &t, &grad_x2, &grad_s, &grad_t}, {&grad_logdet},
        scale, clamp);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x2.scalar_type(), "affine_coupling_backward_cpu", [&] {
    const scalar_t *gy = grad_y2.const_data_ptr<scalar_t>(), *gl = grad_logdet.const_data_ptr<scalar_t>(),
                   *xp = x2.const_data_ptr<scalar_t>(), *sp = s.const_data_ptr<scalar_t>(),
                   *tp = t.const_data_ptr<scalar_t>();
    scalar_t *gx = grad_x2.data_ptr<scalar_t>(), *gs = grad_s.data_ptr<scalar_t>(),
             *gt = grad_t.data_ptr<scalar_t>();
    over_rows(x2, [&](int64_t r0, int64_t r1, int64_t d) {
      const cpu::BackwardRows<scalar_t> v{{gy, d}, gl, {xp, d}, {sp, d}, {tp, d}, {gx, d}, {gs, d}, {gt, d}};
      cpu::coupling_backward_rows(v, r0, r1, d, scale, clamp, inverse);
    });
  });
}

namespace {

// The dispatcher kernels of dgm_fast::affine_coupling and its backward on CPU
// (schemas: dgm_fast/coupling/op.py): contiguous buffers, outputs laid out
// as the reference's are (y2 like x2, the gradients like grad_y2).
std::tuple<at::Tensor, at::Tensor> affine_coupling_op(const at::Tensor& x2, const at::Tensor& s,
                                                      const at::Tensor& t, c10::string_view scale,
                                                      double clamp, bool inverse) {
  at::Tensor y2 = empty_output(x2);
  at::Tensor logdet = empty_output(x2.size(0), x2.options());
  at::Tensor buf = contiguous_buffer(y2);
  affine_coupling_cpu(x2.contiguous(), s.contiguous(), t.contiguous(), buf, logdet, cpu::scale_code(scale), clamp,
                      inverse);
  write_back(y2, buf);
  return {y2, logdet};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_coupling_backward_op(
    const at::Tensor& grad_y2, const at::Tensor& grad_logdet, const at::Tensor& x2, const at::Tensor& s,
    const at::Tensor& t, c10::string_view scale, double clamp, bool inverse) {
  at::Tensor grads[3] = {empty_output(grad_y2), empty_output(grad_y2), empty_output(grad_y2)};  // as the reference's
  at::Tensor bufs[3] = {contiguous_buffer(grads[0]), contiguous_buffer(grads[1]), contiguous_buffer(grads[2])};
  affine_coupling_backward_cpu(grad_y2.contiguous(), grad_logdet.contiguous(), x2.contiguous(), s.contiguous(),
                               t.contiguous(), bufs[0], bufs[1], bufs[2], cpu::scale_code(scale), clamp, inverse);
  for (int i = 0; i < 3; ++i) write_back(grads[i], bufs[i]);
  return {grads[0], grads[1], grads[2]};
}

}  // namespace

namespace {

// The index of `value` in `names` (the order of SCALES / ACTIVATIONS in dgm_fast/coupling/reference.py).
int64_t code_of(const char* what, std::initializer_list<const char*> names, c10::string_view value) {
  int64_t i = 0;
  for (const char* name : names) {
    if (value == name) return i;
    ++i;
  }
  TORCH_CHECK_VALUE(false, what, " must be one of ", c10::Join(", ", names), ", got ", value);
}

}  // namespace

int64_t cpu::scale_code(c10::string_view scale) {
  return code_of("scale", {"exp", "atan", "tanh", "sigmoid"}, scale);
}

int64_t cpu::activation_code(c10::string_view activation) {
  return code_of("activation", {"relu", "leaky_relu", "tanh", "elu"}, activation);
}

TORCH_LIBRARY_IMPL(dgm_fast, CPU, m) {
  m.impl("affine_coupling", &affine_coupling_op);
  m.impl("affine_coupling_backward", &affine_coupling_backward_op);
}

}  // namespace dgm_fast
