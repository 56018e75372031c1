"""The 3-D warping ops, declared once on the shared scaffolding (dgm_fast/_op.py).

``dgm_fast::grid_sample_3d`` is trilinear ``F.grid_sample`` on 5-D input; its backward is the op
``dgm_fast::grid_sample_3d_backward``, one fused pass for the gradients of input and grid.
Kernels: ``grid_sample_3d_{cpu,triton}(input, grid, out, padding_code, align_corners)`` and
``grid_sample_3d_backward_{cpu,triton}(grad_out, input, grid, grad_input, grad_grid, padding_code,
align_corners)``, with ``padding_code`` the index in ``PADDING_MODES``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from dgm_fast._op import FusedOp, empty_output
from dgm_fast.warp.reference import PADDING_MODES, grid_sample_3d_backward_reference, grid_sample_3d_reference

SCALARS = "str padding_mode, bool align_corners"


class GridSampleArgs(NamedTuple):
    """The sampler's scalars in the ops' order."""

    padding_mode: str
    align_corners: bool


def _kernel_scalars(padding_mode: str, align_corners: bool) -> tuple:
    return PADDING_MODES.index(padding_mode), align_corners


def _output(input, grid, *_):
    n, c = input.shape[:2]
    return [empty_output(input.new_empty((n, c, *grid.shape[1:4])))]


def _setup_context(ctx, inputs, output):
    input, grid, *scalars = inputs
    ctx.args = GridSampleArgs(*scalars[: len(GridSampleArgs._fields)])  # the .backend overload adds one
    ctx.save_for_backward(input, grid)


def _backward(ctx, grad_out):
    input, grid = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph: the differentiable formula, for double backward
        grads = grid_sample_3d_backward_reference(grad_out, input, grid, *ctx.args)
    else:
        grads = GRID_SAMPLE_3D_BACKWARD(grad_out.contiguous(), input, grid, *ctx.args)
    return (*grads, None, None)


GRID_SAMPLE_3D = FusedOp(
    "warp", "grid_sample_3d", f"(Tensor input, Tensor grid, {SCALARS}) -> Tensor",
    reference=grid_sample_3d_reference, outputs=_output, kernel_scalars=_kernel_scalars,
    setup_context=_setup_context, backward=_backward,
)
GRID_SAMPLE_3D_BACKWARD = FusedOp(
    "warp", "grid_sample_3d_backward",
    f"(Tensor grad_output, Tensor input, Tensor grid, {SCALARS}) -> (Tensor, Tensor)",
    reference=grid_sample_3d_backward_reference,
    outputs=lambda go, input, grid, *_: [empty_output(input, torch.contiguous_format),
                                         empty_output(grid, torch.contiguous_format)],
    kernel_scalars=_kernel_scalars,
)
