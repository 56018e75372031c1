"""The 3-D warping ops, declared once on the shared scaffolding (dgm_fast/_op.py).

``dgm_fast::grid_sample_3d`` is trilinear ``F.grid_sample`` on 5-D input; its backward is the op
``dgm_fast::grid_sample_3d_backward``, one fused pass for the gradients of input and grid.
Kernels: ``grid_sample_3d_{cpu,triton}(input, grid, out, padding_code, align_corners)`` and
``grid_sample_3d_backward_{cpu,triton}(grad_out, input, grid, grad_input, grad_grid, padding_code,
align_corners)``, with ``padding_code`` the index in ``PADDING_MODES``.

``dgm_fast::keypoint_warp_3d`` samples a feature volume at the keypoint-driven deformation of
§4.3.3, computed per voxel and never stored (returned only when asked), and returns ``(out,
deformation)``; its backward ``dgm_fast::keypoint_warp_3d_backward`` gives the gradients of the
feature, both keypoint sets, the mask (or its logits) and the Jacobians. Kernels:
``keypoint_warp_3d_{cpu,triton}(feature, kp_source, kp_driving, mask, jacobian, out, deformation,
mask_is_logits, padding_code, align_corners, return_deformation)`` and
``keypoint_warp_3d_backward_{cpu,triton}(grad_out, grad_deformation, feature, kp_source, kp_driving, mask,
jacobian, grad_feature, grad_kp_source, grad_kp_driving, grad_mask, grad_jacobian, mask_is_logits,
padding_code, align_corners)``.

``dgm_fast::sparse_motion_features`` writes the dense motion network's input, the heatmap and the
feature warped by each of the K + 1 motions, in one pass; its backward
``dgm_fast::sparse_motion_features_backward`` gives the gradients of the feature, both keypoint sets
and the Jacobians. Kernels: ``sparse_motion_features_{cpu,triton}(feature, kp_source, kp_driving, jacobian, out,
variance, align_corners)`` and ``sparse_motion_features_backward_{cpu,triton}(grad_out, feature, kp_source,
kp_driving, jacobian, grad_feature, grad_kp_source, grad_kp_driving, grad_jacobian, variance,
align_corners)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from dgm_fast._op import FusedOp, empty_output
from dgm_fast.warp.reference import (
    PADDING_MODES,
    grid_sample_3d_backward_reference,
    grid_sample_3d_reference,
    keypoint_warp_3d_backward_reference,
    keypoint_warp_3d_reference,
    sparse_motion_features_backward_reference,
    sparse_motion_features_reference,
)

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


# --- keypoint-driven warp -----------------------------------------------------------------------
KEYPOINT_SCALARS = "bool mask_is_logits, str padding_mode, bool align_corners"


class KeypointWarpArgs(NamedTuple):
    """The warp's scalars in the forward op's order."""

    mask_is_logits: bool
    padding_mode: str
    align_corners: bool
    return_deformation: bool


def _keypoint_kernel_scalars(mask_is_logits: bool, padding_mode: str, *flags: bool) -> tuple:
    return mask_is_logits, PADDING_MODES.index(padding_mode), *flags


def _keypoint_outputs(feature, kp_source, kp_driving, mask, jacobian, mask_is_logits, padding_mode, align_corners,
                      return_deformation):
    n, c = feature.shape[:2]
    spatial = mask.shape[2:]
    deformation = feature.new_empty((n, *spatial, 3) if return_deformation else (0,))
    return [empty_output(feature.new_empty((n, c, *spatial))), empty_output(deformation)]


def _keypoint_setup_context(ctx, inputs, output):
    ctx.args = KeypointWarpArgs(*inputs[5:9])[:3]  # the .backend overload adds one
    ctx.save_for_backward(*inputs[:5])


def _keypoint_backward(ctx, grad_out, grad_deformation):
    feature, kp_source, kp_driving, mask, jacobian = ctx.saved_tensors
    if grad_deformation is None or grad_deformation.numel() == 0:
        grad_deformation = feature.new_zeros((feature.shape[0], *mask.shape[2:], 3))
    if grad_out is None:
        grad_out = feature.new_zeros((*feature.shape[:2], *mask.shape[2:]))
    args = (grad_out, grad_deformation, feature, kp_source, kp_driving, mask, jacobian, *ctx.args)
    if torch.is_grad_enabled():  # create_graph: the differentiable formula, for double backward
        grads = keypoint_warp_3d_backward_reference(*args)
    else:
        grads = KEYPOINT_WARP_3D_BACKWARD(grad_out.contiguous(), grad_deformation.contiguous(), *args[2:])
    return (*grads, None, None, None, None)


KEYPOINT_WARP_3D = FusedOp(
    "warp", "keypoint_warp_3d",
    f"(Tensor feature, Tensor kp_source, Tensor kp_driving, Tensor mask, Tensor jacobian, {KEYPOINT_SCALARS}, "
    "bool return_deformation) -> (Tensor, Tensor)",
    reference=keypoint_warp_3d_reference, outputs=_keypoint_outputs, kernel_scalars=_keypoint_kernel_scalars,
    setup_context=_keypoint_setup_context, backward=_keypoint_backward,
)
KEYPOINT_WARP_3D_BACKWARD = FusedOp(
    "warp", "keypoint_warp_3d_backward",
    "(Tensor grad_out, Tensor grad_deformation, Tensor feature, Tensor kp_source, Tensor kp_driving, Tensor mask, "
    f"Tensor jacobian, {KEYPOINT_SCALARS}) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    reference=keypoint_warp_3d_backward_reference,
    outputs=lambda go, gd, *inputs_and_scalars: [empty_output(t, torch.contiguous_format)
                                                for t in inputs_and_scalars[:5]],
    kernel_scalars=_keypoint_kernel_scalars,
)


# --- the dense motion network's input ------------------------------------------------------------
def _motion_features_output(feature, kp_source, *_):
    n, c, *spatial = feature.shape
    return [empty_output(feature.new_empty((n, kp_source.shape[1] + 1, 1 + c, *spatial)))]


def _motion_features_setup_context(ctx, inputs, output):
    ctx.args = tuple(inputs[4:6])  # variance, align_corners (the .backend overload adds one)
    ctx.save_for_backward(*inputs[:4])


def _motion_features_backward(ctx, grad_out):
    inputs = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph: the differentiable formula, for double backward
        grads = sparse_motion_features_backward_reference(grad_out, *inputs, *ctx.args)
    else:
        grads = SPARSE_MOTION_FEATURES_BACKWARD(grad_out.contiguous(), *inputs, *ctx.args)
    return (*grads, None, None)


SPARSE_MOTION_FEATURES = FusedOp(
    "warp", "sparse_motion_features",
    "(Tensor feature, Tensor kp_source, Tensor kp_driving, Tensor jacobian, float variance, bool align_corners) "
    "-> Tensor",
    reference=sparse_motion_features_reference, outputs=_motion_features_output,
    setup_context=_motion_features_setup_context, backward=_motion_features_backward,
)
SPARSE_MOTION_FEATURES_BACKWARD = FusedOp(
    "warp", "sparse_motion_features_backward",
    "(Tensor grad_out, Tensor feature, Tensor kp_source, Tensor kp_driving, Tensor jacobian, float variance, "
    "bool align_corners) -> (Tensor, Tensor, Tensor, Tensor)",
    reference=sparse_motion_features_backward_reference,
    outputs=lambda go, *inputs_and_scalars: [empty_output(t, torch.contiguous_format) for t in inputs_and_scalars[:4]],
)
