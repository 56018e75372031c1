"""Plain-PyTorch Langevin step: the specification of every ``langevin_step`` backend.

Implements, in the input's compute precision (float32 for 16-bit inputs),

    out = clamp(x - eta/2 * (clip(grad) + prior_weight * x) + noise_scale * xi, lo, hi)

evaluated, as in every backend, as ``x * (1 - eta/2 * prior_weight) - eta/2 *
clip(grad) + noise_scale * xi``: the two coefficients are also the step's
derivatives, and an infinite ``x`` with ``prior_weight = 0`` stays infinite.

This is the Euler step (2.15) of the Langevin SDE (2.14); with ``noise_scale = 0``
the gradient flow (2.20), and with ``prior_weight = 1`` the latent-space
dynamics (3.8) under an N(0, I) prior, whose ``-grad log p(z)`` is ``z``.
"""

from __future__ import annotations

import torch

from dgm_fast.philox import normal_noise


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Arithmetic precision of the step: float64 stays, everything else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rounded(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded to ``dtype`` (beyond its range: +-inf), as the kernels round their bounds."""
    return float(torch.tensor(value, dtype=torch.float64).to(dtype))


def langevin_step_reference(
    x: torch.Tensor,
    grad: torch.Tensor,
    step_size: float,
    noise_scale: float,
    prior_weight: float = 0.0,
    grad_clip: float | None = None,
    clamp: tuple[float, float] | None = None,
    seed: int = 0,
    offset: int = 0,
    seed_tensor: torch.Tensor | None = None,
) -> torch.Tensor:
    """``seed_tensor`` (a 0-d int64 tensor), if given, is the seed instead of ``seed``."""
    acc = compute_dtype(x.dtype)
    xa, ga = x.to(acc), grad.to(acc)
    if grad_clip is not None:
        clip = _rounded(grad_clip, acc)
        ga = ga.clamp(-clip, clip)
    half_step = 0.5 * step_size
    out = xa * (1.0 - half_step * prior_weight) - half_step * ga
    if noise_scale:
        xi = normal_noise(x.numel(), seed, offset, dtype=acc, device=x.device, seed_tensor=seed_tensor)
        out = out + noise_scale * xi.view(x.shape)
    if clamp is not None:
        out = out.clamp(*(_rounded(bound, acc) for bound in clamp))
    return out.to(x.dtype)
