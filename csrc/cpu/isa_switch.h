// Which build of a family's tile kernels runs: the AVX2 + FMA one where the CPU
// has both, else (or while tests force it, to check what other CPUs run) the
// portable one. One switch per family (coupling_flow.cpp, ebm.cpp).
#pragma once

#include <atomic>

namespace dgm_fast::cpu {

class IsaSwitch {
 public:
  bool avx2() const {
#if defined(__x86_64__)
    static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return yes && !force_portable_.load(std::memory_order_relaxed);
#else
    return false;
#endif
  }
  void force_portable(bool on) { force_portable_.store(on, std::memory_order_relaxed); }
  const char* name() const { return avx2() ? "avx2" : "portable"; }

 private:
  std::atomic<bool> force_portable_{false};
};

}  // namespace dgm_fast::cpu
