"""The Langevin step ops, declared once on the shared scaffolding (dgm_fast/_op.py).

``dgm_fast::langevin_step`` (out of place) and ``dgm_fast::langevin_step_``
(in place) share one kernel per backend, ``langevin_step_{cpu,cuda,triton}(x,
grad, out, *StepArgs-without-seed_tensor)``; ``out`` may be ``x``.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from dgm_fast._op import FusedOp, empty_output
from dgm_fast.langevin.reference import langevin_step_reference

_INF = float("inf")
SCHEMA_ARGS = (
    "Tensor grad, float step_size, float noise_scale, float prior_weight, float grad_clip, "
    "float clamp_lo, float clamp_hi, int seed, int offset, Tensor? seed_tensor"
)


class StepArgs(NamedTuple):
    """The step's scalars in the ops' order: absent bounds are infinite, ``seed`` is int64
    (two's complement), ``seed_tensor`` (0-d int64, drawn for ``seed=None``) overrides ``seed``."""

    step_size: float
    noise_scale: float
    prior_weight: float
    grad_clip: float
    clamp_lo: float
    clamp_hi: float
    seed: int
    offset: int
    seed_tensor: Tensor | None


def _reference(x: Tensor, grad: Tensor, *scalars) -> Tensor:
    a = StepArgs(*scalars)
    clamp = None if (a.clamp_lo, a.clamp_hi) == (-_INF, _INF) else (a.clamp_lo, a.clamp_hi)
    clip = None if a.grad_clip == _INF else a.grad_clip
    return langevin_step_reference(x, grad, a.step_size, a.noise_scale, a.prior_weight, clip, clamp,
                                   a.seed, a.offset, a.seed_tensor)


def step_kernel_scalars(*scalars) -> tuple:
    """StepArgs without ``seed_tensor``, which replaces ``seed`` if given (positions: StepArgs)."""
    *coefs, seed, offset, seed_tensor = scalars
    return (*coefs, seed if seed_tensor is None else int(seed_tensor), offset)


# Autograd. The step is affine in (x, grad): d out/d x = 1 - step/2 * prior_weight
# and d out/d grad = -step/2, masked where the clip or the clamp is active. The
# backward is built from differentiable torch ops, so double backward works and
# a loss on Langevin samples can be trained through the chain (eq. (2.25)).
def _setup_context(ctx, inputs, output):
    x, grad, *scalars = inputs
    a = StepArgs(*scalars[: len(StepArgs._fields)])
    ctx.half_step, ctx.prior_weight = 0.5 * a.step_size, a.prior_weight
    ctx.grad_clip, ctx.clamp = a.grad_clip, (a.clamp_lo, a.clamp_hi)
    ctx.save_for_backward(
        grad if a.grad_clip != _INF else None,
        output if ctx.clamp != (-_INF, _INF) else None,
    )


def _backward(ctx, grad_out):
    grad, out = ctx.saved_tensors
    if out is not None:
        # Inside the clamp range the output passes gradients. At an exact tie
        # (unclamped value == bound) this gives 0, a valid subgradient.
        lo, hi = ctx.clamp
        if lo != -_INF:
            grad_out = grad_out * (out > lo)
        if hi != _INF:
            grad_out = grad_out * (out < hi)
    grad_x = grad_out * (1.0 - ctx.half_step * ctx.prior_weight)
    grad_g = grad_out * -ctx.half_step
    if grad is not None:
        grad_g = grad_g * ((grad >= -ctx.grad_clip) & (grad <= ctx.grad_clip))
    return (grad_x, grad_g) + (None,) * len(StepArgs._fields)


STEP = FusedOp(
    "langevin", "langevin_step", f"(Tensor x, {SCHEMA_ARGS}) -> Tensor",
    reference=_reference, outputs=lambda x, *_: [empty_output(x)], kernel_scalars=step_kernel_scalars,
    setup_context=_setup_context, backward=_backward,
)
STEP_ = FusedOp(
    "langevin", "langevin_step_", f"(Tensor(a!) x, {SCHEMA_ARGS}) -> ()",
    reference=_reference, mutates="x", kernel_name="langevin_step", kernel_scalars=step_kernel_scalars,
)
