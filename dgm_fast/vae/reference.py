"""Plain-PyTorch VAE likelihood terms: the specification of every ``dgm_fast/vae`` backend.

* the 256-way categorical pixel likelihood of the DCGAN VAE (Table 4.6): logits
  ``(B, nc * 256, *spatial)`` with channel ``c * 256 + v`` the logit of value
  ``v`` of image channel ``c``; per sample
  ``-log p(x|z) = sum_pixels logsumexp_v logits - logits[target]``;
* the KL term of the ELBO (2.1) for ``q = N(mu, diag(exp(logvar)))`` against
  ``p(z) = N(0, I)``, and the reparameterisation ``z = mu + exp(logvar / 2) * eps``
  with ``eps`` from the counter-based stream of ``dgm_fast.philox``;
* the importance-weighted bound (2.2), ``logsumexp_k w_k - log K`` with
  ``w = log p(x|z) + log p(z) - log q(z|x)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dgm_fast.philox import normal_at

N_LEVELS = 256
# Each image's noise is its own stretch of the stream (index << ROW_BITS), so an image's
# noise does not depend on which batch or shard it is scored in.
ROW_BITS = 36


def _levels(logits: Tensor, target: Tensor) -> Tensor:
    """``logits`` as (B, nc, 256, pixels)."""
    return logits.reshape(*target.shape[:2], N_LEVELS, math.prod(target.shape[2:]))


def categorical_pixel_nll_reference(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``(nll (B,), lse (B, nc, *spatial))``: the per-sample NLL and the per-pixel logsumexp the
    backward reuses (``softmax = exp(logits - lse)``)."""
    levels = _levels(logits, target)
    lse = torch.logsumexp(levels, dim=2)
    picked = levels.gather(2, target.reshape(lse.shape).unsqueeze(2).long()).squeeze(2)
    return (lse - picked).sum(dim=(1, 2)), lse.reshape(target.shape)


def categorical_pixel_nll_backward_reference(grad_nll: Tensor, grad_lse: Tensor, logits: Tensor, target: Tensor,
                                             lse: Tensor) -> Tensor:
    """The logits' gradient for output gradients ``grad_nll`` (B,) and ``grad_lse`` (lse's shape):
    ``softmax * (grad_nll + grad_lse) - grad_nll * onehot(target)``."""
    levels = _levels(logits, target)
    per_pixel = lambda t: t.reshape(*levels.shape[:2], 1, levels.shape[3])
    soft = torch.exp(levels - per_pixel(lse))
    onehot = torch.zeros_like(soft).scatter_(2, per_pixel(target).long(), 1.0)
    g = grad_nll.reshape(-1, 1, 1, 1)
    # row-major, as autograd through the forward's reshape gives it
    return (soft * (g + per_pixel(grad_lse)) - g * onehot).reshape(logits.shape).contiguous()


def gaussian_kl_reference(mu: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, I))`` per sample (row), the ELBO's KL term (2.1)."""
    return 0.5 * (mu * mu + torch.exp(logvar) - 1.0 - logvar).flatten(1).sum(1)


def latent_noise(shape: tuple[int, ...], seed: int, index: Tensor, draw: int | Tensor, dtype: torch.dtype) -> Tensor:
    """Noise ``(B, *rest)`` for images ``index`` (B,), draw ``draw`` (an int or one per row): element
    ``j`` of image ``i``'s row is stream element ``(i << ROW_BITS) + draw * n + j``, ``n`` = elements
    per row."""
    n = math.prod(shape[1:])
    draw = draw.reshape(-1, 1) if isinstance(draw, Tensor) else draw
    g = (index.reshape(-1, 1) << ROW_BITS) + draw * n + torch.arange(n, device=index.device)
    return normal_at(g, seed, dtype).reshape(shape)


def reparameterize_reference(mu: Tensor, logvar: Tensor, seed: int, index: Tensor, draw: int | Tensor) -> Tensor:
    """``z = mu + exp(logvar / 2) * eps`` with ``eps`` the ``latent_noise`` of images ``index``."""
    eps = latent_noise(tuple(mu.shape), seed, index, draw, torch.float64 if mu.dtype == torch.float64
                       else torch.float32)
    return mu + torch.exp(0.5 * logvar) * eps.to(mu.dtype)


def gaussian_log_prob(z: Tensor, mu: Tensor | None = None, logvar: Tensor | None = None) -> Tensor:
    """``log N(z; mu, diag(exp(logvar)))`` per row (``N(0, I)`` when ``mu`` is None)."""
    if mu is None:
        quad, logdet = z * z, torch.zeros_like(z)
    else:
        quad, logdet = (z - mu) ** 2 * torch.exp(-logvar), logvar
    return -0.5 * (quad + logdet + math.log(2 * math.pi)).flatten(1).sum(1)


def bernoulli_nll_reference(logits: Tensor, target: Tensor) -> Tensor:
    """``-log Bernoulli(target; sigmoid(logits))`` summed per sample (BCE with logits), target in [0, 1]."""
    nll = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return nll.flatten(1).sum(1)


def gaussian_nll_reference(mean: Tensor, target: Tensor, log_scale: float = 0.0) -> Tensor:
    """``-log N(target; mean, exp(2 log_scale))`` summed per sample: the Gaussian decoder of §2.1.3."""
    d = (target - mean).flatten(1)
    return (0.5 * d * d * math.exp(-2 * log_scale)).sum(1) + d.shape[1] * (log_scale + 0.5 * math.log(2 * math.pi))


def iwae_log_likelihood_reference(log_px_z: Tensor, log_pz: Tensor, log_qz_x: Tensor) -> Tensor:
    """``L_K`` (2.2) per sample from (K, B) log-weights' parts: ``logsumexp_k w - log K``."""
    w = log_px_z + log_pz - log_qz_x
    return torch.logsumexp(w, dim=0) - math.log(w.shape[0])
