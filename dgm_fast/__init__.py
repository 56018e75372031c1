"""dgm_fast: fused kernels for the cores of deep generative models.

Ops dispatch on their tensors' device to a compiled backend (C++ on CPU,
Triton or CUDA on GPUs); ``use_backend`` forces one, ``"reference"`` being
the plain-PyTorch specification each backend is tested against.
"""

from dgm_fast.backend import BACKENDS, available_backends, use_backend
from dgm_fast.coupling import affine_coupling
from dgm_fast.ebm import exact_divergence, hutchinson_divergence
from dgm_fast import nn
from dgm_fast.langevin import LangevinSampler, NoiseStream, langevin_step, langevin_step_, sample_langevin
from dgm_fast.warp import grid_sample_3d, keypoint_heatmap_3d, keypoint_warp_3d, sparse_motion_features

__version__ = "0.1.0"
__all__ = [
    "BACKENDS",
    "LangevinSampler",
    "NoiseStream",
    "affine_coupling",
    "available_backends",
    "exact_divergence",
    "grid_sample_3d",
    "hutchinson_divergence",
    "keypoint_heatmap_3d",
    "keypoint_warp_3d",
    "langevin_step",
    "langevin_step_",
    "sample_langevin",
    "sparse_motion_features",
    "nn",
    "use_backend",
]
