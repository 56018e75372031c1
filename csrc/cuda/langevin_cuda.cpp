// Torch glue of the CUDA Langevin step: checks, device guard, current stream,
// dtype dispatch to the torch-free launcher of langevin.cu.
#include "cuda/langevin_cuda.h"

#include <ATen/MemoryOverlap.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/langevin.cuh"

namespace dgm_fast {
namespace {

// scalar_t is torch's element type, T the layout-identical CUDA one.
template <typename scalar_t, typename T>
void launch(const at::Tensor& x, const at::Tensor& grad, at::Tensor& out,
            const LangevinParams& p) {
  static_assert(sizeof(scalar_t) == sizeof(T) && alignof(scalar_t) == alignof(T));
  C10_CUDA_CHECK(langevin_step_cuda_launch<T>(
      reinterpret_cast<const T*>(x.const_data_ptr<scalar_t>()),
      reinterpret_cast<const T*>(grad.const_data_ptr<scalar_t>()),
      reinterpret_cast<T*>(out.data_ptr<scalar_t>()), x.numel(), p,
      c10::cuda::getCurrentCUDAStream()));
}

}  // namespace

void langevin_step_cuda(const at::Tensor& x, const at::Tensor& grad, at::Tensor& out,
                        const LangevinParams& p) {
  TORCH_CHECK(x.is_cuda() && grad.device() == x.device() && out.device() == x.device(),
              "langevin_step_cuda: tensors must be on one CUDA device");
  TORCH_CHECK(x.is_contiguous() && grad.is_contiguous() && out.is_contiguous(),
              "langevin_step_cuda: tensors must be contiguous");
  TORCH_CHECK(x.sizes() == grad.sizes() && x.sizes() == out.sizes(),
              "langevin_step_cuda: x, grad and out must have one shape");
  TORCH_CHECK(x.scalar_type() == grad.scalar_type() && x.scalar_type() == out.scalar_type(),
              "langevin_step_cuda: x, grad and out must have one dtype");
  // Elementwise in place is fine (out is x); a shifted overlap is not.
  at::assert_no_partial_overlap(out, x);
  at::assert_no_partial_overlap(out, grad);
  const c10::cuda::CUDAGuard guard(x.device());
  switch (x.scalar_type()) {
    case at::kFloat: return launch<float, float>(x, grad, out, p);
    case at::kDouble: return launch<double, double>(x, grad, out, p);
    case at::kHalf: return launch<at::Half, __half>(x, grad, out, p);
    case at::kBFloat16: return launch<at::BFloat16, __nv_bfloat16>(x, grad, out, p);
    default: TORCH_CHECK(false, "langevin_step_cuda: unsupported dtype ", x.scalar_type());
  }
}

}  // namespace dgm_fast
