"""VAE likelihoods and per-image latent optimisation (§2.1, §4.2): the fused 256-way categorical
pixel likelihood, the KL term and Philox reparameterisation, the importance-weighted bound (2.2)
in bounded memory, and the batched optimization trick (2.5) / Likelihood Regret refits (4.3)."""

from dgm_fast.vae.deconv import categorical_pixel_nll_deconv
from dgm_fast.vae.functional import (
    bernoulli_nll,
    categorical_pixel_nll,
    gaussian_kl,
    gaussian_nll,
    iwae_log_likelihood,
    reparameterize,
)
from dgm_fast.vae.likelihood import IWAEAccumulator, importance_weighted_nll
from dgm_fast.vae.optimize import (
    categorical_target,
    decoded_nll,
    frozen,
    optimize_encoder,
    optimize_posterior,
)

__all__ = ["IWAEAccumulator", "bernoulli_nll", "categorical_pixel_nll", "categorical_pixel_nll_deconv", "categorical_target", "decoded_nll",
           "frozen", "gaussian_kl", "gaussian_nll", "importance_weighted_nll", "iwae_log_likelihood",
           "optimize_encoder", "optimize_posterior", "reparameterize"]
