"""Plain-PyTorch MLP energy, its input gradient, its Hessian trace and its whole Langevin chain:
the specification of every ``dgm_fast/ebm`` backend.

The energy is ``E(x) = w_L . a_{L-1} + b_L`` with ``a_l = act(h_l)``, ``h_l =
W_l a_{l-1} + b_l`` and ``a_0 = x`` (weights in ``nn.Linear``'s (out, in)
layout, the last one (1, width)). Its input gradient is the backward pass
written out, ``grad = W_1^T (act'(h_1) * W_2^T (act'(h_2) * ... w_L))``, in
differentiable torch ops, so autograd can differentiate it again (the
generator loss (2.25) trains through it). For the instantaneous change of
variables (2.19) of the gradient flow ``x' = -grad E`` (2.16), the Laplacian
``tr grad^2 E(x)``: since only the activations are curved,

    grad^2 E = sum_l J_l^T diag(dE/da_l * act''(h_l)) J_l,   J_l = dh_l/dx,

so ``tr grad^2 E = sum_l sum_j dE/da_lj * act''(h_lj) * |row j of J_l|^2``,
with ``J_1 = W_1`` and ``J_l = W_l diag(act'(h_{l-1})) J_{l-1}`` carried
forward (d times the forward's work: cheap for the small d of the toys).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dgm_fast.langevin.reference import langevin_step_reference
from dgm_fast.langevin.stream import stream_stride

ACTIVATIONS = ("swish", "leaky_relu", "relu", "softplus")


def activation(h: Tensor, name: str, negative_slope: float) -> Tensor:
    if name == "swish":
        return F.silu(h)
    if name == "leaky_relu":
        return F.leaky_relu(h, negative_slope)
    if name == "relu":
        return F.relu(h)
    return F.softplus(h)


def activation_derivatives(h: Tensor, name: str, negative_slope: float) -> tuple[Tensor, Tensor]:
    """``act'(h)`` and ``act''(h)``, as torch's own backward formulas give them (relu' = [h > 0],
    leaky_relu' = slope at h <= 0, softplus linear above h = 20)."""
    if name == "swish":
        s = torch.sigmoid(h)
        return s * (1 + h * (1 - s)), s * (1 - s) * (2 + h * (1 - 2 * s))
    one, zero = torch.ones_like(h), torch.zeros_like(h)
    if name in ("leaky_relu", "relu"):  # (python scalars in torch.where would be float32)
        return torch.where(h > 0, one, one * (negative_slope if name == "leaky_relu" else 0.0)), zero
    s = torch.sigmoid(h)
    linear = h > 20
    return torch.where(linear, one, s), torch.where(linear, zero, s * (1 - s))


def mlp_energy_reference(x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor],
                         act: str = "swish", negative_slope: float = 0.2) -> Tensor:
    """``E(x)`` for every row of ``x`` (batch, dim): shape (batch,)."""
    return _forward(x, weights, biases, act, negative_slope)[1]


def _forward(x, weights, biases, act, negative_slope):
    """The hidden layers' pre-activations, and the energy."""
    pre, a = [], x
    for w, b in zip(weights[:-1], biases[:-1]):
        pre.append(F.linear(a, w, b))
        a = activation(pre[-1], act, negative_slope)
    return pre, F.linear(a, weights[-1], biases[-1]).squeeze(-1)


def mlp_energy_grad_reference(x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor],
                              act: str = "swish", negative_slope: float = 0.2) -> tuple[Tensor, Tensor]:
    """``(E(x), dE/dx)``: the forward, then the backward to ``x`` written out."""
    pre, energy = _forward(x, weights, biases, act, negative_slope)
    g = weights[-1].repeat(x.shape[0], 1)  # dE/da_{L-1}
    for l in range(len(pre) - 1, -1, -1):
        g = (g * activation_derivatives(pre[l], act, negative_slope)[0]) @ weights[l]
    return energy, g


def mlp_energy_laplacian_reference(x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor],
                                   act: str = "swish", negative_slope: float = 0.2) -> tuple[Tensor, Tensor]:
    """``(dE/dx, tr d^2E/dx^2)`` by the formula of the module docstring."""
    pre, _ = _forward(x, weights, biases, act, negative_slope)
    first, second = zip(*(activation_derivatives(h, act, negative_slope) for h in pre)) if pre else ((), ())
    # backward: dE/da_l for every hidden layer, then dE/dx
    g, da = weights[-1].repeat(x.shape[0], 1), [None] * len(pre)
    for l in range(len(pre) - 1, -1, -1):
        da[l] = g
        g = (g * first[l]) @ weights[l]
    # forward: J_l as (batch, width_l, d), and each layer's share of the trace
    trace = x.new_zeros(x.shape[0])
    jac = weights[0].expand(x.shape[0], -1, -1) if pre else None
    for l in range(len(pre)):
        if l > 0:
            jac = weights[l] @ (first[l - 1].unsqueeze(-1) * jac)
        trace = trace + (da[l] * second[l] * jac.square().sum(-1)).sum(-1)
    return g, trace


def mlp_energy_sample_reference(x0: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], act: str,
                                negative_slope: float, n_steps: int, step_size: float, noise_scale: float,
                                prior_weight: float, grad_clip: float | None, clamp: tuple[float, float] | None,
                                seed: int, offset: int = 0, seed_tensor: Tensor | None = None) -> Tensor:
    """``n_steps`` Langevin steps (2.15) on the MLP energy, step ``k`` drawing its noise at stream offset
    ``offset + k * stream_stride(x0.numel())``: what ``sample_langevin`` with a ``NoiseStream(seed)`` does.
    A new row-major tensor, as every output of the ebm ops."""
    x, stride = x0.clone(memory_format=torch.contiguous_format), stream_stride(x0.numel())
    for k in range(n_steps):
        _, g = mlp_energy_grad_reference(x, weights, biases, act, negative_slope)
        x = langevin_step_reference(x, g, step_size, noise_scale, prior_weight, grad_clip, clamp,
                                    seed, offset + k * stride, seed_tensor)
    return x
