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
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <tuple>

#include "cpu/coupling_rows.h"
#include "cpu/vec_math.h"
#include "ops.h"

#define DGM_INLINE inline __attribute__((always_inline))

namespace dgm_fast {
namespace {

using cpu::kAtan;
using cpu::kExp;
using cpu::kSigmoid;
using cpu::kTanh;
constexpr int64_t kTile = 256;    // elements of a row per pass: l, e stay in L1
constexpr int kLanes = 16;        // partial sums of a row: a vectorizable reduction
constexpr int64_t kGrain = 1 << 15;  // elements per parallel task

DGM_INLINE float m_exp(float v) { return cpu::exp_f(v); }
DGM_INLINE double m_exp(double v) { return std::exp(v); }
DGM_INLINE float m_atan(float v) { return cpu::atan_f(v); }
DGM_INLINE double m_atan(double v) { return std::atan(v); }
DGM_INLINE float m_tanh(float v) { return cpu::tanh_f(v); }
DGM_INLINE double m_tanh(double v) { return std::tanh(v); }
DGM_INLINE float m_log_sigmoid(float u) { return cpu::log_sigmoid_f(u); }
// sigmoid(v) from e^-|v|, which never overflows: far out it is subnormal, not 0 (torch's too)
DGM_INLINE float m_sigmoid(float v) {
  const float e = cpu::exp_f(-cpu::abs_f(v));
  return cpu::select_f(v >= 0.0f, 1.0f / (1.0f + e), e / (1.0f + e));
}
DGM_INLINE double m_sigmoid(double v) {
  const double e = std::exp(-std::abs(v));
  return v >= 0.0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
}
DGM_INLINE float m_expm1(float v) { return cpu::exp_f(v) - 1.0f; }  // ELU's negative side: |error| < 1e-7
DGM_INLINE double m_expm1(double v) { return std::expm1(v); }
DGM_INLINE double m_log_sigmoid(double u) { return -(std::max(-u, 0.0) + std::log1p(std::exp(-std::abs(u)))); }

// l = g(s) and g'(s) of scale S, as the reference evaluates them.
template <int S, typename A>
struct LogScale {
  A clamp, atan_gain;  // clamp; clamp * 2/pi rounded once (the reference's Python product)
  static constexpr A kTwoOverPi = static_cast<A>(2.0 / std::numbers::pi);

  DGM_INLINE A value(A s) const {
    if constexpr (S == kExp) return s;
    if constexpr (S == kAtan) return atan_gain * m_atan(s / clamp);
    if constexpr (S == kTanh) return clamp * m_tanh(s / clamp);
    if constexpr (S == kSigmoid) return m_log_sigmoid(s + A(2));
  }
  DGM_INLINE A derivative(A s) const {
    if constexpr (S == kExp) return A(1);
    if constexpr (S == kAtan) {
      const A q = s / clamp;
      return A(1) / (A(1) + q * q) * kTwoOverPi;  // torch's scalar / tensor is reciprocal * scalar
    }
    if constexpr (S == kTanh) {
      const A th = m_tanh(s / clamp);
      return A(1) - th * th;
    }
    if constexpr (S == kSigmoid) return m_sigmoid(-(s + A(2)));
  }
};

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
    v.logdet[r] = static_cast<T>(v.accumulate ? static_cast<A>(v.logdet[r]) + sum : sum);
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

// NaN passes through every branch, as through torch's activations.
template <int kAct, typename T>
DGM_INLINE void bias_activation(T* y, const T* bias, int64_t r0, int64_t r1, int64_t width) {
  for (int64_t r = r0; r < r1; ++r) {
    T* row = y + r * width;
#pragma GCC ivdep
    for (int64_t j = 0; j < width; ++j) {
      const T v = row[j] + bias[j];
      if constexpr (kAct == cpu::kRelu) row[j] = v < T(0) ? T(0) : v;
      if constexpr (kAct == cpu::kLeakyRelu) row[j] = v < T(0) ? static_cast<T>(cpu::kLeakySlope) * v : v;
      if constexpr (kAct == cpu::kTanhAct) row[j] = m_tanh(v);
      if constexpr (kAct == cpu::kElu) row[j] = v < T(0) ? m_expm1(v) : v;
      if constexpr (kAct == cpu::kIdentity) row[j] = v;
    }
  }
}

// torch's threshold_backward / leaky_relu_backward / tanh_backward / elu_backward
// (from the result), so NaN in `a` is treated alike; the bias gradient summed on the way.
template <int kAct, typename T>
DGM_INLINE void activation_backward(T* g, const T* a, T* grad_bias, int64_t rows, int64_t width) {
  for (int64_t j = 0; j < width; ++j) grad_bias[j] = T(0);
  for (int64_t r = 0; r < rows; ++r) {
    T* gr = g + r * width;
    const T* ar = a + r * width;
#pragma GCC ivdep
    for (int64_t j = 0; j < width; ++j) {
      T v = gr[j];
      if constexpr (kAct == cpu::kRelu) v = ar[j] <= T(0) ? T(0) : v;
      if constexpr (kAct == cpu::kLeakyRelu) v = ar[j] > T(0) ? v : v * static_cast<T>(cpu::kLeakySlope);
      if constexpr (kAct == cpu::kTanhAct) v = v * (T(1) - ar[j] * ar[j]);
      if constexpr (kAct == cpu::kElu) v = ar[j] <= T(0) ? v * (ar[j] + T(1)) : v;
      gr[j] = v;
      grad_bias[j] += v;
    }
  }
}

template <typename T>
DGM_INLINE void activation_backward_any(T* g, const T* a, T* grad_bias, int64_t rows, int64_t width,
                                        int64_t activation) {
  switch (activation) {
    case cpu::kRelu: return activation_backward<cpu::kRelu>(g, a, grad_bias, rows, width);
    case cpu::kLeakyRelu: return activation_backward<cpu::kLeakyRelu>(g, a, grad_bias, rows, width);
    case cpu::kTanhAct: return activation_backward<cpu::kTanhAct>(g, a, grad_bias, rows, width);
    case cpu::kElu: return activation_backward<cpu::kElu>(g, a, grad_bias, rows, width);
    default: return activation_backward<cpu::kIdentity>(g, a, grad_bias, rows, width);
  }
}

template <typename T>
DGM_INLINE void bias_activation_any(T* y, const T* bias, int64_t r0, int64_t r1, int64_t width,
                                    int64_t activation) {
  switch (activation) {
    case cpu::kRelu: return bias_activation<cpu::kRelu>(y, bias, r0, r1, width);
    case cpu::kLeakyRelu: return bias_activation<cpu::kLeakyRelu>(y, bias, r0, r1, width);
    case cpu::kTanhAct: return bias_activation<cpu::kTanhAct>(y, bias, r0, r1, width);
    case cpu::kElu: return bias_activation<cpu::kElu>(y, bias, r0, r1, width);
    default: return bias_activation<cpu::kIdentity>(y, bias, r0, r1, width);
  }
}

template <int S, typename A>
DGM_INLINE LogScale<S, A> log_scale(double clamp) {
  return {static_cast<A>(clamp), static_cast<A>(clamp * (2.0 / std::numbers::pi))};
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
#define DGM_DEFINE(T)                                                                                     \
  DGM_CLONES void cpu::bias_activation_rows(T* y, const T* bias, int64_t r0, int64_t r1, int64_t width,    \
                                            int64_t activation) {                                         \
    bias_activation_any(y, bias, r0, r1, width, activation);                                               \
  }
DGM_DEFINE(float)
DGM_DEFINE(double)
#undef DGM_DEFINE
#define DGM_DEFINE(T)                                                                                       \
  DGM_CLONES void cpu::activation_backward_rows(T* g, const T* a, T* grad_bias, int64_t rows, int64_t width, \
                                                int64_t activation) {                                       \
    activation_backward_any(g, a, grad_bias, rows, width, activation);                                       \
  }
DGM_DEFINE(float)
DGM_DEFINE(double)
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
      const cpu::ForwardRows<scalar_t> v{{xp, d}, {sp, d}, {tp, d}, {yp, d}, lp, false};
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
int64_t scale_code(c10::string_view scale) {
  constexpr const char* kNames[] = {"exp", "atan", "tanh", "sigmoid"};
  for (int64_t i = 0; i < 4; ++i) {
    if (scale == kNames[i]) return i;
  }
  TORCH_CHECK_VALUE(false, "scale must be one of exp, atan, tanh, sigmoid, got ", scale);
}

at::Tensor contiguous_buffer(const at::Tensor& out) {
  return out.is_contiguous() ? out : empty_output(out, at::MemoryFormat::Contiguous);
}

void write_back(at::Tensor& out, const at::Tensor& buf) {
  if (!buf.is_same(out)) out.copy_(buf);
}

std::tuple<at::Tensor, at::Tensor> affine_coupling_op(const at::Tensor& x2, const at::Tensor& s,
                                                      const at::Tensor& t, c10::string_view scale,
                                                      double clamp, bool inverse) {
  at::Tensor y2 = empty_output(x2);
  at::Tensor logdet = empty_output(x2.size(0), x2.options());
  at::Tensor buf = contiguous_buffer(y2);
  affine_coupling_cpu(x2.contiguous(), s.contiguous(), t.contiguous(), buf, logdet, scale_code(scale), clamp,
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
                               t.contiguous(), bufs[0], bufs[1], bufs[2], scale_code(scale), clamp, inverse);
  for (int i = 0; i < 3; ++i) write_back(grads[i], bufs[i]);
  return {grads[0], grads[1], grads[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(dgm_fast, CPU, m) {
  m.impl("affine_coupling", &affine_coupling_op);
  m.impl("affine_coupling_backward", &affine_coupling_backward_op);
}

}  // namespace dgm_fast
