#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "langevin_params.h"

namespace dgm_fast {

// The MLP energy E(x) = w_L . act(... act(W_1 x + b_1) ...) + b_L of
// dgm_fast/ebm/reference.py: weights[l] (out, in) and biases[l] contiguous, the
// last layer with one output; `activation` indexes ACTIVATIONS (swish,
// leaky_relu, relu, softplus). x: a contiguous float32/float64 (B, d) CPU
// matrix; outputs contiguous, allocated by the caller.

// energy (B,) = E(x), grad (B, d) = dE/dx.
void mlp_energy_grad_cpu(const at::Tensor& x, at::TensorList weights, at::TensorList biases, at::Tensor& energy,
                         at::Tensor& grad, int64_t activation, double negative_slope);

// grad (B, d) = dE/dx, trace (B,) = tr d^2E/dx^2.
void mlp_energy_laplacian_cpu(const at::Tensor& x, at::TensorList weights, at::TensorList biases, at::Tensor& grad,
                              at::Tensor& trace, int64_t activation, double negative_slope);

// out = x0 after n_steps Langevin steps (langevin_params.h) on E, step s with the noise stream
// from p.offset + s * stride (stride: numel rounded up to a multiple of 4).
void mlp_energy_sample_cpu(const at::Tensor& x0, at::TensorList weights, at::TensorList biases, at::Tensor& out,
                           int64_t activation, double negative_slope, int64_t n_steps, const LangevinParams& p);

// The tile kernels' instruction set ("avx2" or "portable"); tests force the portable build.
const char* ebm_isa();
void set_ebm_portable(bool on);

}  // namespace dgm_fast
