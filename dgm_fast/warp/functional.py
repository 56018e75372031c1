"""Public 3-D warping ops: argument checks, then the op (dgm_fast/warp/op.py)."""

from __future__ import annotations

import torch
from torch import Tensor

from dgm_fast import _checks
from dgm_fast.warp.op import GRID_SAMPLE_3D, GridSampleArgs
from dgm_fast.warp.reference import PADDING_MODES

WARP_DTYPES = frozenset((torch.float32, torch.float64))  # grid positions need more than 16 bits


def grid_sample_args(input, grid, padding_mode, align_corners) -> GridSampleArgs:
    """Checked arguments in the ops' form; bad ones raise naming the argument."""
    _checks.dense_tensor("input", input, WARP_DTYPES)
    if input.dim() != 5:
        raise ValueError(f"input must be 5-D (N, C, D, H, W), got shape {tuple(input.shape)}")
    if 0 in input.shape[2:]:
        raise ValueError(f"input must have non-empty spatial dimensions (D, H, W), got {tuple(input.shape)}")
    _checks.dense_tensor("grid", grid, WARP_DTYPES)
    if grid.dim() != 5 or grid.shape[-1] != 3:
        raise ValueError(f"grid must be 5-D (N, D_out, H_out, W_out, 3), got shape {tuple(grid.shape)}")
    if grid.shape[0] != input.shape[0]:
        raise ValueError(f"grid must have input's batch size {input.shape[0]}, got {grid.shape[0]}")
    if grid.dtype != input.dtype:
        raise TypeError(f"grid must have the dtype of input ({input.dtype}), got {grid.dtype}")
    if grid.device != input.device:
        raise ValueError(f"grid must be on the device of input ({input.device}), got {grid.device}")
    if not isinstance(padding_mode, str):
        raise TypeError(f"padding_mode must be a str, one of {PADDING_MODES}, got {type(padding_mode).__name__}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if not isinstance(align_corners, bool):
        raise TypeError(f"align_corners must be a bool, got {type(align_corners).__name__}")
    return GridSampleArgs(padding_mode, align_corners)


def grid_sample_3d(input: Tensor, grid: Tensor, *, padding_mode: str = "zeros", align_corners: bool = False) -> Tensor:
    """``F.grid_sample(input, grid, mode="bilinear", padding_mode=..., align_corners=...)`` on 5-D input,
    as one fused pass: the warp of face reenactment (dissertation §4.3).

    ``input`` (N, C, D, H, W) and ``grid`` (N, D_out, H_out, W_out, 3), float32 or float64, the last
    dimension of ``grid`` being the (x, y, z) position in [-1, 1] of each output voxel along (W, H, D).
    Returns (N, C, D_out, H_out, W_out). ``padding_mode``: ``"zeros"``, ``"border"`` or
    ``"reflection"``. Differentiable in ``input`` and ``grid`` (the backward is one fused op that
    parallelises over channels where the batch is small; double backward uses the PyTorch formula).
    A NaN or infinite grid value samples as the specification says (dgm_fast/warp/reference.py):
    never outside the volume.
    """
    return GRID_SAMPLE_3D(input, grid, *grid_sample_args(input, grid, padding_mode, align_corners))
