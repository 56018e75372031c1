// The categorical pixel likelihood's pixel tiles (vae.cpp). Included inside a
// namespace compiled per instruction set (under `#pragma GCC target("avx2,fma")`
// and portable), after vae.cpp's Problem, kLevels, kTile, kChunk and the
// elementary functions: no include guard, and no includes of its own.
//
// Level v of pixel p of image channel (b, c) is logits[((b * nc + c) * 256 + v) * P + p]:
// the 256 levels of a pixel are P elements apart, the pixels of a level
// contiguous. So a work item is a tile of up to kTile contiguous pixels over
// all 256 level rows, and the loops run across the tile's pixels (they vectorize),
// row after row: every row of the tile is one contiguous run of memory.

// Forward of work items [i0, i0 + n) (item i: image channel i / blocks, pixel
// tile i % blocks of kTile pixels): lse, and each item's partial sum of
// lse - logits[target]. The level rows are read in order, each row's tile a
// contiguous run, in chunks of kChunk rows: the chunk's max (from memory),
// then the running sum rescaled to the new max and the chunk's exp(x - max)
// added (the chunk, kChunk * kTile values, is back from L2), so each element
// costs one exp, plus one a pixel per chunk for the rescaling. The picked logit
// is taken on the way (no read through the target). Infinities: the max of
// +-inf is taken as 0 (torch.logsumexp: all -inf gives -inf, any +inf +inf); a
// running max of -inf rescales by 0 (its sum is 0, or NaN, which stays NaN);
// NaN is never the max and flows through exp into the sum.
template <typename T>
void forward_items(const Problem<T>& pr, int64_t i0, int64_t n, double* partial) {
  constexpr T kInf = std::numeric_limits<T>::infinity();
  const int64_t P = pr.pixels;
  alignas(64) T m[kTile], mc[kTile], shift[kTile], s[kTile], picked[kTile], tv[kTile];
  for (int64_t i = i0; i < i0 + n; ++i) {
    const int64_t bc = i / pr.blocks, p0 = (i % pr.blocks) * kTile;
    const int64_t cnt = std::min<int64_t>(kTile, P - p0);
    const int64_t pix = bc * P + p0;
    const T* __restrict__ src = pr.logits + bc * kLevels * P + p0;
    for (int64_t j = 0; j < cnt; ++j) {
      const int64_t t = pr.target[pix + j];
      m[j] = mc[j] = -kInf;
      s[j] = picked[j] = T(0);
      tv[j] = static_cast<uint64_t>(t) < static_cast<uint64_t>(kLevels) ? static_cast<T>(t) : T(-1);
    }
    for (int64_t v0 = 0; v0 < kLevels; v0 += kChunk) {
      for (int64_t v = v0; v < v0 + kChunk; v += 4) {  // the chunk's max, from the running max
        const T* __restrict__ r = src + v * P;
        for (int64_t j = 0; j < cnt; ++j) {
          const T a = pick(r[P + j] > r[j], r[P + j], r[j]);
          const T b = pick(r[3 * P + j] > r[2 * P + j], r[3 * P + j], r[2 * P + j]);
          const T x = pick(b > a, b, a);
          mc[j] = pick(x > mc[j], x, mc[j]);
        }
      }
      for (int64_t j = 0; j < cnt; ++j) {
        const T old_shift = pick(abs_t(m[j]) == kInf, T(0), m[j]);
        shift[j] = pick(abs_t(mc[j]) == kInf, T(0), mc[j]);
        s[j] *= pick(m[j] == -kInf, T(0), exp_t(old_shift - shift[j]));  // 1 exactly if the max stayed
        m[j] = mc[j];
      }
      for (int64_t v = v0; v < v0 + kChunk; ++v) {
        const T* __restrict__ r = src + v * P;
        const T level = static_cast<T>(v);
        for (int64_t j = 0; j < cnt; ++j) {
          s[j] += exp_t(r[j] - shift[j]);
          picked[j] = pick(tv[j] == level, r[j], picked[j]);
        }
      }
    }
    T* lse_out = pr.lse + pix;
    double sum = 0.0;
    for (int64_t j = 0; j < cnt; ++j) {
      const T lse = shift[j] + std::log(s[j]);  // one log per 256 exps: libm
      lse_out[j] = lse;
      // a target outside [0, 255] was never read: NaN
      sum += static_cast<double>(tv[j] >= T(0) ? lse - picked[j] : std::numeric_limits<T>::quiet_NaN());
    }
    partial[i] = sum;
  }
}

// Backward of work items [i0, i0 + n) (item i: image channel i / blocks, pixel
// tile i % blocks): grad = exp(x - lse) * (g + grad_lse) - g * onehot(target),
// level row by level row, each row's kTile pixels a contiguous run read and
// written once. A target outside [0, 255] makes its pixel's column NaN.
template <typename T>
void backward_items(const Problem<T>& pr, int64_t i0, int64_t n) {
  const int64_t P = pr.pixels;
  alignas(64) T sh[kTile], c[kTile], tv[kTile];
  for (int64_t i = i0; i < i0 + n; ++i) {
    const int64_t bc = i / pr.blocks, p0 = (i % pr.blocks) * kTile;
    const int64_t cnt = std::min<int64_t>(kTile, P - p0);
    const int64_t pix = bc * P + p0;
    const T g = pr.grad_nll[bc / pr.channels];
    for (int64_t j = 0; j < cnt; ++j) {
      const int64_t t = pr.target[pix + j];
      const bool valid = static_cast<uint64_t>(t) < static_cast<uint64_t>(kLevels);
      sh[j] = pr.lse_in[pix + j];
      c[j] = valid ? g + pr.grad_lse[pix + j] : std::numeric_limits<T>::quiet_NaN();
      tv[j] = valid ? static_cast<T>(t) : T(-1);
    }
    const T* __restrict__ src = pr.logits + bc * kLevels * P + p0;
    T* __restrict__ dst = pr.grad_logits + bc * kLevels * P + p0;
    for (int64_t v = 0; v < kLevels; ++v) {
      const T* __restrict__ r = src + v * P;
      T* __restrict__ o = dst + v * P;
      const T level = static_cast<T>(v);
      for (int64_t j = 0; j < cnt; ++j) {
        o[j] = exp_t(r[j] - sh[j]) * c[j] - g * pick(tv[j] == level, T(1), T(0));
      }
    }
  }
}
