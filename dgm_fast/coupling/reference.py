"""Plain-PyTorch reference of the affine coupling ops: their specification.

An affine coupling layer (dissertation §2.2.3) keeps ``z1`` and maps the
other part ``x2`` with a scale and shift computed from ``z1`` by any network:

    forward  y2 = x2 * exp(l) + t,       logdet =  sum(l)
    inverse  y2 = (x2 - t) * exp(-l),    logdet = -sum(l)

with ``l = g(s)`` and the sum over every non-batch dimension (one value per
row: log|det dy/dx| of the layer, eq. (2.7)'s change of variables). ``g``
bounds the log-scale so that training cannot blow up:

    "exp"      g(s) = s
    "atan"     g(s) = clamp * (2/pi) * atan(s / clamp)    (FrEIA's soft clamp, used by GLF)
    "tanh"     g(s) = clamp * tanh(s / clamp)
    "sigmoid"  g(s) = log(sigmoid(s + 2))                 (Glow)

float16 / bfloat16 inputs are computed in float32 and rounded once at the end.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

SCALES = ("exp", "atan", "tanh", "sigmoid")
TWO_OVER_PI = 2.0 / math.pi


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def log_scale(s: Tensor, scale: str, clamp: float) -> Tensor:
    """``l = g(s)``, evaluated as the kernels evaluate it (same order of operations)."""
    if scale == "exp":
        return s
    if scale == "atan":
        return (clamp * TWO_OVER_PI) * torch.atan(s / clamp)
    if scale == "tanh":
        return clamp * torch.tanh(s / clamp)
    if scale == "sigmoid":
        return F.logsigmoid(s + 2.0)
    raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")


def log_scale_derivative(s: Tensor, scale: str, clamp: float) -> Tensor:
    """``g'(s)``."""
    if scale == "exp":
        return torch.ones_like(s)
    if scale == "atan":
        q = s / clamp
        return TWO_OVER_PI / (1.0 + q * q)
    if scale == "tanh":
        th = torch.tanh(s / clamp)
        return 1.0 - th * th
    if scale == "sigmoid":
        return torch.sigmoid(-(s + 2.0))
    raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")


def _rows(v: Tensor) -> Tensor:
    """Per-row sum over every non-batch dimension: a new dense tensor, also for 1-D ``v`` (never an
    alias of ``s``, which may be expanded), as the kernels' outputs."""
    return v.reshape(v.shape[0], math.prod(v.shape[1:])).sum(dim=1)


def _per_row(g: Tensor, like: Tensor) -> Tensor:
    """A per-row value shaped to broadcast against ``like``."""
    return g.reshape(g.shape[0], *([1] * (like.dim() - 1)))


def affine_coupling_reference(x2: Tensor, s: Tensor, t: Tensor, scale: str = "exp", clamp: float = 2.0,
                              inverse: bool = False) -> tuple[Tensor, Tensor]:
    """``(y2, logdet)`` of the module docstring; ``logdet`` has shape ``(batch,)``."""
    dtype = x2.dtype
    x2, s, t = (v.to(compute_dtype(dtype)) for v in (x2, s, t))
    log_s = log_scale(s, scale, clamp)
    if inverse:
        y2, logdet = (x2 - t) * torch.exp(-log_s), -_rows(log_s)
    else:
        y2, logdet = x2 * torch.exp(log_s) + t, _rows(log_s)
    return y2.to(dtype), logdet.to(dtype)


def affine_coupling_backward_reference(
    grad_y2: Tensor, grad_logdet: Tensor, x2: Tensor, s: Tensor, t: Tensor, scale: str = "exp",
    clamp: float = 2.0, inverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients ``(grad_x2, grad_s, grad_t)`` of ``affine_coupling`` (differentiable again):

    forward:  dx2 = gy * e^l,   dt = gy,          ds = (gy * x2 * e^l + gL) * g'(s)
    inverse:  dx2 = gy * e^-l,  dt = -gy * e^-l,  ds = -(gy * (x2 - t) * e^-l + gL) * g'(s)
    """
    dtype = x2.dtype
    grad_y2, grad_logdet, x2, s, t = (v.to(compute_dtype(dtype)) for v in (grad_y2, grad_logdet, x2, s, t))
    log_s, dlog_s = log_scale(s, scale, clamp), log_scale_derivative(s, scale, clamp)
    g_log = _per_row(grad_logdet, x2)
    if inverse:
        e = torch.exp(-log_s)
        grad_x2 = grad_y2 * e
        grad_t = -grad_x2
        grad_s = -(grad_y2 * (x2 - t) * e + g_log) * dlog_s  # autograd's order: no overflow of (x2 - t) * e
    else:
        e = torch.exp(log_s)
        grad_x2 = grad_y2 * e
        grad_t = grad_y2
        grad_s = (grad_y2 * x2 * e + g_log) * dlog_s
    return grad_x2.to(dtype), grad_s.to(dtype), grad_t.to(dtype)


ACTIVATIONS = {"relu": F.relu, "leaky_relu": F.leaky_relu, "tanh": torch.tanh, "elu": F.elu}


def coupling_flow_reference(z: Tensor, weights: list[Tensor], biases: list[Tensor], perms: list[Tensor],
                            scale: str, clamp: float, activation: str, inverse: bool,
                            store_activations: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """A whole ``CouplingFlow`` (§3.2, Figure 3.1(b)) from its parameters: ``(out, logdet, saved)``.

    Block ``b`` maps ``z = (z1, z2)`` (split at ``dim // 2``) by coupling ``2b``
    (``z2`` from ``z1``), then coupling ``2b + 1`` (``z1`` from the new
    ``z2``), then permutes columns by ``perms[b]``. Coupling ``c``'s subnet is
    ``Linear -> act -> ... -> Linear`` with layers ``weights[c * L + k]``,
    ``biases[c * L + k]``; its output holds ``s`` then ``t``. ``inverse`` runs
    the blocks backwards. ``saved`` is what the fused backward reads: for the
    forward direction the blocks' inputs, then (``store_activations``) for
    each coupling its subnet's input and every layer's output, all flattened
    and concatenated; empty for the inverse.
    """
    n_layers = len(weights) // (2 * len(perms))
    split = z.shape[1] // 2
    saved, activations = [], []

    def coupling(c: int, cond: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        h = cond
        activations.append(cond)
        for k in range(n_layers):
            h = F.linear(h, weights[c * n_layers + k], biases[c * n_layers + k])
            h = ACTIVATIONS[activation](h) if k + 1 < n_layers else h
            activations.append(h)
        s, t = h.chunk(2, dim=1)
        return affine_coupling_reference(x, s, t, scale, clamp, inverse)

    logdet = z.new_zeros(z.shape[0])
    blocks = range(len(perms))
    for b in reversed(blocks) if inverse else blocks:
        if inverse:
            z = z[:, torch.argsort(perms[b])]
        else:
            saved.append(z)
        z1, z2 = z[:, :split], z[:, split:]
        if inverse:
            z1, ld1 = coupling(2 * b + 1, z2, z1)
            z2, ld2 = coupling(2 * b, z1, z2)
        else:
            z2, ld2 = coupling(2 * b, z1, z2)
            z1, ld1 = coupling(2 * b + 1, z2, z1)
        z = torch.cat([z1, z2], dim=1)
        if not inverse:
            z = z[:, perms[b]]
        logdet = logdet + ld2 + ld1
    if store_activations and not inverse:
        saved += activations
    # saved holds intermediate values, not a function to differentiate: like the op's, it is detached
    return z, logdet, torch.cat([v.detach().reshape(-1) for v in saved]) if saved else z.new_empty(0)
