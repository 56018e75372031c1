#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace dgm_fast {

// The 256-way categorical pixel likelihood of the DCGAN VAE (Table 4.6; spec:
// dgm_fast/vae/reference.py). logits: contiguous float32/float64 (B, nc * 256,
// *spatial), channel c * 256 + v the logit of value v of image channel c;
// target: contiguous int64 (B, nc, *spatial). A target outside [0, 255] is
// never read through: that sample's nll is NaN (and, in the backward, that
// pixel's 256 gradients). Outputs contiguous, allocated by the caller.

// nll (B,) = sum over (c, pixels) of logsumexp_v logits - logits[target];
// lse (B, nc, *spatial) the per-pixel logsumexp (torch.logsumexp's infinities and NaN).
void categorical_pixel_nll_cpu(const at::Tensor& logits, const at::Tensor& target, at::Tensor& nll,
                               at::Tensor& lse);

// grad_logits (logits' shape) = exp(logits - lse) * (grad_nll[b] + grad_lse[b, c, p])
//                               - grad_nll[b] * onehot(target).
void categorical_pixel_nll_backward_cpu(const at::Tensor& grad_nll, const at::Tensor& grad_lse,
                                        const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                                        at::Tensor& grad_logits);

// The block kernels' instruction set ("avx2" or "portable"); tests force the portable build.
const char* vae_isa();
void set_vae_portable(bool on);

}  // namespace dgm_fast
