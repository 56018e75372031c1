// What every op's C++ dispatcher kernel shares: output allocation (poisoned
// with NaN under the tests, dgm_fast._op.poison_outputs) and the noise seed.
#pragma once

#include <ATen/ATen.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include <atomic>
#include <limits>
#include <optional>

namespace dgm_fast {

inline std::atomic<bool> g_poison_outputs{false};

inline at::Tensor poisoned(at::Tensor out) {
  if (g_poison_outputs.load(std::memory_order_relaxed) && out.is_floating_point()) {
    out.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  return out;
}

// A new output laid out like `like` (its memory format, or `format`).
inline at::Tensor empty_output(const at::Tensor& like,
                               at::MemoryFormat format = at::MemoryFormat::Preserve) {
  return poisoned(at::empty_like(like, format));
}

// A new output of `n` elements (e.g. one value per batch row).
inline at::Tensor empty_output(int64_t n, const at::TensorOptions& options) {
  return poisoned(at::empty({n}, options));
}

// Where a kernel writes `out`: out itself if contiguous, else a contiguous
// buffer that write_back copies into out (the kernels index row-major).
inline at::Tensor contiguous_buffer(const at::Tensor& out) {
  return out.is_contiguous() ? out : empty_output(out, at::MemoryFormat::Contiguous);
}

inline void write_back(at::Tensor& out, const at::Tensor& buf) {
  if (!buf.is_same(out)) out.copy_(buf);
}

// The seed of a noise op: `seed_tensor` (drawn from torch's generator for
// seed=None, so that torch.compile can trace the draw) overrides `seed`.
inline uint64_t noise_seed(int64_t seed, const std::optional<at::Tensor>& seed_tensor) {
  return static_cast<uint64_t>(seed_tensor.has_value() ? seed_tensor->item<int64_t>() : seed);
}

// ADInplaceOrView kernel of every mutating op, as torch's own in-place ops
// have: bump the version counters of the arguments the schema marks as
// written (so autograd sees that a saved tensor changed, and inference tensors
// refuse the write outside inference mode), then run the op below this key.
inline void bump_written_versions(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                                  torch::jit::Stack* stack) {
  const auto& args = op.schema().arguments();
  const size_t first = stack->size() - args.size();
  for (size_t i = 0; i < args.size(); ++i) {
    const c10::AliasInfo* alias = args[i].alias_info();
    const c10::IValue& value = (*stack)[first + i];
    if (alias != nullptr && alias->isWrite() && value.isTensor()) {
      torch::autograd::impl::bump_version(value.toTensor());
    }
  }
  const at::AutoDispatchBelowADInplaceOrView guard;
  op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
}

}  // namespace dgm_fast
