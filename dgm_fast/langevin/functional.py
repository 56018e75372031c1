"""Public Langevin / gradient-flow step: argument checks, then the op (dgm_fast/langevin/op.py).

Porting a sampler written as ``x - lr * grad + std * randn_like(x)`` (JEM,
ebm-anatomy and most EBM code): that is ``langevin_step(x, grad,
step_size=2 * lr, noise_scale=std)``. Leaving ``noise_scale`` out gives the
exact Langevin noise ``sqrt(step_size)``, which is ``sqrt(2 * lr) / std``
times larger than such code uses. In your own loop, draw noise from a
``NoiseStream``, which advances the stream offset at every step; a fixed
``seed`` with a fixed ``offset`` reuses the same noise at every step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dgm_fast import _checks
from dgm_fast.langevin.op import STEP, STEP_, StepArgs
from dgm_fast.philox import draw_seed

_INF = math.inf


def step_args(x, grad, step_size, noise_scale, prior_weight, grad_clip, clamp, seed, offset) -> StepArgs:
    """Checked arguments in the ops' form; bad ones raise naming the argument."""
    _checks.dense_tensor("x", x)
    _checks.dense_tensor("grad", grad)
    _checks.like("grad", grad, "x", x)
    step_size = _checks.real("step_size", step_size, low=0.0, low_open=True, finite=True)
    noise_scale = (math.sqrt(step_size) if noise_scale is None
                   else _checks.real("noise_scale", noise_scale, low=0.0, finite=True))
    prior_weight = _checks.real("prior_weight", prior_weight, finite=True)
    grad_clip = _INF if grad_clip is None else _checks.real("grad_clip", grad_clip, low=0.0)
    lo, hi = -_INF, _INF
    if clamp is not None:
        if not isinstance(clamp, (tuple, list)) or len(clamp) != 2:
            raise TypeError(f"clamp must be None or a pair (lo, hi), got {clamp!r}")
        lo, hi = _checks.real("clamp[0]", clamp[0]), _checks.real("clamp[1]", clamp[1])
        if lo > hi:
            raise ValueError(f"clamp must have lo <= hi, got ({lo}, {hi})")
    offset = _checks.integer("offset", offset, low=0, high=1 << 62)
    seed_tensor = None
    if seed is not None:
        seed = _checks.seed(seed)
    elif noise_scale == 0:  # nothing to draw: torch's generator is left as it is
        seed = 0
    elif torch.compiler.is_compiling():  # a tensor: torch.compile and export trace its draw
        seed, seed_tensor = 0, torch.randint(2**62, ())
    else:  # the same draw, as an int: a tensor argument costs eager calls microseconds
        seed = draw_seed()
    return StepArgs(step_size, noise_scale, prior_weight, grad_clip, lo, hi, seed, offset, seed_tensor)


def langevin_step(
    x: Tensor,
    grad: Tensor,
    step_size: float,
    noise_scale: float | None = None,
    *,
    prior_weight: float = 0.0,
    grad_clip: float | None = None,
    clamp: tuple[float, float] | None = None,
    seed: int | None = None,
    offset: int = 0,
) -> Tensor:
    """One fused Langevin step, eq. (2.15):

        x - step_size/2 * (clip(grad, -grad_clip, grad_clip) + prior_weight * x) + noise_scale * xi

    clamped to ``clamp = (lo, hi)`` if given. ``noise_scale=None`` is
    ``sqrt(step_size)`` (exact Langevin); ``noise_scale=0`` is the noise-free
    gradient flow (2.20); ``prior_weight=1`` with ``grad = dE(G(z))/dz`` is the
    latent-space dynamics (3.8) under an N(0, I) prior. ``xi`` is element
    ``offset + i`` (row-major ``i``) of the counter-based stream of ``seed``
    in [0, 2**64) (see dgm_fast.philox); ``seed=None`` draws one from torch's
    default generator (not at all when ``noise_scale=0``). Differentiable in
    ``x`` and ``grad``, twice. The result keeps ``x``'s memory format.

    Code of the form ``x - lr * grad + std * randn_like(x)`` is
    ``langevin_step(x, grad, step_size=2 * lr, noise_scale=std)``; for your
    own loop use ``NoiseStream``, which moves ``offset`` on at each step.
    """
    return STEP(x, grad, *step_args(x, grad, step_size, noise_scale, prior_weight, grad_clip, clamp, seed, offset))


def langevin_step_(
    x: Tensor,
    grad: Tensor,
    step_size: float,
    noise_scale: float | None = None,
    *,
    prior_weight: float = 0.0,
    grad_clip: float | None = None,
    clamp: tuple[float, float] | None = None,
    seed: int | None = None,
    offset: int = 0,
) -> Tensor:
    """In-place ``langevin_step``: writes the step into ``x`` and returns ``x``.

    ``grad`` may be ``x`` itself but must not partially overlap it.
    """
    args = step_args(x, grad, step_size, noise_scale, prior_weight, grad_clip, clamp, seed, offset)
    _checks.writable_without_partial_overlap("x", x, "grad", grad)
    if torch.is_grad_enabled() and (x.requires_grad or grad.requires_grad):
        # the mutating op has no autograd formula: record the write as a copy_
        return x.copy_(STEP(x, grad, *args))
    STEP_(x, grad, *args)
    return x
