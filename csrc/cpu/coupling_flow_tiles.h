// The fused flow's tile kernels (csrc/cpu/coupling_flow.cpp explains the
// design). Included twice by coupling_flow.cpp, inside namespace avx2 under
// `#pragma GCC target("avx2,fma")` and inside namespace portable, so that the
// vector-extension code below is compiled for each instruction set: no
// include guard, and no includes of its own.

template <int kAct, typename T>
DGM_INLINE void activate_rows(T* x, int64_t n) {
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) x[i] = cpu::activate<kAct>(x[i]);
}

template <typename T>
DGM_INLINE void activate_any(T* x, int64_t n, int64_t act) {
  switch (act) {
    case cpu::kRelu: return activate_rows<cpu::kRelu>(x, n);
    case cpu::kLeakyRelu: return activate_rows<cpu::kLeakyRelu>(x, n);
    case cpu::kTanhAct: return activate_rows<cpu::kTanhAct>(x, n);
    case cpu::kElu: return activate_rows<cpu::kElu>(x, n);
    default: return;
  }
}

// g (n x kRows) *= activation'(a), and grad_bias[j] += sum over the tile's rows of g[j].
template <int kAct, typename T>
DGM_INLINE void activation_backward_rows(T* g, const T* a, T* grad_bias, int64_t n) {
  using S = Simd<T>;
  for (int64_t j = 0; j < n; ++j) {
    T* gj = g + j * kRows;
    const T* aj = a + j * kRows;
#pragma GCC ivdep
    for (int64_t r = 0; r < kRows; ++r) gj[r] = cpu::activation_grad<kAct>(gj[r], aj[r]);
    typename S::V lanes = S::load(gj);
    for (int64_t r = S::kLanes; r < kRows; r += S::kLanes) lanes += S::load(gj + r);
    T sum = 0;
    for (int l = 0; l < S::kLanes; ++l) sum += lanes[l];
    grad_bias[j] += sum;
  }
}

template <typename T>
DGM_INLINE void activation_backward_any(T* g, const T* a, T* grad_bias, int64_t n, int64_t act) {
  switch (act) {
    case cpu::kRelu: return activation_backward_rows<cpu::kRelu>(g, a, grad_bias, n);
    case cpu::kLeakyRelu: return activation_backward_rows<cpu::kLeakyRelu>(g, a, grad_bias, n);
    case cpu::kTanhAct: return activation_backward_rows<cpu::kTanhAct>(g, a, grad_bias, n);
    case cpu::kElu: return activation_backward_rows<cpu::kElu>(g, a, grad_bias, n);
    default: return activation_backward_rows<kIdentity>(g, a, grad_bias, n);
  }
}

// dst[c][i] = src[i][c] for an 8 x 8 block of floats, given by row pointers:
// in-lane unpacks and shuffles, then 128-bit lane swaps (one instruction each).
DGM_INLINE void transpose8(const float* const* src, float* const* dst) {
  typedef int32_t I __attribute__((vector_size(32)));
  using V = Simd<float>::V;
  V r[8], t[8], u[8];
  for (int i = 0; i < 8; ++i) r[i] = Simd<float>::load_unaligned(src[i]);
  const I lo = {0, 8, 1, 9, 4, 12, 5, 13}, hi = {2, 10, 3, 11, 6, 14, 7, 15};
  const I pairs_lo = {0, 1, 8, 9, 4, 5, 12, 13}, pairs_hi = {2, 3, 10, 11, 6, 7, 14, 15};
  const I halves_lo = {0, 1, 2, 3, 8, 9, 10, 11}, halves_hi = {4, 5, 6, 7, 12, 13, 14, 15};
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = __builtin_shuffle(r[2 * i], r[2 * i + 1], lo);
    t[2 * i + 1] = __builtin_shuffle(r[2 * i], r[2 * i + 1], hi);
  }
  for (int h = 0; h < 8; h += 4) {
    u[h] = __builtin_shuffle(t[h], t[h + 2], pairs_lo);
    u[h + 1] = __builtin_shuffle(t[h], t[h + 2], pairs_hi);
    u[h + 2] = __builtin_shuffle(t[h + 1], t[h + 3], pairs_lo);
    u[h + 3] = __builtin_shuffle(t[h + 1], t[h + 3], pairs_hi);
  }
  for (int c = 0; c < 4; ++c) {
    Simd<float>::store_unaligned(dst[c], __builtin_shuffle(u[c], u[4 + c], halves_lo));
    Simd<float>::store_unaligned(dst[c + 4], __builtin_shuffle(u[c], u[4 + c], halves_hi));
  }
}

// The 8 x 8 blocks of a transposition, for float: rows [0, n_rows) by columns
// [0, n_cols) of src (src(i) + c) into dst(c) + i; returns the columns done.
template <typename T, typename Src, typename Dst>
DGM_INLINE int64_t transpose_blocks(int64_t n_rows, int64_t n_cols, Src&& src, Dst&& dst) {
  if constexpr (!std::is_same_v<T, float>) {
    return 0;
  } else {
    if (n_rows % 8 != 0) return 0;
    const int64_t done = n_cols / 8 * 8;
    for (int64_t c0 = 0; c0 < done; c0 += 8) {
      for (int64_t i0 = 0; i0 < n_rows; i0 += 8) {
        const float* s[8];
        float* d[8];
        for (int k = 0; k < 8; ++k) {
          s[k] = src(i0 + k) + c0;
          d[k] = dst(c0 + k) + i0;
        }
        transpose8(s, d);
      }
    }
    return done;
  }
}

// grad_w[o][i] += sum over the tile's rows of g[o][r] * in_t[r][i] for J outputs from o0 and
// NV vectors of inputs from i0: J * NV accumulators, as product_block.
template <int J, int NV, typename T>
DGM_INLINE void weight_gradient_block(const T* g, const T* in_t, int64_t n_in, T* grad_w, int64_t o0, int64_t i0) {
  using S = Simd<T>;
  typename S::V acc[J][NV] = {};
  for (int64_t r = 0; r < kRows; ++r) {
    typename S::V x[NV];
    for (int v = 0; v < NV; ++v) x[v] = S::load_unaligned(in_t + r * n_in + i0 + v * S::kLanes);
    for (int j = 0; j < J; ++j) {
      const typename S::V c = S::splat(g[(o0 + j) * kRows + r]);
      for (int v = 0; v < NV; ++v) acc[j][v] += c * x[v];
    }
  }
  for (int j = 0; j < J; ++j) {
    for (int v = 0; v < NV; ++v) {
      T* dst = grad_w + (o0 + j) * n_in + i0 + v * S::kLanes;
      S::store_unaligned(dst, S::load_unaligned(dst) + acc[j][v]);
    }
  }
}

// Columns [i0, i0 + NV lanes) of grad_w, every output.
template <int NV, typename T>
DGM_INLINE void weight_gradient_columns(const T* g, const T* in_t, int64_t n_in, int64_t n_out, T* grad_w,
                                        int64_t i0) {
  int64_t o = 0;
  for (; o + Simd<T>::kJ <= n_out; o += Simd<T>::kJ) weight_gradient_block<Simd<T>::kJ, NV>(g, in_t, n_in, grad_w, o, i0);
  for (; o < n_out; ++o) weight_gradient_block<1, NV>(g, in_t, n_in, grad_w, o, i0);
}

// grad_w (n_out x n_in, row-major) += g . in^T over the tile: in is first
// transposed to (kRows x n_in) so that the inner loop runs along grad_w's rows.
template <typename T>
DGM_INLINE void weight_gradient(const T* g, const T* in, int64_t n_in, int64_t n_out, T* in_t, T* grad_w) {
  constexpr int64_t L = Simd<T>::kLanes;
  // in_t(r) + i = in(i) + r, as blocks of columns r of the rows i of in
  const int64_t blocked = transpose_blocks<T>(
      n_in - n_in % 8, kRows, [&](int64_t i) { return in + i * kRows; }, [&](int64_t r) { return in_t + r * n_in; });
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t i = blocked == kRows ? n_in - n_in % 8 : 0; i < n_in; ++i) in_t[r * n_in + i] = in[i * kRows + r];
  }
  int64_t i0 = 0;
  for (; i0 + 2 * L <= n_in; i0 += 2 * L) weight_gradient_columns<2>(g, in_t, n_in, n_out, grad_w, i0);
  for (; i0 + L <= n_in; i0 += L) weight_gradient_columns<1>(g, in_t, n_in, n_out, grad_w, i0);
  for (int64_t i = i0; i < n_in; ++i) {  // the last n_in % lanes columns
    for (int64_t o = 0; o < n_out; ++o) {
      T sum = 0;
      for (int64_t r = 0; r < kRows; ++r) sum += g[o * kRows + r] * in[i * kRows + r];
      grad_w[o * n_in + i] += sum;
    }
  }
}

// The log-scale passes of one coupling over a tile: x rows are `rows[i]`
// (the tile's feature rows of the coupling's x part), s and t the subnet
// output's two halves (dx rows each); cl[r] = the row's +-sum(l).
template <int S, bool kInverse, typename T>
DGM_INLINE void couple_rows(T* const* rows, const T* st, int64_t dx, T* cl, const cpu::LogScale<S, T>& g) {
  for (int64_t r = 0; r < kRows; ++r) cl[r] = T(0);
  for (int64_t i = 0; i < dx; ++i) {
    T* x = rows[i];
    const T *s = st + i * kRows, *t = st + (dx + i) * kRows;
#pragma GCC ivdep
    for (int64_t r = 0; r < kRows; ++r) {
      const T l = g.value(s[r]);
      x[r] = kInverse ? (x[r] - t[r]) * cpu::m_exp(-l) : x[r] * cpu::m_exp(l) + t[r];
      cl[r] += kInverse ? -l : l;
    }
  }
}

// The gradients of the forward coupling (as affine_coupling_backward_reference):
// gx = gy * e^l (in place of gy), gt = gy, gs = (gy * x * e^l + gL) * g'(s), into gst.
template <int S, typename T>
DGM_INLINE void couple_backward_rows(T* const* gy_rows, const T* x, const T* st, const T* gl, int64_t dx, T* gst,
                                     const cpu::LogScale<S, T>& g) {
  for (int64_t i = 0; i < dx; ++i) {
    T* gy = gy_rows[i];
    const T *xi = x + i * kRows, *s = st + i * kRows;
    T *gs = gst + i * kRows, *gt = gst + (dx + i) * kRows;
#pragma GCC ivdep
    for (int64_t r = 0; r < kRows; ++r) {
      const T l = g.value(s[r]), dl = g.derivative(s[r]), e = cpu::m_exp(l), gyr = gy[r];
      gt[r] = gyr;
      gs[r] = (gyr * xi[r] * e + gl[r]) * dl;
      gy[r] = gyr * e;
    }
  }
}

// The coupling passes for the flow's scale, a run-time code, as compile-time variants.
template <typename T>
DGM_INLINE void couple_any(int64_t scale, double clamp, bool inverse, T* const* rows, const T* st, int64_t dx,
                           T* cl) {
#define DGM_CASE(S)                                                                   \
  case S:                                                                             \
    return inverse ? couple_rows<S, true>(rows, st, dx, cl, cpu::log_scale<S, T>(clamp))   \
                   : couple_rows<S, false>(rows, st, dx, cl, cpu::log_scale<S, T>(clamp));
  switch (scale) { DGM_CASE(cpu::kExp) DGM_CASE(cpu::kAtan) DGM_CASE(cpu::kTanh) DGM_CASE(cpu::kSigmoid) }
#undef DGM_CASE
}

template <typename T>
DGM_INLINE void couple_backward_any(int64_t scale, double clamp, T* const* gy, const T* x, const T* st,
                                    const T* gl, int64_t dx, T* gst) {
#define DGM_CASE(S) \
  case S: return couple_backward_rows<S>(gy, x, st, gl, dx, gst, cpu::log_scale<S, T>(clamp));
  switch (scale) { DGM_CASE(cpu::kExp) DGM_CASE(cpu::kAtan) DGM_CASE(cpu::kTanh) DGM_CASE(cpu::kSigmoid) }
#undef DGM_CASE
}

// Tile <-> row-major matrix columns: tile feature row rows[j] <-> column col0 + j of
// rows [r0, r0 + n) of m (row stride ld). Rows past n are zero in the tile.
template <typename T>
DGM_INLINE void load_tile(const T* m, int64_t ld, int64_t r0, int64_t n, int64_t col0, int64_t width,
                          T* const* rows) {
  const int64_t done = n < kRows ? 0 : transpose_blocks<T>(
      kRows, width, [&](int64_t r) { return m + (r0 + r) * ld + col0; }, [&](int64_t j) { return rows[j]; });
  for (int64_t j = done; j < width; ++j) {
    T* dst = rows[j];
    for (int64_t r = 0; r < n; ++r) dst[r] = m[(r0 + r) * ld + col0 + j];
    for (int64_t r = n; r < kRows; ++r) dst[r] = T(0);
  }
}

template <typename T>
DGM_INLINE void store_tile(T* m, int64_t ld, int64_t r0, int64_t n, int64_t col0, int64_t width,
                           const T* const* rows) {
  const int64_t done = n < kRows ? 0 : transpose_blocks<T>(
      width - width % 8, kRows, [&](int64_t j) { return rows[j]; }, [&](int64_t r) { return m + (r0 + r) * ld + col0; });
  const int64_t j0 = done == kRows ? width - width % 8 : 0;
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t j = j0; j < width; ++j) m[(r0 + r) * ld + col0 + j] = rows[j][r];
  }
}

// Subnet c on its input (already in acts.base): every layer's output.
template <typename T>
DGM_INLINE void subnet_tile(const Flow& f, const Params<T>& p, int64_t c, const Acts<T>& acts) {
  for (int64_t k = 0; k < f.n_layers; ++k) {
    const int64_t n_in = k == 0 ? f.cond_width(c) : f.width(c, k - 1), n_out = f.width(c, k);
    const int64_t l = c * f.n_layers + k;
    product(p.w[l], n_in, int64_t{1}, acts.input(k), n_in, n_out, p.b[l], acts.layer[k]);
    if (k + 1 < f.n_layers) activate_any(acts.layer[k], n_out * kRows, f.activation);
  }
}

// Coupling c of the tile x (feature rows by pos) in the given direction: its
// activations into acts (the subnet input copied in), +-sum(l) added to ld.
template <typename T>
DGM_INLINE void couple_tile(const Flow& f, const Params<T>& p, int64_t c, T* x, const Pos& pos, const Acts<T>& acts,
                            T* ld, bool inverse) {
  const RowPtrs<T> cond(x, pos, f.cond_begin(c), f.cond_width(c));
  for (int64_t j = 0; j < f.cond_width(c); ++j) std::memcpy(acts.base + j * kRows, cond.p[j], kRows * sizeof(T));
  subnet_tile(f, p, c, acts);
  const RowPtrs<T> xr(x, pos, f.x_begin(c), f.x_width(c));
  T cl[kRows];
  couple_any(f.scale, f.clamp, inverse, xr.data(), acts.layer.back(), f.x_width(c), cl);
  for (int64_t r = 0; r < kRows; ++r) ld[r] += cl[r];
}

template <typename T>
void forward_tile(const Call<T>& a, int64_t thread, int64_t r0, int64_t n) {
  const Flow& f = a.f;
  const int64_t dim = f.dim;
  T* x = a.scratch.of(thread);
  T* act_buf = x + dim * kRows;
  Pos pos(dim);
  load_tile(a.in, dim, r0, n, 0, dim, RowPtrs<T>(x, dim).data());
  T ld[kRows] = {};
  for (int64_t step = 0; step < f.n_blocks(); ++step) {
    const int64_t b = a.inverse ? f.n_blocks() - 1 - step : step;
    if (a.inverse) pos.select(a.p.inv[b]);
    if (!a.inverse) store_tile(a.saved + b * a.rows * dim, dim, r0, n, 0, dim, RowPtrs<T>(x, pos, 0, dim).data());
    for (int64_t half : {0, 1}) {
      const int64_t c = 2 * b + (a.inverse ? 1 - half : half);
      const Acts<T> acts(f, c, act_buf);
      couple_tile(f, a.p, c, x, pos, acts, ld, a.inverse);
      if (a.store && !a.inverse) {
        T* m = a.saved + a.layout.acts[c];
        for (const auto& [tile, width] : acts.pieces(f, c)) {
          store_tile(m, width, r0, n, 0, width, RowPtrs<T>(tile, width).data());
          m += a.rows * width;
        }
      }
    }
    if (!a.inverse) pos.select(a.p.perm[b]);
  }
  store_tile(a.out, dim, r0, n, 0, dim, RowPtrs<T>(x, pos, 0, dim).data());
  for (int64_t r = 0; r < n; ++r) a.logdet[r0 + r] = ld[r];
}

// The gradients of one coupling c from those of its outputs: gx into g's x rows
// (in place), its subnet's parameter gradients into grads, its input's gradient
// added to g's condition rows. x0 is the block input, acts the coupling's activations.
template <typename T>
DGM_INLINE void couple_backward_tile(const Call<T>& a, int64_t c, T* g, const Pos& pos, const T* x0, const T* gl,
                                     const Acts<T>& acts, T* ga, T* gb, T* in_t, T* grads) {
  const Flow& f = a.f;
  const int64_t n_w = static_cast<int64_t>(f.weights.size());
  couple_backward_any(f.scale, f.clamp, RowPtrs<T>(g, pos, f.x_begin(c), f.x_width(c)).data(),
                      x0 + f.x_begin(c) * kRows, acts.layer.back(), gl, f.x_width(c), ga);
  T *g_out = ga, *g_in = gb;
  for (int64_t k = f.n_layers - 1; k >= 0; --k) {
    const int64_t l = c * f.n_layers + k, n_out = f.width(c, k);
    const int64_t n_in = k == 0 ? f.cond_width(c) : f.width(c, k - 1);
    activation_backward_any(g_out, acts.layer[k], grads + a.grad_offset[n_w + l], n_out,
                            k + 1 < f.n_layers ? f.activation : kIdentity);
    weight_gradient(g_out, acts.input(k), n_in, n_out, in_t, grads + a.grad_offset[l]);
    product(a.p.w[l], int64_t{1}, n_in, g_out, n_out, n_in, static_cast<const T*>(nullptr), g_in);
    std::swap(g_out, g_in);
  }
  const RowPtrs<T> gc(g, pos, f.cond_begin(c), f.cond_width(c));
  for (int64_t j = 0; j < f.cond_width(c); ++j) {
#pragma GCC ivdep
    for (int64_t r = 0; r < kRows; ++r) gc.p[j][r] += g_out[j * kRows + r];
  }
}

template <typename T>
void backward_tile(const Call<T>& a, int64_t thread, int64_t r0, int64_t n) {
  const Flow& f = a.f;
  const int64_t dim = f.dim, width = f.max_width();
  T* g = a.scratch.of(thread);
  T *x0 = g + dim * kRows, *x = x0 + dim * kRows, *act_buf = x + dim * kRows;
  T* ga = act_buf + (f.max_act_rows(0) + f.max_act_rows(1)) * kRows;
  T *gb = ga + width * kRows, *in_t = gb + width * kRows, *grads = g + a.tile_size;
  Pos pos(dim);  // of the gradient tile g
  load_tile(a.in, dim, r0, n, 0, dim, RowPtrs<T>(g, dim).data());
  T gl[kRows] = {};
  for (int64_t r = 0; r < n; ++r) gl[r] = a.gl[r0 + r];
  for (int64_t b = f.n_blocks() - 1; b >= 0; --b) {
    pos.select(a.p.inv[b]);  // through the permutation
    load_tile(a.saved + b * a.rows * dim, dim, r0, n, 0, dim, RowPtrs<T>(x0, dim).data());
    const Acts<T> acts[2] = {Acts<T>(f, 2 * b, act_buf), Acts<T>(f, 2 * b + 1, act_buf + f.max_act_rows(0) * kRows)};
    if (a.store) {
      for (int64_t half : {0, 1}) {
        const T* m = a.saved + a.layout.acts[2 * b + half];
        for (const auto& [tile, w] : acts[half].pieces(f, 2 * b + half)) {
          load_tile(m, w, r0, n, 0, w, RowPtrs<T>(tile, w).data());
          m += a.rows * w;
        }
      }
    } else {  // recompute the block's activations from its input
      std::memcpy(x, x0, dim * kRows * sizeof(T));
      T unused_ld[kRows] = {};
      const Pos identity(dim);
      for (int64_t half : {0, 1}) couple_tile(f, a.p, 2 * b + half, x, identity, acts[half], unused_ld, false);
    }
    // coupling 1 first; both read their x from the block input (coupling 0 leaves coupling 1's x as it is)
    for (int64_t half : {1, 0}) couple_backward_tile(a, 2 * b + half, g, pos, x0, gl, acts[half], ga, gb, in_t, grads);
  }
  store_tile(a.out, dim, r0, n, 0, dim, RowPtrs<T>(g, pos, 0, dim).data());
}

