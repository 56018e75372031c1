"""A small MLP energy on R^d, its short-run sampling dynamics, and maximum-likelihood training (§2.4)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

import dgm_fast


class EnergyMLP(nn.Module):
    """E_theta: R^dim -> R, fully connected with swish (SiLU) activations as in appendix 2.4.7.

    ``depth`` hidden layers of ``hidden`` units; the appendix's "5-layer network
    with 256 hidden units" is ``EnergyMLP(hidden=256, depth=4)``.
    """

    def __init__(self, hidden: int = 128, depth: int = 3, dim: int = 2):
        super().__init__()
        self.dim = dim
        layers: list[nn.Module] = []
        width = dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


@dataclass(frozen=True)
class Dynamics:
    """Short-run, non-persistent sampling dynamics started at the N(0, I) prior (§2.4.6).

    ``noise_scale > 0`` is Langevin dynamics (2.15); ``noise_scale = 0`` is the
    noise-free gradient flow (2.20), i.e. the deterministic generator G_theta (2.21).
    """

    name: str
    n_steps: int
    step_size: float
    noise_scale: float

    def sample(self, energy: EnergyMLP, n: int) -> Tensor:
        x0 = torch.randn(n, energy.dim)
        return dgm_fast.sample_langevin(energy, x0, self.n_steps, self.step_size, self.noise_scale)


@dataclass(frozen=True)
class TrainConfig:
    n_iters: int
    batch_size: int = 256
    lr: float = 1e-3
    energy_reg: float = 1e-3


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


def train_ebm(
    energy: EnergyMLP,
    sample_data: Callable[[int], Tensor],
    dynamics: Dynamics,
    config: TrainConfig,
    desc: str = "train",
) -> EnergyMLP:
    """Fit ``energy`` in place by (2.13), with negatives drawn afresh from ``dynamics`` each step."""
    # beta1 = 0 as is usual for EBMs (Du and Mordatch, 2019); it also trained better here.
    opt = torch.optim.Adam(energy.parameters(), lr=config.lr, betas=(0.0, 0.999))
    progress = tqdm(range(config.n_iters), desc=desc, leave=False)
    for it in progress:
        x_data = sample_data(config.batch_size)
        x_neg = dynamics.sample(energy, config.batch_size)
        loss = ml_loss(energy(x_data), energy(x_neg), config.energy_reg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % 50 == 0:
            progress.set_postfix(loss=f"{loss.item():.3f}")
    return energy
