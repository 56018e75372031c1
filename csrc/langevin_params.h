// Scalar arguments of the fused Langevin step (dissertation eqs. (2.15), (2.20), (3.8)):
//   out = clamp(x - step_size/2 * (clip(grad, +-grad_clip) + prior_weight * x)
//               + noise_scale * xi(seed, offset + i), clamp_lo, clamp_hi)
// "No clipping" / "no clamping" are passed as infinite bounds.
#pragma once

#include <cstdint>

namespace dgm_fast {

struct LangevinParams {
  double step_size;
  double noise_scale;
  double prior_weight;
  double grad_clip;  // +inf: no clipping
  double clamp_lo;   // -inf: no lower bound
  double clamp_hi;   // +inf: no upper bound
  uint64_t seed;
  uint64_t offset;   // stream index of element 0
};

}  // namespace dgm_fast
