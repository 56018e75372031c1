// The 3-D warping ops on CPU (face reenactment, dissertation §4.3): trilinear grid sampling of
// a 5-D volume, and the keypoint-driven warp whose sampling positions are the dense motion of
// §4.3.3 computed per block of voxels, never stored. Both run the sampler of warp_sampler.h;
// specification: dgm_fast/warp/reference.py.
#include "cpu/warp.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/vec_math.h"
#include "cpu/warp_sampler.h"

namespace dgm_fast {
namespace {

using cpu::warp::Block;
using cpu::warp::Geometry;
using cpu::warp::kBlock;
using cpu::warp::kReflection;
using cpu::warp::kZeros;

Geometry geometry(const at::Tensor& input, int64_t voxels, int64_t padding, bool align_corners) {
  TORCH_CHECK(input.dim() == 5, "warp: expected input (N, C, D, H, W)");
  TORCH_CHECK(input.size(2) > 0 && input.size(3) > 0 && input.size(4) > 0,
              "warp: input must have non-empty spatial dimensions");
  TORCH_CHECK(padding >= kZeros && padding <= kReflection, "warp: unknown padding code ", padding);
  return {input.size(1), input.size(2), input.size(3), input.size(4), voxels, padding, align_corners};
}

// --- grid_sample_3d: positions from a grid ----------------------------------------------------
template <typename T>
struct GridPositions {
  const T* grid;  // (N, V, 3)
  int64_t voxels;

  void operator()(int64_t n, int64_t v0, int64_t count, Block<T>& b) const {
    const T* c = grid + (n * voxels + v0) * 3;
    for (int64_t j = 0; j < count; ++j) {
      for (int a = 0; a < 3; ++a) b.coord[a][j] = c[3 * j + a];
    }
  }
};

// --- keypoint_warp_3d: positions from the keypoints ---------------------------------------------
inline float exp_of(float x) { return cpu::exp_f(x); }
inline double exp_of(double x) { return std::exp(x); }

// The deformation phi(p) = sum_k m_k(p) T_k(p) over the identity grid p of the mask's volume,
// T_0(p) = p and T_k(p) = J_k (p - kp_driving_k) + kp_source_k (§4.3.3: FOMM's local affine
// motions, J_k = A_sk^-1 A_dk), m = the mask or its softmax over the K + 1 motions.
template <typename T>
struct KeypointPositions {
  const T *kp_source, *kp_driving, *mask, *jacobian;  // (N, K, 3), (N, K, 3), (N, K + 1, V), (N, K, 3, 3)
  int64_t keypoints;
  int64_t d, h, w;  // the mask's (output) volume
  bool logits;

  int64_t voxels() const { return d * h * w; }

  // identity grid: 2 * (i / (n - 1)) - 1 per axis, as FOMM's make_coordinate_grid
  void identity(int64_t v, T p[3]) const {
    const int64_t x = v % w, y = v / w % h, z = v / (w * h);
    p[0] = T(2) * (static_cast<T>(x) / static_cast<T>(w - 1)) - T(1);
    p[1] = T(2) * (static_cast<T>(y) / static_cast<T>(h - 1)) - T(1);
    p[2] = T(2) * (static_cast<T>(z) / static_cast<T>(d - 1)) - T(1);
  }

  // T_k(p) for keypoint k (1-based in the motions, 0-based here) of sample n, and p - kp_driving_k
  void motion(int64_t n, int64_t k, const T p[3], T out[3], T diff[3]) const {
    const T* kd = kp_driving + (n * keypoints + k) * 3;
    const T* ks = kp_source + (n * keypoints + k) * 3;
    const T* jac = jacobian + (n * keypoints + k) * 9;
    for (int a = 0; a < 3; ++a) diff[a] = p[a] - kd[a];
    for (int a = 0; a < 3; ++a) out[a] = jac[3 * a] * diff[0] + jac[3 * a + 1] * diff[1] + jac[3 * a + 2] * diff[2] + ks[a];
  }

  // m[k * kBlock + j]: the block's K + 1 mask weights (softmax over k of the logits)
  void weights(int64_t n, int64_t v0, int64_t count, T* m) const {
    const int64_t motions = keypoints + 1, v_all = voxels();
    for (int64_t k = 0; k < motions; ++k) {
      const T* src = mask + (n * motions + k) * v_all + v0;
      std::copy(src, src + count, m + k * kBlock);
    }
    if (!logits) return;
    alignas(64) T top[kBlock], sum[kBlock];
    std::copy(m, m + count, top);
    for (int64_t k = 1; k < motions; ++k) {
      for (int64_t j = 0; j < count; ++j) top[j] = std::max(top[j], m[k * kBlock + j]);
    }
    std::fill(sum, sum + count, T(0));
    for (int64_t k = 0; k < motions; ++k) {
      for (int64_t j = 0; j < count; ++j) {
        m[k * kBlock + j] = exp_of(m[k * kBlock + j] - top[j]);
        sum[j] += m[k * kBlock + j];
      }
    }
    for (int64_t k = 0; k < motions; ++k) {
      for (int64_t j = 0; j < count; ++j) m[k * kBlock + j] /= sum[j];
    }
  }

  void operator()(int64_t n, int64_t v0, int64_t count, Block<T>& b) const {
    b.scratch.resize((keypoints + 1) * kBlock);
    T* m = b.scratch.data();
    weights(n, v0, count, m);
    for (int64_t j = 0; j < count; ++j) {
      T p[3], t[3], diff[3];
      identity(v0 + j, p);
      T phi[3] = {m[j] * p[0], m[j] * p[1], m[j] * p[2]};
      for (int64_t k = 0; k < keypoints; ++k) {
        motion(n, k, p, t, diff);
        const T mk = m[(k + 1) * kBlock + j];
        for (int a = 0; a < 3; ++a) phi[a] += mk * t[a];
      }
      for (int a = 0; a < 3; ++a) b.coord[a][j] = phi[a];
    }
  }

  // Given grad_phi of sample n's voxels [v0, v0 + count): the mask's (or logits') gradient, and the
  // per-keypoint sums A_k = sum_v m_k grad_phi and B_k = sum_v m_k grad_phi p^T (acc: K x 12) from
  // which the keypoints' and Jacobians' gradients follow.
  void backward_block(int64_t n, int64_t v0, int64_t count, const T* grad_phi, T* grad_mask, double* acc,
                      T* m) const {
    weights(n, v0, count, m);
    const int64_t motions = keypoints + 1, v_all = voxels();
    for (int64_t j = 0; j < count; ++j) {
      T p[3], t[3], diff[3];
      identity(v0 + j, p);
      const T* g = grad_phi + (n * v_all + v0 + j) * 3;
      T dot = 0;
      T* out = grad_mask + n * motions * v_all + v0 + j;
      for (int64_t k = 0; k < motions; ++k) {
        T tk[3] = {p[0], p[1], p[2]};
        if (k > 0) {
          motion(n, k - 1, p, t, diff);
          tk[0] = t[0], tk[1] = t[1], tk[2] = t[2];
          const T mk = m[k * kBlock + j];
          double* a_k = acc + (k - 1) * 12;
          for (int a = 0; a < 3; ++a) {
            const double mg = static_cast<double>(mk) * static_cast<double>(g[a]);
            a_k[a] += mg;
            for (int c = 0; c < 3; ++c) a_k[3 + 3 * a + c] += mg * static_cast<double>(p[c]);
          }
        }
        const T gmk = g[0] * tk[0] + g[1] * tk[1] + g[2] * tk[2];
        if (logits) dot += m[k * kBlock + j] * gmk;
        out[k * v_all] = gmk;
      }
      if (logits) {  // softmax's backward: s_k (g_k - sum_j s_j g_j)
        for (int64_t k = 0; k < motions; ++k) out[k * v_all] = m[k * kBlock + j] * (out[k * v_all] - dot);
      }
    }
  }
};

}  // namespace

// --- grid_sample_3d --------------------------------------------------------------------------
void grid_sample_3d_cpu(const at::Tensor& input, const at::Tensor& grid, at::Tensor& out, int64_t padding,
                        bool align_corners) {
  TORCH_CHECK(grid.dim() == 5 && grid.size(4) == 3 && grid.size(0) == input.size(0),
              "grid_sample_3d: expected grid (N, Do, Ho, Wo, 3)");
  const Geometry g = geometry(input, grid.size(1) * grid.size(2) * grid.size(3), padding, align_corners);
  if (out.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "grid_sample_3d_cpu", [&] {
    const GridPositions<scalar_t> positions{grid.const_data_ptr<scalar_t>(), g.voxels};
    cpu::warp::forward(input.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), input.size(0), g, positions,
                       [](int64_t, int64_t, const Block<scalar_t>&) {});
  });
}

void grid_sample_3d_backward_cpu(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& grid,
                                 at::Tensor& grad_input, at::Tensor& grad_grid, int64_t padding,
                                 bool align_corners) {
  const Geometry g = geometry(input, grid.size(1) * grid.size(2) * grid.size(3), padding, align_corners);
  if (input.size(0) == 0 || g.voxels == 0 || g.c == 0) {  // nothing sampled: zero gradients
    grad_input.zero_();
    grad_grid.zero_();
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "grid_sample_3d_backward_cpu", [&] {
    const GridPositions<scalar_t> positions{grid.const_data_ptr<scalar_t>(), g.voxels};
    cpu::warp::backward(grad_out.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
                        grad_input.data_ptr<scalar_t>(), grad_grid.data_ptr<scalar_t>(), input.size(0), g, positions);
  });
}

// --- keypoint_warp_3d ------------------------------------------------------------------------
namespace {

template <typename T>
KeypointPositions<T> keypoint_positions(const at::Tensor& kp_source, const at::Tensor& kp_driving,
                                        const at::Tensor& mask, const at::Tensor& jacobian, bool logits) {
  return {kp_source.const_data_ptr<T>(), kp_driving.const_data_ptr<T>(), mask.const_data_ptr<T>(),
          jacobian.const_data_ptr<T>(), kp_source.size(1), mask.size(2), mask.size(3), mask.size(4), logits};
}

void check_keypoint_shapes(const at::Tensor& feature, const at::Tensor& kp_source, const at::Tensor& kp_driving,
                           const at::Tensor& mask, const at::Tensor& jacobian) {
  const int64_t n = feature.size(0), k = kp_source.size(1);
  TORCH_CHECK(kp_source.dim() == 3 && kp_source.size(0) == n && kp_source.size(2) == 3 &&
                  kp_driving.sizes() == kp_source.sizes() && mask.dim() == 5 && mask.size(0) == n &&
                  mask.size(1) == k + 1 && mask.size(2) > 1 && mask.size(3) > 1 && mask.size(4) > 1 &&
                  jacobian.dim() == 4 && jacobian.size(0) == n && jacobian.size(1) == k && jacobian.size(2) == 3 &&
                  jacobian.size(3) == 3,
              "keypoint_warp_3d: expected keypoints (N, K, 3), mask (N, K + 1, D, H, W) and jacobian (N, K, 3, 3)");
}

}  // namespace

void keypoint_warp_3d_cpu(const at::Tensor& feature, const at::Tensor& kp_source, const at::Tensor& kp_driving,
                          const at::Tensor& mask, const at::Tensor& jacobian, at::Tensor& out,
                          at::Tensor& deformation, bool mask_is_logits, int64_t padding, bool align_corners,
                          bool return_deformation) {
  check_keypoint_shapes(feature, kp_source, kp_driving, mask, jacobian);
  const Geometry g = geometry(feature, mask.size(2) * mask.size(3) * mask.size(4), padding, align_corners);
  if (feature.size(0) == 0) return;
  AT_DISPATCH_FLOATING_TYPES(feature.scalar_type(), "keypoint_warp_3d_cpu", [&] {
    const auto positions = keypoint_positions<scalar_t>(kp_source, kp_driving, mask, jacobian, mask_is_logits);
    scalar_t* phi = return_deformation ? deformation.data_ptr<scalar_t>() : nullptr;
    cpu::warp::forward(feature.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), feature.size(0), g, positions,
                       [&](int64_t n, int64_t v0, const Block<scalar_t>& b) {
                         if (phi == nullptr) return;
                         scalar_t* dst = phi + (n * g.voxels + v0) * 3;
                         for (int64_t j = 0; j < b.n; ++j) {
                           for (int a = 0; a < 3; ++a) dst[3 * j + a] = b.coord[a][j];
                         }
                       });
  });
}

void keypoint_warp_3d_backward_cpu(const at::Tensor& grad_out, const at::Tensor& grad_deformation,
                                   const at::Tensor& feature, const at::Tensor& kp_source,
                                   const at::Tensor& kp_driving, const at::Tensor& mask, const at::Tensor& jacobian,
                                   at::Tensor& grad_feature, at::Tensor& grad_kp_source, at::Tensor& grad_kp_driving,
                                   at::Tensor& grad_mask, at::Tensor& grad_jacobian, bool mask_is_logits,
                                   int64_t padding, bool align_corners) {
  check_keypoint_shapes(feature, kp_source, kp_driving, mask, jacobian);
  const Geometry g = geometry(feature, mask.size(2) * mask.size(3) * mask.size(4), padding, align_corners);
  const int64_t batch = feature.size(0), keypoints = kp_source.size(1);
  AT_DISPATCH_FLOATING_TYPES(feature.scalar_type(), "keypoint_warp_3d_backward_cpu", [&] {
    using T = scalar_t;
    const auto positions = keypoint_positions<T>(kp_source, kp_driving, mask, jacobian, mask_is_logits);
    // 1. the sampler's backward: grad_feature and the deformation's gradient (plus the caller's)
    std::vector<T> grad_phi(batch * g.voxels * 3, T(0));
    if (batch > 0 && g.voxels > 0 && g.c > 0) {
      cpu::warp::backward(grad_out.const_data_ptr<T>(), feature.const_data_ptr<T>(), grad_feature.data_ptr<T>(),
                          grad_phi.data(), batch, g, positions);
    } else {
      grad_feature.zero_();
    }
    const T* gd = grad_deformation.const_data_ptr<T>();
    for (size_t i = 0; i < grad_phi.size(); ++i) grad_phi[i] += gd[i];
    // 2. the mask's gradient per voxel; the keypoints' as per-thread sums in double, reduced in order
    const int64_t blocks = (g.voxels + kBlock - 1) / kBlock, threads = at::get_num_threads();
    std::vector<double> sums(threads * batch * keypoints * 12, 0.0);
    const T* gp = grad_phi.data();
    T* gm = grad_mask.data_ptr<T>();
    at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> m((keypoints + 1) * kBlock);
      double* mine = sums.data() + at::get_thread_num() * batch * keypoints * 12;
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / blocks, v0 = item % blocks * kBlock;
        positions.backward_block(n, v0, std::min(kBlock, g.voxels - v0), gp, gm, mine + n * keypoints * 12,
                                 m.data());
      }
    });
    const T *kd = kp_driving.const_data_ptr<T>(), *jac = jacobian.const_data_ptr<T>();
    T *g_ks = grad_kp_source.data_ptr<T>(), *g_kd = grad_kp_driving.data_ptr<T>(), *g_j = grad_jacobian.data_ptr<T>();
    for (int64_t i = 0; i < batch * keypoints; ++i) {
      double a[3] = {}, b[9] = {};
      for (int64_t t = 0; t < threads; ++t) {
        const double* s = sums.data() + (t * batch * keypoints + i) * 12;
        for (int q = 0; q < 3; ++q) a[q] += s[q];
        for (int q = 0; q < 9; ++q) b[q] += s[3 + q];
      }
      // T_k = J (p - kd) + ks: d/d ks = A, d/d kd = -J^T A, d/d J = B - A kd^T
      for (int q = 0; q < 3; ++q) {
        g_ks[3 * i + q] = static_cast<T>(a[q]);
        double s = 0;
        for (int r = 0; r < 3; ++r) s += static_cast<double>(jac[9 * i + 3 * r + q]) * a[r];
        g_kd[3 * i + q] = static_cast<T>(-s);
        for (int r = 0; r < 3; ++r) {
          g_j[9 * i + 3 * q + r] = static_cast<T>(b[3 * q + r] - a[q] * static_cast<double>(kd[3 * i + r]));
        }
      }
    }
  });
}

int64_t warp_voxel_offset(int64_t c_size, int64_t d, int64_t h, int64_t w, int64_t n, int64_t c, int64_t z,
                          int64_t y, int64_t x) {
  const Geometry g{c_size, d, h, w, 0, kZeros, false};
  return g.channel_offset(n, c) + g.voxel_offset(z, y, x);
}

}  // namespace dgm_fast
