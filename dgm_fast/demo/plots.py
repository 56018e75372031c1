"""The demo's figures, each with a caption: EBM samples and -E heat maps (Figures 2.1 / 2.2), rows of
2-D samples (the latent EBM booster, Figure 3.9), and
GLF's digit samples, nearest training neighbours (Figure 3.3) and noise interpolations (Figure 3.2(f)),
and the keypoint-driven warp of a head volume (§4.3.3)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure  # no pyplot: saving a bare Figure renders with Agg, headless
from torch import Tensor

LIM = 3.5  # every toy panel shows [-LIM, LIM]^2
CAPTION_HEIGHT = 0.8  # inches below the panels
SAMPLE_GRID = 6  # each model's panel tiles SAMPLE_GRID x SAMPLE_GRID digits


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
    fig = _figure(3.2 * n_cols, 3.0 * len(rows))
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    for ax_row, row in zip(axes, rows):
        _scatter(ax_row[0], row["data"], f"{row['name']}: data")
        for j, dyn in enumerate(dynamics):
            res = row[dyn]
            _scatter(ax_row[1 + 2 * j], res["samples"], f"{dyn} samples (MMD² {res['mmd2']:.4f})")
            _heat_map(fig, ax_row[2 + 2 * j], res["neg_energy"], f"−E, trained with {dyn}")
    _square_axes(axes)
    return _save(fig, path, caption)


def plot_scatter_rows(rows: list[list[tuple[str, Tensor]]], path: Path, caption: str) -> Path:
    """One row per ``rows`` entry, one scatter panel per ``(title, points)`` in it; ``caption`` below."""
    n_cols = max(len(row) for row in rows)
    fig = _figure(3.2 * n_cols, 3.0 * len(rows))
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    for ax_row, row in zip(axes, rows):
        for ax, (title, points) in zip(ax_row, row):
            _scatter(ax, points, title)
    _square_axes(axes)
    return _save(fig, path, caption)


def _square_axes(axes) -> None:
    """Every toy panel on the same [-LIM, LIM]^2 square, with small tick labels."""
    for ax in axes.flat:
        ax.set(xlim=(-LIM, LIM), ylim=(-LIM, LIM), aspect="equal")
        ax.tick_params(labelsize=7)


def _figure(width: float, panels_height: float) -> Figure:
    """A figure of ``panels_height`` inches of panels above ``CAPTION_HEIGHT`` inches kept for the caption."""
    height = panels_height + CAPTION_HEIGHT
    fig = Figure(figsize=(width, height), layout="constrained")
    fig.get_layout_engine().set(rect=(0.0, CAPTION_HEIGHT / height, 1.0, 1.0 - CAPTION_HEIGHT / height))
    return fig


def _save(fig: Figure, path: Path, caption: str) -> Path:
    fig.text(0.01, 0.01, caption, fontsize=8.5, va="bottom", wrap=True)
    fig.savefig(path, dpi=100)
    return path


def _tile(images: Tensor, n_cols: int, pad: int = 1) -> np.ndarray:
    """Greyscale (N, 1, H, W) images in [0, 1] as one mosaic of ``n_cols`` columns on a mid-grey ground."""
    n, _, h, w = images.shape
    n_rows = math.ceil(n / n_cols)
    mosaic = np.full((n_rows * (h + pad) + pad, n_cols * (w + pad) + pad), 0.5)
    for i, image in enumerate(images[:, 0].detach().cpu().numpy()):
        top, left = pad + (i // n_cols) * (h + pad), pad + (i % n_cols) * (w + pad)
        mosaic[top:top + h, left:left + w] = image
    return mosaic


def _show(ax, image: np.ndarray, title: str = "") -> None:
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set(xticks=[], yticks=[])
    ax.set_title(title, fontsize=9)


def plot_digit_samples(panels: list[tuple[str, Tensor]], path: Path, caption: str) -> Path:
    """One panel per ``(title, images)`` entry, each tiling its first SAMPLE_GRID² images."""
    fig = _figure(3.0 * len(panels), 3.0)
    for ax, (title, images) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        _show(ax, _tile(images[:SAMPLE_GRID**2], SAMPLE_GRID), title)
    return _save(fig, path, caption)


def plot_neighbours(samples: Tensor, neighbours: Tensor, path: Path, caption: str) -> Path:
    """Figure 3.3: row i shows ``samples[i]`` and then ``neighbours[i]`` (N, k, 1, H, W), nearest first."""
    n, k = neighbours.shape[:2]
    fig = _figure(0.85 * (k + 1) + 0.4, 0.85 * n)
    axes = fig.subplots(n, k + 1, squeeze=False)
    titles = ["sample"] + [f"neighbour {j + 1}" for j in range(k)]
    for i, row in enumerate(axes):
        for j, ax in enumerate(row):
            image = samples[i] if j == 0 else neighbours[i, j - 1]
            _show(ax, image[0].detach().cpu().numpy(), titles[j] if i == 0 else "")
    return _save(fig, path, caption)


def plot_interpolation(paths: Tensor, path: Path, caption: str) -> Path:
    """Figure 3.2(f): row i shows ``paths[i]`` (steps, 1, H, W), the images along one noise segment."""
    n, steps = paths.shape[:2]
    fig = _figure(0.9 * steps + 0.4, 0.9 * n)
    axes = fig.subplots(n, steps, squeeze=False)
    for i, row in enumerate(axes):
        for j, ax in enumerate(row):
            _show(ax, paths[i, j, 0].detach().cpu().numpy(), f"t = {j / (steps - 1):.2f}" if i == 0 else "")
    return _save(fig, path, caption)


def _keypoints_px(kp: Tensor, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel (column, row) of keypoints (K, 3) in [-1, 1], rows counted from the bottom (y up)."""
    kp = kp.detach().cpu().numpy()
    return (kp[:, 0] + 1) / 2 * (width - 1), (kp[:, 1] + 1) / 2 * (height - 1)


def plot_warp(source: Tensor, warped: Tensor, displacement: Tensor, kp_source: Tensor, kp_driving: Tensor,
              path: Path, caption: str) -> Path:
    """The keypoint warp of §4.3.3: the source render (H, W, 3) with its keypoints, the deformation's
    displacement (D, H, W, 3) at the slice of the driving keypoints' mean depth, and the warped render
    with the driving keypoints."""
    depth, height, width = displacement.shape[:3]
    fig = _figure(13.0, 4.2)
    axes = fig.subplots(1, 3)
    for ax, image, kp, title, marker in ((axes[0], source, kp_source, "source and its keypoints", "o"),
                                         (axes[2], warped, kp_driving, "warped, with the driving keypoints", "x")):
        ax.imshow(image.numpy(), origin="lower", interpolation="bilinear")
        ax.scatter(*_keypoints_px(kp, height, width), s=18, marker=marker, color="black", linewidths=1.2)
        ax.set(xticks=[], yticks=[], title=title)
    z = float(kp_driving[:, 2].mean())
    d = min(depth - 1, max(0, round((z + 1) / 2 * (depth - 1))))
    field = displacement[d].numpy()
    image = axes[1].imshow(field[..., 2], origin="lower", cmap="coolwarm",
                           vmin=-np.abs(field[..., 2]).max(), vmax=np.abs(field[..., 2]).max())
    step = max(1, width // 16)
    rows, cols = np.mgrid[0:height:step, 0:width:step]
    # displacements are in normalised units (the volume spans 2): arrows in pixels
    axes[1].quiver(cols, rows, field[::step, ::step, 0] * (width - 1) / 2, field[::step, ::step, 1] * (height - 1) / 2,
                   angles="xy", scale_units="xy", scale=1, width=0.004)
    axes[1].set(xticks=[], yticks=[], title=f"phi(p) - p at depth z = {2 * d / (depth - 1) - 1:.2f}")
    bar = fig.colorbar(image, ax=axes[1], fraction=0.046, pad=0.02)
    bar.set_label("z part of phi(p) - p (volume spans [-1, 1])", fontsize=8)
    return _save(fig, path, caption)
