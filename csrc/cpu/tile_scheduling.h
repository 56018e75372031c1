// How the fused CPU kernels share out row tiles among threads, and their
// per-thread scratch (coupling_flow.cpp, ebm.cpp).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace dgm_fast {
namespace cpu {

// Per-thread scratch, carved out of one allocation, 64-byte aligned (so each
// piece the callers carve of a multiple of 64 bytes is too).
template <typename T>
struct Scratch {
  at::Tensor buf;
  int64_t per_thread;
  Scratch(int64_t per_thread, int64_t threads)
      : buf(at::empty({per_thread * threads + 64 / static_cast<int64_t>(sizeof(T))},
                      at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value))),
        per_thread(per_thread) {}
  T* of(int64_t thread) const {
    T* base = buf.data_ptr<T>();
    const auto addr = reinterpret_cast<uintptr_t>(base);
    return base + ((64 - addr % 64) % 64) / sizeof(T) + thread * per_thread;
  }
};

// fn(thread, first row, rows) for each tile of `tile_rows` rows.
template <typename Fn>
void over_tiles(int64_t rows, int64_t tile_rows, Fn&& fn) {
  // Each thread takes the next tile until none is left, rather than a fixed share: on a
  // shared machine a thread whose core is busy then takes fewer tiles instead of holding
  // up the call (a static split made 2-thread calls up to 100x slower here).
  const int64_t tiles = (rows + tile_rows - 1) / tile_rows;
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(tiles, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    const int64_t thread = at::get_thread_num();
    for (int64_t t = next++; t < tiles; t = next++) {
      fn(thread, t * tile_rows, std::min(tile_rows, rows - t * tile_rows));
    }
  });
}

}  // namespace cpu
}  // namespace dgm_fast
