"""The chains users run today for the warping of §4.3.3, as FOMM / face-vid2vid's code computes them
with ``F.grid_sample``: every motion materialised. They are what the fused ops replace, the
baselines of bench/test_warp_bench.py and what tests/test_warp_*.py hold the fused ops to (the
specifications themselves are in reference.py, which differentiate to any order)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dgm_fast.warp.reference import keypoint_deformation, keypoint_heatmap_3d_reference, keypoint_motions


def keypoint_warp_chain(feature: Tensor, kp_source: Tensor, kp_driving: Tensor, mask: Tensor, jacobian: Tensor,
                        mask_is_logits: bool, padding_mode: str = "zeros",
                        align_corners: bool = False) -> tuple[Tensor, Tensor]:
    """``(warped feature, deformation)``: the K + 1 motions weighted and summed, then F.grid_sample."""
    phi = keypoint_deformation(kp_source, kp_driving, mask, jacobian, mask_is_logits)
    out = F.grid_sample(feature, phi, mode="bilinear", padding_mode=padding_mode, align_corners=align_corners)
    return out, phi


def motion_features_chain(feature: Tensor, kp_source: Tensor, kp_driving: Tensor, jacobian: Tensor,
                          variance: float = 0.01, align_corners: bool = False) -> Tensor:
    """The dense motion network's input: K + 1 repeated copies of the feature through F.grid_sample,
    the heatmaps concatenated in front, (N, K + 1, 1 + C, D, H, W)."""
    n, c, *spatial = feature.shape
    motions = keypoint_motions(kp_source, kp_driving, jacobian, spatial)
    views = motions.shape[1]
    copies = feature.unsqueeze(1).repeat(1, views, 1, 1, 1, 1).view(n * views, c, *spatial)
    sampled = F.grid_sample(copies, motions.view(n * views, *spatial, 3), align_corners=align_corners)
    heat = keypoint_heatmap_3d_reference(kp_source, kp_driving, spatial, variance)
    return torch.cat([heat.unsqueeze(2), sampled.view(n, views, c, *spatial)], dim=2)
