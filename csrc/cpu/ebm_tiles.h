// The fused MLP energy's tile kernels (csrc/cpu/ebm.cpp explains the design).
// Included twice by ebm.cpp, after tile_products.h, inside namespace avx2 under
// `#pragma GCC target("avx2,fma")` and inside namespace portable: no include
// guard, and no includes of its own.

// h (n values) -> act(h) in place, act'(h) into d1 and (if given) act''(h) into d2; the
// formulas of activation_derivatives in dgm_fast/ebm/reference.py.
template <int kAct, typename T>
DGM_INLINE void activate_rows(T* h, T* d1, T* d2, int64_t n, T slope) {
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    const T v = h[i];
    T a, g, c;
    if constexpr (kAct == kSwish) {
      const T s = cpu::m_sigmoid(v);
      a = v * s;
      g = s * (T(1) + v * (T(1) - s));
      c = s * (T(1) - s) * (T(2) + v * (T(1) - T(2) * s));
    } else if constexpr (kAct == kSoftplus) {  // torch's threshold: linear above 20
      const T s = cpu::m_sigmoid(v);
      const bool linear = v > T(20);
      a = pick(linear, v, -cpu::m_log_sigmoid(-v));
      g = pick(linear, T(1), s);
      c = pick(linear, T(0), s * (T(1) - s));
    } else if constexpr (kAct == kRelu) {  // not leaky_relu with slope 0: 0 * -inf is NaN, relu(-inf) 0
      a = pick(v < T(0), T(0), v);
      g = pick(v > T(0), T(1), T(0));
      c = T(0);
    } else {  // leaky_relu; NaN passes through act
      a = pick(v < T(0), slope * v, v);
      g = pick(v > T(0), T(1), slope);
      c = T(0);
    }
    h[i] = a;
    d1[i] = g;
    if (d2 != nullptr) d2[i] = c;
  }
}

template <typename T>
DGM_INLINE void activate_any(T* h, T* d1, T* d2, int64_t n, int64_t act, T slope) {
  switch (act) {
    case kSwish: return activate_rows<kSwish>(h, d1, d2, n, slope);
    case kSoftplus: return activate_rows<kSoftplus>(h, d1, d2, n, slope);
    case kRelu: return activate_rows<kRelu>(h, d1, d2, n, slope);
    default: return activate_rows<kLeakyRelu>(h, d1, d2, n, slope);
  }
}

template <typename T>
DGM_INLINE void multiply_rows(T* g, const T* d, int64_t n) {
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) g[i] *= d[i];
}

// The hidden layers on the tile x (width[0] feature rows): a[l] = act(h_l), d1[l] = act'(h_l)
// (and d2[l] = act''(h_l) if d2 is given).
template <typename T>
DGM_INLINE void forward_tile(const Mlp<T>& m, const T* x, T* const* a, T* const* d1, T* const* d2) {
  for (int64_t l = 0; l < m.hidden(); ++l) {
    const int64_t n_in = m.width[l], n_out = m.width[l + 1];
    product(m.w[l], n_in, 1, l == 0 ? x : a[l - 1], n_in, n_out, m.b[l], a[l]);
    activate_any(a[l], d1[l], d2 ? d2[l] : nullptr, n_out * kRows, m.act, m.slope);
  }
}

// E per row of the tile: the last layer on the last activations (or on x).
template <typename T>
DGM_INLINE void energy_tile(const Mlp<T>& m, const T* x, T* const* a, T* energy) {
  const int64_t l = m.hidden(), n_in = m.width[l];
  product(m.w[l], n_in, 1, l == 0 ? x : a[l - 1], n_in, int64_t{1}, m.b[l], energy);
}

// dE/dx of the tile into gx (width[0] rows), given forward_tile's d1: the backward pass
// grad = W_1^T (act'(h_1) * ... W_{L-1}^T (act'(h_{L-1}) * w_L)). With `ga`, dE/da_l is kept
// in ga[l] for every hidden layer (the Laplacian needs it); else g0/g1 are the work rows.
template <typename T>
DGM_INLINE void backward_tile(const Mlp<T>& m, T* const* d1, T* gx, T* g0, T* g1, T* const* ga) {
  const int64_t hidden = m.hidden();
  const T* w_last = m.w[hidden];
  if (hidden == 0) {  // a linear energy: the gradient is w_L on every row
    for (int64_t j = 0; j < m.width[0]; ++j) std::fill_n(gx + j * kRows, kRows, w_last[j]);
    return;
  }
  T* g = ga ? ga[hidden - 1] : g0;
  for (int64_t j = 0; j < m.width[hidden]; ++j) std::fill_n(g + j * kRows, kRows, w_last[j]);
  for (int64_t l = hidden - 1; l >= 0; --l) {  // g = dE/da_l -> delta = dE/dh_l -> dE/da_{l-1}
    const int64_t n_in = m.width[l], n_out = m.width[l + 1];
    T* delta = g;
    if (ga) {  // ga[l] keeps dE/da_l
      std::copy_n(g, n_out * kRows, g0);
      delta = g0;
    }
    multiply_rows(delta, d1[l], n_out * kRows);
    T* next = l == 0 ? gx : (ga ? ga[l - 1] : (delta == g0 ? g1 : g0));
    product(m.w[l], int64_t{1}, n_in, delta, n_out, n_in, static_cast<const T*>(nullptr), next);
    g = next;
  }
}

// tr d^2E/dx^2 per row (ebm/reference.py: sum_l sum_j dE/da_lj act''(h_lj) |row j of J_l|^2),
// with J_l = dh_l/dx carried forward a column of x at a time: jac holds column i of J_l as
// width rows, tmp is a work block; ga, d1, d2 as backward_tile and forward_tile left them.
template <typename T>
DGM_INLINE void laplacian_tile(const Mlp<T>& m, T* const* d1, T* const* d2, T* const* ga, T* jac, T* jac_next,
                               T* tmp, T* trace) {
  std::fill_n(trace, kRows, T(0));
  const int64_t d = m.width[0];
  for (int64_t i = 0; i < d; ++i) {
    for (int64_t l = 0; l < m.hidden(); ++l) {
      const int64_t n_out = m.width[l + 1];
      if (l == 0) {  // J_1 = W_1: the same on every row
        for (int64_t j = 0; j < n_out; ++j) std::fill_n(jac + j * kRows, kRows, m.w[0][j * d + i]);
      } else {  // J_l = W_l diag(act'(h_{l-1})) J_{l-1}
        const int64_t n_in = m.width[l];
        std::copy_n(jac, n_in * kRows, tmp);
        multiply_rows(tmp, d1[l - 1], n_in * kRows);
        product(m.w[l], n_in, 1, tmp, n_in, n_out, static_cast<const T*>(nullptr), jac_next);
        std::swap(jac, jac_next);
      }
      for (int64_t j = 0; j < n_out; ++j) {
        const T* jr = jac + j * kRows;
        const T* gr = ga[l] + j * kRows;
        const T* cr = d2[l] + j * kRows;
#pragma GCC ivdep
        for (int64_t r = 0; r < kRows; ++r) trace[r] += gr[r] * cr[r] * jr[r] * jr[r];
      }
    }
  }
}

// One Langevin step (2.15) on the tile x (rows [r0, r0 + n) of the batch) from its gradient g:
// x = clamp(keep * x + drift * clip(g) + noise * xi), as langevin.cpp's update_tile, with xi
// the stream elements from `first` (row-major in the batch: row r0 + r, feature f at
// first + (r0 + r) * d + f), made a noise tile at a time into `xi`.
template <typename T>
DGM_INLINE void langevin_tile(const StepCoefs<T>& k, int64_t d, T* x, const T* g, int64_t r0, int64_t n,
                              uint64_t seed, uint64_t first, cpu::NoiseTile<T>& tile, T* xi) {
  const bool noisy = k.noise != T(0);
  if (noisy) {
    for (int64_t e = 0; e < n * d; e += cpu::kNoiseTile) {
      const int64_t len = std::min(cpu::kNoiseTile, n * d - e);
      std::copy_n(cpu::fill_noise_tile(seed, first + r0 * d + e, len, tile), len, xi + e);
    }
  }
  for (int64_t f = 0; f < d; ++f) {
    T* xr = x + f * kRows;
    const T* gr = g + f * kRows;
    for (int64_t r = 0; r < n; ++r) {
      const T gc = pick(gr[r] < -k.clip, -k.clip, pick(gr[r] > k.clip, k.clip, gr[r]));  // NaN passes
      T y = k.keep * xr[r] + k.drift * gc;
      if (noisy) y += k.noise * xi[r * d + f];
      xr[r] = pick(y < k.lo, k.lo, pick(y > k.hi, k.hi, y));
    }
  }
}

// --- whole-tile passes: what the ISA dispatch of ebm.cpp calls ---------------------------------

template <typename T>
void grad_pass(const Mlp<T>& m, TileBufs<T>& t, bool with_energy) {
  forward_tile(m, t.x, t.a.data(), t.d1.data(), static_cast<T* const*>(nullptr));
  if (with_energy) energy_tile(m, t.x, t.a.data(), t.row);
  backward_tile(m, t.d1.data(), t.gx, t.g0, t.g1, static_cast<T* const*>(nullptr));
}

template <typename T>
void laplacian_pass(const Mlp<T>& m, TileBufs<T>& t) {
  forward_tile(m, t.x, t.a.data(), t.d1.data(), t.d2.data());
  backward_tile(m, t.d1.data(), t.gx, t.g0, t.g1, t.ga.data());
  laplacian_tile(m, t.d1.data(), t.d2.data(), t.ga.data(), t.jac, t.jac_next, t.tmp, t.row + kRows);
}

// n_steps steps (2.15) on the tile x: step s draws the stream from offset + s * stride,
// stride = numel rounded up to a group of four (dgm_fast/langevin/stream.py's stream_stride).
template <typename T>
void chain_pass(const Mlp<T>& m, TileBufs<T>& t, const LangevinParams& p, int64_t n_steps, int64_t numel,
                int64_t r0, int64_t n) {
  const StepCoefs<T> k(p);
  const uint64_t stride = static_cast<uint64_t>((numel + 3) / 4 * 4);
  cpu::NoiseTile<T> noise;
  for (int64_t s = 0; s < n_steps; ++s) {
    grad_pass(m, t, false);
    langevin_tile(k, m.width[0], t.x, t.gx, r0, n, p.seed, p.offset + static_cast<uint64_t>(s) * stride, noise, t.xi);
  }
}
