// pybind11 module dgm_fast._C: the raw out-variant kernels, named <op>_<backend>
// (the Python side finds them by that name), and the extension's build facts.
// The CPU dispatcher kernels register themselves (TORCH_LIBRARY_IMPL in
// csrc/cpu/<family>.cpp); argument checking and autograd live in Python.
#include <ATen/CPUGeneratorImpl.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "below_autograd_call.h"
#include "cpu/coupling.h"
#include "cpu/coupling_flow.h"
#include "cpu/ebm.h"
#include "cpu/langevin.h"
#include "cpu/vae.h"
#include "cpu/warp.h"
#include "ops.h"
#ifdef WITH_CUDA
#include "cuda/coupling_cuda.h"
#include "cuda/langevin_cuda.h"
#endif

namespace {

using dgm_fast::LangevinParams;

template <auto Kernel>
void bind_langevin(py::module_& m, const char* name) {
  m.def(
      name,
      [](const at::Tensor& x, const at::Tensor& grad, at::Tensor& out, double step_size,
         double noise_scale, double prior_weight, double grad_clip, double clamp_lo,
         double clamp_hi, int64_t seed, int64_t offset) {
        // seed arrives as the two's-complement int64 of a seed in [0, 2^64)
        Kernel(x, grad, out,
               LangevinParams{step_size, noise_scale, prior_weight, grad_clip, clamp_lo, clamp_hi,
                              static_cast<uint64_t>(seed), static_cast<uint64_t>(offset)});
      },
      py::arg("x"), py::arg("grad"), py::arg("out"), py::arg("step_size"), py::arg("noise_scale"),
      py::arg("prior_weight"), py::arg("grad_clip"), py::arg("clamp_lo"), py::arg("clamp_hi"),
      py::arg("seed"), py::arg("offset"), py::call_guard<py::gil_scoped_release>());
}

// Registers bump_written_versions (ops.h) as the ADInplaceOrView kernel of
// mutating op `name` (an overload name like "langevin_step_.backend" too).
void register_version_bump(const std::string& name) {
  static std::vector<std::unique_ptr<torch::Library>> libraries;  // registrations live while these do
  auto lib = std::make_unique<torch::Library>(torch::Library::IMPL, "dgm_fast",
                                              c10::DispatchKey::ADInplaceOrView, __FILE__, __LINE__);
  lib->impl(name.c_str(), torch::CppFunction::makeFromBoxedFunction<&dgm_fast::bump_written_versions>());
  libraries.push_back(std::move(lib));
}

// seed=None's draw (dgm_fast.philox.draw_seed): the value and generator
// advance of int(torch.randint(2**62, ())), i.e. one random64() of the default
// CPU generator reduced mod 2^62 (ATen's uniform_int_from_to), without a tensor.
int64_t draw_seed() {
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  const std::lock_guard<std::mutex> lock(gen.mutex());
  return static_cast<int64_t>(gen.get<at::CPUGeneratorImpl>()->random64() % (uint64_t{1} << 62));
}

py::dict build_info() {
  py::dict info;
  info["loaded"] = true;
#ifdef WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
  info["compiler"] = __VERSION__;
  info["torch_built_against"] = std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR);
  info["cpu_isa_clones"] = "x86-64-v4 (AVX-512), x86-64-v3 (AVX2+FMA), baseline; picked at load time";
  info["fp_contract"] = "off: no FMA contraction, so overflow rounds like the reference";
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "dgm_fast compiled kernels";
  bind_langevin<dgm_fast::langevin_step_cpu>(m, "langevin_step_cpu");
#ifdef WITH_CUDA
  bind_langevin<dgm_fast::langevin_step_cuda>(m, "langevin_step_cuda");
#endif
  m.def("affine_coupling_cpu", &dgm_fast::affine_coupling_cpu, py::call_guard<py::gil_scoped_release>());
  m.def("affine_coupling_backward_cpu", &dgm_fast::affine_coupling_backward_cpu,
        py::call_guard<py::gil_scoped_release>());
#ifdef WITH_CUDA
  m.def("affine_coupling_cuda", &dgm_fast::affine_coupling_cuda, py::call_guard<py::gil_scoped_release>());
  m.def("affine_coupling_backward_cuda", &dgm_fast::affine_coupling_backward_cuda,
        py::call_guard<py::gil_scoped_release>());
#endif
  using Tensors = std::vector<at::Tensor>;
  m.def(
      "coupling_flow_cpu",
      [](const at::Tensor& z, const Tensors& weights, const Tensors& biases, const Tensors& perms, at::Tensor& u,
         at::Tensor& logdet, at::Tensor& saved, int64_t scale, double clamp, int64_t activation, bool inverse,
         bool store_activations) {
        dgm_fast::coupling_flow_cpu(z, weights, biases, perms, u, logdet, saved, scale, clamp, activation, inverse,
                                    store_activations);
      },
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "coupling_flow_backward_cpu",
      [](const at::Tensor& grad_u, const at::Tensor& grad_logdet, const at::Tensor& saved, const Tensors& weights,
         const Tensors& biases, const Tensors& perms, at::Tensor& grad_z, const Tensors& grad_weights,
         const Tensors& grad_biases, int64_t scale, double clamp, int64_t activation, bool store_activations) {
        dgm_fast::coupling_flow_backward_cpu(grad_u, grad_logdet, saved, weights, biases, perms, grad_z,
                                             grad_weights, grad_biases, scale, clamp, activation, store_activations);
      },
      py::call_guard<py::gil_scoped_release>());
  m.def("coupling_flow_isa", &dgm_fast::coupling_flow_isa,
        "the instruction set the fused flow's tiles run with (\"avx2\" or \"portable\")");
  m.def("set_coupling_flow_portable", &dgm_fast::set_coupling_flow_portable,
        "run the fused flow's portable tiles even where AVX2 is present (tests)");
  m.def(
      "mlp_energy_grad_cpu",
      [](const at::Tensor& x, const Tensors& weights, const Tensors& biases, at::Tensor& energy, at::Tensor& grad,
         int64_t activation, double negative_slope) {
        dgm_fast::mlp_energy_grad_cpu(x, weights, biases, energy, grad, activation, negative_slope);
      },
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "mlp_energy_laplacian_cpu",
      [](const at::Tensor& x, const Tensors& weights, const Tensors& biases, at::Tensor& grad, at::Tensor& trace,
         int64_t activation, double negative_slope) {
        dgm_fast::mlp_energy_laplacian_cpu(x, weights, biases, grad, trace, activation, negative_slope);
      },
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "mlp_energy_sample_cpu",
      [](const at::Tensor& x0, const Tensors& weights, const Tensors& biases, at::Tensor& out, int64_t activation,
         double negative_slope, int64_t n_steps, double step_size, double noise_scale, double prior_weight,
         double grad_clip, double clamp_lo, double clamp_hi, int64_t seed, int64_t offset) {
        // seed arrives as the two's-complement int64 of a seed in [0, 2^64)
        dgm_fast::mlp_energy_sample_cpu(
            x0, weights, biases, out, activation, negative_slope, n_steps,
            LangevinParams{step_size, noise_scale, prior_weight, grad_clip, clamp_lo, clamp_hi,
                           static_cast<uint64_t>(seed), static_cast<uint64_t>(offset)});
      },
      py::call_guard<py::gil_scoped_release>());
  m.def("ebm_isa", &dgm_fast::ebm_isa, "the instruction set the MLP energy's tiles run with (\"avx2\" or \"portable\")");
  m.def("set_ebm_portable", &dgm_fast::set_ebm_portable,
        "run the MLP energy's portable tiles even where AVX2 is present (tests)");
  m.def("grid_sample_3d_cpu", &dgm_fast::grid_sample_3d_cpu, py::call_guard<py::gil_scoped_release>());
  m.def("grid_sample_3d_backward_cpu", &dgm_fast::grid_sample_3d_backward_cpu,
        py::call_guard<py::gil_scoped_release>());
  m.def("keypoint_warp_3d_cpu", &dgm_fast::keypoint_warp_3d_cpu, py::call_guard<py::gil_scoped_release>());
  m.def("keypoint_warp_3d_backward_cpu", &dgm_fast::keypoint_warp_3d_backward_cpu,
        py::call_guard<py::gil_scoped_release>());
  m.def("sparse_motion_features_cpu", &dgm_fast::sparse_motion_features_cpu,
        py::call_guard<py::gil_scoped_release>());
  m.def("sparse_motion_features_backward_cpu", &dgm_fast::sparse_motion_features_backward_cpu,
        py::call_guard<py::gil_scoped_release>());
  m.def("warp_isa", &dgm_fast::warp_isa, "the instruction set the warp sampler runs with (\"avx2\" or \"portable\")");
  m.def("set_warp_portable", &dgm_fast::set_warp_portable,
        "run the warp sampler's scalar loops even where AVX2 is present (tests)");
  m.def("warp_voxel_offset", &dgm_fast::warp_voxel_offset,
        "the int64 offset the warp kernels compute for voxel (n, c, z, y, x) of a (N, C, D, H, W) volume",
        py::arg("channels"), py::arg("depth"), py::arg("height"), py::arg("width"), py::arg("n"), py::arg("c"),
        py::arg("z"), py::arg("y"), py::arg("x"));
  m.def("categorical_pixel_nll_cpu", &dgm_fast::categorical_pixel_nll_cpu, py::call_guard<py::gil_scoped_release>());
  m.def("categorical_pixel_nll_backward_cpu", &dgm_fast::categorical_pixel_nll_backward_cpu,
        py::call_guard<py::gil_scoped_release>());
  m.def("vae_isa", &dgm_fast::vae_isa,
        "the instruction set the categorical pixel likelihood's blocks run with (\"avx2\" or \"portable\")");
  m.def("set_vae_portable", &dgm_fast::set_vae_portable,
        "run the categorical pixel likelihood's portable blocks even where AVX2 is present (tests)");
  m.def("build_info", &build_info, "what this extension was compiled with");
  m.def("draw_seed", &draw_seed, "a noise seed in [0, 2**62) from torch's default CPU generator");
  py::class_<dgm_fast::BelowAutogradCall>(m, "BelowAutogradCall",
                                          "call an op through the dispatcher below the Autograd key")
      .def(py::init<const std::string&, const std::string&>(), py::arg("name"), py::arg("overload"))
      .def("__call__", &dgm_fast::BelowAutogradCall::operator());
  m.def("register_version_bump", &register_version_bump,
        "register the C++ version-counter kernel (ADInplaceOrView) of a mutating op");
  m.def(
      "set_poison_outputs", [](bool on) { dgm_fast::g_poison_outputs = on; },
      "fill new kernel outputs with NaN (tests)");
  m.def(
      "poison_outputs", [] { return dgm_fast::g_poison_outputs.load(); },
      "whether new kernel outputs are filled with NaN");
}
