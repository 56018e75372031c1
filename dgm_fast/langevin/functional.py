"""Public Langevin / gradient-flow step: argument checks, then the chosen backend."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from dgm_fast import backend as _backend
from dgm_fast.langevin.op import (
    langevin_step_inplace_kernel,
    langevin_step_inplace_op,
    langevin_step_kernel,
    langevin_step_op,
)
from dgm_fast.langevin.reference import langevin_step_reference

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INF = float("inf")


def _real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    return value


def _integer(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def check_tensors(x, grad) -> None:
    """x and grad: floating tensors of one shape, dtype and device."""
    for name, t in (("x", x), ("grad", grad)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must have a floating dtype {FLOAT_DTYPES}, got {t.dtype}")
    if grad.shape != x.shape:
        raise ValueError(f"grad must have the shape of x {tuple(x.shape)}, got {tuple(grad.shape)}")
    if grad.dtype != x.dtype:
        raise TypeError(f"grad must have the dtype of x ({x.dtype}), got {grad.dtype}")
    if grad.device != x.device:
        raise ValueError(f"grad must be on the device of x ({x.device}), got {grad.device}")


def draw_seed() -> int:
    """A seed from torch's default generator, so torch.manual_seed makes runs repeat."""
    return int(torch.randint(0, 2**62, (), dtype=torch.int64).item())


def normalize_args(step_size, noise_scale, prior_weight, grad_clip, clamp, seed, offset) -> tuple:
    """Checked scalar arguments in the op's form: (step, noise, prior, clip, lo, hi, seed, offset)."""
    step_size = _real("step_size", step_size)
    if not 0.0 < step_size < _INF:
        raise ValueError(f"step_size must be finite and > 0, got {step_size}")
    noise_scale = math.sqrt(step_size) if noise_scale is None else _real("noise_scale", noise_scale)
    if not 0.0 <= noise_scale < _INF:
        raise ValueError(f"noise_scale must be finite and >= 0, got {noise_scale}")
    prior_weight = _real("prior_weight", prior_weight)
    if not math.isfinite(prior_weight):
        raise ValueError(f"prior_weight must be finite, got {prior_weight}")
    grad_clip = _INF if grad_clip is None else _real("grad_clip", grad_clip)
    if grad_clip < 0:
        raise ValueError(f"grad_clip must be >= 0 or None, got {grad_clip}")
    lo, hi = -_INF, _INF
    if clamp is not None:
        if not isinstance(clamp, (tuple, list)) or len(clamp) != 2:
            raise TypeError(f"clamp must be None or a pair (lo, hi), got {clamp!r}")
        lo, hi = _real("clamp[0]", clamp[0]), _real("clamp[1]", clamp[1])
        if lo > hi:
            raise ValueError(f"clamp must have lo <= hi, got ({lo}, {hi})")
    seed = draw_seed() if seed is None else _integer("seed", seed) % (1 << 64)
    offset = _integer("offset", offset)
    if not 0 <= offset < 1 << 62:
        raise ValueError(f"offset must be in [0, 2**62), got {offset}")
    # the op's int is int64: carry the 64-bit seed as its two's complement
    signed_seed = seed - (1 << 64) if seed >= 1 << 63 else seed
    return step_size, noise_scale, prior_weight, grad_clip, lo, hi, signed_seed, offset


def _needs_autograd(x: Tensor, grad: Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or grad.requires_grad)


def _prepare(x, grad, step_size, noise_scale, prior_weight, grad_clip, clamp, seed, offset) -> tuple[tuple, str]:
    """Checked arguments in the op's form, and the backend to run."""
    check_tensors(x, grad)
    args = normalize_args(step_size, noise_scale, prior_weight, grad_clip, clamp, seed, offset)
    return args, _backend.resolve(x.device)


def _out_of_place(x: Tensor, grad: Tensor, args: tuple, name: str) -> Tensor:
    if name != "reference":
        if torch.compiler.is_compiling() or _needs_autograd(x, grad):
            return langevin_step_op(x, grad, *args, name)
        # plain eager call: the same kernel without the dispatcher's ~20 us
        return langevin_step_kernel(x, grad, *args, name)
    step, noise, prior, clip, lo, hi, seed, offset = args
    clamp = None if (lo, hi) == (-_INF, _INF) else (lo, hi)
    clip = None if clip == _INF else clip
    return langevin_step_reference(x, grad, step, noise, prior, clip, clamp, seed % (1 << 64), offset)


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
    (see dgm_fast.philox); ``seed=None`` draws one from torch's default
    generator. Differentiable in ``x`` and ``grad``, twice.
    """
    args, name = _prepare(x, grad, step_size, noise_scale, prior_weight, grad_clip, clamp, seed, offset)
    return _out_of_place(x, grad, args, name)


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
    """In-place ``langevin_step``: writes the step into ``x`` and returns ``x``."""
    args, name = _prepare(x, grad, step_size, noise_scale, prior_weight, grad_clip, clamp, seed, offset)
    if name == "reference" or _needs_autograd(x, grad):
        # the mutating kernel has no autograd formula: record the write as a copy_
        return x.copy_(_out_of_place(x, grad, args, name))
    # as in _out_of_place: the dispatcher only where torch.compile traces
    inplace = langevin_step_inplace_op if torch.compiler.is_compiling() else langevin_step_inplace_kernel
    inplace(x, grad, *args, name)
    return x
