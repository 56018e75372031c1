"""keypoint_warp_3d: the motion model of §4.3.3 and what is particular to the op.

Reference equivalence on samples, opcheck, compile, gradcheck and the transforms are in
test_op_contract.py; random inputs in test_op_properties.py. Here: every backend against the
eager chain users run today (FOMM / face-vid2vid's dense motion, then F.grid_sample), the
mathematics of the motions, and bad input.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dgm_fast
from dgm_fast.warp.op import KEYPOINT_WARP_3D
from dgm_fast.warp.eager import keypoint_warp_chain as eager_chain
from dgm_fast.warp.reference import PADDING_MODES, identity_grid
from helpers import TOL, backend_fixture, make_tensor

backend = backend_fixture(KEYPOINT_WARP_3D)


def _inputs(n, c, k, volume, mask_volume, dtype=torch.float64, device="cpu", seed=0):
    feature = make_tensor((n, c, *volume), dtype, device, seed=seed)
    kp_source = make_tensor((n, k, 3), dtype, device, scale=0.5, seed=seed + 1)
    kp_driving = kp_source + make_tensor((n, k, 3), dtype, device, scale=0.1, seed=seed + 2)
    logits = make_tensor((n, k + 1, *mask_volume), dtype, device, scale=2.0, seed=seed + 3)
    jacobian = torch.eye(3, dtype=dtype, device=device) + make_tensor((n, k, 3, 3), dtype, device, scale=0.2,
                                                                      seed=seed + 4)
    return feature, kp_source, kp_driving, logits, jacobian


@pytest.mark.parametrize("mask_is_logits", [True, False])
@pytest.mark.parametrize("with_jacobian", [True, False])
@pytest.mark.parametrize("padding_mode,align_corners", [(p, a) for p in PADDING_MODES for a in (False, True)])
def test_matches_the_eager_chain(backend, mask_is_logits, with_jacobian, padding_mode, align_corners):
    """Output, deformation and the gradients of feature, keypoints, mask (or logits) and Jacobians
    equal the F.grid_sample chain's, at sizes past one block of voxels with N = 1 and N = 3; the
    feature volume differs from the mask's, as the op allows."""
    device, _ = backend
    for n, c, k in ((1, 5, 4), (3, 2, 1)):
        feature, kp_s, kp_d, logits, jac = _inputs(n, c, k, (6, 7, 9), (4, 9, 10), device=device, seed=n)
        mask = logits if mask_is_logits else torch.softmax(logits, dim=1)
        eye = torch.eye(3, dtype=jac.dtype, device=device).expand_as(jac)
        leaves = [t.clone().requires_grad_() for t in (feature, kp_s, kp_d, mask, jac if with_jacobian else eye)]
        expect = eager_chain(*leaves, mask_is_logits, padding_mode, align_corners)
        grads_out = [make_tensor(tuple(o.shape), torch.float64, device, seed=9 + i) for i, o in enumerate(expect)]
        expect_grads = torch.autograd.grad(expect, leaves if with_jacobian else leaves[:4], grads_out)
        mine = [t.clone().requires_grad_() for t in leaves]
        got = dgm_fast.keypoint_warp_3d(*mine[:4], jacobian=mine[4] if with_jacobian else None,
                                        mask_is_logits=mask_is_logits, padding_mode=padding_mode,
                                        align_corners=align_corners, return_deformation=True)
        got_grads = torch.autograd.grad(got, mine if with_jacobian else mine[:4], grads_out)
        for g, e in zip((*got, *got_grads), (*expect, *expect_grads)):
            torch.testing.assert_close(g, e, **TOL[torch.float64])


def test_float32_matches_the_eager_chain(backend):
    device, _ = backend
    feature, kp_s, kp_d, logits, jac = _inputs(2, 16, 10, (8, 12, 12), (8, 12, 12), torch.float32, device)
    expect, _ = eager_chain(feature, kp_s, kp_d, logits, jac, True, "zeros", False)
    got = dgm_fast.keypoint_warp_3d(feature, kp_s, kp_d, logits, jacobian=jac, mask_is_logits=True)
    torch.testing.assert_close(got, expect, **TOL[torch.float32])


def test_the_identity_motion_returns_the_feature(backend):
    """All weight on T_0 (the identity) with align_corners=True samples every voxel centre: the
    feature itself (§4.3.3: the background motion)."""
    device, _ = backend
    feature, kp_s, kp_d, _, jac = _inputs(2, 3, 4, (5, 6, 7), (5, 6, 7), device=device)
    mask = torch.zeros(2, 5, 5, 6, 7, dtype=torch.float64, device=device)
    mask[:, 0] = 1
    out = dgm_fast.keypoint_warp_3d(feature, kp_s, kp_d, mask, jacobian=jac, align_corners=True)
    torch.testing.assert_close(out, feature, **TOL[torch.float64])


def test_one_keypoint_without_jacobian_translates(backend):
    """All weight on keypoint k and J = I: phi(p) = p + (kp_source_k - kp_driving_k), a shift."""
    device, _ = backend
    feature, kp_s, kp_d, _, _ = _inputs(1, 2, 3, (4, 5, 6), (3, 5, 4), device=device)
    mask = torch.zeros(1, 4, 3, 5, 4, dtype=torch.float64, device=device)
    mask[:, 2] = 1
    out, phi = dgm_fast.keypoint_warp_3d(feature, kp_s, kp_d, mask, return_deformation=True)
    shifted = identity_grid((3, 5, 4), torch.float64, device) + (kp_s[0, 1] - kp_d[0, 1])
    torch.testing.assert_close(phi[0], shifted, **TOL[torch.float64])
    torch.testing.assert_close(out, F.grid_sample(feature, shifted[None], align_corners=False), **TOL[torch.float64])


def test_non_finite_keypoints_read_nothing(backend):
    """A NaN or infinite keypoint makes the deformation non-finite where its motion has weight:
    those voxels sample nothing (zeros padding), the rest are untouched; no read leaves the volume."""
    device, _ = backend
    feature, kp_s, kp_d, logits, jac = _inputs(1, 2, 2, (4, 5, 6), (4, 5, 6), device=device)
    kp_d[0, 0, 1], kp_s[0, 1, 2] = float("nan"), float("inf")
    out = dgm_fast.keypoint_warp_3d(feature, kp_s, kp_d, logits, jacobian=jac, mask_is_logits=True)
    assert torch.equal(out, torch.zeros_like(out))  # every voxel weighs both keypoints (softmax > 0)
    expect, _ = eager_chain(feature, kp_s, kp_d, logits, jac, True, "border", False)
    got = dgm_fast.keypoint_warp_3d(feature, kp_s, kp_d, logits, jacobian=jac, mask_is_logits=True,
                                    padding_mode="border")
    torch.testing.assert_close(got, expect, atol=0, rtol=0)


# --- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize("change,error,match", [
    (lambda f, s, d, m: dict(mask=m[:, :3]), ValueError, r"^mask must have shape \(N=2, K \+ 1=4"),
    (lambda f, s, d, m: dict(kp_driving=d[:1]), ValueError, "^kp_driving must have the shape of kp_source"),
    (lambda f, s, d, m: dict(kp_source=s[..., :2], kp_driving=d[..., :2]), ValueError, r"^kp_source must have shape"),
    (lambda f, s, d, m: dict(feature=f[0]), ValueError, "^feature must be 5-D"),
    (lambda f, s, d, m: dict(mask=m.double()), TypeError, "^mask must have the dtype of feature"),
    (lambda f, s, d, m: dict(mask=m[..., :1]), ValueError, "^mask must have spatial dimensions of at least 2"),
    (lambda f, s, d, m: dict(jacobian=torch.zeros(2, 3, 3)), ValueError, r"^jacobian must have shape \(N=2, K=3"),
    (lambda f, s, d, m: dict(mask_is_logits="yes"), TypeError, "^mask_is_logits must be a bool"),
    (lambda f, s, d, m: dict(padding_mode="wrap"), ValueError, "^padding_mode must be one of"),
])
def test_bad_arguments_are_named(change, error, match):
    args = dict(feature=make_tensor((2, 3, 4, 5, 6)), kp_source=make_tensor((2, 3, 3)),
                kp_driving=make_tensor((2, 3, 3), seed=1), mask=make_tensor((2, 4, 3, 4, 5)))
    args |= change(*args.values())
    positional = [args.pop(name) for name in ("feature", "kp_source", "kp_driving", "mask")]
    with pytest.raises(error, match=match):
        dgm_fast.keypoint_warp_3d(*positional, **args)
