"""Figures 2.1 and 2.3 for trained 2-D energies: samples of the ODE flow (2.17), -E, the EBM's density
normalised by numerical integration, and the ODE flow's own log-density and density (2.19)."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure
from torch import Tensor

from dgm_fast.demo.plots import LIM, _figure, _heat_map, _scatter, neg_energy_grid
from dgm_fast.models.ode_flow import ODEFlow


def cell_area(resolution: int) -> float:
    """The area each point of ``neg_energy_grid``'s grid stands for."""
    return (2 * LIM / (resolution - 1)) ** 2


def ebm_density(neg_energy: Tensor) -> Tensor:
    """``exp(-E) / Z`` on a grid of ``neg_energy_grid``, ``Z`` the Riemann sum of ``exp(-E)`` over the
    plotted square (the numerical integration of Figure 2.2, right): mass outside it is not counted."""
    return torch.softmax(neg_energy.flatten(), 0).view_as(neg_energy) / cell_area(neg_energy.shape[0])


def flow_log_density(flow: ODEFlow, resolution: int) -> Tensor:
    """The ODE flow's ``log p(x)`` (2.19) on the grid of ``neg_energy_grid``."""
    return neg_energy_grid(lambda x: -flow.log_prob(x), resolution)


def _map(fig: Figure, ax, values: Tensor, title: str, label: str) -> None:
    _heat_map(fig, ax, values, title)
    ax.images[-1].colorbar.set_label(label, fontsize=8)  # _heat_map labels its bar −E(x)


def _row(fig: Figure, axes, name: str, flow: ODEFlow, data: Tensor | None, n_samples: int, resolution: int,
         generator: torch.Generator) -> None:
    if data is not None:
        _scatter(axes[0], data, f"{name}: data")
    samples = flow.sample(torch.randn(n_samples, 2, generator=generator))
    _scatter(axes[-5], samples, f"{name}: ODE-flow samples (2.17), T = {flow.t1:g}")
    neg_energy = neg_energy_grid(flow.energy, resolution)
    _map(fig, axes[-4], neg_energy, "−E: EBM log density, unnormalised", "−E(x)")
    _map(fig, axes[-3], ebm_density(neg_energy), "EBM density exp(−E)/Z", "p_EBM(x)")
    log_p = flow_log_density(flow, resolution)
    _map(fig, axes[-2], log_p, "ODE-flow log density (2.19)", "log p_flow(x)")
    mass = float(log_p.exp().sum()) * cell_area(resolution)  # ~1 when the flow's mass lies in view
    _map(fig, axes[-1], log_p.exp(), f"ODE-flow density (mass in view {mass:.3f})", "p_flow(x)")


def flow_density_caption(with_data: bool) -> str:
    return (
        "Per row, one trained 2-D energy E: " + ("samples of the data; " if with_data else "")
        + "samples of its ODE flow, x' = −∇E(x) (2.16) solved from N(0, I) over [0, T] (2.17);\n"
        "−E, the EBM's unnormalised log density (Figure 2.1, column 3); exp(−E)/Z, the EBM's density, Z integrated "
        "numerically on the plotted grid (Figures 2.2 right, 2.3 left);\n"
        "the ODE flow's log density (2.19) (Figure 2.1, column 4) and its density (Figure 2.3 right), whose mass in "
        "view is near 1 when the flow keeps its mass inside the plotted square."
    )


def plot_flow_densities(flows: dict[str, ODEFlow], data: dict[str, Tensor] | None = None, *,
                        n_samples: int = 1000, resolution: int = 60, seed: int = 0) -> Figure:
    """One row per ``flows`` entry (name -> the ODE flow of a trained 2-D energy), with
    ``data[name]`` first if ``data`` is given, and ``flow_density_caption`` below; save it with ``savefig``."""
    n_cols = 5 + (data is not None)
    fig = _figure(3.4 * n_cols, 3.0 * len(flows))
    axes = fig.subplots(len(flows), n_cols, squeeze=False)
    generator = torch.Generator().manual_seed(seed)
    for ax_row, (name, flow) in zip(axes, flows.items()):
        _row(fig, ax_row, name, flow, None if data is None else data[name], n_samples, resolution, generator)
    for ax in axes.flat:
        ax.set(xlim=(-LIM, LIM), ylim=(-LIM, LIM), aspect="equal")
        ax.tick_params(labelsize=7)
    fig.text(0.01, 0.01, flow_density_caption(data is not None), fontsize=8.5, va="bottom")
    return fig
