// Elementary functions of the coupling kernels at the precision of their
// type (float: the branchless polynomials of vec_math.h, which vectorize;
// double: libm), the log-scales g(s) of the four scale functions with their
// derivatives, and the subnets' activations. Shared by the coupling op
// (csrc/cpu/coupling.cpp) and the fused flow (csrc/cpu/coupling_flow.cpp);
// everything is always_inline so that it vectorizes in the callers' clones.
#pragma once

#include <algorithm>
#include <cmath>
#include <numbers>

#include "cpu/coupling_rows.h"
#include "cpu/vec_math.h"

#define DGM_INLINE inline __attribute__((always_inline))

namespace dgm_fast::cpu {

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


// The log-scale of scale S with its constants: clamp, and clamp * 2/pi rounded once (the reference's
// Python product).
template <int S, typename A>
DGM_INLINE LogScale<S, A> log_scale(double clamp) {
  return {static_cast<A>(clamp), static_cast<A>(clamp * (2.0 / std::numbers::pi))};
}

// A subnet activation (ACTIVATIONS in dgm_fast/coupling/reference.py) and its
// gradient from the activation's output a, as torch's threshold_backward /
// leaky_relu_backward / tanh_backward / elu_backward; NaN passes through both.
template <int kAct, typename T>
DGM_INLINE T activate(T v) {
  if constexpr (kAct == kRelu) return v < T(0) ? T(0) : v;
  if constexpr (kAct == kLeakyRelu) return v < T(0) ? static_cast<T>(kLeakySlope) * v : v;
  if constexpr (kAct == kTanhAct) return m_tanh(v);
  if constexpr (kAct == kElu) return v < T(0) ? m_expm1(v) : v;
  if constexpr (kAct == kIdentity) return v;
}

template <int kAct, typename T>
DGM_INLINE T activation_grad(T g, T a) {
  if constexpr (kAct == kRelu) return a <= T(0) ? T(0) : g;
  if constexpr (kAct == kLeakyRelu) return a > T(0) ? g : g * static_cast<T>(kLeakySlope);
  if constexpr (kAct == kTanhAct) return g * (T(1) - a * a);
  if constexpr (kAct == kElu) return a <= T(0) ? g * (a + T(1)) : g;
  if constexpr (kAct == kIdentity) return g;
}

}  // namespace dgm_fast::cpu
