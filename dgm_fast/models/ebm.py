"""MLP energies on R^d, their short-run sampling dynamics, and maximum-likelihood training (§2.4):
(2.13) with noisy (2.15) or noise-free (2.20) chains from N(0, I) or from a replay buffer, and the
generator loss (2.25) that trains the noise-free chain as a generator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from dgm_fast import _checks
from dgm_fast.nn import MLPEnergy


def toy_energy(hidden: int = 256, depth: int = 4, dim: int = 2) -> MLPEnergy:
    """The swish energy of appendix 2.4.7 with ``depth`` hidden layers of ``hidden`` units: the default,
    the appendix's "5-layer network with 256 hidden units", is ``MLPEnergy((2, 256, 256, 256, 256, 1))``."""
    return MLPEnergy((dim, *[hidden] * depth, 1), "swish")


def prior_sample(n: int, dim: int, like: nn.Module) -> Tensor:
    """``n`` draws of N(0, I) in R^dim, in the dtype and on the device of ``like``'s parameters."""
    p = next(like.parameters())
    return torch.randn(n, dim, dtype=p.dtype, device=p.device)


@dataclass(frozen=True)
class Dynamics:
    """A short-run chain of ``n_steps`` Langevin steps (2.15) of size ``step_size``.

    ``noise_scale > 0`` is Langevin dynamics with reduced noise (§2.4.6),
    ``None`` its exact sqrt(step_size) (the balanced noise of (3.8)), and
    ``0`` the noise-free gradient flow (2.20): the deterministic generator
    G_theta (2.21), an Euler solve of (2.16) up to ``horizon``.
    """

    n_steps: int
    step_size: float
    noise_scale: float | None

    @property
    def horizon(self) -> float:
        """T of the ODE (2.16) that the noise-free chain's Euler steps of dt = step_size / 2 reach."""
        return self.n_steps * self.step_size / 2

    def run(self, energy: MLPEnergy, x0: Tensor, *, create_graph: bool = False, **kw) -> Tensor:
        """The chain from ``x0``: one fused op, or with ``create_graph`` a chain autograd can train through."""
        return energy.sample(x0, self.n_steps, self.step_size, self.noise_scale, create_graph=create_graph, **kw)

    def sample(self, energy: MLPEnergy, n: int) -> Tensor:
        """``n`` samples of the chain started at the N(0, I) prior (non-persistent, §2.4.6)."""
        return self.run(energy, prior_sample(n, energy.dim, energy))


class ReplayBuffer:
    """Persistent chain starts as in IGEBM (Du and Mordatch, 2019): a chain starts at a stored sample, or
    with probability ``reinit`` at fresh N(0, I) noise, and its end replaces the sample it was drawn for.

    The store starts as N(0, I) draws, so early chains start at the prior.
    """

    def __init__(self, size: int, dim: int, reinit: float = 0.05):
        size, dim = _checks.integer("size", size, low=1), _checks.integer("dim", dim, low=1)
        self.reinit = _checks.real("reinit", reinit, low=0.0, high=1.0)
        self.samples = torch.randn(size, dim)

    def starts(self, n: int) -> tuple[Tensor, Tensor]:
        """``(x0, index)``: ``n`` chain starts and the store slots they are drawn for."""
        index = torch.randint(len(self.samples), (n,))
        fresh = torch.rand(n) < self.reinit
        x0 = torch.where(fresh[:, None], torch.randn(n, self.samples.shape[1]), self.samples[index])
        return x0, index

    def push(self, index: Tensor, x: Tensor) -> None:
        """Store the chains' ends ``x`` in the slots ``index`` they started for."""
        self.samples[index] = x.detach()


@dataclass(frozen=True)
class TrainConfig:
    n_iters: int
    batch_size: int = 256
    lr: float = 1e-3
    energy_reg: float = 1e-3
    generator_loss: bool = False  # add (2.25)'s E_sg(theta)(G_theta(x0)): train through the chain


def ml_loss(e_data: Tensor, e_neg: Tensor, energy_reg: float) -> Tensor:
    """Surrogate whose gradient is the maximum-likelihood gradient (2.13), plus an energy penalty.

    ``energy_reg * (E_data^2 + E_neg^2)`` is the small energy regulariser of the
    latent EBMs (appendix of §3.3). (2.13) is blind to adding a constant to E,
    so without it the energies drift (to about -40 within 1000 steps on the toy
    data) and can blow up; a weight of 1e-3 pins them near 0 and gave lower
    MMD for both dynamics there.
    """
    ml = e_data.mean() - e_neg.mean()
    return ml + energy_reg * (e_data.square().mean() + e_neg.square().mean())


def frozen_energy(energy: nn.Module, x: Tensor) -> Tensor:
    """``E_sg(theta)(x)`` of (2.24): the energy evaluated with its parameters detached.

    A loss on it reaches theta only through ``x``: through the chain
    G_theta that made ``x``, never through the critic's own parameters.
    (``torch.func.functional_call`` swaps detached copies in for this one
    call; detaching ``x`` instead would cut the chain.)
    """
    params = {name: p.detach() for name, p in energy.named_parameters()}
    return torch.func.functional_call(energy, params, (x,))


def ebm_loss(energy: nn.Module, x_pos: Tensor, x_neg: Tensor, energy_reg: float, generator_loss: bool) -> Tensor:
    """(2.13)'s surrogate ``ml_loss``, or with ``generator_loss`` (2.25)'s:

    E_theta(x) - E_theta(sg[G_theta(x0)]) + E_sg(theta)(G_theta(x0)),

    ``x_neg`` being G_theta(x0) with the chain's graph: one batch of
    negatives serves the critic's term (detached) and the generator's
    (``frozen_energy``), as §2.4.5 does to sample once per step.
    """
    loss = ml_loss(energy(x_pos), energy(x_neg.detach()), energy_reg)
    return loss + frozen_energy(energy, x_neg).mean() if generator_loss else loss


def fit_energy(
    energy: nn.Module,
    positives: Callable[[int], Tensor],
    negatives: Callable[[int], Tensor],
    config: TrainConfig,
    *,
    desc: str = "train",
    progress: bool = True,
) -> list[float]:
    """Fit ``energy`` in place by ``ebm_loss`` on batches of ``positives(n)`` against ``negatives(n)``
    (carrying their chain's graph when ``config.generator_loss``); returns the per-step losses."""
    _checks.integer("n_iters", config.n_iters, low=1)
    # beta1 = 0 as is usual for EBMs (Du and Mordatch, 2019); it also trained better here.
    opt = torch.optim.Adam(energy.parameters(), lr=config.lr, betas=(0.0, 0.999))
    losses: list[float] = []
    bar = tqdm(range(config.n_iters), desc=desc, leave=False, disable=not progress)
    for it in bar:
        x_pos, x_neg = positives(config.batch_size), negatives(config.batch_size)
        loss = ebm_loss(energy, x_pos, x_neg, config.energy_reg, config.generator_loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if it % 50 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses


def train_ebm(
    energy: MLPEnergy,
    sample_data: Callable[[int], Tensor],
    dynamics: Dynamics,
    config: TrainConfig,
    *,
    replay: ReplayBuffer | None = None,
    desc: str = "train",
    progress: bool = True,
) -> list[float]:
    """Fit ``energy`` in place by (2.13) or (2.25), negatives from ``dynamics`` started at N(0, I) each
    step (§2.4.6) or at ``replay``'s samples; returns the per-step losses.

    Without the generator loss each chain is one fused ``MLPEnergy.sample``
    call; with it the chain keeps its graph (``create_graph=True``).
    """

    def negatives(n: int) -> Tensor:
        x0, index = replay.starts(n) if replay is not None else (prior_sample(n, energy.dim, energy), None)
        x = dynamics.run(energy, x0, create_graph=config.generator_loss)
        if replay is not None:
            replay.push(index, x)
        return x

    return fit_energy(energy, sample_data, negatives, config, desc=desc, progress=progress)
