#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace dgm_fast {

// Trilinear sampling of a 5-D volume at the positions of a grid: F.grid_sample with mode
// "bilinear" on (N, C, D, H, W) input (dissertation §4.3; spec: dgm_fast/warp/reference.py).
// Contiguous CPU tensors of one dtype (float32/64): input (N, C, D, H, W) with D, H, W > 0,
// grid (N, Do, Ho, Wo, 3), out (N, C, Do, Ho, Wo). `padding` indexes PADDING_MODES
// ("zeros", "border", "reflection").
void grid_sample_3d_cpu(const at::Tensor& input, const at::Tensor& grid, at::Tensor& out, int64_t padding,
                        bool align_corners);

// Its gradients: grad_input (like input) and grad_grid (like grid) for grad_out (like out).
void grid_sample_3d_backward_cpu(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& grid,
                                 at::Tensor& grad_input, at::Tensor& grad_grid, int64_t padding,
                                 bool align_corners);

// Keypoint-driven warp (§4.3.3): feature (N, C, Df, Hf, Wf) sampled at the deformation
// phi(p) = sum_k m_k(p) T_k(p) over the identity grid p of the mask's volume (D, H, W), with
// T_0(p) = p, T_k(p) = J_k (p - kp_driving_k) + kp_source_k; kp_source, kp_driving (N, K, 3),
// mask (N, K + 1, D, H, W) (m = its softmax over dim 1 when mask_is_logits), jacobian
// (N, K, 3, 3); out (N, C, D, H, W) and, when return_deformation, deformation (N, D, H, W, 3).
void keypoint_warp_3d_cpu(const at::Tensor& feature, const at::Tensor& kp_source, const at::Tensor& kp_driving,
                          const at::Tensor& mask, const at::Tensor& jacobian, at::Tensor& out,
                          at::Tensor& deformation, bool mask_is_logits, int64_t padding, bool align_corners,
                          bool return_deformation);

// Its gradients for grad_out and grad_deformation (N, D, H, W, 3; zeros when not returned).
void keypoint_warp_3d_backward_cpu(const at::Tensor& grad_out, const at::Tensor& grad_deformation,
                                   const at::Tensor& feature, const at::Tensor& kp_source,
                                   const at::Tensor& kp_driving, const at::Tensor& mask, const at::Tensor& jacobian,
                                   at::Tensor& grad_feature, at::Tensor& grad_kp_source, at::Tensor& grad_kp_driving,
                                   at::Tensor& grad_mask, at::Tensor& grad_jacobian, bool mask_is_logits,
                                   int64_t padding, bool align_corners);

// The dense motion network's input (§4.3.3): out (N, K + 1, 1 + C, D, H, W) over the feature's
// volume (D, H, W > 1); per motion k the heatmap exp(-|p - kp_driving_k|^2 / (2 variance)) -
// exp(-|p - kp_source_k|^2 / (2 variance)) (0 for k = 0), then the feature sampled at T_k(p),
// zeros padding.
void sparse_motion_features_cpu(const at::Tensor& feature, const at::Tensor& kp_source, const at::Tensor& kp_driving,
                                const at::Tensor& jacobian, at::Tensor& out, double variance, bool align_corners);

void sparse_motion_features_backward_cpu(const at::Tensor& grad_out, const at::Tensor& feature,
                                         const at::Tensor& kp_source, const at::Tensor& kp_driving,
                                         const at::Tensor& jacobian, at::Tensor& grad_feature,
                                         at::Tensor& grad_kp_source, at::Tensor& grad_kp_driving,
                                         at::Tensor& grad_jacobian, double variance, bool align_corners);

// Run the sampler's scalar loops even where the CPU has AVX2 (tests: the AVX2 gathers must give the
// same bits), and which of the two runs now ("avx2" or "portable").
void set_warp_portable(bool on);
const char* warp_isa();

// The element offset the kernels compute for voxel (n, c, z, y, x) of a contiguous (N, C, D, H, W)
// volume, in int64 (tests check it past 2^31 elements without allocating them).
int64_t warp_voxel_offset(int64_t c_size, int64_t d, int64_t h, int64_t w, int64_t n, int64_t c, int64_t z,
                          int64_t y, int64_t x);

}  // namespace dgm_fast
