#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace dgm_fast {

// A whole CouplingFlow (dgm_fast/coupling/flow.py; dissertation §3.2, Figure
// 3.1(b)) in one call per direction: n_blocks blocks of two affine couplings
// and a permutation. weights[c * L + k] / biases[c * L + k] are layer k of the
// subnet of coupling c = 2 * block + half (half 0 maps z[:, split:] from
// z[:, :split], half 1 the other way); perms[b] is block b's permutation.
// `scale` indexes SCALES, `activation` ACTIVATIONS (relu, leaky_relu, tanh,
// elu); float32/float64 CPU tensors, z contiguous (B, dim). The forward
// direction also fills `saved` for the backward (empty for the inverse).
void coupling_flow_cpu(const at::Tensor& z, at::TensorList weights, at::TensorList biases, at::TensorList perms,
                       at::Tensor& u, at::Tensor& logdet, at::Tensor& saved, int64_t scale, double clamp,
                       int64_t activation, bool inverse, bool store_activations);

// Gradients of the forward direction (u, logdet) = flow(z) from the forward's
// `saved` buffer: the blocks' inputs, then (with store_activations) every
// coupling's subnet input and layer outputs; without them each block's
// activations are recomputed from its input. Layout: dgm_fast/coupling/op.py.
void coupling_flow_backward_cpu(const at::Tensor& grad_u, const at::Tensor& grad_logdet, const at::Tensor& saved,
                                at::TensorList weights, at::TensorList biases, at::TensorList perms,
                                at::Tensor& grad_z, at::TensorList grad_weights, at::TensorList grad_biases,
                                int64_t scale, double clamp, int64_t activation, bool store_activations);

// The instruction set of the flow's tile kernels: "avx2" (AVX2 + FMA, picked
// at run time where the CPU has them) or "portable"; tests force the portable
// build to check it on machines that would never run it.
const char* coupling_flow_isa();
void set_coupling_flow_portable(bool on);

}  // namespace dgm_fast
