"""Plain-PyTorch references of the 3-D warping ops (dissertation §4.3): their specification.

``grid_sample_3d_reference`` is ``F.grid_sample(input, grid, mode="bilinear")`` on 5-D input,
written out (tests/test_warp_grid_sample.py holds it equal to F.grid_sample) so that it is
differentiable to any order and under forward-mode AD and every torch.func transform, which
F.grid_sample's 3-D kernel is not. Each grid coordinate, last dim (x, y, z) <-> (W, H, D):

* unnormalized to a voxel position ``u``: ``(c + 1) / 2 * (n - 1)`` with ``align_corners``, else
  ``((c + 1) * n - 1) / 2``;
* moved inside by the padding mode: ``"zeros"`` leaves it (corners outside read 0),
  ``"border"`` clips it to [0, n - 1], ``"reflection"`` reflects it about the volume's edges (the
  voxel centres with ``align_corners``, else the faces) and then clips;
* sampled trilinearly from the 8 voxels around it, in torch's order and formula: weight of corner
  (x0 + dx, y0 + dy, z0 + dz) = the product of ``(x1 - x)`` or ``(x - x0)`` per axis.

A non-finite ``u`` (a NaN or infinite grid value, or one whose unnormalized position overflows)
reads nothing with ``"zeros"``; ``"border"`` takes 0 for -inf and ``n - 1`` otherwise, and
``"reflection"`` ``n - 1``: what torch's CPU kernel computes. Its gradient with respect to the grid
is 0 (torch's own backward is not consistent with its forward there).
"""

from __future__ import annotations

import torch
from torch import Tensor

PADDING_MODES = ("zeros", "border", "reflection")


def _unnormalize(c: Tensor, n: int, align_corners: bool) -> Tensor:
    return (c + 1) / 2 * (n - 1) if align_corners else ((c + 1) * n - 1) / 2


def _clip(u: Tensor, n: int) -> Tensor:
    # torch's clip_coordinates_set_grad: the gradient is 0 on the edges themselves
    return torch.where(u <= 0, torch.zeros_like(u), torch.where(u >= n - 1, torch.full_like(u, n - 1), u))


def _reflect(u: Tensor, twice_low: int, twice_high: int) -> Tensor:
    if twice_low == twice_high:
        return torch.zeros_like(u)
    low, span = twice_low / 2, (twice_high - twice_low) / 2
    u = (u - low).abs()
    extra = torch.fmod(u, span)
    even = torch.remainder(torch.floor(u / span), 2) == 0
    return torch.where(even, extra + low, span - extra + low)


def source_position(c: Tensor, n: int, padding_mode: str, align_corners: bool) -> Tensor:
    """The voxel position along an axis of ``n`` voxels that grid coordinate ``c`` samples."""
    u = _unnormalize(c, n, align_corners)
    finite = torch.isfinite(u)
    safe = torch.where(finite, u, torch.zeros_like(u))  # no NaN reaches the gradients
    if padding_mode == "zeros":
        return torch.where(finite, safe, torch.full_like(u, -2.0))  # -2: both neighbours outside
    edge = torch.full_like(u, n - 1)
    if padding_mode == "reflection":
        safe = _reflect(safe, 0, 2 * (n - 1)) if align_corners else _reflect(safe, -1, 2 * n - 1)
    else:
        edge = torch.where(u == -torch.inf, torch.zeros_like(u), edge)
    return torch.where(finite, _clip(safe, n), edge)


def grid_sample_3d_reference(input: Tensor, grid: Tensor, padding_mode: str, align_corners: bool) -> Tensor:
    """``F.grid_sample(input, grid, mode="bilinear", padding_mode, align_corners)`` for (N, C, D, H, W)
    input and (N, Do, Ho, Wo, 3) grid: (N, C, Do, Ho, Wo)."""
    n, c, d, h, w = input.shape
    out_shape = grid.shape[1:4]
    voxels = out_shape.numel()
    pos = [source_position(grid[..., a], size, padding_mode, align_corners).reshape(n, 1, voxels)
           for a, size in enumerate((w, h, d))]  # x, y, z, each (N, 1, Do*Ho*Wo)
    lo = [torch.floor(p) for p in pos]
    flat = input.reshape(n, c, d * h * w)
    out = None
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                corner = [l + k for l, k in zip(lo, (dx, dy, dz))]
                # torch's weights: (x1 - x) for the low corner, (x - x0) for the high one, per axis
                weight = 1
                for p, l, k in zip(pos, lo, (dx, dy, dz)):
                    weight = weight * ((p - l) if k else (l + 1 - p))
                inside = torch.ones_like(weight, dtype=torch.bool)
                for q, size in zip(corner, (w, h, d)):
                    inside = inside & (q >= 0) & (q <= size - 1)
                index = (corner[2] * h + corner[1]) * w + corner[0]
                index = torch.where(inside, index, torch.zeros_like(index)).to(torch.int64)
                values = torch.gather(flat, 2, index.expand(n, c, -1))
                term = torch.where(inside, values * weight, torch.zeros_like(values))
                out = term if out is None else out + term
    return out.reshape(n, c, *out_shape)  # contiguous, as F.grid_sample's output is for any input layout


def grid_sample_3d_backward_reference(grad_output: Tensor, input: Tensor, grid: Tensor, padding_mode: str,
                                      align_corners: bool) -> tuple[Tensor, Tensor]:
    """The gradients ``(grad_input, grad_grid)`` of ``grid_sample_3d_reference`` for ``grad_output``,
    contiguous; differentiable again when autograd records a graph (double backward)."""
    return _gradients(lambda *inputs: grid_sample_3d_reference(*inputs, padding_mode, align_corners),
                      (input, grid), (grad_output,))


def _gradients(fn, inputs: tuple[Tensor, ...], grad_outputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """The gradients of ``fn(*inputs)`` for ``grad_outputs`` by autograd, contiguous and zero for an
    input it does not use; with a graph when autograd records one (double backward), and from
    copies of inference tensors under inference mode."""
    create_graph = torch.is_grad_enabled()
    inference = torch.is_inference_mode_enabled()
    with torch.inference_mode(False), torch.enable_grad():
        leaves = [v if create_graph and v.requires_grad else
                  (v.clone() if inference else v.detach()).requires_grad_() for v in inputs]
        grad_outputs = [g.clone() if inference else g for g in grad_outputs]
        out = fn(*leaves)
        out = out if isinstance(out, tuple) else (out,)
        grads = torch.autograd.grad(out, leaves, grad_outputs, create_graph=create_graph, allow_unused=True)
    return tuple(torch.zeros_like(v, memory_format=torch.contiguous_format) if g is None else
                 g.clone(memory_format=torch.contiguous_format) if inference else g.contiguous()
                 for v, g in zip(leaves, grads))


# --- keypoint-driven warp (§4.3.3) -------------------------------------------------------------
def identity_grid(spatial_size, dtype: torch.dtype, device) -> Tensor:
    """(D, H, W, 3): the (x, y, z) position in [-1, 1] of every voxel, ``2 * (i / (n - 1)) - 1`` per
    axis (FOMM's make_coordinate_grid)."""
    axes = [2 * (torch.arange(n, dtype=dtype, device=device) / (n - 1)) - 1 for n in spatial_size]
    z, y, x = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([x, y, z], dim=-1)


def keypoint_motions(kp_source: Tensor, kp_driving: Tensor, jacobian: Tensor, spatial_size) -> Tensor:
    """The K + 1 motions of FOMM / face-vid2vid on the identity grid p, (N, K + 1, D, H, W, 3):
    ``T_0(p) = p`` and ``T_k(p) = J_k (p - kp_driving_k) + kp_source_k`` (§4.3.3)."""
    p = identity_grid(spatial_size, kp_source.dtype, kp_source.device)
    diff = p - kp_driving[:, :, None, None, None, :]  # (N, K, D, H, W, 3)
    jac = jacobian[:, :, None, None, None]  # (N, K, 1, 1, 1, 3, 3)
    motions = (jac[..., 0] * diff[..., 0:1] + jac[..., 1] * diff[..., 1:2] + jac[..., 2] * diff[..., 2:3]
               + kp_source[:, :, None, None, None, :])
    return torch.cat([p.expand(kp_source.shape[0], 1, *p.shape), motions], dim=1)


def keypoint_deformation(kp_source: Tensor, kp_driving: Tensor, mask: Tensor, jacobian: Tensor,
                         mask_is_logits: bool) -> Tensor:
    """The dense motion of FOMM / face-vid2vid as their code computes it, every motion materialised:
    ``phi(p) = sum_k m_k(p) T_k(p)`` (N, D, H, W, 3), ``m`` the mask (N, K + 1, D, H, W) or its
    softmax over dim 1."""
    motions = keypoint_motions(kp_source, kp_driving, jacobian, mask.shape[2:])
    weights = torch.softmax(mask, dim=1) if mask_is_logits else mask
    return (weights.unsqueeze(-1) * motions).sum(dim=1)


def keypoint_heatmap_3d_reference(kp_source: Tensor, kp_driving: Tensor, spatial_size, variance: float) -> Tensor:
    """(N, K + 1, D, H, W): channel 0 zeros, channel k ``exp(-0.5 |p - kp_driving_k|^2 / variance) -
    exp(-0.5 |p - kp_source_k|^2 / variance)`` (the heatmaps of §4.3.3, face-vid2vid's kp2gaussian)."""
    p = identity_grid(spatial_size, kp_source.dtype, kp_source.device)

    def gaussian(kp):
        return torch.exp(-0.5 * ((p - kp[:, :, None, None, None, :]) ** 2).sum(-1) / variance)

    heat = gaussian(kp_driving) - gaussian(kp_source)
    return torch.cat([heat.new_zeros((heat.shape[0], 1, *heat.shape[2:])), heat], dim=1)


def keypoint_warp_3d_reference(feature: Tensor, kp_source: Tensor, kp_driving: Tensor, mask: Tensor,
                               jacobian: Tensor, mask_is_logits: bool, padding_mode: str, align_corners: bool,
                               return_deformation: bool) -> tuple[Tensor, Tensor]:
    """``(grid_sample_3d(feature, phi), phi)`` for the deformation of ``keypoint_deformation`` (§4.3.3,
    eq. (4.5)); ``phi`` is an empty tensor unless ``return_deformation``."""
    phi = keypoint_deformation(kp_source, kp_driving, mask, jacobian, mask_is_logits)
    out = grid_sample_3d_reference(feature, phi, padding_mode, align_corners)
    return out, phi if return_deformation else phi.new_empty(0)


def keypoint_warp_3d_backward_reference(grad_out: Tensor, grad_deformation: Tensor, feature: Tensor,
                                        kp_source: Tensor, kp_driving: Tensor, mask: Tensor, jacobian: Tensor,
                                        mask_is_logits: bool, padding_mode: str,
                                        align_corners: bool) -> tuple[Tensor, ...]:
    """The gradients of feature, kp_source, kp_driving, mask and jacobian for ``grad_out`` and
    ``grad_deformation`` (N, D, H, W, 3), contiguous; differentiable again under create_graph."""
    def warp(*inputs):
        return keypoint_warp_3d_reference(*inputs, mask_is_logits, padding_mode, align_corners, True)

    return _gradients(warp, (feature, kp_source, kp_driving, mask, jacobian), (grad_out, grad_deformation))


def sparse_motion_features_reference(feature: Tensor, kp_source: Tensor, kp_driving: Tensor, jacobian: Tensor,
                                     variance: float, align_corners: bool) -> Tensor:
    """The dense motion network's input (N, K + 1, 1 + C, D, H, W) over the feature's volume: per motion
    k the heatmap channel, then the feature sampled at ``T_k(p)`` (zeros padding), as FOMM /
    face-vid2vid build it from K + 1 warped copies of the feature."""
    n, c, *spatial = feature.shape
    motions = keypoint_motions(kp_source, kp_driving, jacobian, spatial)  # (N, K + 1, D, H, W, 3)
    views = motions.shape[1]
    copies = feature.unsqueeze(1).expand(n, views, *feature.shape[1:]).reshape(n * views, *feature.shape[1:])
    sampled = grid_sample_3d_reference(copies, motions.reshape(n * views, *motions.shape[2:]), "zeros", align_corners)
    heat = keypoint_heatmap_3d_reference(kp_source, kp_driving, spatial, variance)
    return torch.cat([heat.unsqueeze(2), sampled.reshape(n, views, c, *spatial)], dim=2)


def sparse_motion_features_backward_reference(grad_out: Tensor, feature: Tensor, kp_source: Tensor,
                                              kp_driving: Tensor, jacobian: Tensor, variance: float,
                                              align_corners: bool) -> tuple[Tensor, ...]:
    """The gradients of feature, kp_source, kp_driving and jacobian for ``grad_out``, contiguous."""
    return _gradients(lambda *inputs: sparse_motion_features_reference(*inputs, variance, align_corners),
                      (feature, kp_source, kp_driving, jacobian), (grad_out,))
