#pragma once

#include <ATen/core/Tensor.h>

#include "langevin_params.h"

namespace dgm_fast {

// out = Langevin step of (x, grad) (see langevin_params.h); contiguous CPU
// tensors of one shape and dtype (float32/64, bfloat16, float16); out may be x.
void langevin_step_cpu(const at::Tensor& x, const at::Tensor& grad, at::Tensor& out,
                       const LangevinParams& p);

}  // namespace dgm_fast
