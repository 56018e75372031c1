"""Public 3-D warping ops: argument checks, then the op (dgm_fast/warp/op.py)."""

from __future__ import annotations

import torch
from torch import Tensor

from dgm_fast import _checks
from dgm_fast.warp.op import GRID_SAMPLE_3D, KEYPOINT_WARP_3D, SPARSE_MOTION_FEATURES, GridSampleArgs, KeypointWarpArgs
from dgm_fast.warp.reference import PADDING_MODES, keypoint_heatmap_3d_reference

WARP_DTYPES = frozenset((torch.float32, torch.float64))  # grid positions need more than 16 bits


def _volume(name: str, t) -> Tensor:
    """A float32/64 (N, C, D, H, W) tensor with non-empty spatial dimensions."""
    _checks.dense_tensor(name, t, WARP_DTYPES)
    if t.dim() != 5:
        raise ValueError(f"{name} must be 5-D (N, C, D, H, W), got shape {tuple(t.shape)}")
    if 0 in t.shape[2:]:
        raise ValueError(f"{name} must have non-empty spatial dimensions (D, H, W), got {tuple(t.shape)}")
    return t


def _like_feature(name: str, t, ref_name: str, ref: Tensor) -> Tensor:
    """A dense tensor of the dtype and on the device of ``ref``."""
    _checks.dense_tensor(name, t, WARP_DTYPES)
    _checks.same_kind(name, t, ref_name, ref)
    return t


def _options(padding_mode, align_corners) -> None:
    if not isinstance(padding_mode, str):
        raise TypeError(f"padding_mode must be a str, one of {PADDING_MODES}, got {type(padding_mode).__name__}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    _checks.boolean("align_corners", align_corners)


def grid_sample_args(input, grid, padding_mode, align_corners) -> GridSampleArgs:
    """Checked arguments in the ops' form; bad ones raise naming the argument."""
    _volume("input", input)
    _like_feature("grid", grid, "input", input)
    if grid.dim() != 5 or grid.shape[-1] != 3:
        raise ValueError(f"grid must be 5-D (N, D_out, H_out, W_out, 3), got shape {tuple(grid.shape)}")
    if grid.shape[0] != input.shape[0]:
        raise ValueError(f"grid must have input's batch size {input.shape[0]}, got {grid.shape[0]}")
    _options(padding_mode, align_corners)
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


def _keypoints(feature: Tensor, kp_source, kp_driving, jacobian) -> Tensor:
    """Checked keypoints (N, K, 3) of ``feature``'s batch; the Jacobians, identities when None."""
    n = feature.shape[0]
    _like_feature("kp_source", kp_source, "feature", feature)
    if kp_source.dim() != 3 or kp_source.shape[0] != n or kp_source.shape[2] != 3:
        raise ValueError(f"kp_source must have shape (N={n}, K, 3), got {tuple(kp_source.shape)}")
    k = kp_source.shape[1]
    _like_feature("kp_driving", kp_driving, "feature", feature)
    if kp_driving.shape != kp_source.shape:
        raise ValueError(f"kp_driving must have the shape of kp_source {tuple(kp_source.shape)}, "
                         f"got {tuple(kp_driving.shape)}")
    if jacobian is None:
        return torch.eye(3, dtype=feature.dtype, device=feature.device).expand(n, k, 3, 3)
    _like_feature("jacobian", jacobian, "feature", feature)
    if jacobian.shape != (n, k, 3, 3):
        raise ValueError(f"jacobian must have shape (N={n}, K={k}, 3, 3), got {tuple(jacobian.shape)}")
    return jacobian


def _grid_sizes(name: str, shape) -> None:
    if min(shape[2:]) < 2:
        raise ValueError(f"{name} must have spatial dimensions of at least 2 (the identity grid spans [-1, 1]), "
                         f"got {tuple(shape)}")


def keypoint_warp_args(feature, kp_source, kp_driving, mask, jacobian, mask_is_logits, padding_mode, align_corners,
                       return_deformation) -> tuple[Tensor, KeypointWarpArgs]:
    """The Jacobians (identities when None) and the checked scalars in the op's form; bad arguments
    raise naming themselves."""
    _volume("feature", feature)
    jacobian = _keypoints(feature, kp_source, kp_driving, jacobian)
    n, k = kp_source.shape[:2]
    _like_feature("mask", mask, "feature", feature)
    if mask.dim() != 5 or mask.shape[0] != n or mask.shape[1] != k + 1:
        raise ValueError(f"mask must have shape (N={n}, K + 1={k + 1}, D, H, W): one weight per keypoint and one "
                         f"for the identity, got {tuple(mask.shape)}")
    _grid_sizes("mask", mask.shape)
    _checks.boolean("mask_is_logits", mask_is_logits)
    _options(padding_mode, align_corners)
    _checks.boolean("return_deformation", return_deformation)
    return jacobian, KeypointWarpArgs(mask_is_logits, padding_mode, align_corners, return_deformation)


def keypoint_warp_3d(
    feature: Tensor, kp_source: Tensor, kp_driving: Tensor, mask: Tensor, *, jacobian: Tensor | None = None,
    mask_is_logits: bool = False, padding_mode: str = "zeros", align_corners: bool = False,
    return_deformation: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """The keypoint-driven warp of face reenactment (dissertation §4.3.3, eq. (4.5)) in one pass.

    With the identity grid ``p`` over the mask's volume (D, H, W) (``2 * (i / (n - 1)) - 1`` per
    axis, last dim (x, y, z)), the motions ``T_0(p) = p`` and ``T_k(p) = J_k (p - kp_driving_k) +
    kp_source_k`` (``J_k = I`` without ``jacobian``; else ``jacobian`` (N, K, 3, 3) is the combined
    ``A_sk^-1 A_dk`` of FOMM), and ``m`` the mask (N, K + 1, D, H, W) (its softmax over dim 1 when
    ``mask_is_logits``), the deformation is ``phi(p) = sum_k m_k(p) T_k(p)`` and the result
    ``grid_sample_3d(feature, phi, padding_mode=..., align_corners=...)`` (N, C, D, H, W). Neither the
    K + 1 motions nor phi are stored (``return_deformation=True`` also returns phi (N, D, H, W, 3)).
    Keypoints (N, K, 3) are (x, y, z) in [-1, 1]; float32 or float64. Differentiable in the feature,
    both keypoint sets, the mask (or logits) and the Jacobians.
    """
    jacobian, args = keypoint_warp_args(feature, kp_source, kp_driving, mask, jacobian, mask_is_logits,
                                        padding_mode, align_corners, return_deformation)
    out, deformation = KEYPOINT_WARP_3D(feature, kp_source, kp_driving, mask, jacobian, *args)
    return (out, deformation) if return_deformation else out


def keypoint_heatmap_3d(kp_source: Tensor, kp_driving: Tensor, spatial_size, *, variance: float = 0.01) -> Tensor:
    """The keypoint heatmaps of the dense motion network (§4.3.3; face-vid2vid's kp2gaussian),
    (N, K + 1, D, H, W): channel 0 zeros, channel k ``exp(-0.5 |p - kp_driving_k|^2 / variance) -
    exp(-0.5 |p - kp_source_k|^2 / variance)`` over the identity grid p of ``spatial_size`` (D, H, W).
    Plain PyTorch (``sparse_motion_features`` computes the same channel inside its fused pass)."""
    _checks.dense_tensor("kp_source", kp_source, WARP_DTYPES)
    if kp_source.dim() != 3 or kp_source.shape[2] != 3:
        raise ValueError(f"kp_source must have shape (N, K, 3), got {tuple(kp_source.shape)}")
    _like_feature("kp_driving", kp_driving, "kp_source", kp_source)
    if kp_driving.shape != kp_source.shape:
        raise ValueError(f"kp_driving must have the shape of kp_source {tuple(kp_source.shape)}, "
                         f"got {tuple(kp_driving.shape)}")
    if (not isinstance(spatial_size, (tuple, list)) or len(spatial_size) != 3
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 2 for n in spatial_size)):
        raise ValueError(f"spatial_size must be three ints >= 2 (D, H, W), got {spatial_size!r}")
    variance = _checks.real("variance", variance, low=0.0, low_open=True, finite=True)
    return keypoint_heatmap_3d_reference(kp_source, kp_driving, tuple(spatial_size), variance)


def sparse_motion_features(feature: Tensor, kp_source: Tensor, kp_driving: Tensor, *, jacobian: Tensor | None = None,
                           variance: float = 0.01, align_corners: bool = False) -> Tensor:
    """The dense motion network's input (§4.3.3, steps 1-2 of FOMM's motion model) in one pass:
    (N, K + 1, 1 + C, D, H, W) over the feature's volume, per motion k (``T_0(p) = p``,
    ``T_k(p) = J_k (p - kp_driving_k) + kp_source_k``) its heatmap channel (``keypoint_heatmap_3d``)
    and then ``feature`` sampled at ``T_k(p)`` (``grid_sample_3d``, zeros padding). The K + 1 warped
    copies are written straight into the output, each voxel's neighbourhood read once per motion
    while it is in cache; nothing else is stored. Differentiable in the feature, both keypoint sets
    and the Jacobians.
    """
    _volume("feature", feature)
    _grid_sizes("feature", feature.shape)
    jacobian = _keypoints(feature, kp_source, kp_driving, jacobian)
    variance = _checks.real("variance", variance, low=0.0, low_open=True, finite=True)
    return SPARSE_MOTION_FEATURES(feature, kp_source, kp_driving, jacobian, variance,
                                  _checks.boolean("align_corners", align_corners))
