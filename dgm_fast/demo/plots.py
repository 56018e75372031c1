"""The figure of the demo, laid out like Figures 2.1 / 2.2: samples and -E heat maps, with a caption."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from matplotlib.figure import Figure  # no pyplot: saving a bare Figure renders with Agg, headless
from torch import Tensor

LIM = 3.5  # every panel shows [-LIM, LIM]^2


def neg_energy_grid(energy: Callable[[Tensor], Tensor], resolution: int) -> Tensor:
    """-E_theta, the unnormalised log density of (2.12), on a square grid whose rows index y."""
    axis = torch.linspace(-LIM, LIM, resolution)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    with torch.no_grad():
        return -energy(torch.stack([xs, ys], dim=-1).reshape(-1, 2)).reshape(resolution, resolution)


def _scatter(ax, x: Tensor, title: str) -> None:
    ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=1, alpha=0.5, color="tab:blue", rasterized=True)
    ax.set_title(title, fontsize=9)


def _heat_map(fig: Figure, ax, neg_energy: Tensor, title: str) -> None:
    image = ax.imshow(neg_energy.numpy(), origin="lower", extent=(-LIM, LIM, -LIM, LIM), cmap="viridis")
    ax.set_title(title, fontsize=9)
    # without a scale the maps read as failed training; the colour bar says they are -E values
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
    bar.set_label("−E(x)", fontsize=8)
    bar.ax.tick_params(labelsize=7)


def plot_toy_results(rows: list[dict], path: Path, caption: str) -> Path:
    """One row per dataset; each ``rows`` entry holds ``name``, ``data`` and, per
    dynamics name, ``samples``, ``neg_energy`` and ``mmd2``. ``caption`` goes below the panels.
    """
    dynamics = [k for k in rows[0] if k not in ("name", "data")]
    n_cols = 1 + 2 * len(dynamics)
    height = 3.0 * len(rows) + 0.8  # the panels and the caption
    fig = Figure(figsize=(3.2 * n_cols, height), layout="constrained")
    fig.get_layout_engine().set(rect=(0.0, 0.8 / height, 1.0, 1.0 - 0.8 / height))
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    for ax_row, row in zip(axes, rows):
        _scatter(ax_row[0], row["data"], f"{row['name']}: data")
        for j, dyn in enumerate(dynamics):
            res = row[dyn]
            _scatter(ax_row[1 + 2 * j], res["samples"], f"{dyn} samples (MMD² {res['mmd2']:.4f})")
            _heat_map(fig, ax_row[2 + 2 * j], res["neg_energy"], f"−E, trained with {dyn}")
    for ax in axes.flat:
        ax.set(xlim=(-LIM, LIM), ylim=(-LIM, LIM), aspect="equal", xticks=[], yticks=[])
    fig.text(0.01, 0.01, caption, fontsize=8.5, va="bottom", wrap=True)
    fig.savefig(path, dpi=100)
    return path
