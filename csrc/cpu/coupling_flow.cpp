// A whole coupling flow in one call per direction, and its backward
// (dissertation §3.2, Figure 3.1(b); spec: dgm_fast/coupling/flow.py and the
// op reference in dgm_fast/coupling/op.py).
//
// At GLF's sizes (latent 20-64, subnets of width 64) an eager flow, and a
// flow of one GEMM call per layer too, spends most of its time between the
// arithmetic: a dozen small ops per coupling, each a pass over memory. Here
// the batch is cut into tiles of kRows samples and each tile runs through
// every block, coupling and layer while it stays in L1/L2, with the weights
// (a few hundred KB) shared from L2 by all tiles; one parallel region per
// call. A tile is held feature-major (feature f's kRows values contiguous),
// so a layer is a register-blocked product out = W . in with W read in
// place (nn.Linear's (out, in) layout, no packing), the coupling update and
// the log-determinant are elementwise over rows, and a permutation is only a
// relabelling of the tile's feature rows (`Pos`): no gather ever runs.
//
// The backward runs tile by tile in reverse: the coupling gradients of
// affine_coupling (eq. 2.7's log-determinant included), then each layer's
// input gradient W^T . g and its weight gradient g . in^T, accumulated per
// thread and summed at the end. It reads the subnets' activations from
// `saved` or recomputes them from the block input (store_activations false).
#pragma GCC optimize("fp-contract=fast")  // FMA in the products: this file is compared within rounding
#include "cpu/coupling_flow.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/coupling_math.h"
#include "cpu/isa_switch.h"
#include "cpu/tile_scheduling.h"
#include "ops.h"

namespace dgm_fast {
namespace {

using cpu::kIdentity;
constexpr int64_t kRows = 32;  // samples per tile: a multiple of every vector's lanes

struct Flow {
  at::TensorList weights, biases, perms;
  int64_t n_layers, dim, split, scale, activation;
  double clamp;

  Flow(const at::Tensor& z, at::TensorList w, at::TensorList b, at::TensorList p, int64_t scale,
       double clamp, int64_t activation)
      : weights(w), biases(b), perms(p), n_layers(p.empty() ? 0 : static_cast<int64_t>(w.size() / (2 * p.size()))),
        dim(z.size(1)), split(z.size(1) / 2), scale(scale), activation(activation), clamp(clamp) {
    TORCH_CHECK(z.dim() == 2 && z.is_contiguous() && z.device().is_cpu(), "coupling_flow: z must be a contiguous CPU matrix");
    TORCH_CHECK(!p.empty() && n_layers >= 1 && w.size() == 2 * p.size() * n_layers && b.size() == w.size(),
                "coupling_flow: expected 2 * n_layers weights and biases per block");
    TORCH_CHECK(scale >= cpu::kExp && scale <= cpu::kSigmoid, "coupling_flow: unknown scale code ", scale);
    TORCH_CHECK(activation >= cpu::kRelu && activation <= cpu::kElu, "coupling_flow: unknown activation code ",
                activation);
    for (int64_t c = 0; c < 2 * n_blocks(); ++c) {  // the raw-pointer passes rely on these shapes
      int64_t width = cond_width(c);
      for (int64_t k = 0; k < n_layers; ++k) {
        const at::Tensor &wk = weight(c, k), &bk = bias(c, k);
        TORCH_CHECK(wk.dim() == 2 && wk.size(1) == width && wk.is_contiguous() && bk.dim() == 1 &&
                        bk.size(0) == wk.size(0) && bk.is_contiguous(),
                    "coupling_flow: layer ", k, " of coupling ", c, " has weight ", wk.sizes(), " and bias ",
                    bk.sizes(), " but its input has ", width, " features (both contiguous)");
        width = wk.size(0);
      }
      TORCH_CHECK(width == 2 * x_width(c), "coupling_flow: coupling ", c, " must output ", 2 * x_width(c),
                  " values (s and t), got ", width);
    }
    for (const at::Tensor& perm : perms) {
      TORCH_CHECK(perm.dim() == 1 && perm.size(0) == dim && perm.scalar_type() == at::kLong && perm.is_contiguous(),
                  "coupling_flow: permutations must be contiguous int64 vectors of length ", dim);
    }
  }
  int64_t n_blocks() const { return static_cast<int64_t>(perms.size()); }
  const at::Tensor& weight(int64_t c, int64_t k) const { return weights[c * n_layers + k]; }
  const at::Tensor& bias(int64_t c, int64_t k) const { return biases[c * n_layers + k]; }
  int64_t width(int64_t c, int64_t k) const { return weight(c, k).size(0); }  // layer k's outputs
  // coupling c reads columns [cond_begin, +cond_width) and maps [x_begin, +x_width)
  int64_t x_begin(int64_t c) const { return c % 2 == 0 ? split : 0; }
  int64_t x_width(int64_t c) const { return c % 2 == 0 ? dim - split : split; }
  int64_t cond_begin(int64_t c) const { return c % 2 == 0 ? 0 : split; }
  int64_t cond_width(int64_t c) const { return c % 2 == 0 ? split : dim - split; }
  // rows of one coupling's activations in a tile: its subnet input and every layer's output
  int64_t act_rows(int64_t c) const {
    int64_t n = cond_width(c);
    for (int64_t k = 0; k < n_layers; ++k) n += width(c, k);
    return n;
  }
  int64_t max_act_rows(int64_t parity) const {  // of the couplings c = parity, parity + 2, ...
    int64_t m = 0;
    for (int64_t c = parity; c < 2 * n_blocks(); c += 2) m = std::max(m, act_rows(c));
    return m;
  }
  int64_t max_width() const {
    int64_t m = dim;
    for (int64_t c = 0; c < 2 * n_blocks(); ++c) {
      for (int64_t k = 0; k < n_layers; ++k) m = std::max(m, width(c, k));
    }
    return m;
  }
};

// inv[perm[j]] = j, checking that perm is a permutation.
std::vector<int64_t> inverse_permutation(const at::Tensor& perm) {
  const int64_t n = perm.numel();
  std::vector<int64_t> inv(n, -1);
  const int64_t* pp = perm.const_data_ptr<int64_t>();
  for (int64_t j = 0; j < n; ++j) {
    TORCH_CHECK(pp[j] >= 0 && pp[j] < n && inv[pp[j]] < 0, "coupling_flow: perms must be permutations of 0..",
                n - 1, ", got ", pp[j], " at ", j);
    inv[pp[j]] = j;
  }
  return inv;
}

// Where a tile keeps logical feature j: row pos[j] of its feature-major block.
// index_select(1, p) relabels, new[j] = old[p[j]], and moves no data.
struct Pos {
  std::vector<int64_t> at;
  explicit Pos(int64_t dim) : at(dim) { std::iota(at.begin(), at.end(), 0); }
  void select(const std::vector<int64_t>& p) {
    std::vector<int64_t> next(at.size());
    for (size_t j = 0; j < at.size(); ++j) next[j] = at[p[j]];
    at.swap(next);
  }
};

// Where coupling c keeps what its backward needs inside `saved` (the layout of
// coupling_flow_reference): after the blocks' inputs, per coupling, its
// subnet's input and every layer's output, all row-major.
struct Layout {
  std::vector<int64_t> acts;  // offset of coupling c's subnet input; its layers' outputs follow
  int64_t size = 0;

  Layout(const Flow& f, int64_t rows, bool store) : size(f.n_blocks() * rows * f.dim) {
    if (!store) return;
    for (int64_t c = 0; c < 2 * f.n_blocks(); ++c) {
      acts.push_back(size);
      size += rows * f.act_rows(c);
    }
  }
};

// The parameters as raw pointers (and the permutations with their inverses), read once per call.
template <typename T>
struct Params {
  std::vector<const T*> w, b;
  std::vector<std::vector<int64_t>> perm, inv;
  explicit Params(const Flow& f) {
    for (const at::Tensor& x : f.weights) w.push_back(x.const_data_ptr<T>());
    for (const at::Tensor& x : f.biases) b.push_back(x.const_data_ptr<T>());
    for (const at::Tensor& p : f.perms) {
      perm.emplace_back(p.const_data_ptr<int64_t>(), p.const_data_ptr<int64_t>() + p.numel());
      inv.push_back(inverse_permutation(p));
    }
  }
};

template <typename T>
struct RowPtrs {  // feature rows of a contiguous block, or the rows a Pos names
  std::vector<T*> p;
  RowPtrs(T* base, int64_t n) : p(n) {
    for (int64_t j = 0; j < n; ++j) p[j] = base + j * kRows;
  }
  RowPtrs(T* base, const Pos& pos, int64_t begin, int64_t n) : p(n) {
    for (int64_t j = 0; j < n; ++j) p[j] = base + pos.at[begin + j] * kRows;
  }
  T* const* data() const { return p.data(); }
};

// One tile's activations of coupling c: its subnet input, then every layer's output.
template <typename T>
struct Acts {
  T* base;
  std::vector<T*> layer;  // layer[k]: output of layer k; layer[-1] is the input (base)
  Acts(const Flow& f, int64_t c, T* buf) : base(buf) {
    T* p = buf + f.cond_width(c) * kRows;
    for (int64_t k = 0; k < f.n_layers; ++k) {
      layer.push_back(p);
      p += f.width(c, k) * kRows;
    }
  }
  const T* input(int64_t k) const { return k == 0 ? base : layer[k - 1]; }
  // (block, width) of the subnet input, then of each layer's output: the pieces that `saved`
  // holds for the coupling, one (B x width) row-major matrix each (coupling_flow_reference)
  std::vector<std::pair<T*, int64_t>> pieces(const Flow& f, int64_t c) const {
    std::vector<std::pair<T*, int64_t>> out{{base, f.cond_width(c)}};
    for (int64_t k = 0; k < f.n_layers; ++k) out.emplace_back(layer[k], f.width(c, k));
    return out;
  }
};

// What every tile of one call reads.
template <typename T>
struct Call {
  const Flow& f;
  const Params<T> p;
  const Layout layout;
  const T* in;      // z, or grad_u
  const T* gl;      // grad_logdet (backward)
  T* out;           // u, or grad_z
  T* logdet;        // (forward)
  T* saved;
  int64_t rows;
  bool store, inverse;
  const cpu::Scratch<T>& scratch;
  int64_t tile_size = 0;  // backward: the tile part of a thread's scratch; its parameter gradients follow
  std::vector<int64_t> grad_offset = {};
};

// The tile kernels once for AVX2 + FMA and once portable, picked at run time.
// (target_clones cannot serve here: the vector-extension helpers would be
// lowered for the baseline before they are inlined into an AVX2 clone.)
#if defined(__x86_64__)
namespace avx2 {
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include "cpu/tile_products.h"
#include "cpu/coupling_flow_tiles.h"
#pragma GCC pop_options
}  // namespace avx2
#endif
namespace portable {
#include "cpu/tile_products.h"
#include "cpu/coupling_flow_tiles.h"
}  // namespace portable

cpu::IsaSwitch g_isa;

// One tile of the forward (or, kBackward, of the backward) with the build for this CPU.
template <bool kBackward, typename T>
void run_tile(const Call<T>& a, int64_t thread, int64_t r0, int64_t n) {
#if defined(__x86_64__)
  if (g_isa.avx2()) {
    return kBackward ? avx2::backward_tile(a, thread, r0, n) : avx2::forward_tile(a, thread, r0, n);
  }
#endif
  return kBackward ? portable::backward_tile(a, thread, r0, n) : portable::forward_tile(a, thread, r0, n);
}

template <typename T>
void flow_forward(const Flow& f, const at::Tensor& z, at::Tensor& u, at::Tensor& logdet, at::Tensor& saved,
                  bool store, bool inverse) {
  const int64_t rows = z.size(0);
  const Layout layout(f, rows, store);
  TORCH_CHECK(inverse || saved.numel() == layout.size, "coupling_flow: saved must have ", layout.size, " elements");
  const cpu::Scratch<T> scratch((f.dim + std::max(f.max_act_rows(0), f.max_act_rows(1))) * kRows, at::get_num_threads());
  const Call<T> call{f, Params<T>(f), layout, z.const_data_ptr<T>(), nullptr, u.data_ptr<T>(), logdet.data_ptr<T>(),
                     inverse ? nullptr : saved.data_ptr<T>(), rows, store, inverse, scratch};
  cpu::over_tiles(rows, kRows, [&](int64_t thread, int64_t r0, int64_t n) { run_tile<false>(call, thread, r0, n); });
}

template <typename T>
void flow_backward(const Flow& f, const at::Tensor& grad_u, const at::Tensor& grad_logdet, const at::Tensor& saved,
                   bool store, at::Tensor& grad_z, at::TensorList grad_weights, at::TensorList grad_biases) {
  const int64_t rows = grad_u.size(0), threads = at::get_num_threads();
  const Layout layout(f, rows, store);
  TORCH_CHECK(saved.numel() == layout.size, "coupling_flow_backward: saved must have ", layout.size, " elements");
  // per thread: the gradient tile, the block input, the block state, both couplings' activations,
  // two gradient blocks of the widest layer and a transposed layer input; then the parameters'
  // gradients, summed over the thread's tiles
  const int64_t tile_size = (3 * f.dim + f.max_act_rows(0) + f.max_act_rows(1) + 3 * f.max_width()) * kRows;
  std::vector<int64_t> grad_offset;
  int64_t grad_size = 0;
  for (at::TensorList list : {grad_weights, grad_biases}) {
    for (const at::Tensor& g : list) {
      TORCH_CHECK(g.is_contiguous() && g.scalar_type() == grad_u.scalar_type(),
                  "coupling_flow_backward: gradient outputs must be contiguous, of grad_u's dtype");
      grad_offset.push_back(std::exchange(grad_size, grad_size + g.numel()));
    }
  }
  const cpu::Scratch<T> scratch(tile_size + (grad_size + kRows - 1) / kRows * kRows, threads);
  Call<T> call{f, Params<T>(f), layout, grad_u.const_data_ptr<T>(), grad_logdet.const_data_ptr<T>(),
               grad_z.data_ptr<T>(), nullptr, const_cast<T*>(saved.const_data_ptr<T>()), rows, store, false, scratch};
  call.tile_size = tile_size;
  call.grad_offset = grad_offset;
  std::vector<char> used(threads, 0);  // a thread's sums are zeroed by itself, before its first tile
  cpu::over_tiles(rows, kRows, [&](int64_t thread, int64_t r0, int64_t n) {
    if (!used[thread]) {
      std::fill_n(scratch.of(thread) + tile_size, grad_size, T(0));
      used[thread] = 1;
    }
    run_tile<true>(call, thread, r0, n);
  });
  std::vector<const T*> parts;
  for (int64_t t = 0; t < threads; ++t) {
    if (used[t]) parts.push_back(scratch.of(t) + tile_size);
  }
  std::vector<T*> outs;
  for (at::TensorList list : {grad_weights, grad_biases}) {
    for (const at::Tensor& g : list) outs.push_back(g.data_ptr<T>());
  }
  // the threads' sums, in thread order, over shares of the flat gradient (2.9 MB a thread at
  // hidden 256, where zeroing and summing them on one core was 5% of the backward)
  at::parallel_for(0, grad_size, 131072, [&](int64_t e0, int64_t e1) {
    int64_t i = std::upper_bound(grad_offset.begin(), grad_offset.end(), e0) - grad_offset.begin() - 1;
    for (int64_t e = e0; e < e1; ++i) {
      const int64_t end = i + 1 < static_cast<int64_t>(grad_offset.size()) ? std::min(e1, grad_offset[i + 1]) : e1;
      T* o = outs[i] + (e - grad_offset[i]);
      if (parts.empty()) {
        std::fill(o, o + (end - e), T(0));
      } else {
        std::copy(parts[0] + e, parts[0] + end, o);
      }
      for (size_t t = 1; t < parts.size(); ++t) {
        const T* part = parts[t] + e;
#pragma GCC ivdep
        for (int64_t k = 0; k < end - e; ++k) o[k] += part[k];
      }
      e = end;
    }
  });
}

void check_dtype(const at::Tensor& z, std::initializer_list<at::TensorList> lists) {
  TORCH_CHECK(z.scalar_type() == at::kFloat || z.scalar_type() == at::kDouble,
              "coupling_flow: float32 or float64 only, got ", z.scalar_type());
  for (at::TensorList list : lists) {
    for (const at::Tensor& t : list) {
      TORCH_CHECK(t.scalar_type() == z.scalar_type() && t.device().is_cpu(),
                  "coupling_flow: parameters must be CPU tensors of z's dtype");
    }
  }
}

}  // namespace

const char* coupling_flow_isa() { return g_isa.name(); }
void set_coupling_flow_portable(bool on) { g_isa.force_portable(on); }

void coupling_flow_cpu(const at::Tensor& z, at::TensorList weights, at::TensorList biases, at::TensorList perms,
                       at::Tensor& u, at::Tensor& logdet, at::Tensor& saved, int64_t scale, double clamp,
                       int64_t activation, bool inverse, bool store_activations) {
  const Flow f(z, weights, biases, perms, scale, clamp, activation);
  check_dtype(z, {weights, biases});
  TORCH_CHECK(u.is_contiguous() && u.sizes() == z.sizes() && logdet.is_contiguous() && logdet.numel() == z.size(0),
              "coupling_flow: u must be like z and logdet have one value per row");
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "coupling_flow_cpu", [&] {
    flow_forward<scalar_t>(f, z, u, logdet, saved, store_activations, inverse);
  });
}

void coupling_flow_backward_cpu(const at::Tensor& grad_u, const at::Tensor& grad_logdet, const at::Tensor& saved,
                                at::TensorList weights, at::TensorList biases, at::TensorList perms,
                                at::Tensor& grad_z, at::TensorList grad_weights, at::TensorList grad_biases,
                                int64_t scale, double clamp, int64_t activation, bool store_activations) {
  const at::Tensor gu = grad_u.contiguous(), gl = grad_logdet.contiguous();
  const Flow f(gu, weights, biases, perms, scale, clamp, activation);
  check_dtype(gu, {weights, biases, grad_weights, grad_biases});
  TORCH_CHECK(saved.dim() == 1 && saved.is_contiguous() && saved.scalar_type() == gu.scalar_type(),
              "coupling_flow_backward: saved must be the forward's contiguous buffer");
  TORCH_CHECK(gl.numel() == gu.size(0) && grad_z.is_contiguous() && grad_z.sizes() == gu.sizes() &&
                  grad_weights.size() == weights.size() && grad_biases.size() == biases.size(),
              "coupling_flow_backward: gradients must be shaped like what they differentiate");
  AT_DISPATCH_FLOATING_TYPES(gu.scalar_type(), "coupling_flow_backward_cpu", [&] {
    flow_backward<scalar_t>(f, gu, gl, saved, store_activations, grad_z, grad_weights, grad_biases);
  });
}

}  // namespace dgm_fast

namespace dgm_fast {
namespace {

// The dispatcher kernels of dgm_fast::coupling_flow and its backward on CPU
// (schemas: dgm_fast/coupling/op.py), so that a call costs no Python: outputs
// laid out as the reference's (u like z, each gradient like what it
// differentiates), kernels on contiguous copies of whatever is not.
std::vector<at::Tensor> contiguous(at::TensorList list) {
  std::vector<at::Tensor> out;
  out.reserve(list.size());
  for (const at::Tensor& t : list) out.push_back(t.contiguous());
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> coupling_flow_op(
    const at::Tensor& z, at::TensorList weights, at::TensorList biases, at::TensorList perms, c10::string_view scale,
    double clamp, c10::string_view activation, bool inverse, bool store_activations) {
  const at::Tensor zc = z.contiguous();
  const std::vector<at::Tensor> w = contiguous(weights), b = contiguous(biases), p = contiguous(perms);
  const int64_t scale_code = cpu::scale_code(scale), activation_code = cpu::activation_code(activation);
  const Flow f(zc, w, b, p, scale_code, clamp, activation_code);
  at::Tensor u = empty_output(z), buf = contiguous_buffer(u);
  at::Tensor logdet = empty_output(z.size(0), z.options());
  at::Tensor saved = empty_output(inverse ? 0 : Layout(f, z.size(0), store_activations).size, z.options());
  coupling_flow_cpu(zc, w, b, p, buf, logdet, saved, scale_code, clamp, activation_code, inverse, store_activations);
  write_back(u, buf);
  return {u, logdet, saved};
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> coupling_flow_backward_op(
    const at::Tensor& grad_u, const at::Tensor& grad_logdet, const at::Tensor& saved, at::TensorList weights,
    at::TensorList biases, at::TensorList perms, c10::string_view scale, double clamp, c10::string_view activation,
    bool store_activations) {
  const std::vector<at::Tensor> w = contiguous(weights), b = contiguous(biases), p = contiguous(perms);
  at::Tensor grad_z = empty_output(grad_u), buf = contiguous_buffer(grad_z);
  std::vector<at::Tensor> grad_w, grad_b, bufs_w, bufs_b;
  for (const at::Tensor& t : weights) bufs_w.push_back(contiguous_buffer(grad_w.emplace_back(empty_output(t))));
  for (const at::Tensor& t : biases) bufs_b.push_back(contiguous_buffer(grad_b.emplace_back(empty_output(t))));
  coupling_flow_backward_cpu(grad_u, grad_logdet, saved.contiguous(), w, b, p, buf, bufs_w, bufs_b,
                             cpu::scale_code(scale), clamp, cpu::activation_code(activation), store_activations);
  write_back(grad_z, buf);
  for (size_t i = 0; i < grad_w.size(); ++i) write_back(grad_w[i], bufs_w[i]);
  for (size_t i = 0; i < grad_b.size(); ++i) write_back(grad_b[i], bufs_b[i]);
  return {grad_z, grad_w, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(dgm_fast, CPU, m) {
  m.impl("coupling_flow", &coupling_flow_op);
  m.impl("coupling_flow_backward", &coupling_flow_backward_op);
}

}  // namespace dgm_fast
