// A whole coupling flow in one call per direction, and its backward
// (dissertation §3.2, Figure 3.1(b); spec: dgm_fast/coupling/flow.py and the
// op reference in dgm_fast/coupling/op.py). At GLF's sizes (latent 20-64,
// subnets of width 64) an eager flow spends its time launching a dozen small
// ops per coupling and recording autograd; here each subnet layer is one
// addmm (with the activation in place), each coupling one pass of the row
// kernels of csrc/cpu/coupling.cpp writing into the flow's own buffer, and a
// permutation one gather. The backward recomputes each block's activations
// from the block's input instead of storing them for the whole flow.
#include "cpu/coupling_flow.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "cpu/coupling_rows.h"
#include "ops.h"

namespace dgm_fast {
namespace {

using cpu::kElu;
using cpu::kLeakyRelu;
using cpu::kLeakySlope;
using cpu::kRelu;
using cpu::kTanhAct;
constexpr int64_t kGrain = 1 << 14;   // elements per parallel task of a coupling pass

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
    TORCH_CHECK(activation >= kRelu && activation <= kElu, "coupling_flow: unknown activation code ", activation);
    for (int64_t c = 0; c < 2 * n_blocks(); ++c) {  // the raw-pointer passes rely on these shapes
      int64_t width = cond_width(c);
      for (int64_t k = 0; k < n_layers; ++k) {
        const at::Tensor &w = weight(c, k), &b = bias(c, k);
        TORCH_CHECK(w.dim() == 2 && w.size(1) == width && b.dim() == 1 && b.size(0) == w.size(0) &&
                        b.is_contiguous(),
                    "coupling_flow: layer ", k, " of coupling ", c, " has weight ", w.sizes(), " and bias ",
                    b.sizes(), " but its input has ", width, " features");
        width = w.size(0);
      }
      TORCH_CHECK(width == 2 * x_width(c), "coupling_flow: coupling ", c, " must output ", 2 * x_width(c),
                  " values (s and t), got ", width);
    }
    for (const at::Tensor& perm : perms) {
      TORCH_CHECK(perm.dim() == 1 && perm.size(0) == dim && perm.scalar_type() == at::kLong,
                  "coupling_flow: permutations must be int64 vectors of length ", dim);
    }
  }
  int64_t n_blocks() const { return static_cast<int64_t>(perms.size()); }
  const at::Tensor& weight(int64_t c, int64_t k) const { return weights[c * n_layers + k]; }
  const at::Tensor& bias(int64_t c, int64_t k) const { return biases[c * n_layers + k]; }
  // coupling c reads columns [cond_begin, +cond_width) and maps [x_begin, +x_width)
  int64_t x_begin(int64_t c) const { return c % 2 == 0 ? split : 0; }
  int64_t x_width(int64_t c) const { return c % 2 == 0 ? dim - split : split; }
  int64_t cond_begin(int64_t c) const { return c % 2 == 0 ? 0 : split; }
  int64_t cond_width(int64_t c) const { return c % 2 == 0 ? split : dim - split; }
};

template <typename T>
cpu::RowView<T> columns(const at::Tensor& m, int64_t begin) {
  return {const_cast<T*>(m.const_data_ptr<T>()) + begin, m.stride(0)};
}

template <typename Fn>
void over_rows(int64_t rows, int64_t width, Fn&& fn) {
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(width, 1)), fn);
}

// Where coupling c keeps what its backward needs inside `saved` (see
// coupling_flow.h): after the blocks' inputs, per coupling, its subnet's
// input and every layer's output.
struct Layout {
  std::vector<int64_t> cond;                 // offset of coupling c's subnet input (B x cond_width)
  std::vector<std::vector<int64_t>> layers;  // offset of layer k's output (B x out_k)
  int64_t size = 0;

  Layout(const Flow& f, int64_t rows, bool store) : size(f.n_blocks() * rows * f.dim) {
    if (!store) return;
    for (int64_t c = 0; c < 2 * f.n_blocks(); ++c) {
      cond.push_back(size);
      size += rows * f.cond_width(c);
      layers.emplace_back();
      for (int64_t k = 0; k < f.n_layers; ++k) {
        layers.back().push_back(size);
        size += rows * f.weight(c, k).size(0);
      }
    }
  }
};

at::Tensor matrix(const at::Tensor& flat, int64_t offset, int64_t rows, int64_t cols) {
  return flat.narrow(0, offset, rows * cols).view({rows, cols});
}

// Subnet c on `cond` (B x cond_width): its layers' inputs and outputs, the
// last holding s then t. With `into` (a saved buffer and its layout) they are
// written there, else allocated.
std::vector<at::Tensor> subnet(const Flow& f, int64_t c, const at::Tensor& cond, const at::Tensor* into,
                               const Layout* layout) {
  const int64_t rows = cond.size(0);
  // a copy, never a view: cond's columns of the flow's buffer are overwritten by the next coupling
  std::vector<at::Tensor> acts{into ? matrix(*into, layout->cond[c], rows, cond.size(1)).copy_(cond)
                                    : cond.clone(at::MemoryFormat::Contiguous)};
  for (int64_t k = 0; k < f.n_layers; ++k) {
    const at::Tensor& w = f.weight(c, k);
    at::Tensor out = into ? matrix(*into, layout->layers[c][k], rows, w.size(0)) : at::empty({rows, w.size(0)}, cond.options());
    at::mm_out(out, acts.back(), w.t());
    // bias and activation in one pass (addmm would first copy the broadcast bias into out)
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "bias_activation", [&] {
      scalar_t* y = out.data_ptr<scalar_t>();
      const scalar_t* b = f.bias(c, k).const_data_ptr<scalar_t>();
      const int64_t act = k + 1 < f.n_layers ? f.activation : cpu::kIdentity;
      over_rows(rows, w.size(0), [&](int64_t r0, int64_t r1) { cpu::bias_activation_rows(y, b, r0, r1, w.size(0), act); });
    });
    acts.push_back(out);
  }
  return acts;
}

// Coupling c of `cur` in place, adding its log-determinant to logdet; returns
// its subnet's activations (written into `into` when given).
template <typename T>
std::vector<at::Tensor> couple(const Flow& f, int64_t c, at::Tensor& cur, at::Tensor& logdet, bool inverse,
                               const at::Tensor* into = nullptr, const Layout* layout = nullptr) {
  const int64_t xb = f.x_begin(c), dx = f.x_width(c);
  std::vector<at::Tensor> acts = subnet(f, c, cur.narrow(1, f.cond_begin(c), f.cond_width(c)), into, layout);
  const at::Tensor& h = acts.back();
  const cpu::ForwardRows<T> v{columns<const T>(cur, xb), columns<const T>(h, 0), columns<const T>(h, dx),
                              columns<T>(cur, xb), logdet.data_ptr<T>(), true};
  over_rows(cur.size(0), dx, [&](int64_t r0, int64_t r1) {
    cpu::coupling_forward_rows(v, r0, r1, dx, f.scale, f.clamp, inverse);
  });
  return acts;
}

// The gradient of subnet c's input from that of its output (contiguous, overwritten); writes its
// parameters' gradients.
template <typename T>
at::Tensor subnet_backward(const Flow& f, int64_t c, const std::vector<at::Tensor>& acts, at::Tensor g,
                           at::TensorList grad_weights, at::TensorList grad_biases) {
  for (int64_t k = f.n_layers - 1; k >= 0; --k) {
    at::Tensor gw = grad_weights[c * f.n_layers + k], gb = grad_biases[c * f.n_layers + k];
    TORCH_CHECK(gb.is_contiguous() && gb.numel() == g.size(1), "coupling_flow_backward: bias gradient ", k,
                " of coupling ", c, " must be contiguous with ", g.size(1), " elements");
    // through the activation (none after the last layer) and into the bias gradient, in one pass
    cpu::activation_backward_rows(g.data_ptr<T>(), acts[k + 1].const_data_ptr<T>(), gb.data_ptr<T>(), g.size(0),
                                  g.size(1), k + 1 < f.n_layers ? f.activation : cpu::kIdentity);
    at::mm_out(gw, g.t(), acts[k]);
    g = at::mm(g, f.weight(c, k));
  }
  return g;
}

// inv[perm[j]] = j, checking that perm is a permutation (a plain loop: the
// dispatcher's scatter and arange cost more than the work on a 64-vector).
at::Tensor inverse_permutation(const at::Tensor& perm) {
  const at::Tensor p = perm.contiguous();
  const int64_t n = p.numel();
  at::Tensor inv = at::full({n}, -1, p.options());
  const int64_t* pp = p.const_data_ptr<int64_t>();
  int64_t* ip = inv.data_ptr<int64_t>();
  for (int64_t j = 0; j < n; ++j) {
    TORCH_CHECK(pp[j] >= 0 && pp[j] < n && ip[pp[j]] < 0, "coupling_flow: perms must be permutations of 0..",
                n - 1, ", got ", pp[j], " at ", j);
    ip[pp[j]] = j;
  }
  return inv;
}

template <typename T>
void flow_forward(const Flow& f, const at::Tensor& z, at::Tensor& u, at::Tensor& logdet, at::Tensor& saved,
                  bool store) {
  const int64_t rows = z.size(0), n = f.n_blocks();
  const Layout layout(f, rows, store);
  TORCH_CHECK(saved.numel() == layout.size, "coupling_flow: saved must have ", layout.size, " elements");
  logdet.zero_();
  at::Tensor cur = at::empty_like(z);
  matrix(saved, 0, rows, f.dim).copy_(z);
  for (int64_t b = 0; b < n; ++b) {
    cur.copy_(matrix(saved, b * rows * f.dim, rows, f.dim));
    for (int64_t half : {0, 1}) couple<T>(f, 2 * b + half, cur, logdet, false, store ? &saved : nullptr, &layout);
    at::Tensor next = b + 1 < n ? matrix(saved, (b + 1) * rows * f.dim, rows, f.dim) : u;
    at::index_select_out(next, cur, 1, f.perms[b]);
  }
}

template <typename T>
void flow_inverse(const Flow& f, const at::Tensor& z, at::Tensor& u, at::Tensor& logdet) {
  at::Tensor cur = z.clone();
  logdet.zero_();
  for (int64_t b = f.n_blocks() - 1; b >= 0; --b) {
    cur = cur.index_select(1, inverse_permutation(f.perms[b]));
    for (int64_t half : {1, 0}) couple<T>(f, 2 * b + half, cur, logdet, true);
  }
  u.copy_(cur);
}

template <typename T>
void flow_backward(const Flow& f, const at::Tensor& grad_u, const at::Tensor& grad_logdet, const at::Tensor& saved,
                   bool store, at::Tensor& grad_z, at::TensorList grad_weights, at::TensorList grad_biases) {
  const int64_t rows = grad_u.size(0);
  const Layout layout(f, rows, store);
  TORCH_CHECK(saved.numel() == layout.size, "coupling_flow_backward: saved must have ", layout.size, " elements");
  at::Tensor g = grad_u.contiguous(), cur = at::empty_like(g), scratch_logdet = at::zeros({rows}, g.options());
  for (int64_t b = f.n_blocks() - 1; b >= 0; --b) {
    g = g.index_select(1, inverse_permutation(f.perms[b]));  // through the permutation
    const at::Tensor input = matrix(saved, b * rows * f.dim, rows, f.dim);
    std::vector<at::Tensor> acts[2];
    if (store) {
      for (int64_t half : {0, 1}) {
        const int64_t c = 2 * b + half;
        acts[half].push_back(matrix(saved, layout.cond[c], rows, f.cond_width(c)));
        for (int64_t k = 0; k < f.n_layers; ++k) {
          acts[half].push_back(matrix(saved, layout.layers[c][k], rows, f.weight(c, k).size(0)));
        }
      }
    } else {  // recompute the block's activations from its input
      cur.copy_(input);
      for (int64_t half : {0, 1}) acts[half] = couple<T>(f, 2 * b + half, cur, scratch_logdet, false);
    }
    for (int64_t half : {1, 0}) {
      // coupling c maps x, read from the block input (coupling 1's x is untouched by coupling 0)
      const int64_t c = 2 * b + half, xb = f.x_begin(c), dx = f.x_width(c);
      const at::Tensor& h = acts[half].back();
      at::Tensor grad_h = at::empty({rows, 2 * dx}, g.options());
      const cpu::BackwardRows<T> v{columns<const T>(g, xb), grad_logdet.const_data_ptr<T>(),
                                   columns<const T>(input, xb), columns<const T>(h, 0), columns<const T>(h, dx),
                                   columns<T>(g, xb), columns<T>(grad_h, 0), columns<T>(grad_h, dx)};
      over_rows(rows, dx, [&](int64_t r0, int64_t r1) {
        cpu::coupling_backward_rows(v, r0, r1, dx, f.scale, f.clamp, false);
      });
      g.narrow(1, f.cond_begin(c), f.cond_width(c))
          .add_(subnet_backward<T>(f, c, acts[half], grad_h, grad_weights, grad_biases));
    }
  }
  grad_z.copy_(g);
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

void coupling_flow_cpu(const at::Tensor& z, at::TensorList weights, at::TensorList biases, at::TensorList perms,
                       at::Tensor& u, at::Tensor& logdet, at::Tensor& saved, int64_t scale, double clamp,
                       int64_t activation, bool inverse, bool store_activations) {
  const Flow f(z, weights, biases, perms, scale, clamp, activation);
  check_dtype(z, {weights, biases});
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "coupling_flow_cpu", [&] {
    if (inverse) {
      flow_inverse<scalar_t>(f, z, u, logdet);
    } else {
      flow_forward<scalar_t>(f, z, u, logdet, saved, store_activations);
    }
  });
}

void coupling_flow_backward_cpu(const at::Tensor& grad_u, const at::Tensor& grad_logdet, const at::Tensor& saved,
                                at::TensorList weights, at::TensorList biases, at::TensorList perms,
                                at::Tensor& grad_z, at::TensorList grad_weights, at::TensorList grad_biases,
                                int64_t scale, double clamp, int64_t activation, bool store_activations) {
  const at::Tensor gu = grad_u.contiguous();
  const Flow f(gu, weights, biases, perms, scale, clamp, activation);
  check_dtype(gu, {weights, biases, grad_weights, grad_biases});
  TORCH_CHECK(saved.dim() == 1 && saved.is_contiguous() && saved.scalar_type() == gu.scalar_type(),
              "coupling_flow_backward: saved must be the forward's contiguous buffer");
  AT_DISPATCH_FLOATING_TYPES(gu.scalar_type(), "coupling_flow_backward_cpu", [&] {
    flow_backward<scalar_t>(f, gu, grad_logdet.contiguous(), saved, store_activations, grad_z, grad_weights,
                            grad_biases);
  });
}

}  // namespace dgm_fast
