// Torch glue of the CUDA affine coupling kernels (dissertation §2.2.3): checks,
// device guard, current stream, dtype dispatch to the torch-free launchers of
// coupling.cu.
#include "cuda/coupling_cuda.h"

#include <ATen/MemoryOverlap.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cmath>
#include <initializer_list>

#include "cuda/coupling.cuh"

namespace dgm_fast {
namespace {

// Checks shared by the forward and the backward: `same_shape` (x2 first) have
// one shape with a batch dimension, `rows` shape (batch,); all are contiguous
// on x2's CUDA device, of x2's dtype.
void check(const char* fn, std::initializer_list<const at::Tensor*> same_shape,
           std::initializer_list<const at::Tensor*> rows, int64_t scale, double clamp) {
  const at::Tensor& x2 = **same_shape.begin();
  TORCH_CHECK(x2.dim() >= 1, fn, ": tensors need a batch dimension");
  for (const at::Tensor* v : same_shape) {
    TORCH_CHECK(v->sizes() == x2.sizes(), fn, ": x2, s, t and their results must have one shape");
  }
  for (const at::Tensor* v : rows) {
    TORCH_CHECK(v->dim() == 1 && v->size(0) == x2.size(0), fn, ": logdet must have shape (batch,)");
  }
  for (auto list : {same_shape, rows}) {
    for (const at::Tensor* v : list) {
      TORCH_CHECK(v->is_cuda() && v->device() == x2.device(), fn, ": tensors must be on one CUDA device");
      TORCH_CHECK(v->is_contiguous(), fn, ": tensors must be contiguous");
      TORCH_CHECK(v->scalar_type() == x2.scalar_type(), fn, ": tensors must have one dtype");
    }
  }
  TORCH_CHECK(scale >= kCouplingExp && scale <= kCouplingSigmoid, fn, ": unknown scale code ", scale);
  TORCH_CHECK(clamp > 0 && std::isfinite(clamp), fn, ": clamp must be positive and finite");
}

// Elementwise outputs may be their inputs (in place); a shifted overlap may not,
// nor may two outputs, nor an output and a per-row tensor.
void check_overlap(std::initializer_list<const at::Tensor*> outputs,
                   std::initializer_list<const at::Tensor*> elementwise_inputs,
                   std::initializer_list<const at::Tensor*> row_tensors) {
  for (const at::Tensor* out : outputs) {
    for (const at::Tensor* in : elementwise_inputs) at::assert_no_partial_overlap(*out, *in);
    for (const at::Tensor* other : outputs) {
      if (other != out) at::assert_no_overlap(*out, *other);
    }
    for (const at::Tensor* row : row_tensors) {
      if (row != out) at::assert_no_overlap(*out, *row);
    }
  }
}

// (rows, cols) of the kernels: batch first, the rest flattened (1-D: one column).
int64_t rows_of(const at::Tensor& x2) { return x2.size(0); }
int64_t cols_of(const at::Tensor& x2) { return x2.size(0) == 0 ? 0 : x2.numel() / x2.size(0); }

// scalar_t is torch's element type, T the layout-identical CUDA one.
template <typename scalar_t, typename T>
const T* in(const at::Tensor& v) {
  static_assert(sizeof(scalar_t) == sizeof(T) && alignof(scalar_t) == alignof(T));
  return reinterpret_cast<const T*>(v.const_data_ptr<scalar_t>());
}

template <typename scalar_t, typename T>
T* out(at::Tensor& v) {
  static_assert(sizeof(scalar_t) == sizeof(T) && alignof(scalar_t) == alignof(T));
  return reinterpret_cast<T*>(v.data_ptr<scalar_t>());
}

template <typename scalar_t, typename T>
void launch_forward(const at::Tensor& x2, const at::Tensor& s, const at::Tensor& t, at::Tensor& y2,
                    at::Tensor& logdet, int64_t scale, double clamp, bool inverse) {
  C10_CUDA_CHECK(affine_coupling_cuda_launch<T>(
      in<scalar_t, T>(x2), in<scalar_t, T>(s), in<scalar_t, T>(t), out<scalar_t, T>(y2),
      out<scalar_t, T>(logdet), rows_of(x2), cols_of(x2), static_cast<int>(scale), clamp, inverse,
      c10::cuda::getCurrentCUDAStream()));
}

template <typename scalar_t, typename T>
void launch_backward(const at::Tensor& grad_y2, const at::Tensor& grad_logdet, const at::Tensor& x2,
                     const at::Tensor& s, const at::Tensor& t, at::Tensor& grad_x2, at::Tensor& grad_s,
                     at::Tensor& grad_t, int64_t scale, double clamp, bool inverse) {
  C10_CUDA_CHECK(affine_coupling_backward_cuda_launch<T>(
      in<scalar_t, T>(grad_y2), in<scalar_t, T>(grad_logdet), in<scalar_t, T>(x2), in<scalar_t, T>(s),
      in<scalar_t, T>(t), out<scalar_t, T>(grad_x2), out<scalar_t, T>(grad_s), out<scalar_t, T>(grad_t),
      rows_of(x2), cols_of(x2), static_cast<int>(scale), clamp, inverse,
      c10::cuda::getCurrentCUDAStream()));
}

}  // namespace

void affine_coupling_cuda(const at::Tensor& x2, const at::Tensor& s, const at::Tensor& t, at::Tensor& y2,
                          at::Tensor& logdet, int64_t scale, double clamp, bool inverse) {
  check("affine_coupling_cuda", {&x2, &s, &t, &y2}, {&logdet}, scale, clamp);
  check_overlap({&y2, &logdet}, {&x2, &s, &t}, {});
  at::assert_no_overlap(logdet, x2);
  at::assert_no_overlap(logdet, s);
  at::assert_no_overlap(logdet, t);
  const c10::cuda::CUDAGuard guard(x2.device());
  switch (x2.scalar_type()) {
    case at::kFloat: return launch_forward<float, float>(x2, s, t, y2, logdet, scale, clamp, inverse);
    case at::kDouble: return launch_forward<double, double>(x2, s, t, y2, logdet, scale, clamp, inverse);
    case at::kHalf: return launch_forward<at::Half, __half>(x2, s, t, y2, logdet, scale, clamp, inverse);
    case at::kBFloat16:
      return launch_forward<at::BFloat16, __nv_bfloat16>(x2, s, t, y2, logdet, scale, clamp, inverse);
    default: TORCH_CHECK(false, "affine_coupling_cuda: unsupported dtype ", x2.scalar_type());
  }
}

void affine_coupling_backward_cuda(const at::Tensor& grad_y2, const at::Tensor& grad_logdet,
                                   const at::Tensor& x2, const at::Tensor& s, const at::Tensor& t,
                                   at::Tensor& grad_x2, at::Tensor& grad_s, at::Tensor& grad_t,
                                   int64_t scale, double clamp, bool inverse) {
  check("affine_coupling_backward_cuda", {&x2, &grad_y2, &s, &t, &grad_x2, &grad_s, &grad_t},
        {&grad_logdet}, scale, clamp);
  check_overlap({&grad_x2, &grad_s, &grad_t}, {&grad_y2, &x2, &s, &t}, {&grad_logdet});
  const c10::cuda::CUDAGuard guard(x2.device());
  switch (x2.scalar_type()) {
    case at::kFloat:
      return launch_backward<float, float>(grad_y2, grad_logdet, x2, s, t, grad_x2, grad_s, grad_t, scale,
                                           clamp, inverse);
    case at::kDouble:
      return launch_backward<double, double>(grad_y2, grad_logdet, x2, s, t, grad_x2, grad_s, grad_t, scale,
                                             clamp, inverse);
    case at::kHalf:
      return launch_backward<at::Half, __half>(grad_y2, grad_logdet, x2, s, t, grad_x2, grad_s, grad_t,
                                               scale, clamp, inverse);
    case at::kBFloat16:
      return launch_backward<at::BFloat16, __nv_bfloat16>(grad_y2, grad_logdet, x2, s, t, grad_x2, grad_s,
                                                          grad_t, scale, clamp, inverse);
    default: TORCH_CHECK(false, "affine_coupling_backward_cuda: unsupported dtype ", x2.scalar_type());
  }
}

}  // namespace dgm_fast
