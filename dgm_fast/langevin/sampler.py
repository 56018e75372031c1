"""Whole Langevin / gradient-flow chains on an energy function, eqs. (2.15), (2.20), (3.8)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dgm_fast import _checks
from dgm_fast.langevin.functional import step_args
from dgm_fast.langevin.stream import NoiseStream


def _energy_grad(energy: Callable[[Tensor], Tensor], x: Tensor, create_graph: bool) -> Tensor:
    e = energy(x)
    if not isinstance(e, Tensor) or not e.dtype.is_floating_point:
        raise TypeError(f"energy must return a floating tensor, got {type(e).__name__}")
    (g,) = torch.autograd.grad(e.sum(), x, create_graph=create_graph)
    return g


def _check_chain(energy, x0, n_steps, step_size, noise_scale, prior_weight, grad_clip, clamp) -> int:
    """Everything a chain needs, checked before its first step."""
    if not callable(energy):
        raise TypeError(f"energy must be callable, got {type(energy).__name__}")
    _checks.dense_tensor("x0", x0)
    n_steps = _checks.integer("n_steps", n_steps, low=0)
    step_args(x0, x0, step_size, noise_scale, prior_weight, grad_clip, clamp, 0, 0)
    return n_steps


def sample_langevin(
    energy: Callable[[Tensor], Tensor],
    x0: Tensor,
    n_steps: int,
    step_size: float,
    noise_scale: float | None = None,
    *,
    prior_weight: float = 0.0,
    grad_clip: float | None = None,
    clamp: tuple[float, float] | None = None,
    seed: int | None = None,
    create_graph: bool = False,
    return_trajectory: bool = False,
) -> Tensor:
    """Run ``n_steps`` fused Langevin steps from ``x0`` on ``energy``.

    Each step takes ``grad = d energy(x).sum() / dx`` by autograd and applies
    ``dgm_fast.langevin_step`` with the remaining arguments, drawing its noise
    from one ``NoiseStream(seed)``: step ``k`` uses stream offset ``k *
    stride``, ``stride`` being ``numel`` rounded up to a multiple of 4, so a
    chain is reproducible from its seed. ``noise_scale=0`` gives the
    deterministic generator G_theta of (2.21) (and draws no seed).

    With ``create_graph=True`` the chain is differentiable: a loss on the
    returned samples back-propagates through every step into the energy's
    parameters (and into ``x0``), as the generator loss (2.25) needs.
    Otherwise the samples are detached.

    Returns the final samples, or with ``return_trajectory=True`` a tensor of
    shape ``(n_steps + 1, *x0.shape)`` holding ``x0`` and every step.
    """
    n_steps = _check_chain(energy, x0, n_steps, step_size, noise_scale, prior_weight, grad_clip, clamp)
    if torch.is_inference_mode_enabled():
        raise RuntimeError("sample_langevin differentiates the energy, which torch.inference_mode() forbids; "
                           "call it under torch.no_grad() instead")
    stream = NoiseStream(0 if noise_scale == 0 else seed)
    step_kw = dict(prior_weight=prior_weight, grad_clip=grad_clip, clamp=clamp)

    with torch.enable_grad():
        x = x0 if create_graph and x0.requires_grad else x0.detach()
        trajectory = [x]
        for _ in range(n_steps):
            if not x.requires_grad:
                x = x.requires_grad_()
            g = _energy_grad(energy, x, create_graph)
            if create_graph:
                x = stream.step(x, g, step_size, noise_scale, **step_kw)
            else:
                with torch.no_grad():
                    x = stream.step(x, g, step_size, noise_scale, **step_kw)
            trajectory.append(x)
    if return_trajectory:
        return torch.stack([t if create_graph else t.detach() for t in trajectory])
    return x if create_graph else x.detach()


class LangevinSampler(nn.Module):
    """``sample_langevin`` as a module that owns its energy network.

    ``LangevinSampler(energy, n_steps=60, step_size=0.01)(x0)`` draws samples;
    the energy's parameters are this module's parameters, so the sampler can be
    trained end to end with ``create_graph=True`` (eq. (2.25)). The arguments
    are checked here, at construction.
    """

    def __init__(
        self,
        energy: nn.Module,
        n_steps: int,
        step_size: float,
        noise_scale: float | None = None,
        *,
        prior_weight: float = 0.0,
        grad_clip: float | None = None,
        clamp: tuple[float, float] | None = None,
        create_graph: bool = False,
    ):
        super().__init__()
        probe = torch.zeros(1)
        n_steps = _check_chain(energy, probe, n_steps, step_size, noise_scale, prior_weight, grad_clip, clamp)
        self.energy = energy
        self.n_steps, self.step_size, self.noise_scale = n_steps, step_size, noise_scale
        self.prior_weight, self.grad_clip, self.clamp = prior_weight, grad_clip, clamp
        self.create_graph = create_graph

    def forward(self, x0: Tensor, seed: int | None = None) -> Tensor:
        return sample_langevin(
            self.energy, x0, self.n_steps, self.step_size, self.noise_scale,
            prior_weight=self.prior_weight, grad_clip=self.grad_clip, clamp=self.clamp,
            seed=seed, create_graph=self.create_graph,
        )

    def extra_repr(self) -> str:
        return f"n_steps={self.n_steps}, step_size={self.step_size}, noise_scale={self.noise_scale}"
