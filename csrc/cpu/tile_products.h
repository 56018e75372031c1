// Register-blocked products on feature-major tiles (feature f's kRows values
// contiguous), shared by the fused flow (coupling_flow.cpp) and the fused MLP
// energy (ebm.cpp). Included inside a namespace compiled per instruction set
// (under `#pragma GCC target("avx2,fma")` and portable), after that file's
// `kRows`: no include guard, and no includes of its own.

template <typename T>
struct Simd {
  typedef T V __attribute__((vector_size(32)));
  static constexpr int kLanes = 32 / sizeof(T);
  static constexpr int kNv = 2;        // vectors of rows per product block
  static constexpr int kJ = 6;         // outputs per product block: 12 accumulators
  static constexpr int64_t kSub = kNv * kLanes;  // rows per product block
  static DGM_INLINE V load(const T* p) { return *reinterpret_cast<const V*>(p); }
  static DGM_INLINE void store(T* p, V v) { *reinterpret_cast<V*>(p) = v; }
  static DGM_INLINE V load_unaligned(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static DGM_INLINE void store_unaligned(T* p, V v) { std::memcpy(p, &v, sizeof v); }
  static DGM_INLINE V splat(T x) {  // one broadcast (V{} + x costs an add, a lane loop inserts)
    if constexpr (kLanes == 8) {
      return V{x, x, x, x, x, x, x, x};
    } else {
      return V{x, x, x, x};
    }
  }
};

// --- tile kernels: feature-major blocks of kRows values per feature ---------------------------

// out[o] (J outputs from o0, one block of kSub rows at column r) = bias[o] (or 0) + sum_i w(o, i) * in[i],
// w(o, i) = w[o * so + i * si].
template <int J, typename T>
DGM_INLINE void product_block(const T* w, int64_t so, int64_t si, const T* in, int64_t n_in, const T* bias, T* out,
                              int64_t o0, int64_t r) {
  using S = Simd<T>;
  typename S::V acc[J][S::kNv];
  for (int j = 0; j < J; ++j) {
    for (int v = 0; v < S::kNv; ++v) {
      acc[j][v] = S::splat(bias ? bias[o0 + j] : T(0));
    }
  }
  const T* wo = w + o0 * so;
  for (int64_t i = 0; i < n_in; ++i) {
    typename S::V x[S::kNv];
    for (int v = 0; v < S::kNv; ++v) x[v] = S::load(in + i * kRows + r + v * S::kLanes);
    for (int j = 0; j < J; ++j) {
      const typename S::V c = S::splat(wo[j * so + i * si]);
      for (int v = 0; v < S::kNv; ++v) acc[j][v] += c * x[v];
    }
  }
  for (int j = 0; j < J; ++j) {
    for (int v = 0; v < S::kNv; ++v) S::store(out + (o0 + j) * kRows + r + v * S::kLanes, acc[j][v]);
  }
}

// out (n_out x kRows) = W . in (+ bias); see product_block for w's strides.
template <typename T>
DGM_INLINE void product(const T* w, int64_t so, int64_t si, const T* in, int64_t n_in, int64_t n_out,
                        const T* bias, T* out) {
  using S = Simd<T>;
  int64_t o = 0;
  for (; o + S::kJ <= n_out; o += S::kJ) {
    for (int64_t r = 0; r < kRows; r += S::kSub) product_block<S::kJ>(w, so, si, in, n_in, bias, out, o, r);
  }
  for (; o + 4 <= n_out; o += 4) {  // e.g. 64 = 10 * 6 + 4
    for (int64_t r = 0; r < kRows; r += S::kSub) product_block<4>(w, so, si, in, n_in, bias, out, o, r);
  }
  for (; o < n_out; ++o) {
    for (int64_t r = 0; r < kRows; r += S::kSub) product_block<1>(w, so, si, in, n_in, bias, out, o, r);
  }
}

