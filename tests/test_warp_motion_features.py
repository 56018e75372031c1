"""sparse_motion_features and keypoint_heatmap_3d: the dense motion network's input of §4.3.3.

Reference equivalence on samples, opcheck, compile, gradcheck and the transforms are in
test_op_contract.py; random inputs in test_op_properties.py. Here: every backend against the
chain FOMM / face-vid2vid run (K + 1 repeated copies of the feature through F.grid_sample, then
the heatmaps concatenated), the heatmap's formula, and bad input.
"""

from __future__ import annotations

import math

import pytest
import torch

import dgm_fast
from dgm_fast.warp.op import SPARSE_MOTION_FEATURES
from dgm_fast.warp.eager import motion_features_chain as eager_chain
from dgm_fast.warp.reference import identity_grid
from helpers import TOL, backend_fixture, make_tensor

backend = backend_fixture(SPARSE_MOTION_FEATURES)


def _inputs(n, c, k, volume, dtype=torch.float64, device="cpu", seed=0):
    feature = make_tensor((n, c, *volume), dtype, device, seed=seed)
    kp_source = make_tensor((n, k, 3), dtype, device, scale=0.5, seed=seed + 1)
    kp_driving = kp_source + make_tensor((n, k, 3), dtype, device, scale=0.1, seed=seed + 2)
    jacobian = torch.eye(3, dtype=dtype, device=device) + make_tensor((n, k, 3, 3), dtype, device, scale=0.2,
                                                                      seed=seed + 3)
    return feature, kp_source, kp_driving, jacobian


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("with_jacobian", [True, False])
def test_matches_the_eager_chain(backend, align_corners, with_jacobian):
    """Values and the gradients of feature, keypoints and Jacobians, at N = 1 (the backward splits
    channels between threads) and N = 2, past one block of voxels."""
    device, _ = backend
    for n, c, k in ((1, 4, 3), (2, 2, 1)):
        feature, kp_s, kp_d, jac = _inputs(n, c, k, (4, 9, 10), device=device, seed=n)
        jac = jac if with_jacobian else torch.eye(3, dtype=jac.dtype, device=device).expand_as(jac)
        leaves = [t.clone().requires_grad_() for t in (feature, kp_s, kp_d, jac)]
        expect = eager_chain(*leaves, 0.05, align_corners)
        grad = make_tensor(tuple(expect.shape), torch.float64, device, seed=7)
        wanted = leaves if with_jacobian else leaves[:3]
        expect_grads = torch.autograd.grad(expect, wanted, grad)
        mine = [t.clone().requires_grad_() for t in leaves]
        got = dgm_fast.sparse_motion_features(*mine[:3], jacobian=mine[3] if with_jacobian else None, variance=0.05,
                                              align_corners=align_corners)
        got_grads = torch.autograd.grad(got, mine if with_jacobian else mine[:3], grad)
        for g, e in zip((got, *got_grads), (expect, *expect_grads)):
            torch.testing.assert_close(g, e, **TOL[torch.float64])


def test_float32_matches_the_eager_chain(backend):
    device, _ = backend
    inputs = _inputs(2, 8, 5, (6, 10, 12), torch.float32, device)
    torch.testing.assert_close(dgm_fast.sparse_motion_features(*inputs[:3], jacobian=inputs[3]),
                               eager_chain(*inputs, 0.01, False), **TOL[torch.float32])


def test_heatmap_formula():
    """Channel 0 is zero; at a driving keypoint placed on a voxel, channel k is 1 - exp(-|d|^2 / 2v)
    for d the source keypoint's offset (§4.3.3's h_j)."""
    d, h, w = 3, 5, 4
    p = identity_grid((d, h, w), torch.float64, "cpu")
    kp_driving = p[1, 2, 3].reshape(1, 1, 3).clone()
    kp_source = kp_driving + torch.tensor([0.1, -0.2, 0.05], dtype=torch.float64)
    heat = dgm_fast.keypoint_heatmap_3d(kp_source, kp_driving, (d, h, w), variance=0.02)
    assert heat.shape == (1, 2, d, h, w) and torch.equal(heat[:, 0], torch.zeros_like(heat[:, 0]))
    expect = 1 - math.exp(-0.5 * (0.1**2 + 0.2**2 + 0.05**2) / 0.02)
    torch.testing.assert_close(heat[0, 1, 1, 2, 3].item(), expect, **TOL[torch.float64])


@pytest.mark.parametrize("call,error,match", [
    (lambda s, d: dgm_fast.keypoint_heatmap_3d(s, d, (4, 4)), ValueError, "^spatial_size must be three ints"),
    (lambda s, d: dgm_fast.keypoint_heatmap_3d(s, d, (4, 1, 4)), ValueError, "^spatial_size must be three ints"),
    (lambda s, d: dgm_fast.keypoint_heatmap_3d(s, d[:, :1], (4, 4, 4)), ValueError, "^kp_driving must have the shape"),
    (lambda s, d: dgm_fast.keypoint_heatmap_3d(s, d, (4, 4, 4), variance=-1.0), ValueError, "^variance must be in"),
    (lambda s, d: dgm_fast.sparse_motion_features(make_tensor((2, 3, 4, 4, 1)), s, d), ValueError,
     "^feature must have spatial dimensions of at least 2"),
    (lambda s, d: dgm_fast.sparse_motion_features(make_tensor((2, 3, 4, 4, 4)), s, d, variance=math.inf),
     ValueError, "^variance must be finite"),
])
def test_bad_arguments_are_named(call, error, match):
    kp_source, kp_driving = make_tensor((2, 3, 3)), make_tensor((2, 3, 3), seed=1)
    with pytest.raises(error, match=match):
        call(kp_source, kp_driving)
