"""The importance-weighted log-likelihood (2.2) with K samples in chunks, in bounded memory."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from dgm_fast import _checks
from dgm_fast.vae.functional import reparameterize
from dgm_fast.vae.reference import gaussian_log_prob


class IWAEAccumulator:
    """A running ``logsumexp_k w_k`` per sample over chunks of importance weights (K_chunk, B), so
    ``L_K = log_mean_exp`` (2.2) needs one chunk in memory at a time, for any K."""

    def __init__(self):
        self.max: Tensor | None = None
        self.sum: Tensor | None = None
        self.count = 0

    def add(self, log_w: Tensor) -> None:
        """Fold in a chunk of log-weights (K_chunk, B)."""
        chunk_max = log_w.max(dim=0).values
        if self.max is None:
            self.max, self.sum = chunk_max, torch.zeros_like(chunk_max)
        new_max = torch.maximum(self.max, chunk_max)
        finite = torch.isfinite(new_max)  # all -inf so far: nothing to rescale
        shift = torch.where(finite, new_max, torch.zeros_like(new_max))
        self.sum = self.sum * torch.exp(self.max - shift).nan_to_num(0.0) + \
            torch.exp(log_w - shift).sum(dim=0)
        self.max = new_max
        self.count += log_w.shape[0]

    def log_mean_exp(self) -> Tensor:
        """``logsumexp_k w_k - log K`` over everything added."""
        if self.max is None:
            raise ValueError("IWAEAccumulator: no log-weights were added")
        finite = torch.isfinite(self.max)
        shift = torch.where(finite, self.max, torch.zeros_like(self.max))
        out = torch.log(self.sum) + shift - math.log(self.count)
        return torch.where(finite, out, self.max)


def importance_weighted_nll(
    decoded_nll: Callable[[Tensor, Tensor], Tensor],
    mu: Tensor,
    logvar: Tensor,
    n_samples: int = 1000,
    *,
    chunk: int = 200,
    seed: int = 0,
    index: Tensor | None = None,
    draw: int = 0,
) -> Tensor:
    """``-L_K`` (2.2) per image for the posterior ``N(mu, diag(exp(logvar)))`` (B, nz).

    ``decoded_nll(z, rows)`` returns ``-log p(x_rows | z)`` for latents ``z`` (n, nz) of images
    ``rows`` (n,) (positions in the batch). Sample ``k`` of image ``i`` is
    ``reparameterize(..., index[i], draw + k)``, ``chunk`` samples per image at a time (so
    ``chunk * B`` decodes per call), reduced by ``IWAEAccumulator``: memory is one chunk's,
    whatever ``n_samples``.
    """
    n_samples = _checks.integer("n_samples", n_samples, low=1)
    chunk = _checks.integer("chunk", chunk, low=1)
    batch, nz = mu.shape[0], mu.shape[1:]
    if index is None:
        index = torch.arange(batch, device=mu.device)
    rows = torch.arange(batch, device=mu.device)
    acc = IWAEAccumulator()
    with torch.no_grad():
        for k0 in range(0, n_samples, chunk):
            k = min(chunk, n_samples - k0)
            # k samples of every image, sample-major: row j * B + i is draw draw + k0 + j of image i
            mu_k, logvar_k = (t.repeat(k, *[1] * len(nz)) for t in (mu, logvar))
            draws = (draw + k0 + torch.arange(k, device=mu.device)).repeat_interleave(batch)
            z = reparameterize(mu_k, logvar_k, seed, index.repeat(k), draws)
            log_px = -decoded_nll(z, rows.repeat(k)).reshape(k, batch)
            log_pz = gaussian_log_prob(z).reshape(k, batch)
            log_qz = gaussian_log_prob(z, mu_k, logvar_k).reshape(k, batch)
            acc.add(log_px + log_pz - log_qz)
    return -acc.log_mean_exp()
