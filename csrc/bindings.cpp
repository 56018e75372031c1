// pybind11 module dgm_fast._C: the raw kernels. Argument checking and autograd
// live in Python (dgm_fast/langevin/op.py); these expect validated tensors.
#include <torch/extension.h>

#include "cpu/langevin.h"
#ifdef WITH_CUDA
#include "cuda/langevin_cuda.h"
#endif

namespace {

using dgm_fast::LangevinParams;

LangevinParams make_params(double step_size, double noise_scale, double prior_weight,
                           double grad_clip, double clamp_lo, double clamp_hi, int64_t seed,
                           int64_t offset) {
  // seed arrives as the two's-complement int64 of a seed in [0, 2^64)
  return {step_size, noise_scale,  prior_weight, grad_clip, clamp_lo,
          clamp_hi,  static_cast<uint64_t>(seed), static_cast<uint64_t>(offset)};
}

template <auto Kernel>
void bind_langevin(py::module_& m, const char* name) {
  m.def(
      name,
      [](const at::Tensor& x, const at::Tensor& grad, at::Tensor& out, double step_size,
         double noise_scale, double prior_weight, double grad_clip, double clamp_lo,
         double clamp_hi, int64_t seed, int64_t offset) {
        Kernel(x, grad, out,
               make_params(step_size, noise_scale, prior_weight, grad_clip, clamp_lo, clamp_hi,
                           seed, offset));
      },
      py::arg("x"), py::arg("grad"), py::arg("out"), py::arg("step_size"), py::arg("noise_scale"),
      py::arg("prior_weight"), py::arg("grad_clip"), py::arg("clamp_lo"), py::arg("clamp_hi"),
      py::arg("seed"), py::arg("offset"), py::call_guard<py::gil_scoped_release>());
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "dgm_fast compiled kernels";
  bind_langevin<dgm_fast::langevin_step_cpu>(m, "langevin_step_cpu");
#ifdef WITH_CUDA
  bind_langevin<dgm_fast::langevin_step_cuda>(m, "langevin_step_cuda");
#endif
}
