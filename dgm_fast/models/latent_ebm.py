"""The latent EBM booster of §3.3: an energy that tilts the N(0, I) prior of a frozen generator G.

``p(z) exp(-E(G(z))) / Z`` (3.6) is the exponential tilting (3.4) of the
generator's distribution, written on its latents. It is trained by maximum
likelihood (3.5) / (3.7): positives are data, negatives ``G(z)`` with ``z``
drawn by the latent Langevin dynamics (3.8), whose N(0, I) prior enters as
``prior_weight=1``. With an ``encoder`` the energy acts on the latents
themselves, ``p(z) exp(-E(z)) / Z``: (3.4) applied to the prior, fitted to
the encoded data; its chains are then one fused ``MLPEnergy.sample`` call.
Either way only the energy trains; G stays as it was (§3.3.3).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dgm_fast import _checks
from dgm_fast.langevin.sampler import sample_langevin
from dgm_fast.models.ebm import Dynamics, TrainConfig, fit_energy, prior_sample
from dgm_fast.nn import MLPEnergy

# appendix 3.3.6: epsilon = 0.01 with the balanced noise sqrt(epsilon), 60 steps in training and a
# longer chain, 100 steps, for the final samples
TRAIN_CHAIN = Dynamics(n_steps=60, step_size=0.01, noise_scale=None)
SAMPLE_CHAIN = Dynamics(n_steps=100, step_size=0.01, noise_scale=None)


class LatentEBM(nn.Module):
    """A frozen ``decoder`` G: (n, latent_dim) -> data and a trainable ``energy``, on the data (3.6) or,
    given ``encoder`` (data -> latents), on the latents."""

    def __init__(self, decoder: Callable[[Tensor], Tensor], energy: MLPEnergy, latent_dim: int, *,
                 encoder: Callable[[Tensor], Tensor] | None = None):
        super().__init__()
        if not callable(decoder) or (encoder is not None and not callable(encoder)):
            raise TypeError("decoder and encoder must be callables")
        if not isinstance(energy, MLPEnergy):
            raise TypeError(f"energy must be an MLPEnergy, got {type(energy).__name__}")
        self.latent_dim = _checks.integer("latent_dim", latent_dim, low=1)
        if encoder is not None and energy.dim != self.latent_dim:
            raise ValueError(f"an energy on the latents must take latent_dim = {self.latent_dim} inputs, "
                             f"got {energy.dim}")
        self.decoder, self.energy, self.encoder = decoder, energy, encoder

    def latent_energy(self, z: Tensor) -> Tensor:
        """``E(G(z))`` (3.6), or ``E(z)`` for an energy on the latents."""
        return self.energy(z if self.encoder is not None else self.decoder(z))

    def positives(self, x: Tensor) -> Tensor:
        """What the energy sees of data ``x``: ``x`` itself, or its latents."""
        if self.encoder is None:
            return x
        with torch.no_grad():
            return self.encoder(x)

    def sample_latents(self, z0: Tensor, chain: Dynamics = SAMPLE_CHAIN, *, seed: int | None = None) -> Tensor:
        """The Langevin chain (3.8) on ``E(G(z)) - log N(z; 0, I)`` from ``z0`` (detached)."""
        if self.encoder is not None:
            return chain.run(self.energy, z0, prior_weight=1.0, seed=seed)
        return sample_langevin(self.latent_energy, z0, chain.n_steps, chain.step_size, chain.noise_scale,
                               prior_weight=1.0, seed=seed)

    def negatives(self, n: int, chain: Dynamics = TRAIN_CHAIN) -> Tensor:
        """What the energy sees of ``n`` model samples: ``G(z)`` or ``z``, ``z`` by (3.8) from N(0, I)."""
        z = self.sample_latents(prior_sample(n, self.latent_dim, self.energy), chain)
        if self.encoder is not None:
            return z
        with torch.no_grad():
            return self.decoder(z)

    @torch.no_grad()
    def sample(self, n: int, chain: Dynamics = SAMPLE_CHAIN) -> Tensor:
        """``n`` boosted samples ``G(z)``, ``z ~ p(z) exp(-E) / Z`` by (3.8) from N(0, I)."""
        return self.decoder(self.sample_latents(prior_sample(n, self.latent_dim, self.energy), chain))


def train_latent_ebm(model: LatentEBM, sample_data: Callable[[int], Tensor], config: TrainConfig,
                     chain: Dynamics = TRAIN_CHAIN, *, desc: str = "latent EBM",
                     progress: bool = True) -> list[float]:
    """Fit ``model.energy`` in place by (3.5) / (3.7) with short-run, non-persistent chains (3.8) from N(0, I)
    (§3.3.4); returns the per-step losses. The appendix's energy regulariser is ``config.energy_reg = 0.1``."""
    if config.generator_loss:
        raise ValueError("config.generator_loss must be False: the latent chain (3.8) is noisy, not a generator")
    return fit_energy(model.energy, lambda n: model.positives(sample_data(n)), lambda n: model.negatives(n, chain),
                      config, desc=desc, progress=progress)
