// The 3-D warping ops on CPU (face reenactment, dissertation §4.3): trilinear grid sampling of
// a 5-D volume, and the keypoint-driven warp whose sampling positions are the dense motion of
// §4.3.3 computed per block of voxels, never stored. Both run the sampler of warp_sampler.h;
// specification: dgm_fast/warp/reference.py.
#include "cpu/warp.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <memory>
#include <vector>

#include "cpu/huge_pages.h"
#include "cpu/vec_math.h"
#include "cpu/warp_sampler.h"

namespace dgm_fast {
namespace {

using cpu::advise_huge_pages;
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

  // p[a][j]: the identity grid at the block's voxels, 2 * (i / (n - 1)) - 1 per axis (FOMM's
  // make_coordinate_grid), walking the voxel indices instead of dividing for each
  void identity(int64_t v0, int64_t count, T (*p)[kBlock]) const {
    int64_t x = v0 % w, y = v0 / w % h, z = v0 / (w * h);
    for (int64_t j = 0; j < count; ++j) {
      p[0][j] = T(2) * (static_cast<T>(x) / static_cast<T>(w - 1)) - T(1);
      p[1][j] = T(2) * (static_cast<T>(y) / static_cast<T>(h - 1)) - T(1);
      p[2][j] = T(2) * (static_cast<T>(z) / static_cast<T>(d - 1)) - T(1);
      if (++x == w) {
        x = 0;
        if (++y == h) y = 0, ++z;
      }
    }
  }

  // t[a][j] = T_k(p) at the block's voxels for keypoint k (0-based) of sample n; loops over the
  // block's voxels with the keypoint's numbers held in registers, so that they vectorize
  void motion(int64_t n, int64_t k, int64_t count, const T (*p)[kBlock], T (*t)[kBlock]) const {
    const T* kd = kp_driving + (n * keypoints + k) * 3;
    const T* ks = kp_source + (n * keypoints + k) * 3;
    const T* jac = jacobian + (n * keypoints + k) * 9;
    for (int a = 0; a < 3; ++a) {
      const T j0 = jac[3 * a], j1 = jac[3 * a + 1], j2 = jac[3 * a + 2], d0 = kd[0], d1 = kd[1], d2 = kd[2];
      const T shift = ks[a];
      const T *px = p[0], *py = p[1], *pz = p[2];
      T* out = t[a];
      for (int64_t j = 0; j < count; ++j) {
        out[j] = j0 * (px[j] - d0) + j1 * (py[j] - d1) + j2 * (pz[j] - d2) + shift;
      }
    }
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
      T* mk = m + k * kBlock;
      for (int64_t j = 0; j < count; ++j) {
        mk[j] = exp_of(mk[j] - top[j]);
        sum[j] += mk[j];
      }
    }
    for (int64_t k = 0; k < motions; ++k) {
      for (int64_t j = 0; j < count; ++j) m[k * kBlock + j] /= sum[j];
    }
  }

  // scratch: the K + 1 weights, then p and one motion (3 x kBlock each)
  static T* scratch(Block<T>& b, int64_t motions) {
    b.scratch.resize((motions + 6) * kBlock);
    return b.scratch.data();
  }

  void operator()(int64_t n, int64_t v0, int64_t count, Block<T>& b) const {
    T* m = scratch(b, keypoints + 1);
    auto p = reinterpret_cast<T(*)[kBlock]>(m + (keypoints + 1) * kBlock), t = p + 3;
    weights(n, v0, count, m);
    identity(v0, count, p);
    for (int a = 0; a < 3; ++a) {
      for (int64_t j = 0; j < count; ++j) b.coord[a][j] = m[j] * p[a][j];
    }
    for (int64_t k = 0; k < keypoints; ++k) {
      motion(n, k, count, p, t);
      const T* mk = m + (k + 1) * kBlock;
      for (int a = 0; a < 3; ++a) {
        for (int64_t j = 0; j < count; ++j) b.coord[a][j] += mk[j] * t[a][j];
      }
    }
  }

  // Given grad_phi of sample n's voxels [v0, v0 + count): the mask's (or logits') gradient, and the
  // per-keypoint sums A_k = sum_v m_k grad_phi and B_k = sum_v m_k grad_phi p^T (acc: K x 12) from
  // which the keypoints' and Jacobians' gradients follow. Sums over the block in T, across blocks
  // in double.
  void backward_block(int64_t n, int64_t v0, int64_t count, const T* grad_phi, T* grad_mask, double* acc,
                      Block<T>& b) const {
    const int64_t motions = keypoints + 1, v_all = voxels();
    T* m = scratch(b, motions);
    auto p = reinterpret_cast<T(*)[kBlock]>(m + motions * kBlock), t = p + 3;
    auto g = b.coord;  // grad_phi of the block, by axis
    weights(n, v0, count, m);
    identity(v0, count, p);
    const T* gp = grad_phi + (n * v_all + v0) * 3;
    for (int64_t j = 0; j < count; ++j) {
      for (int a = 0; a < 3; ++a) g[a][j] = gp[3 * j + a];
    }
    T* out = grad_mask + n * motions * v_all + v0;  // d loss / d m_k first, the softmax's backward after
    for (int64_t j = 0; j < count; ++j) out[j] = g[0][j] * p[0][j] + g[1][j] * p[1][j] + g[2][j] * p[2][j];
    for (int64_t k = 1; k < motions; ++k) {
      motion(n, k - 1, count, p, t);
      const T* mk = m + k * kBlock;
      T* out_k = out + k * v_all;
      T sums[12] = {};
      for (int64_t j = 0; j < count; ++j) out_k[j] = g[0][j] * t[0][j] + g[1][j] * t[1][j] + g[2][j] * t[2][j];
      cpu::warp::block_sums(count, sums, [&](int64_t j, int64_t l, T (*part)[cpu::warp::kLanes]) {
        for (int a = 0; a < 3; ++a) {
          const T mg = mk[j] * g[a][j];
          part[a][l] += mg;
          for (int c = 0; c < 3; ++c) part[3 + 3 * a + c][l] += mg * p[c][j];
        }
      });
      double* a_k = acc + (k - 1) * 12;
      for (int q = 0; q < 12; ++q) a_k[q] += static_cast<double>(sums[q]);
    }
    if (!logits) return;
    alignas(64) T dot[kBlock] = {};  // softmax's backward: s_k (g_k - sum_j s_j g_j)
    for (int64_t k = 0; k < motions; ++k) {
      for (int64_t j = 0; j < count; ++j) dot[j] += m[k * kBlock + j] * out[k * v_all + j];
    }
    for (int64_t k = 0; k < motions; ++k) {
      for (int64_t j = 0; j < count; ++j) out[k * v_all + j] = m[k * kBlock + j] * (out[k * v_all + j] - dot[j]);
    }
  }
};

// sparse_motion_features: view u = n * (K + 1) + k samples at the k-th motion of sample n,
// T_0(p) = p and T_k(p) of KeypointPositions (its mask unused); the block's p stays in scratch
// for the heatmap channel.
template <typename T>
struct MotionPositions {
  KeypointPositions<T> kp;
  T variance;

  static T (*identity_of(Block<T>& b))[kBlock] {
    b.scratch.resize(6 * kBlock);
    return reinterpret_cast<T(*)[kBlock]>(b.scratch.data());
  }

  void operator()(int64_t u, int64_t v0, int64_t count, Block<T>& b) const {
    const int64_t n = u / (kp.keypoints + 1), k = u % (kp.keypoints + 1);
    auto p = identity_of(b);
    kp.identity(v0, count, p);
    if (k == 0) {
      for (int a = 0; a < 3; ++a) std::copy(p[a], p[a] + count, b.coord[a]);
    } else {
      kp.motion(n, k - 1, count, p, b.coord);
    }
  }

  // exp(-0.5 |p - kp|^2 / variance) at the block's voxels
  void gaussian(const T* point, int64_t count, const T (*p)[kBlock], T* out) const {
    for (int64_t j = 0; j < count; ++j) {
      const T dx = p[0][j] - point[0], dy = p[1][j] - point[1], dz = p[2][j] - point[2];
      out[j] = exp_of(T(-0.5) * (dx * dx + dy * dy + dz * dz) / variance);
    }
  }

  // The heatmap channel of view u at the block's voxels (p from the last call on this block).
  void heatmap(int64_t u, int64_t count, Block<T>& b, T* out) const {
    const int64_t n = u / (kp.keypoints + 1), k = u % (kp.keypoints + 1);
    if (k == 0) {
      std::fill(out, out + count, T(0));
      return;
    }
    auto p = identity_of(b);
    T* source = p[3];
    gaussian(kp.kp_driving + (n * kp.keypoints + k - 1) * 3, count, p, out);
    gaussian(kp.kp_source + (n * kp.keypoints + k - 1) * 3, count, p, source);
    for (int64_t j = 0; j < count; ++j) out[j] -= source[j];
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
  advise_huge_pages(out);
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
  advise_huge_pages(grad_input);
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

// Item i's sums (kWidth values) over the threads' parts sums[(thread * items + i) * kWidth + q], in
// thread order.
template <int kWidth>
std::array<double, kWidth> thread_total(const std::vector<double>& sums, int64_t items, int64_t i) {
  std::array<double, kWidth> total{};
  for (size_t part = i * kWidth; part < sums.size(); part += items * kWidth) {
    for (int q = 0; q < kWidth; ++q) total[q] += sums[part + q];
  }
  return total;
}

// Keypoint i's gradients for its motion T(p) = J (p - kd) + ks (§4.3.3) from A = sum_v dL/dT (ab[0..2])
// and B = sum_v dL/dT p^T (ab[3..11], row-major), plus what else depends on ks and kd (extra_s,
// extra_d): d/d ks = A + extra_s, d/d kd = -J^T A + extra_d, d/d J = B - A kd^T.
template <typename T>
void motion_gradients(int64_t i, const double* ab, const double* extra_s, const double* extra_d,
                      const at::Tensor& kp_driving, const at::Tensor& jacobian, at::Tensor& grad_kp_source,
                      at::Tensor& grad_kp_driving, at::Tensor& grad_jacobian) {
  const T *kd = kp_driving.const_data_ptr<T>() + 3 * i, *jac = jacobian.const_data_ptr<T>() + 9 * i;
  T *g_ks = grad_kp_source.data_ptr<T>() + 3 * i, *g_kd = grad_kp_driving.data_ptr<T>() + 3 * i;
  T* g_j = grad_jacobian.data_ptr<T>() + 9 * i;
  for (int q = 0; q < 3; ++q) {
    g_ks[q] = static_cast<T>(ab[q] + extra_s[q]);
    double jt_a = 0;
    for (int r = 0; r < 3; ++r) jt_a += static_cast<double>(jac[3 * r + q]) * ab[r];
    g_kd[q] = static_cast<T>(extra_d[q] - jt_a);
    for (int r = 0; r < 3; ++r) g_j[3 * q + r] = static_cast<T>(ab[3 + 3 * q + r] - ab[q] * static_cast<double>(kd[r]));
  }
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
  advise_huge_pages(out);
  AT_DISPATCH_FLOATING_TYPES(feature.scalar_type(), "keypoint_warp_3d_cpu", [&] {
    const auto positions = keypoint_positions<scalar_t>(kp_source, kp_driving, mask, jacobian, mask_is_logits);
    scalar_t* phi = return_deformation ? deformation.data_ptr<scalar_t>() : nullptr;
    cpu::warp::forward(feature.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), feature.size(0), g, positions,
                       [&](int64_t n, int64_t v0, const Block<scalar_t>& b) {
                         if (phi != nullptr) b.store_coords(b.n, phi + (n * g.voxels + v0) * 3);
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
  advise_huge_pages(grad_feature);
  advise_huge_pages(grad_mask);
  AT_DISPATCH_FLOATING_TYPES(feature.scalar_type(), "keypoint_warp_3d_backward_cpu", [&] {
    using T = scalar_t;
    const auto positions = keypoint_positions<T>(kp_source, kp_driving, mask, jacobian, mask_is_logits);
    const int64_t blocks = (g.voxels + kBlock - 1) / kBlock, threads = at::get_num_threads();
    // 1. the sampler's backward: grad_feature and the deformation's gradient (plus the caller's), at
    //    phi computed once (the sampler's channel groups would each recompute it)
    std::vector<T> grad_phi(batch * g.voxels * 3, T(0));
    if (batch > 0 && g.voxels > 0 && g.c > 0) {
      std::vector<T> phi(batch * g.voxels * 3);
      at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
        auto block = std::make_unique<Block<T>>();
        for (int64_t item = begin; item < end; ++item) {
          const int64_t n = item / blocks, v0 = item % blocks * kBlock, count = std::min(kBlock, g.voxels - v0);
          positions(n, v0, count, *block);
          block->store_coords(count, phi.data() + (n * g.voxels + v0) * 3);
        }
      });
      cpu::warp::backward(grad_out.const_data_ptr<T>(), feature.const_data_ptr<T>(), grad_feature.data_ptr<T>(),
                          grad_phi.data(), batch, g, GridPositions<T>{phi.data(), g.voxels});
    } else {
      grad_feature.zero_();
    }
    const T* gd = grad_deformation.const_data_ptr<T>();
    for (size_t i = 0; i < grad_phi.size(); ++i) grad_phi[i] += gd[i];
    // 2. the mask's gradient per voxel; the keypoints' as per-thread sums in double, reduced in order
    std::vector<double> sums(threads * batch * keypoints * 12, 0.0);
    const T* gp = grad_phi.data();
    T* gm = grad_mask.data_ptr<T>();
    at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
      auto block = std::make_unique<Block<T>>();
      double* mine = sums.data() + at::get_thread_num() * batch * keypoints * 12;
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / blocks, v0 = item % blocks * kBlock;
        positions.backward_block(n, v0, std::min(kBlock, g.voxels - v0), gp, gm, mine + n * keypoints * 12,
                                 *block);
      }
    });
    const double none[3] = {};
    for (int64_t i = 0; i < batch * keypoints; ++i) {
      const auto ab = thread_total<12>(sums, batch * keypoints, i);
      motion_gradients<T>(i, ab.data(), none, none, kp_driving, jacobian, grad_kp_source, grad_kp_driving,
                          grad_jacobian);
    }
  });
}

// --- sparse_motion_features ----------------------------------------------------------------------
namespace {

template <typename T>
MotionPositions<T> motion_positions(const at::Tensor& feature, const at::Tensor& kp_source,
                                    const at::Tensor& kp_driving, const at::Tensor& jacobian, double variance) {
  const KeypointPositions<T> kp{kp_source.const_data_ptr<T>(), kp_driving.const_data_ptr<T>(), nullptr,
                                jacobian.const_data_ptr<T>(), kp_source.size(1), feature.size(2), feature.size(3),
                                feature.size(4), false};
  return {kp, static_cast<T>(variance)};
}

// The sampler's geometry of sparse_motion_features: K + 1 views a sample, each writing its C
// channels after its heatmap channel in out (N, K + 1, 1 + C, D, H, W).
Geometry motion_geometry(const at::Tensor& feature, int64_t keypoints, bool align_corners) {
  TORCH_CHECK(feature.dim() == 5 && feature.size(2) > 1 && feature.size(3) > 1 && feature.size(4) > 1,
              "sparse_motion_features: expected feature (N, C, D, H, W) with D, H, W > 1");
  Geometry g = geometry(feature, feature.size(2) * feature.size(3) * feature.size(4), kZeros, align_corners);
  g.views = keypoints + 1;
  g.view_stride = (1 + g.c) * g.voxels;
  return g;
}

}  // namespace

void sparse_motion_features_cpu(const at::Tensor& feature, const at::Tensor& kp_source, const at::Tensor& kp_driving,
                                const at::Tensor& jacobian, at::Tensor& out, double variance, bool align_corners) {
  const int64_t keypoints = kp_source.size(1);
  const Geometry g = motion_geometry(feature, keypoints, align_corners);
  if (out.numel() == 0) return;
  advise_huge_pages(out);
  AT_DISPATCH_FLOATING_TYPES(feature.scalar_type(), "sparse_motion_features_cpu", [&] {
    using T = scalar_t;
    const auto positions = motion_positions<T>(feature, kp_source, kp_driving, jacobian, variance);
    T* base = out.data_ptr<T>();
    cpu::warp::forward(feature.const_data_ptr<T>(), base + g.voxels, feature.size(0), g, positions,
                       [&](int64_t u, int64_t v0, Block<T>& b) {
                         positions.heatmap(u, b.n, b, base + u * g.view_stride + v0);
                       });
  });
}

void sparse_motion_features_backward_cpu(const at::Tensor& grad_out, const at::Tensor& feature,
                                         const at::Tensor& kp_source, const at::Tensor& kp_driving,
                                         const at::Tensor& jacobian, at::Tensor& grad_feature,
                                         at::Tensor& grad_kp_source, at::Tensor& grad_kp_driving,
                                         at::Tensor& grad_jacobian, double variance, bool align_corners) {
  const int64_t batch = feature.size(0), keypoints = kp_source.size(1), views = keypoints + 1;
  const Geometry g = motion_geometry(feature, keypoints, align_corners);
  advise_huge_pages(grad_feature);
  AT_DISPATCH_FLOATING_TYPES(feature.scalar_type(), "sparse_motion_features_backward_cpu", [&] {
    using T = scalar_t;
    const auto positions = motion_positions<T>(feature, kp_source, kp_driving, jacobian, variance);
    const T* go = grad_out.const_data_ptr<T>();
    // 1. the sampler's backward, every motion's warped copy into one feature gradient
    std::vector<T> grad_t(batch * views * g.voxels * 3, T(0));
    if (batch > 0 && g.c > 0) {
      cpu::warp::backward(go + g.voxels, feature.const_data_ptr<T>(), grad_feature.data_ptr<T>(), grad_t.data(),
                          batch, g, positions);
    } else {
      grad_feature.zero_();
    }
    // 2. per motion k >= 1: A = sum_v dL/dT_k, B = sum_v dL/dT_k p^T, and the heatmap's sums
    //    H_d = sum_v dL/dh e_d (p - kd), H_s = sum_v dL/dh e_s (p - ks); per thread, in double
    const int64_t blocks = (g.voxels + kBlock - 1) / kBlock, threads = at::get_num_threads();
    constexpr int kSums = 18;
    std::vector<double> sums(threads * batch * keypoints * kSums, 0.0);
    at::parallel_for(0, batch * keypoints * blocks, 1, [&](int64_t begin, int64_t end) {
      auto block = std::make_unique<Block<T>>();
      Block<T>& b = *block;
      double* mine = sums.data() + at::get_thread_num() * batch * keypoints * kSums;
      for (int64_t item = begin; item < end; ++item) {
        const int64_t nk = item / blocks, v0 = item % blocks * kBlock, count = std::min(kBlock, g.voxels - v0);
        const int64_t n = nk / keypoints, k = nk % keypoints, u = n * views + k + 1;
        auto p = MotionPositions<T>::identity_of(b);
        positions.kp.identity(v0, count, p);
        const T* gt = grad_t.data() + (u * g.voxels + v0) * 3;
        const T* gh = go + u * g.view_stride + v0;
        T ed[kBlock], es[kBlock];
        positions.gaussian(kp_driving.const_data_ptr<T>() + nk * 3, count, p, ed);
        positions.gaussian(kp_source.const_data_ptr<T>() + nk * 3, count, p, es);
        const T* kd = kp_driving.const_data_ptr<T>() + nk * 3;
        const T* ks = kp_source.const_data_ptr<T>() + nk * 3;
        T s[kSums] = {};
        cpu::warp::block_sums(count, s, [&](int64_t j, int64_t l, T (*part)[cpu::warp::kLanes]) {
          for (int a = 0; a < 3; ++a) {
            const T ga = gt[3 * j + a];
            part[a][l] += ga;
            for (int c = 0; c < 3; ++c) part[3 + 3 * a + c][l] += ga * p[c][j];
            part[12 + a][l] += gh[j] * ed[j] * (p[a][j] - kd[a]);
            part[15 + a][l] += gh[j] * es[j] * (p[a][j] - ks[a]);
          }
        });
        double* acc = mine + nk * kSums;
        for (int q = 0; q < kSums; ++q) acc[q] += static_cast<double>(s[q]);
      }
    });
    const double inv_var = 1.0 / variance;
    for (int64_t i = 0; i < batch * keypoints; ++i) {
      const auto t = thread_total<kSums>(sums, batch * keypoints, i);
      // the heatmap h = e_d - e_s: d e_d / d kd = e_d (p - kd) / variance, d e_s / d ks likewise
      const double heat_s[3] = {-t[15] * inv_var, -t[16] * inv_var, -t[17] * inv_var};
      const double heat_d[3] = {t[12] * inv_var, t[13] * inv_var, t[14] * inv_var};
      motion_gradients<T>(i, t.data(), heat_s, heat_d, kp_driving, jacobian, grad_kp_source, grad_kp_driving,
                          grad_jacobian);
    }
  });
}

void set_warp_portable(bool on) { cpu::warp::g_force_portable.store(on, std::memory_order_relaxed); }

const char* warp_isa() { return cpu::warp::has_avx2() ? "avx2" : "portable"; }

int64_t warp_voxel_offset(int64_t c_size, int64_t d, int64_t h, int64_t w, int64_t n, int64_t c, int64_t z,
                          int64_t y, int64_t x) {
  const Geometry g{c_size, d, h, w, 0, kZeros, false};
  return g.channel_offset(n, c) + g.voxel_offset(z, y, x);
}

}  // namespace dgm_fast
