"""dgm_fast: fused kernels for the cores of deep generative models.

Ops dispatch on their tensors' device to a compiled backend (C++ on CPU,
Triton or CUDA on GPUs); ``use_backend`` forces one, ``"reference"`` being
the plain-PyTorch specification each backend is tested against.
"""

from dgm_fast import nn
from dgm_fast.backend import BACKENDS, available_backends, use_backend
from dgm_fast.coupling import affine_coupling
from dgm_fast.ebm import exact_divergence, hutchinson_divergence
from dgm_fast.langevin import (
    LangevinSampler,
    NoiseStream,
    langevin_step,
    langevin_step_,
    sample_langevin,
)
from dgm_fast.vae import (
    categorical_pixel_nll,
    gaussian_kl,
    importance_weighted_nll,
    iwae_log_likelihood,
    optimize_encoder,
    optimize_posterior,
    reparameterize,
)
from dgm_fast.warp import (
    grid_sample_3d,
    keypoint_heatmap_3d,
    keypoint_warp_3d,
    sparse_motion_features,
)

__version__ = "0.1.0"
__all__ = [
    "BACKENDS",
    "LangevinSampler",
    "NoiseStream",
    "affine_coupling",
    "available_backends",
    "categorical_pixel_nll",
    "exact_divergence",
    "gaussian_kl",
    "grid_sample_3d",
    "hutchinson_divergence",
    "importance_weighted_nll",
    "iwae_log_likelihood",
    "keypoint_heatmap_3d",
    "keypoint_warp_3d",
    "langevin_step",
    "langevin_step_",
    "nn",
    "optimize_encoder",
    "optimize_posterior",
    "reparameterize",
    "sample_langevin",
    "sparse_motion_features",
    "use_backend",
]
