// Fused affine coupling layer on CUDA, dissertation §2.2.3 ("Coupling Layers"):
// one pass over x2, s, t writes y2 and the per-row logdet (the log of the
// diagonal Jacobian's determinant, prod_j exp(l_j)); one pass writes the three
// gradients, recomputing l = g(s), exp(+-l) and g'(s) in registers. Formulas:
// coupling.cuh and dgm_fast/coupling/reference.py.
//
// Blocking. A row of `cols` elements is owned by tpr = 2^k threads (1 to
// kBlock, the fewest that give each thread at most kPacksPerThread 16-byte
// packs, or elements when packs do not fit), so a block of kBlock threads
// holds kBlock / tpr rows. Each thread walks its row with stride tpr (packs
// when cols is a multiple of the pack and every pointer 16-byte aligned), so
// a warp's accesses are contiguous. The logdet row sum is each thread's partial
// sum, then a butterfly of warp shuffles over the row's lanes and, for rows
// wider than a warp, the warps' sums in warp order through shared memory:
// in-block, no atomics, deterministic for a given shape and dtype.
//   (256, 32) float:    tpr = 4, 64 rows a block, 4 blocks (launch-bound size)
//   (4096, 1024) float: tpr = 128, 2 rows a block, 2048 blocks, 2 float4 per thread
// Blocks loop over row groups beyond kMaxBlocks (grid stride); indices are
// int64, so rows * cols may exceed 2^31.
//
// Numerics: the reference's order of operations with every product, sum and
// quotient rounded on its own (__fmul_rn & co.: nvcc contracts a * b + c into
// an FMA otherwise), and CUDA's accurate expf / atanf / tanhf / log1pf (float
// compute: float32 and the 16-bit types, rounded once at the store) or exp /
// atan / tanh / log1p (double); no fast-math intrinsics.
#include "coupling.cuh"
#include "rounded.cuh"

#include <algorithm>
#include <type_traits>

namespace dgm_fast {
namespace {

using namespace rounded;  // acc_t, widen, narrow, mul_rn & co.

constexpr int kBlock = 256;
constexpr int kLog2Block = 8;
constexpr int kWarp = 32;
constexpr int kLog2Warp = 5;
constexpr int kPacksPerThread = 2;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // beyond, blocks loop (grid stride)
constexpr double kTwoOverPi = 0.63661977236758134308;  // fl64(2/pi), the reference's 2.0 / math.pi

// 16 bytes of consecutive elements: one vector load or store.
template <typename T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / static_cast<int>(sizeof(T));
  T v[kSize];
};

// Element functions are host-device: tests run them on the host against the
// reference (expressions and special values; the host's libm stands in for CUDA's).
#define DGM_COUPLING_HD __host__ __device__ __forceinline__

// CUDA's accurate math library (within 2 ulp), not the __expf-style intrinsics.
DGM_COUPLING_HD float m_abs(float v) { return fabsf(v); }
DGM_COUPLING_HD double m_abs(double v) { return fabs(v); }
DGM_COUPLING_HD float m_exp(float v) { return expf(v); }
DGM_COUPLING_HD double m_exp(double v) { return exp(v); }
DGM_COUPLING_HD float m_atan(float v) { return atanf(v); }
DGM_COUPLING_HD double m_atan(double v) { return atan(v); }
DGM_COUPLING_HD float m_tanh(float v) { return tanhf(v); }
DGM_COUPLING_HD double m_tanh(double v) { return tanh(v); }
DGM_COUPLING_HD float m_log1p(float v) { return log1pf(v); }
DGM_COUPLING_HD double m_log1p(double v) { return log1p(v); }

// log(sigmoid(u)) = -(max(-u, 0) + log1p(exp(-|u|))), stable for every u (the
// reference's F.logsigmoid); NaN fails u < 0 and flows through log1p.
template <typename A>
DGM_COUPLING_HD A log_sigmoid(A u) {
  const A neg = u < A(0) ? -u : A(0);
  return -add_rn(neg, m_log1p(m_exp(-m_abs(u))));
}

// l = g(s) of scale S and g'(s), in the reference's order of operations.
template <int S, typename A>
struct LogScale {
  A clamp, gain;  // clamp; clamp * 2/pi (the reference's Python product), each rounded once

  DGM_COUPLING_HD A value(A s) const {
    if constexpr (S == kCouplingExp) {
      return s;
    } else if constexpr (S == kCouplingAtan) {
      return mul_rn(gain, m_atan(div_rn(s, clamp)));
    } else if constexpr (S == kCouplingTanh) {
      return mul_rn(clamp, m_tanh(div_rn(s, clamp)));
    } else {
      return log_sigmoid(add_rn(s, A(2)));
    }
  }

  // g(s) and g'(s) (1 for exp: the product by it is exact), sharing s / clamp and tanh.
  DGM_COUPLING_HD void value_and_derivative(A s, A& l, A& dl) const {
    if constexpr (S == kCouplingExp) {
      l = s;
      dl = A(1);
    } else if constexpr (S == kCouplingAtan) {
      const A q = div_rn(s, clamp);
      l = mul_rn(gain, m_atan(q));
      // the reference's TWO_OVER_PI / (1 + q^2) is torch's reciprocal(1 + q^2) * TWO_OVER_PI
      dl = mul_rn(div_rn(A(1), add_rn(mul_rn(q, q), A(1))), static_cast<A>(kTwoOverPi));
    } else if constexpr (S == kCouplingTanh) {
      const A th = m_tanh(div_rn(s, clamp));
      l = mul_rn(clamp, th);
      dl = sub_rn(A(1), mul_rn(th, th));
    } else {
      const A u = add_rn(s, A(2));
      l = log_sigmoid(u);
      // sigmoid(-u) from e^-|u|, which never overflows: far out it is subnormal, not 0 (as torch's)
      const A e = m_exp(-m_abs(u));
      dl = u <= A(0) ? div_rn(A(1), add_rn(e, A(1))) : div_rn(e, add_rn(e, A(1)));
    }
  }
};

// y2 of one element; l = g(s) into `l` for the logdet.
template <int S, typename A>
DGM_COUPLING_HD A forward_element(A x, A s, A t, bool inverse, const LogScale<S, A>& g, A& l) {
  l = g.value(s);
  return inverse ? mul_rn(sub_rn(x, t), m_exp(-l)) : add_rn(mul_rn(x, m_exp(l)), t);
}

// The three gradients of one element (t is read by the inverse only).
template <int S, typename A>
DGM_COUPLING_HD void backward_element(A gy, A gl, A x, A s, A t, bool inverse,
                                      const LogScale<S, A>& g, A& gx, A& gs, A& gt) {
  A l, dl;
  g.value_and_derivative(s, l, dl);
  if (inverse) {
    const A e = m_exp(-l);
    gx = mul_rn(gy, e);
    gt = -gx;
    // gy * y2 with y2 = (x2 - t) e^-l, in autograd's order: (gy * (x2 - t)) * e
    gs = mul_rn(-add_rn(mul_rn(mul_rn(gy, sub_rn(x, t)), e), gl), dl);
  } else {
    const A e = m_exp(l);
    gx = mul_rn(gy, e);
    gt = gy;
    gs = mul_rn(add_rn(mul_rn(mul_rn(gy, x), e), gl), dl);
  }
}

// Sum of v over the 2^tpr_log2 threads of each row (aligned runs of threads);
// every thread of the row gets the same bits. Called by all threads of the
// block (uniform control flow): a butterfly within the warp, then, for rows
// wider than a warp, the warps' sums in order through shared memory.
template <typename A>
__device__ __forceinline__ A row_sum(A v, int tpr_log2, A* warp_sums) {
  const int width = 1 << (tpr_log2 < kLog2Warp ? tpr_log2 : kLog2Warp);
  for (int offset = width >> 1; offset > 0; offset >>= 1) {
    v = add_rn(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  if (tpr_log2 > kLog2Warp) {
    const int warp = static_cast<int>(threadIdx.x) >> kLog2Warp;
    if ((threadIdx.x & (kWarp - 1)) == 0) warp_sums[warp] = v;
    __syncthreads();
    const int warps_per_row = 1 << (tpr_log2 - kLog2Warp);
    const int first = warp & ~(warps_per_row - 1);
    v = warp_sums[first];
    for (int w = 1; w < warps_per_row; ++w) v = add_rn(v, warp_sums[first + w]);
    __syncthreads();  // warp_sums is reused by the next row group
  }
  return v;
}

// Rows grp * (kBlock >> tpr_log2) + (threadIdx.x >> tpr_log2) for grp =
// blockIdx.x, + gridDim.x, ...; the thread's lane in its row is threadIdx.x mod
// tpr. y2 may alias x2, s or t: each element is read before it is written, by
// the same thread.
template <typename T, int S, bool kVec>
__global__ void __launch_bounds__(kBlock)
    coupling_forward_kernel(const T* x2, const T* s, const T* t, T* y2, T* logdet, int64_t rows,
                            int64_t cols, int tpr_log2, int64_t groups, bool inverse,
                            LogScale<S, acc_t<T>> g) {
  using A = acc_t<T>;
  __shared__ A warp_sums[kBlock / kWarp];
  const int tpr = 1 << tpr_log2;
  const int lane = static_cast<int>(threadIdx.x) & (tpr - 1);
  const int rows_per_block = kBlock >> tpr_log2;
  for (int64_t grp = blockIdx.x; grp < groups; grp += gridDim.x) {
    const int64_t r = grp * rows_per_block + (static_cast<int>(threadIdx.x) >> tpr_log2);
    A part = A(0);
    if (r < rows) {
      const int64_t base = r * cols;
      if constexpr (kVec) {
        constexpr int V = Pack<T>::kSize;
        for (int64_t j = int64_t{lane} * V; j < cols; j += int64_t{tpr} * V) {
          const Pack<T> xp = *reinterpret_cast<const Pack<T>*>(x2 + base + j);
          const Pack<T> sp = *reinterpret_cast<const Pack<T>*>(s + base + j);
          const Pack<T> tp = *reinterpret_cast<const Pack<T>*>(t + base + j);
          Pack<T> yp;
#pragma unroll
          for (int k = 0; k < V; ++k) {
            A l;
            narrow(forward_element(widen(xp.v[k]), widen(sp.v[k]), widen(tp.v[k]), inverse, g, l),
                   yp.v[k]);
            part = add_rn(part, l);
          }
          *reinterpret_cast<Pack<T>*>(y2 + base + j) = yp;
        }
      } else {
        for (int64_t j = base + lane, end = base + cols; j < end; j += tpr) {
          A l;
          narrow(forward_element(widen(x2[j]), widen(s[j]), widen(t[j]), inverse, g, l), y2[j]);
          part = add_rn(part, l);
        }
      }
    }
    part = row_sum(part, tpr_log2, warp_sums);
    if (r < rows && lane == 0) narrow(inverse ? -part : part, logdet[r]);
  }
}

// The rows as in coupling_forward_kernel; grad_logdet[r] is read once per
// thread. The outputs may alias the inputs (read first, by the same thread).
template <typename T, int S, bool kVec>
__global__ void __launch_bounds__(kBlock)
    coupling_backward_kernel(const T* grad_y2, const T* grad_logdet, const T* x2, const T* s,
                             const T* t, T* grad_x2, T* grad_s, T* grad_t, int64_t rows,
                             int64_t cols, int tpr_log2, int64_t groups, bool inverse,
                             LogScale<S, acc_t<T>> g) {
  using A = acc_t<T>;
  const int tpr = 1 << tpr_log2;
  const int lane = static_cast<int>(threadIdx.x) & (tpr - 1);
  const int rows_per_block = kBlock >> tpr_log2;
  for (int64_t grp = blockIdx.x; grp < groups; grp += gridDim.x) {
    const int64_t r = grp * rows_per_block + (static_cast<int>(threadIdx.x) >> tpr_log2);
    if (r >= rows) continue;
    const A gl = widen(grad_logdet[r]);
    const int64_t base = r * cols;
    if constexpr (kVec) {
      constexpr int V = Pack<T>::kSize;
      for (int64_t j = int64_t{lane} * V; j < cols; j += int64_t{tpr} * V) {
        const Pack<T> gyp = *reinterpret_cast<const Pack<T>*>(grad_y2 + base + j);
        const Pack<T> xp = *reinterpret_cast<const Pack<T>*>(x2 + base + j);
        const Pack<T> sp = *reinterpret_cast<const Pack<T>*>(s + base + j);
        Pack<T> tp = xp;  // read only by the inverse
        if (inverse) tp = *reinterpret_cast<const Pack<T>*>(t + base + j);
        Pack<T> gxp, gsp, gtp;
#pragma unroll
        for (int k = 0; k < V; ++k) {
          A gx, gs, gt;
          backward_element(widen(gyp.v[k]), gl, widen(xp.v[k]), widen(sp.v[k]), widen(tp.v[k]),
                           inverse, g, gx, gs, gt);
          narrow(gx, gxp.v[k]);
          narrow(gs, gsp.v[k]);
          narrow(gt, gtp.v[k]);
        }
        *reinterpret_cast<Pack<T>*>(grad_x2 + base + j) = gxp;
        *reinterpret_cast<Pack<T>*>(grad_s + base + j) = gsp;
        *reinterpret_cast<Pack<T>*>(grad_t + base + j) = gtp;
      }
    } else {
      for (int64_t j = base + lane, end = base + cols; j < end; j += tpr) {
        const A tj = inverse ? widen(t[j]) : A(0);
        A gx, gs, gt;
        backward_element(widen(grad_y2[j]), gl, widen(x2[j]), widen(s[j]), tj, inverse, g, gx, gs,
                         gt);
        narrow(gx, grad_x2[j]);
        narrow(gs, grad_s[j]);
        narrow(gt, grad_t[j]);
      }
    }
  }
}

template <typename T>
bool pack_aligned(const T* p) {
  return reinterpret_cast<uintptr_t>(p) % alignof(Pack<T>) == 0;
}

// Threads per row, as a power of two: the fewest (at most kBlock) that give
// each at most kPacksPerThread units (packs, or elements without packs).
int threads_per_row_log2(int64_t units) {
  int k = 0;
  while (k < kLog2Block && (int64_t{kPacksPerThread} << k) < units) ++k;
  return k;
}

struct Geometry {
  int tpr_log2;
  int64_t groups;
  unsigned blocks;
};

Geometry geometry(int64_t rows, int64_t cols, bool vec, int pack) {
  const int tpr_log2 = threads_per_row_log2(vec ? cols / pack : cols);
  const int64_t rows_per_block = kBlock >> tpr_log2;
  const int64_t groups = (rows + rows_per_block - 1) / rows_per_block;
  return {tpr_log2, groups, static_cast<unsigned>(std::min(groups, kMaxBlocks))};
}

// clamp and clamp * 2/pi (the product in double, as the reference's Python
// scalars) rounded once to the compute precision.
template <int S, typename A>
LogScale<S, A> log_scale(double clamp) {
  return {static_cast<A>(clamp), static_cast<A>(clamp * kTwoOverPi)};
}

template <typename T, int S>
void forward_for_scale(const T* x2, const T* s, const T* t, T* y2, T* logdet, int64_t rows,
                       int64_t cols, double clamp, bool inverse, bool vec, cudaStream_t stream) {
  const Geometry geo = geometry(rows, cols, vec, Pack<T>::kSize);
  const LogScale<S, acc_t<T>> g = log_scale<S, acc_t<T>>(clamp);
  if (vec) {
    coupling_forward_kernel<T, S, true><<<geo.blocks, kBlock, 0, stream>>>(
        x2, s, t, y2, logdet, rows, cols, geo.tpr_log2, geo.groups, inverse, g);
  } else {
    coupling_forward_kernel<T, S, false><<<geo.blocks, kBlock, 0, stream>>>(
        x2, s, t, y2, logdet, rows, cols, geo.tpr_log2, geo.groups, inverse, g);
  }
}

template <typename T, int S>
void backward_for_scale(const T* grad_y2, const T* grad_logdet, const T* x2, const T* s, const T* t,
                        T* grad_x2, T* grad_s, T* grad_t, int64_t rows, int64_t cols, double clamp,
                        bool inverse, bool vec, cudaStream_t stream) {
  const Geometry geo = geometry(rows, cols, vec, Pack<T>::kSize);
  const LogScale<S, acc_t<T>> g = log_scale<S, acc_t<T>>(clamp);
  if (vec) {
    coupling_backward_kernel<T, S, true><<<geo.blocks, kBlock, 0, stream>>>(
        grad_y2, grad_logdet, x2, s, t, grad_x2, grad_s, grad_t, rows, cols, geo.tpr_log2,
        geo.groups, inverse, g);
  } else {
    coupling_backward_kernel<T, S, false><<<geo.blocks, kBlock, 0, stream>>>(
        grad_y2, grad_logdet, x2, s, t, grad_x2, grad_s, grad_t, rows, cols, geo.tpr_log2,
        geo.groups, inverse, g);
  }
}

}  // namespace

#undef DGM_COUPLING_HD

template <typename T>
cudaError_t affine_coupling_cuda_launch(const T* x2, const T* s, const T* t, T* y2, T* logdet,
                                        int64_t rows, int64_t cols, int scale, double clamp,
                                        bool inverse, cudaStream_t stream) {
  if (scale < kCouplingExp || scale > kCouplingSigmoid) return cudaErrorInvalidValue;
  if (rows <= 0) return cudaSuccess;
  const bool vec = cols % Pack<T>::kSize == 0 && pack_aligned(x2) && pack_aligned(s) &&
                   pack_aligned(t) && pack_aligned(y2);
  switch (scale) {
    case kCouplingExp:
      forward_for_scale<T, kCouplingExp>(x2, s, t, y2, logdet, rows, cols, clamp, inverse, vec, stream);
      break;
    case kCouplingAtan:
      forward_for_scale<T, kCouplingAtan>(x2, s, t, y2, logdet, rows, cols, clamp, inverse, vec, stream);
      break;
    case kCouplingTanh:
      forward_for_scale<T, kCouplingTanh>(x2, s, t, y2, logdet, rows, cols, clamp, inverse, vec, stream);
      break;
    default:
      forward_for_scale<T, kCouplingSigmoid>(x2, s, t, y2, logdet, rows, cols, clamp, inverse, vec,
                                             stream);
      break;
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t affine_coupling_backward_cuda_launch(const T* grad_y2, const T* grad_logdet, const T* x2,
                                                 const T* s, const T* t, T* grad_x2, T* grad_s,
                                                 T* grad_t, int64_t rows, int64_t cols, int scale,
                                                 double clamp, bool inverse, cudaStream_t stream) {
  if (scale < kCouplingExp || scale > kCouplingSigmoid) return cudaErrorInvalidValue;
  if (rows <= 0 || cols <= 0) return cudaSuccess;
  const bool vec = cols % Pack<T>::kSize == 0 && pack_aligned(grad_y2) && pack_aligned(x2) &&
                   pack_aligned(s) && pack_aligned(t) && pack_aligned(grad_x2) &&
                   pack_aligned(grad_s) && pack_aligned(grad_t);
#define DGM_BACKWARD(S)                                                                          \
  backward_for_scale<T, S>(grad_y2, grad_logdet, x2, s, t, grad_x2, grad_s, grad_t, rows, cols, \
                           clamp, inverse, vec, stream)
  switch (scale) {
    case kCouplingExp: DGM_BACKWARD(kCouplingExp); break;
    case kCouplingAtan: DGM_BACKWARD(kCouplingAtan); break;
    case kCouplingTanh: DGM_BACKWARD(kCouplingTanh); break;
    default: DGM_BACKWARD(kCouplingSigmoid); break;
  }
#undef DGM_BACKWARD
  return cudaGetLastError();
}

#define DGM_INSTANTIATE(T)                                                                       \
  template cudaError_t affine_coupling_cuda_launch<T>(const T*, const T*, const T*, T*, T*,      \
                                                      int64_t, int64_t, int, double, bool,       \
                                                      cudaStream_t);                             \
  template cudaError_t affine_coupling_backward_cuda_launch<T>(                                  \
      const T*, const T*, const T*, const T*, const T*, T*, T*, T*, int64_t, int64_t, int, double, \
      bool, cudaStream_t);
DGM_INSTANTIATE(float)
DGM_INSTANTIATE(double)
DGM_INSTANTIATE(__half)
DGM_INSTANTIATE(__nv_bfloat16)
#undef DGM_INSTANTIATE

}  // namespace dgm_fast
