// Launchers of the affine coupling layer on CUDA (dissertation §2.2.3,
// "Coupling Layers"; specification: dgm_fast/coupling/reference.py):
//   forward  y2 = x2 * exp(l) + t,     logdet =  sum_row(l)
//   inverse  y2 = (x2 - t) * exp(-l),  logdet = -sum_row(l)
// with l = g(s). Torch-free, so that coupling.cu compiles with plain nvcc; the
// torch glue is coupling_cuda.cpp.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace dgm_fast {

// Codes of g, in the order of SCALES in dgm_fast/coupling/reference.py:
//   exp      g(s) = s
//   atan     g(s) = (clamp * 2/pi) * atan(s / clamp)
//   tanh     g(s) = clamp * tanh(s / clamp)
//   sigmoid  g(s) = log(sigmoid(s + 2))
enum CouplingScale : int { kCouplingExp = 0, kCouplingAtan = 1, kCouplingTanh = 2, kCouplingSigmoid = 3 };

// Contiguous buffers of `rows` rows of `cols` elements (x2, s, t, y2) and of
// `rows` elements (logdet), all on the current device. Writes y2 and logdet on
// `stream`; y2 may be x2, s or t (in place). Instantiated for float, double,
// __half and __nv_bfloat16 (the 16-bit types computed in float). Returns the
// launch error: cudaSuccess when rows <= 0, cudaErrorInvalidValue for a bad
// scale code.
template <typename T>
cudaError_t affine_coupling_cuda_launch(const T* x2, const T* s, const T* t, T* y2, T* logdet,
                                        int64_t rows, int64_t cols, int scale, double clamp,
                                        bool inverse, cudaStream_t stream);

// The gradients (grad_x2, grad_s, grad_t) of the coupling for grad_y2 (rows x
// cols) and grad_logdet (rows):
//   forward:  dx2 = gy * e^l,   dt = gy,          ds = (gy * x2 * e^l + gL) * g'(s)
//   inverse:  dx2 = gy * e^-l,  dt = -gy * e^-l,  ds = -(gy * (x2 - t) * e^-l + gL) * g'(s)
// (products left to right). Same conventions as above.
template <typename T>
cudaError_t affine_coupling_backward_cuda_launch(const T* grad_y2, const T* grad_logdet, const T* x2,
                                                 const T* s, const T* t, T* grad_x2, T* grad_s,
                                                 T* grad_t, int64_t rows, int64_t cols, int scale,
                                                 double clamp, bool inverse, cudaStream_t stream);

}  // namespace dgm_fast
