"""torch.library registration of the fused Langevin step, with its autograd.

Arguments arrive validated and normalised by ``dgm_fast.langevin.functional``:
bounds that are absent are infinite, ``seed`` is a signed int64 (the
two's-complement form of a seed in [0, 2**64)), ``backend`` is concrete.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from dgm_fast import _extension

# Tests set DGM_FAST_POISON=1 so outputs start as NaN: a kernel that skips an
# element then fails loudly. Off by default, as the fill is a full extra pass.
POISON = os.environ.get("DGM_FAST_POISON") == "1"

_STEP_ARGS = "step_size noise_scale prior_weight grad_clip clamp_lo clamp_hi seed offset".split()


def _launch(backend: str, x: Tensor, grad: Tensor, out: Tensor, args: tuple) -> None:
    """Run backend ``backend``'s kernel on contiguous tensors; ``out`` may be ``x``."""
    if backend == "triton":
        from dgm_fast.kernels.langevin import langevin_step_triton

        kw = dict(zip(_STEP_ARGS, args))
        kw["seed"] %= 1 << 64
        langevin_step_triton(x, grad, out, **kw)
    elif backend == "cpu":
        _extension._C.langevin_step_cpu(x, grad, out, *args)
    elif backend == "cuda":
        _extension._C.langevin_step_cuda(x, grad, out, *args)
    else:
        raise ValueError(f"langevin_step: no kernel for backend {backend!r}")


def langevin_step_kernel(
    x: Tensor, grad: Tensor, step_size: float, noise_scale: float, prior_weight: float,
    grad_clip: float, clamp_lo: float, clamp_hi: float, seed: int, offset: int, backend: str,
) -> Tensor:
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if POISON:
        out.fill_(float("nan"))
    args = (step_size, noise_scale, prior_weight, grad_clip, clamp_lo, clamp_hi, seed, offset)
    _launch(backend, x.contiguous(), grad.contiguous(), out, args)
    return out


langevin_step_op = torch.library.custom_op("dgm_fast::langevin_step", langevin_step_kernel, mutates_args=())


@langevin_step_op.register_fake
def _(x, grad, step_size, noise_scale, prior_weight, grad_clip, clamp_lo, clamp_hi, seed, offset, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def langevin_step_inplace_kernel(
    x: Tensor, grad: Tensor, step_size: float, noise_scale: float, prior_weight: float,
    grad_clip: float, clamp_lo: float, clamp_hi: float, seed: int, offset: int, backend: str,
) -> None:
    args = (step_size, noise_scale, prior_weight, grad_clip, clamp_lo, clamp_hi, seed, offset)
    if x.is_contiguous():
        _launch(backend, x, grad.contiguous(), x, args)
    else:  # the stream follows the logical (row-major) index, so work on a contiguous copy
        out = x.contiguous()
        _launch(backend, out, grad.contiguous(), out, args)
        x.copy_(out)


langevin_step_inplace_op = torch.library.custom_op(
    "dgm_fast::langevin_step_", langevin_step_inplace_kernel, mutates_args=("x",)
)


@langevin_step_inplace_op.register_fake
def _(x, grad, step_size, noise_scale, prior_weight, grad_clip, clamp_lo, clamp_hi, seed, offset, backend):
    return None


# Autograd. The step is affine in (x, grad): d out/d x = 1 - step/2 * prior_weight
# and d out/d grad = -step/2, masked where the clip or the clamp is active. The
# backward is built from differentiable torch ops, so double backward works and
# a loss on Langevin samples can be trained through the chain (eq. (2.25)).
def _setup_context(ctx, inputs, output):
    x, grad, step_size, _, prior_weight, grad_clip, clamp_lo, clamp_hi, *_ = inputs
    ctx.half_step, ctx.prior_weight = 0.5 * step_size, prior_weight
    ctx.grad_clip, ctx.clamp = grad_clip, (clamp_lo, clamp_hi)
    ctx.save_for_backward(
        grad if grad_clip != float("inf") else None,
        output if (clamp_lo, clamp_hi) != (float("-inf"), float("inf")) else None,
    )


def _backward(ctx, grad_out):
    grad, out = ctx.saved_tensors
    if out is not None:
        # Inside the clamp range the output passes gradients. At an exact tie
        # (unclamped value == bound) this gives 0, a valid subgradient.
        lo, hi = ctx.clamp
        if lo != float("-inf"):
            grad_out = grad_out * (out > lo)
        if hi != float("inf"):
            grad_out = grad_out * (out < hi)
    grad_x = grad_out * (1.0 - ctx.half_step * ctx.prior_weight)
    grad_g = grad_out * -ctx.half_step
    if grad is not None:
        grad_g = grad_g * ((grad >= -ctx.grad_clip) & (grad <= ctx.grad_clip))
    return (grad_x, grad_g) + (None,) * 9


langevin_step_op.register_autograd(_backward, setup_context=_setup_context)
