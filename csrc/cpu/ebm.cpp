// The fused MLP energy on CPU: E and dE/dx, dE/dx and tr d^2E/dx^2, and whole
// Langevin chains (dissertation §2.4: (2.15), (2.20); §3.3: (3.8); spec:
// dgm_fast/ebm/reference.py).
//
// The energies of §2.4 and §3.3 are small MLPs (2 -> 256x4 -> 1, 64 -> 200 ->
// 200 -> 1), so an eager chain spends its time on ~20 kernel launches and
// their memory traffic per step, 40-100 steps. Here the batch is cut into
// tiles of kRows samples and each tile runs the whole chain — per step the
// forward, the backward to x and the Langevin update — while its activations
// stay in L1/L2, the weights (a few hundred KB) shared from L2 by every tile;
// one parallel region per chain. Tiles are feature-major (tile_products.h),
// so both products, W . a forward and W^T . delta backward, read the weights
// in place with register-blocked FMAs, and the activation and its derivative
// are one elementwise pass. The noise is the stream of csrc/philox.h, made a
// noise tile at a time, so a chain equals sample_langevin's step by step.
#pragma GCC optimize("fp-contract=fast")  // FMA in the products: compared within rounding
#include "cpu/ebm.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/coupling_math.h"
#include "cpu/normal_noise.h"
#include "cpu/isa_switch.h"
#include "cpu/tile_scheduling.h"

namespace dgm_fast {
namespace {

constexpr int64_t kRows = 32;  // samples per tile: a multiple of every vector's lanes
// activation codes: the index in dgm_fast.ebm.reference.ACTIVATIONS
constexpr int64_t kSwish = 0, kLeakyRelu = 1, kRelu = 2, kSoftplus = 3;

// c ? a : b without a branch for float (a blend: gcc keeps a ternary whose arm may trap a
// branch, and the loop scalar; vec_math.h's select_f says why), plainly for double.
DGM_INLINE float pick(bool c, float a, float b) { return cpu::select_f(c, a, b); }
DGM_INLINE double pick(bool c, double a, double b) { return c ? a : b; }

// The MLP as raw pointers: layer l maps width[l] features to width[l + 1]; the last has one output.
template <typename T>
struct Mlp {
  std::vector<const T*> w, b;
  std::vector<int64_t> width;
  int64_t act;
  T slope;

  Mlp(const at::Tensor& x, at::TensorList weights, at::TensorList biases, int64_t act, double slope)
      : width{x.size(1)}, act(act), slope(static_cast<T>(slope)) {
    TORCH_CHECK(act >= kSwish && act <= kSoftplus, "mlp_energy: unknown activation code ", act);
    TORCH_CHECK(!weights.empty() && biases.size() == weights.size(), "mlp_energy: one bias per weight");
    for (size_t l = 0; l < weights.size(); ++l) {  // the raw-pointer passes rely on these shapes
      const at::Tensor &wl = weights[l], &bl = biases[l];
      TORCH_CHECK(wl.dim() == 2 && wl.size(1) == width.back() && wl.is_contiguous() && bl.dim() == 1 &&
                      bl.size(0) == wl.size(0) && bl.is_contiguous() && wl.scalar_type() == x.scalar_type() &&
                      bl.scalar_type() == x.scalar_type() && wl.device().is_cpu() && bl.device().is_cpu(),
                  "mlp_energy: layer ", l, " has weight ", wl.sizes(), " and bias ", bl.sizes(), " but its input has ",
                  width.back(), " features (both contiguous CPU tensors of x's dtype)");
      w.push_back(wl.const_data_ptr<T>());
      b.push_back(bl.const_data_ptr<T>());
      width.push_back(wl.size(0));
    }
    TORCH_CHECK(width.back() == 1, "mlp_energy: the last layer must have one output, got ", width.back());
  }
  int64_t hidden() const { return static_cast<int64_t>(w.size()) - 1; }
  int64_t max_width() const { return *std::max_element(width.begin(), width.end()); }
};

// The Langevin step's coefficients (langevin.cpp's Coefs) in the compute type.
template <typename T>
struct StepCoefs {
  T keep, drift, noise, clip, lo, hi;
  explicit StepCoefs(const LangevinParams& p)
      : keep(static_cast<T>(1.0 - 0.5 * p.step_size * p.prior_weight)), drift(static_cast<T>(-0.5 * p.step_size)),
        noise(static_cast<T>(p.noise_scale)), clip(static_cast<T>(p.grad_clip)), lo(static_cast<T>(p.clamp_lo)),
        hi(static_cast<T>(p.clamp_hi)) {}
};

// A thread's tile buffers, each a multiple of kRows values (so 64-byte aligned, as Scratch is).
template <typename T>
struct TileBufs {
  T *x, *gx, *g0, *g1, *jac, *jac_next, *tmp, *xi, *row;
  std::vector<T*> a, d1, d2, ga;

  static int64_t size(const Mlp<T>& m) {
    int64_t hidden = 0;
    for (int64_t l = 1; l <= m.hidden(); ++l) hidden += m.width[l];
    return (4 * hidden + 2 * m.width[0] + 5 * m.max_width() + 2 + m.width[0]) * kRows;
  }
  TileBufs(const Mlp<T>& m, T* p) {
    auto take = [&p](int64_t rows) { return std::exchange(p, p + rows * kRows); };
    x = take(m.width[0]);
    gx = take(m.width[0]);
    xi = take(m.width[0]);  // kRows x d noise values, row-major
    for (int64_t l = 1; l <= m.hidden(); ++l) {
      a.push_back(take(m.width[l]));
      d1.push_back(take(m.width[l]));
      d2.push_back(take(m.width[l]));
      ga.push_back(take(m.width[l]));
    }
    g0 = take(m.max_width());
    g1 = take(m.max_width());
    jac = take(m.max_width());
    jac_next = take(m.max_width());
    tmp = take(m.max_width());
    row = take(2);  // the energy, and the trace
  }
};

// The tile kernels once for AVX2 + FMA and once portable, picked at run time
// (as coupling_flow.cpp: target_clones would lower the vector code for the baseline).
#if defined(__x86_64__)
namespace avx2 {
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include "cpu/tile_products.h"
#include "cpu/ebm_tiles.h"
#pragma GCC pop_options
}  // namespace avx2
#endif
namespace portable {
#include "cpu/tile_products.h"
#include "cpu/ebm_tiles.h"
}  // namespace portable

cpu::IsaSwitch g_isa;

// Rows [r0, r0 + n) of the row-major (B, d) matrix m <-> the feature-major tile (rows past n: 0).
template <typename T>
void load_tile(const T* m, int64_t d, int64_t r0, int64_t n, T* tile) {
  std::fill_n(tile, d * kRows, T(0));
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t f = 0; f < d; ++f) tile[f * kRows + r] = m[(r0 + r) * d + f];
  }
}

template <typename T>
void store_tile(const T* tile, int64_t d, int64_t r0, int64_t n, T* m) {
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t f = 0; f < d; ++f) m[(r0 + r) * d + f] = tile[f * kRows + r];
  }
}

// fn(bufs, thread, r0, n) over the batch's tiles, each thread with its own buffers.
template <typename T, typename Fn>
void over_mlp_tiles(const Mlp<T>& m, int64_t rows, Fn&& fn) {
  const cpu::Scratch<T> scratch(TileBufs<T>::size(m), at::get_num_threads());
  cpu::over_tiles(rows, kRows, [&](int64_t thread, int64_t r0, int64_t n) {
    TileBufs<T> bufs(m, scratch.of(thread));
    fn(bufs, r0, n);
  });
}

// The whole-tile passes (ebm_tiles.h) with the build for this CPU.
#if defined(__x86_64__)
#define DGM_ON_THIS_CPU(call) return g_isa.avx2() ? avx2::call : portable::call
#else
#define DGM_ON_THIS_CPU(call) return portable::call
#endif

template <typename T>
void run_grad(const Mlp<T>& m, TileBufs<T>& t, bool with_energy) {
  DGM_ON_THIS_CPU(grad_pass(m, t, with_energy));
}

template <typename T>
void run_laplacian(const Mlp<T>& m, TileBufs<T>& t) {
  DGM_ON_THIS_CPU(laplacian_pass(m, t));
}

template <typename T>
void run_chain(const Mlp<T>& m, TileBufs<T>& t, const LangevinParams& p, int64_t n_steps, int64_t numel,
               int64_t r0, int64_t n) {
  DGM_ON_THIS_CPU(chain_pass(m, t, p, n_steps, numel, r0, n));
}
#undef DGM_ON_THIS_CPU

void check_x(const at::Tensor& x, std::initializer_list<const at::Tensor*> outs, const char* op) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.device().is_cpu(), op, ": x must be a contiguous CPU matrix");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op, ": float32 or float64 only, got ",
              x.scalar_type());
  for (const at::Tensor* o : outs) {
    TORCH_CHECK(o->is_contiguous() && o->scalar_type() == x.scalar_type() && o->device().is_cpu() &&
                    o->size(0) == x.size(0),
                op, ": outputs must be contiguous CPU tensors of x's dtype and batch");
  }
}

}  // namespace

void mlp_energy_grad_cpu(const at::Tensor& x, at::TensorList weights, at::TensorList biases, at::Tensor& energy,
                         at::Tensor& grad, int64_t activation, double negative_slope) {
  check_x(x, {&energy, &grad}, "mlp_energy_grad");
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mlp_energy_grad_cpu", [&] {
    const Mlp<scalar_t> m(x, weights, biases, activation, negative_slope);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t *ep = energy.data_ptr<scalar_t>(), *gp = grad.data_ptr<scalar_t>();
    over_mlp_tiles(m, x.size(0), [&](TileBufs<scalar_t>& t, int64_t r0, int64_t n) {
      load_tile(xp, m.width[0], r0, n, t.x);
      run_grad(m, t, true);
      std::copy_n(t.row, n, ep + r0);
      store_tile(t.gx, m.width[0], r0, n, gp);
    });
  });
}

void mlp_energy_laplacian_cpu(const at::Tensor& x, at::TensorList weights, at::TensorList biases, at::Tensor& grad,
                              at::Tensor& trace, int64_t activation, double negative_slope) {
  check_x(x, {&grad, &trace}, "mlp_energy_laplacian");
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mlp_energy_laplacian_cpu", [&] {
    const Mlp<scalar_t> m(x, weights, biases, activation, negative_slope);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t *gp = grad.data_ptr<scalar_t>(), *tp = trace.data_ptr<scalar_t>();
    over_mlp_tiles(m, x.size(0), [&](TileBufs<scalar_t>& t, int64_t r0, int64_t n) {
      load_tile(xp, m.width[0], r0, n, t.x);
      run_laplacian(m, t);
      store_tile(t.gx, m.width[0], r0, n, gp);
      std::copy_n(t.row + kRows, n, tp + r0);
    });
  });
}

void mlp_energy_sample_cpu(const at::Tensor& x0, at::TensorList weights, at::TensorList biases, at::Tensor& out,
                           int64_t activation, double negative_slope, int64_t n_steps, const LangevinParams& p) {
  check_x(x0, {&out}, "mlp_energy_sample");
  TORCH_CHECK(n_steps >= 0, "mlp_energy_sample: n_steps must be >= 0, got ", n_steps);
  AT_DISPATCH_FLOATING_TYPES(x0.scalar_type(), "mlp_energy_sample_cpu", [&] {
    const Mlp<scalar_t> m(x0, weights, biases, activation, negative_slope);
    const scalar_t* xp = x0.const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    over_mlp_tiles(m, x0.size(0), [&](TileBufs<scalar_t>& t, int64_t r0, int64_t n) {
      load_tile(xp, m.width[0], r0, n, t.x);
      run_chain(m, t, p, n_steps, x0.numel(), r0, n);
      store_tile(t.x, m.width[0], r0, n, op);
    });
  });
}

const char* ebm_isa() { return g_isa.name(); }
void set_ebm_portable(bool on) { g_isa.force_portable(on); }

}  // namespace dgm_fast
