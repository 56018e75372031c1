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

enum Activation : int64_t { kRelu = 0, kLeakyRelu = 1, kTanhAct = 2, kElu = 3 };
constexpr double kLeakySlope = 0.01;  // nn.LeakyReLU's default
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

void activate_(const Flow& f, at::Tensor& p) {
  switch (f.activation) {
    case kRelu: at::relu_(p); break;
    case kLeakyRelu: at::leaky_relu_(p, kLeakySlope); break;
    case kTanhAct: at::tanh_(p); break;
    default: at::elu_(p); break;
  }
}

// g * act'(.) from the activation's output a.
at::Tensor activation_backward(const Flow& f, const at::Tensor& g, const at::Tensor& a) {
  switch (f.activation) {
    case kRelu: return at::threshold_backward(g, a, 0);
    case kLeakyRelu: return at::leaky_relu_backward(g, a, kLeakySlope, /*self_is_result=*/true);
    case kTanhAct: return at::tanh_backward(g, a);
    default: return at::elu_backward(g, 1.0, 1.0, 1.0, /*is_result=*/true, a);
  }
}

// Subnet c on `cond`: (B, 2 * x_width) holding s then t. With `acts`, keeps
// every layer's input and the output for the backward.
at::Tensor subnet(const Flow& f, int64_t c, const at::Tensor& cond, std::vector<at::Tensor>* acts) {
  at::Tensor a = cond;
  if (acts != nullptr) acts->assign(1, cond.clone());  // a view of columns the next coupling overwrites
  for (int64_t k = 0; k < f.n_layers; ++k) {
    a = at::addmm(f.bias(c, k), a, f.weight(c, k).t());
    if (k + 1 < f.n_layers) activate_(f, a);
    if (acts != nullptr) acts->push_back(a);
  }
  return a;
}

template <typename T>
cpu::RowView<T> columns(const at::Tensor& m, int64_t begin) {
  return {const_cast<T*>(m.const_data_ptr<T>()) + begin, m.stride(0)};
}

template <typename Fn>
void over_rows(int64_t rows, int64_t width, Fn&& fn) {
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(width, 1)), fn);
}

// Coupling c of `cur` in place, adding its log-determinant to logdet; returns the subnet output.
template <typename T>
at::Tensor couple(const Flow& f, int64_t c, at::Tensor& cur, at::Tensor& logdet, bool inverse,
                  std::vector<at::Tensor>* acts) {
  const int64_t xb = f.x_begin(c), dx = f.x_width(c);
  const at::Tensor h = subnet(f, c, cur.narrow(1, f.cond_begin(c), f.cond_width(c)), acts);
  const cpu::ForwardRows<T> v{columns<const T>(cur, xb), columns<const T>(h, 0), columns<const T>(h, dx),
                              columns<T>(cur, xb), logdet.data_ptr<T>(), true};
  over_rows(cur.size(0), dx, [&](int64_t r0, int64_t r1) {
    cpu::coupling_forward_rows(v, r0, r1, dx, f.scale, f.clamp, inverse);
  });
  return h;
}

// The gradient of subnet c's input from that of its output; accumulates the parameters' gradients.
at::Tensor subnet_backward(const Flow& f, int64_t c, const std::vector<at::Tensor>& acts, at::Tensor g,
                           at::TensorList grad_weights, at::TensorList grad_biases) {
  for (int64_t k = f.n_layers - 1; k >= 0; --k) {
    if (k + 1 < f.n_layers) g = activation_backward(f, g, acts[k + 1]);
    at::Tensor gw = grad_weights[c * f.n_layers + k], gb = grad_biases[c * f.n_layers + k];
    gw.addmm_(g.t(), acts[k]);
    gb.add_(g.sum(0));
    g = at::mm(g, f.weight(c, k));
  }
  return g;
}

at::Tensor inverse_permutation(const at::Tensor& perm) {
  return at::empty_like(perm).scatter_(0, perm, at::arange(perm.numel(), perm.options()));
}

template <typename T>
void flow_forward(const Flow& f, const at::Tensor& z, at::Tensor& u, at::Tensor& logdet, bool inverse) {
  at::Tensor cur = z.clone();
  logdet.zero_();
  const int64_t n = f.n_blocks();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t b = inverse ? n - 1 - i : i;
    if (inverse) cur = cur.index_select(1, inverse_permutation(f.perms[b]));
    for (int64_t half : {inverse ? 1 : 0, inverse ? 0 : 1}) couple<T>(f, 2 * b + half, cur, logdet, inverse, nullptr);
    if (!inverse) cur = cur.index_select(1, f.perms[b]);
  }
  u.copy_(cur);
}

template <typename T>
void flow_backward(const Flow& f, const at::Tensor& grad_u, const at::Tensor& grad_logdet, const at::Tensor& z,
                   at::Tensor& grad_z, at::TensorList grad_weights, at::TensorList grad_biases) {
  const int64_t n = f.n_blocks();
  std::vector<at::Tensor> inputs;  // each block's input, from a forward pass without activations
  at::Tensor cur = z.clone(), scratch_logdet = at::zeros({z.size(0)}, z.options());
  for (int64_t b = 0; b < n; ++b) {
    inputs.push_back(cur.clone());
    for (int64_t half : {0, 1}) couple<T>(f, 2 * b + half, cur, scratch_logdet, false, nullptr);
    cur = cur.index_select(1, f.perms[b]);
  }
  for (const at::Tensor& g : grad_weights) at::Tensor(g).zero_();
  for (const at::Tensor& g : grad_biases) at::Tensor(g).zero_();
  at::Tensor g = grad_u.contiguous();
  for (int64_t b = n - 1; b >= 0; --b) {
    g = g.index_select(1, inverse_permutation(f.perms[b]));  // through the permutation
    cur = inputs[b].clone();
    std::vector<at::Tensor> acts[2];
    at::Tensor h[2];
    for (int64_t half : {0, 1}) h[half] = couple<T>(f, 2 * b + half, cur, scratch_logdet, false, &acts[half]);
    for (int64_t half : {1, 0}) {
      // coupling c maps x (read from the block input: coupling 1's x is untouched by coupling 0) from cond
      const int64_t c = 2 * b + half, xb = f.x_begin(c), dx = f.x_width(c);
      at::Tensor grad_h = at::empty({g.size(0), 2 * dx}, g.options());
      const cpu::BackwardRows<T> v{columns<const T>(g, xb), grad_logdet.const_data_ptr<T>(),
                                   columns<const T>(inputs[b], xb), columns<const T>(h[half], 0),
                                   columns<const T>(h[half], dx), columns<T>(g, xb), columns<T>(grad_h, 0),
                                   columns<T>(grad_h, dx)};
      over_rows(g.size(0), dx, [&](int64_t r0, int64_t r1) {
        cpu::coupling_backward_rows(v, r0, r1, dx, f.scale, f.clamp, false);
      });
      g.narrow(1, f.cond_begin(c), f.cond_width(c)).add_(subnet_backward(f, c, acts[half], grad_h, grad_weights,
                                                                         grad_biases));
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
                       at::Tensor& u, at::Tensor& logdet, int64_t scale, double clamp, int64_t activation,
                       bool inverse) {
  const Flow f(z, weights, biases, perms, scale, clamp, activation);
  check_dtype(z, {weights, biases});
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "coupling_flow_cpu", [&] {
    flow_forward<scalar_t>(f, z, u, logdet, inverse);
  });
}

void coupling_flow_backward_cpu(const at::Tensor& grad_u, const at::Tensor& grad_logdet, const at::Tensor& z,
                                at::TensorList weights, at::TensorList biases, at::TensorList perms,
                                at::Tensor& grad_z, at::TensorList grad_weights, at::TensorList grad_biases,
                                int64_t scale, double clamp, int64_t activation) {
  const Flow f(z, weights, biases, perms, scale, clamp, activation);
  check_dtype(z, {weights, biases, grad_weights, grad_biases});
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "coupling_flow_backward_cpu", [&] {
    flow_backward<scalar_t>(f, grad_u.contiguous(), grad_logdet.contiguous(), z, grad_z, grad_weights,
                            grad_biases);
  });
}

}  // namespace dgm_fast
