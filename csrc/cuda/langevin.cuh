// Launcher of the fused Langevin step on CUDA, eq. (2.15) (and the gradient
// flow (2.20) when noise_scale = 0); see langevin_params.h. Torch-free, so that
// langevin.cu compiles with plain nvcc; the torch glue is langevin_cuda.cpp.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "langevin_params.h"

namespace dgm_fast {

// out[i] = step(x[i], grad[i], xi(seed, offset + i)) for 0 <= i < n on
// `stream`; out may be x (in place). Instantiated for float, double, __half
// and __nv_bfloat16. Returns the launch error (cudaSuccess when n <= 0).
template <typename T>
cudaError_t langevin_step_cuda_launch(const T* x, const T* grad, T* out, int64_t n,
                                      const LangevinParams& p, cudaStream_t stream);

}  // namespace dgm_fast
