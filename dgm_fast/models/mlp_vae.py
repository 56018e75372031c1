"""The MLP VAE of §2.1.8: encoder and decoder of ``depth`` hidden layers of ``hidden`` units (two of
512 in the dissertation), a Bernoulli or Gaussian decoder, the β-weighted negative ELBO (2.1), and
Adam training with the learning rate halved once (§2.1.8: 1e-3, halved after 100 of 200 epochs).

Images of any shape ``(B, *)`` with ``dim`` elements per image in [0, 1] are
flattened to ``(B, dim)``; the decoder returns flat logits (Bernoulli) or means
(Gaussian, fixed scale ``exp(log_scale)``).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from dgm_fast import _checks
from dgm_fast.vae import bernoulli_nll, gaussian_kl, gaussian_nll, reparameterize

LIKELIHOODS = ("bernoulli", "gaussian")


def mlp(widths: tuple[int, ...]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class MLPEncoder(nn.Module):
    """x (B, *) with dim values per image -> (mu, logvar) (B, latent_dim)."""

    def __init__(self, dim: int, latent_dim: int, hidden: int, depth: int):
        super().__init__()
        self.body = mlp((dim, *[hidden] * depth, 2 * latent_dim))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.body(x.flatten(1)).chunk(2, dim=1)
        return mu, logvar


class MLPDecoderModel(nn.Module):
    """What the VAE and VLO (§2.1.7) share: the decoder ``z -> logits/mean`` (B, dim), the
    likelihood ``nll(out, x)`` and the per-sample negative ELBO at a given posterior."""

    def __init__(self, dim: int, latent_dim: int, hidden: int = 512, depth: int = 2,
                 likelihood: str = "bernoulli", *, log_scale: float = 0.0):
        super().__init__()
        self.dim = _checks.integer("dim", dim, low=1)
        self.latent_dim = _checks.integer("latent_dim", latent_dim, low=1)
        self.hidden = _checks.integer("hidden", hidden, low=1)
        self.depth = _checks.integer("depth", depth, low=1)
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        self.likelihood = likelihood
        self.log_scale = _checks.real("log_scale", log_scale, finite=True)
        self.decoder = mlp((latent_dim, *[hidden] * depth, dim))

    def flat(self, x: Tensor, name: str = "x") -> Tensor:
        """Images ``(B, *)`` as ``(B, dim)``."""
        _checks.dense_tensor(name, x)
        if x.dim() < 2 or math.prod(x.shape[1:]) != self.dim:
            raise ValueError(f"{name} must be (batch, ...) with {self.dim} values per image, got shape "
                             f"{tuple(x.shape)}")
        return x.reshape(x.shape[0], self.dim)

    def nll(self, out: Tensor, x: Tensor) -> Tensor:
        """``-log p(x | z)`` per row for decoder output ``out`` (B, dim) and flat images ``x``."""
        if self.likelihood == "bernoulli":
            return bernoulli_nll(out, x)
        return gaussian_nll(out, x, self.log_scale)

    def negative_elbo(self, x: Tensor, mu: Tensor, logvar: Tensor, *, beta: float = 1.0, seed: int = 0,
                      index: Tensor | None = None, draw: int = 0) -> Tensor:
        """``-log p(x | z) + beta KL(q || p)`` per image (2.1), one Philox sample ``z ~ N(mu, exp(logvar))``
        (image ``index[b]``, draw ``draw``); ``x`` flat (B, dim)."""
        z = reparameterize(mu, logvar, seed, index, draw)
        return self.nll(self.decoder(z), x) + beta * gaussian_kl(mu, logvar)


class MLPVAE(MLPDecoderModel):
    """The VAE of §2.1.8: ``encoder(x) -> (mu, logvar)``, ``decoder(z) -> logits/mean``; the encoder
    mirrors the decoder."""

    def __init__(self, dim: int, latent_dim: int, hidden: int = 512, depth: int = 2,
                 likelihood: str = "bernoulli", *, log_scale: float = 0.0):
        super().__init__(dim, latent_dim, hidden, depth, likelihood, log_scale=log_scale)
        self.encoder = MLPEncoder(self.dim, self.latent_dim, self.hidden, self.depth)

    def loss(self, x: Tensor, *, beta: float = 1.0, seed: int = 0, index: Tensor | None = None,
             draw: int = 0) -> Tensor:
        """The negative ELBO (2.1) per image with a ``beta``-weighted KL (β-VAE), one Philox sample."""
        x = self.flat(x)
        mu, logvar = self.encoder(x)
        return self.negative_elbo(x, mu, logvar, beta=beta, seed=seed, index=index, draw=draw)


def check_training(images: Tensor, epochs, batch_size, halve_after, halving_divisor: int) -> tuple[int, int, int]:
    """Validated ``(epochs, batch_size, halve_after)``; ``halve_after`` None is ``epochs // halving_divisor``."""
    if images.shape[0] == 0:
        raise ValueError(f"images must hold at least one image, got shape {tuple(images.shape)}")
    epochs = _checks.integer("epochs", epochs, low=1)
    batch_size = _checks.integer("batch_size", batch_size, low=1)
    halve_after = (epochs // halving_divisor if halve_after is None
                   else _checks.integer("halve_after", halve_after, low=0))
    return epochs, batch_size, halve_after


def batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """One epoch's minibatch indices: a seeded permutation of ``range(n)`` in chunks."""
    return list(torch.randperm(n, generator=generator).split(batch_size))


def train_vae_mlp(model: MLPVAE, images: Tensor, *, epochs: int, batch_size: int = 200, lr: float = 1e-3,
                  halve_after: int | None = None, beta: float = 1.0, seed: int = 0,
                  progress: bool = False) -> list[float]:
    """Fit ``model`` in place by Adam on the batch-mean negative ELBO (§2.1.8: batch size 200, lr 1e-3
    halved once after ``halve_after`` epochs, default ``epochs // 2``). Image ``i``'s noise in epoch
    ``e`` is Philox draw ``e`` of index ``i``. Returns the mean loss of every epoch."""
    x = model.flat(images, "images")
    epochs, batch_size, halve_after = check_training(x, epochs, batch_size, halve_after, 2)
    opt = torch.optim.Adam(model.parameters(), lr=_checks.real("lr", lr, low=0.0, low_open=True, finite=True))
    gen = torch.Generator().manual_seed(_checks.integer("seed", seed, low=0, high=2**64))
    history = []
    for epoch in tqdm(range(epochs), desc="VAE", leave=False, disable=not progress):
        if epoch == halve_after:
            for group in opt.param_groups:
                group["lr"] /= 2
        total = 0.0
        for idx in batches(x.shape[0], batch_size, gen):
            loss = model.loss(x[idx], beta=beta, seed=seed, index=idx, draw=epoch).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        history.append(total / x.shape[0])
    return history
