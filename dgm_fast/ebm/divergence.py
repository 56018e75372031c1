"""Divergence of a vector field ``f: (batch, d) -> (batch, d)``, per row: the trace term of the
instantaneous change of variables (2.19), ``d log p(x_t)/dt = -div f(x_t)``.

For an MLP energy's gradient field the exact trace is one fused pass
(``MLPEnergy.laplacian``); these are for any other ``f``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from dgm_fast import _checks
from dgm_fast.philox import draw_seed, normal_noise


def _field(f: Callable[[Tensor], Tensor], x: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    _checks.dense_tensor("x", x)
    if x.dim() != 2:
        raise ValueError(f"x must be a (batch, dim) matrix, got shape {tuple(x.shape)}")
    x = x if create_graph and x.requires_grad else x.detach().requires_grad_()
    y = f(x)
    if not isinstance(y, Tensor) or y.shape != x.shape:
        raise ValueError(f"f must return a tensor of x's shape {tuple(x.shape)}, got "
                         f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}")
    return x, y


def exact_divergence(f: Callable[[Tensor], Tensor], x: Tensor, *, create_graph: bool = False) -> Tensor:
    """``tr df/dx`` per row, exactly, by ``d`` backward passes (for the small ``d`` of 2-D toys and latents).

    Rows must be independent (``f`` acts on each row alone, as a vector field does).
    """
    with torch.enable_grad():
        x, y = _field(f, x, create_graph)
        div = x.new_zeros(x.shape[0])
        for i in range(x.shape[1]):
            (g,) = torch.autograd.grad(y[:, i].sum(), x, retain_graph=True, create_graph=create_graph)
            div = div + g[:, i]
    return div


def hutchinson_divergence(f: Callable[[Tensor], Tensor], x: Tensor, n_probes: int = 1, *,
                          distribution: str = "rademacher", seed: int | None = None, offset: int = 0,
                          create_graph: bool = False) -> Tensor:
    """Hutchinson's unbiased estimate ``mean_k v_k^T (df/dx) v_k`` per row, one backward pass per probe.

    The probes come from the counter-based stream of ``seed`` (``dgm_fast.philox``)
    at ``offset``: probe ``k`` is stream elements ``offset + k * numel`` onwards,
    normal or (``distribution="rademacher"``) their signs, so an estimate is
    reproducible on every device, and fixed across an ODE solve as FFJORD does.
    """
    n_probes = _checks.integer("n_probes", n_probes, low=1)
    if distribution not in ("rademacher", "gaussian"):
        raise ValueError(f"distribution must be 'rademacher' or 'gaussian', got {distribution!r}")
    seed = draw_seed() if seed is None else _checks.integer("seed", seed, low=0, high=1 << 64)
    offset = _checks.integer("offset", offset, low=0, high=1 << 62)
    with torch.enable_grad():
        x, y = _field(f, x, create_graph)
        total = x.new_zeros(x.shape[0])
        for k in range(n_probes):
            v = _probe(seed, offset + k * x.numel(), x.shape, x.dtype, x.device, distribution)
            (vjp,) = torch.autograd.grad(y, x, v, retain_graph=True, create_graph=create_graph)
            total = total + (vjp * v).sum(-1)
    return total / n_probes


@functools.lru_cache(maxsize=16)
def _probe(seed: int, offset: int, shape: torch.Size, dtype: torch.dtype, device: torch.device,
           distribution: str) -> Tensor:
    """One probe, kept: an ODE solve asks for the same probes at every evaluation (FFJORD's fixed noise),
    and drawing them afresh costs more than the vector-Jacobian product here."""
    v = normal_noise(shape.numel(), seed, offset, dtype=dtype, device=device).view(shape)
    return torch.where(v >= 0, 1.0, -1.0).to(dtype) if distribution == "rademacher" else v
