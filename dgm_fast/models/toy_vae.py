"""A small VAE for 2-D toy data: the base generator G(z) that the latent EBM of §3.3.4 boosts (Figure 3.9).

The dissertation's toy decoder "maps a 2d input to a 2d output and has 4
fully connected layers with 256 hidden dimensions and leaky ReLU"; the
encoder mirrors it and returns the Gaussian posterior's mean and log-variance.
The decoder is Gaussian with a fixed standard deviation ``sigma``, and a
sample is its mean ``G(z)``, ``z ~ N(0, I)``: the deterministic map of §3.3.3.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from dgm_fast import _checks


def _mlp(widths: tuple[int, ...], negative_slope: float) -> nn.Sequential:
    """Linear layers with leaky ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.LeakyReLU(negative_slope)]
    return nn.Sequential(*layers[:-1])


class ToyVAE(nn.Module):
    """``encode(x) -> (mu, logvar)``, ``decode(z) -> x``; ``depth`` hidden layers of ``hidden`` units each way
    (``ToyVAE()`` is the dissertation's 4-layer, 256-unit decoder)."""

    def __init__(self, dim: int = 2, latent_dim: int = 2, hidden: int = 256, depth: int = 3, *,
                 sigma: float = 0.1, negative_slope: float = 0.2):
        super().__init__()
        self.dim = _checks.integer("dim", dim, low=1)
        self.latent_dim = _checks.integer("latent_dim", latent_dim, low=1)
        hidden, depth = _checks.integer("hidden", hidden, low=1), _checks.integer("depth", depth, low=1)
        self.sigma = _checks.real("sigma", sigma, low=0.0, low_open=True, finite=True)
        self.encoder = _mlp((dim, *[hidden] * depth, 2 * latent_dim), negative_slope)
        self.decoder = _mlp((latent_dim, *[hidden] * depth, dim), negative_slope)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def loss(self, x: Tensor) -> Tensor:
        """The negative ELBO per sample, batch mean, up to a constant: ``||x - G(z)||^2 / (2 sigma^2)`` at one
        reparameterized ``z ~ q(z|x)``, plus ``KL(q(z|x) || N(0, I))``."""
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        recon = (x - self.decode(z)).square().sum(1) / (2 * self.sigma**2)
        kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(1)
        return (recon + kl).mean()

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """``G(z)`` for ``n`` draws of ``z ~ N(0, I)`` from torch's generator."""
        return self.decode(torch.randn(n, self.latent_dim))


def train_toy_vae(vae: ToyVAE, sample_data: Callable[[int], Tensor], *, n_iters: int, batch_size: int = 256,
                  lr: float = 1e-3, desc: str = "VAE", progress: bool = True) -> list[float]:
    """Fit ``vae`` in place with Adam on fresh batches of ``sample_data``; returns the per-step losses."""
    n_iters = _checks.integer("n_iters", n_iters, low=1)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    losses = []
    for _ in tqdm(range(n_iters), desc=desc, leave=False, disable=not progress):
        loss = vae.loss(sample_data(batch_size))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
