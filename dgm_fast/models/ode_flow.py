"""The noise-free sampling dynamics of an energy as a continuous flow (§2.4.4).

Samples solve the gradient-descent ODE (2.16) from N(0, I) latents (2.17);
log-densities solve it backwards, carrying the instantaneous change of
variables (2.18) to get (2.19). Both use torchdiffeq, by default with the
appendix's Dormand-Prince solver, T = 0.2 and tolerance 1e-5 (§2.4.7).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn
from torchdiffeq import odeint
from torchdiffeq._impl.odeint import SOLVERS  # torchdiffeq lists its methods under no public name

from dgm_fast import _checks
from dgm_fast.ebm import MLPEnergy, exact_divergence, hutchinson_divergence
from dgm_fast.langevin.sampler import _energy_grad
from dgm_fast.philox import draw_seed

TRACES = ("auto", "fused", "exact", "hutchinson")
DTYPES = frozenset((torch.float32, torch.float64))
# x -> (dx/dt, tr d^2E/dx^2) per row: the augmented dynamics of (2.16) and (2.18)
Field = Callable[[Tensor], tuple[Tensor, Tensor]]


class ODEFlow(nn.Module):
    """The generator ``G^T`` (2.17) of an energy ``E: (batch, d) -> (batch,)``, and its density (2.19).

    ``trace`` says how ``tr d^2E/dx^2`` is found: ``"fused"``, an
    ``MLPEnergy``'s one-pass ``laplacian``; ``"exact"``, autograd's gradient
    and then ``d`` backward passes (``exact_divergence``); ``"hutchinson"``,
    ``n_probes`` probes of ``hutchinson_divergence`` from ``seed``, the same
    probes at every step of a solve (as FFJORD does); ``"auto"``, ``"fused"``
    for an ``MLPEnergy`` and ``"exact"`` otherwise. ``method``, ``rtol``,
    ``atol`` and ``options`` go to ``torchdiffeq.odeint``.
    """

    def __init__(self, energy: Callable[[Tensor], Tensor], t1: float = 0.2, *, method: str = "dopri5",
                 rtol: float = 1e-5, atol: float = 1e-5, options: dict | None = None, trace: str = "auto",
                 n_probes: int = 1, seed: int | None = None):
        super().__init__()
        if not callable(energy):
            raise TypeError(f"energy must be callable, got {type(energy).__name__}")
        if not isinstance(method, str):
            raise TypeError(f"method must be a str, got {type(method).__name__}")
        if method not in SOLVERS:
            raise ValueError(f"method must be one of {sorted(SOLVERS)}, got {method!r}")
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"options must be a dict or None, got {type(options).__name__}")
        if trace not in TRACES:
            raise ValueError(f"trace must be one of {TRACES}, got {trace!r}")
        fused = isinstance(energy, MLPEnergy)
        if trace == "fused" and not fused:
            raise ValueError(f"trace='fused' needs an MLPEnergy, got energy of type {type(energy).__name__}")
        self.energy, self.method, self.options = energy, method, options
        self.trace = ("fused" if fused else "exact") if trace == "auto" else trace
        self.t1 = _checks.real("t1", t1, low=0.0, low_open=True, finite=True)
        self.rtol = _checks.real("rtol", rtol, low=0.0, low_open=True, finite=True)
        self.atol = _checks.real("atol", atol, low=0.0, low_open=True, finite=True)
        self.n_probes = _checks.integer("n_probes", n_probes, low=1)
        self.seed = None if seed is None else _checks.integer("seed", seed, low=0, high=_checks.SEED_RANGE)

    @torch.no_grad()
    def sample(self, x0: Tensor) -> Tensor:
        """``x(T)`` of (2.16) started at ``x0`` (batch, d), e.g. N(0, I) latents; inference, no graph kept."""
        x0 = self._check("x0", x0)
        return self._odeint(lambda x: -self._grad(x), x0, 0.0, self.t1)[-1]

    @torch.no_grad()
    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` per row by (2.19); inference, no graph kept.

        (2.16) runs backwards from ``x`` at T to its latent ``x0`` at 0 with
        ``l' = tr d^2E/dx^2`` (2.18) from ``l(T) = 0`` beside it, so ``l(0) =
        -int_0^T tr d^2E/dx^2 dt`` and ``log p(x) = log N(x0; 0, I) - l(0)``.
        """
        x = self._check("x", x)
        field = self._field()
        xs, ls = self._odeint(lambda s: field(s[0]), (x, x.new_zeros(x.shape[0])), self.t1, 0.0)
        return -0.5 * (xs[-1].square().sum(-1) + x.shape[1] * math.log(2 * math.pi)) - ls[-1]

    def _check(self, name: str, x: Tensor) -> Tensor:
        _checks.dense_tensor(name, x, DTYPES)
        if x.dim() != 2:
            raise ValueError(f"{name} must be a (batch, dim) matrix, got shape {tuple(x.shape)}")
        if isinstance(self.energy, MLPEnergy) and x.shape[1] != self.energy.dim:
            raise ValueError(f"{name} must have the energy's {self.energy.dim} columns, got {x.shape[1]}")
        return x

    def _odeint(self, func, state, t0: float, t1: float):
        """``state' = func(state)`` (a tensor or a tuple of them) solved from ``t0`` to ``t1``: the states at both."""
        x = state[0] if isinstance(state, tuple) else state
        if x.numel() == 0:  # nothing moves, and torchdiffeq's step control would shrink its step to 0
            return tuple(s.expand(2, *s.shape) for s in state) if isinstance(state, tuple) else x.expand(2, *x.shape)
        return odeint(lambda _, s: func(s), state, x.new_tensor([t0, t1]), rtol=self.rtol, atol=self.atol,
                      method=self.method, options=self.options)

    def _grad(self, x: Tensor) -> Tensor:
        """``dE/dx``, the negative velocity of (2.16)."""
        if self.trace == "fused":
            return self.energy.grad(x)
        with torch.enable_grad():
            return _energy_grad(self.energy, x.detach().requires_grad_(), create_graph=False)

    def _field(self) -> Field:
        """``x -> (-dE/dx, tr d^2E/dx^2)``: the velocity (2.16) and the log-density's rate (2.18)."""
        if self.trace == "fused":
            return self._fused_field
        divergence = exact_divergence if self.trace == "exact" else partial(
            hutchinson_divergence, n_probes=self.n_probes, seed=draw_seed() if self.seed is None else self.seed)

        def field(x: Tensor) -> tuple[Tensor, Tensor]:
            grads = []

            def grad(x: Tensor) -> Tensor:  # kept, so each step takes one gradient for both terms
                grads.append(_energy_grad(self.energy, x, create_graph=True))
                return grads[-1]

            laplacian = divergence(grad, x)
            return -grads[0].detach(), laplacian

        return field

    def _fused_field(self, x: Tensor) -> tuple[Tensor, Tensor]:
        grad, laplacian = self.energy.laplacian(x)
        return -grad, laplacian

    def extra_repr(self) -> str:
        return f"t1={self.t1}, method={self.method!r}, rtol={self.rtol}, atol={self.atol}, trace={self.trace!r}"


def baseline_log_prob(energy: Callable[[Tensor], Tensor], x: Tensor, t1: float = 0.2, **solver) -> Tensor:
    """``log p(x)`` (2.19) as one writes it without dgm_fast: torchdiffeq with autograd's gradient and its
    exact trace by ``d`` backward passes (``ODEFlow(..., trace="exact")``), the yardstick of the fused path."""
    return ODEFlow(energy, t1, trace="exact", **solver).log_prob(x)
