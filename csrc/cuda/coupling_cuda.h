#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace dgm_fast {

// Affine coupling layer on the current CUDA stream (dissertation §2.2.3; spec:
// dgm_fast/coupling/reference.py). Contiguous tensors on one CUDA device, of
// one dtype (float32/64, bfloat16, float16), batch first: x2, s, t, y2 (and
// the gradients) share one shape of B rows; logdet and grad_logdet have shape
// (B,). `scale` indexes SCALES ("exp", "atan", "tanh", "sigmoid"); `clamp` > 0.
void affine_coupling_cuda(const at::Tensor& x2, const at::Tensor& s, const at::Tensor& t, at::Tensor& y2,
                          at::Tensor& logdet, int64_t scale, double clamp, bool inverse);

void affine_coupling_backward_cuda(const at::Tensor& grad_y2, const at::Tensor& grad_logdet,
                                   const at::Tensor& x2, const at::Tensor& s, const at::Tensor& t,
                                   at::Tensor& grad_x2, at::Tensor& grad_s, at::Tensor& grad_t,
                                   int64_t scale, double clamp, bool inverse);

}  // namespace dgm_fast
