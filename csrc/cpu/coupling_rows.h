// The affine coupling's row kernels (csrc/cpu/coupling.cpp) on row-major
// views whose rows may be strided (e.g. the s and t halves of one subnet
// output), and the codes of the scales and activations.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/string_view.h>

#include <cstdint>

namespace dgm_fast::cpu {

enum Scale : int64_t { kExp = 0, kAtan = 1, kTanh = 2, kSigmoid = 3 };

// Element (r, j) is p[r * stride + j].
template <typename T>
struct RowView {
  T* p;
  int64_t stride;
  T* row(int64_t r) const { return p + r * stride; }
};

// y = coupling(x; s, t) (y may be x itself); logdet[r] = the row's +-sum(l).
template <typename T>
struct ForwardRows {
  RowView<const T> x, s, t;
  RowView<T> y;
  T* logdet;
};

// The gradients of x, s, t from those of y and of logdet (gl, one per row).
template <typename T>
struct BackwardRows {
  RowView<const T> gy;
  const T* gl;
  RowView<const T> x, s, t;
  RowView<T> gx, gs, gt;
};

// The subnets' activations, in the order of ACTIVATIONS (dgm_fast/coupling/reference.py).
enum Activation : int64_t { kRelu = 0, kLeakyRelu = 1, kTanhAct = 2, kElu = 3, kIdentity = 4 };
constexpr double kLeakySlope = 0.01;  // nn.LeakyReLU's default

// The codes of a scale / activation name (ValueError for another).
int64_t scale_code(c10::string_view scale);
int64_t activation_code(c10::string_view activation);

// Rows [r0, r1) of d elements each; `scale` is a Scale, `clamp` > 0.
#define DGM_DECLARE(T)                                                                              \
  void coupling_forward_rows(const ForwardRows<T>& v, int64_t r0, int64_t r1, int64_t d, int64_t scale, \
                             double clamp, bool inverse);                                            \
  void coupling_backward_rows(const BackwardRows<T>& v, int64_t r0, int64_t r1, int64_t d, int64_t scale, \
                              double clamp, bool inverse);
DGM_DECLARE(float)
DGM_DECLARE(double)
DGM_DECLARE(c10::BFloat16)
DGM_DECLARE(c10::Half)
#undef DGM_DECLARE

}  // namespace dgm_fast::cpu
