"""The warp part of the demo (dgm_fast.demo.warp_head): 3DMM keypoints of a pose change, the mask,
the head volume, its rendering, and that the warp turns the head as the 3DMM says."""

import math

import pytest
import torch

import dgm_fast
from dgm_fast.demo import warp_head
from dgm_fast.models.face3dmm import rotation_matrix, synthetic_morphable_model
from dgm_fast.warp.reference import identity_grid

SIZE = (12, 24, 24)


@pytest.fixture(scope="module")
def turned():
    """Keypoints of a face turned by pitch 10, yaw -25 degrees (no expression change)."""
    model = synthetic_morphable_model(n_landmarks=15, dtype=torch.float64)
    return warp_head.pose_keypoints(model, (10.0, -25.0, 0.0), None, seed=0)


def test_keypoints_and_jacobians_are_the_rigid_pose_map(turned):
    """T_k(p) = J (p - kd_k) + ks_k maps every driving keypoint onto its source keypoint, and J is the
    rotation R_s R_d^-1 of (4.7) (R_s = I here)."""
    kp_source, kp_driving, jacobian = turned
    assert kp_source.shape == kp_driving.shape == (1, 15, 3) and jacobian.shape == (1, 15, 3, 3)
    expect = rotation_matrix(torch.tensor([[10.0, -25.0, 0.0]], dtype=torch.float64) * math.pi / 180)[0].mT
    torch.testing.assert_close(jacobian[0, 3], expect)
    torch.testing.assert_close(kp_driving[0] @ jacobian[0, 0].mT, kp_source[0])
    assert not torch.allclose(kp_driving, kp_source, atol=0.05)  # the pose change moves them


def test_mask_is_a_partition_of_unity_with_identity_outside_the_head(turned):
    _, kp_driving, jacobian = turned
    mask = warp_head.motion_mask(SIZE, kp_driving, jacobian)
    assert mask.shape == (1, 16, *SIZE) and (mask >= 0).all()
    torch.testing.assert_close(mask.sum(dim=1), torch.ones(1, *SIZE, dtype=mask.dtype))
    assert mask[0, 0, 0, 0, 0] > 0.999  # a corner of the volume: background, T_0 = identity
    assert mask[0, 0, SIZE[0] // 2, SIZE[1] // 2, SIZE[2] // 2] < 1e-3  # the head's centre follows the keypoints


def test_warp_turns_the_head_rigidly(turned):
    """For a pose-only change every T_k is the inverse pose map J p, so phi(p) = m_0 p + (1 - m_0) J p:
    the warp of §4.3.3 reproduces the 3DMM's rigid motion wherever the background weight m_0 is 0."""
    kp_source, kp_driving, jacobian = turned
    mask = warp_head.motion_mask(SIZE, kp_driving, jacobian)
    volume = warp_head.head_volume(SIZE, kp_source).double()
    _, phi = dgm_fast.keypoint_warp_3d(volume, kp_source, kp_driving, mask, jacobian=jacobian,
                                                 return_deformation=True)
    p = identity_grid(SIZE, torch.float64, "cpu")
    background = mask[0, 0, ..., None]
    torch.testing.assert_close(phi[0], background * p + (1 - background) * (p @ jacobian[0, 0].mT))
    assert (background < 1e-6).sum() > 100  # and the head is rigid


def test_head_volume_has_markers_at_the_source_keypoints(turned):
    kp_source, size = turned[0], (33, 33, 33)  # voxels 0.0625 apart: the nearest is inside a marker (radius 0.07)
    volume = warp_head.head_volume(size, kp_source)
    assert volume.shape == (1, 4, *size) and volume.dtype == torch.float32
    assert 0 <= volume.min() and volume.max() <= 1
    for kp in kp_source[0]:  # the voxel nearest each keypoint (x, y, z) is opaque
        ix, iy, iz = ((kp + 1) / 2 * 32).round().long()
        assert volume[0, 3, iz, iy, ix] > 0.99


def test_render_composites_front_to_back():
    empty = torch.zeros(1, 4, 3, 2, 2)
    torch.testing.assert_close(warp_head.render(empty), torch.ones(2, 2, 3))  # white behind nothing
    volume = torch.zeros(1, 4, 3, 2, 2)
    volume[0, :3, 2] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]  # the front slice (z = +1, nearest): red
    volume[0, :3, 0] = torch.tensor([0.0, 0.0, 1.0])[:, None, None]  # behind it: blue
    volume[0, 3, 2], volume[0, 3, 0] = 0.5, 1.0
    expect = torch.tensor([0.5, 0.0, 0.5]).expand(2, 2, 3)  # half red, half of the rest blue
    torch.testing.assert_close(warp_head.render(volume), expect)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(mode="slow"), ValueError, "^mode must be one of"),
    (dict(angles_deg=(0.0, 61.0, 0.0)), ValueError, r"^angles_deg\[1\] must be in"),
    (dict(angles_deg=(0.0, 1.0)), ValueError, "^angles_deg must be"),
    (dict(expression_seed=-1), ValueError, "^expression_seed must be"),
    (dict(seed=1.5), TypeError, "^seed must be an int"),
])
def test_run_warp_checks_its_arguments_first(tmp_path, monkeypatch, kwargs, error, match):
    monkeypatch.setattr(warp_head, "time_warps", lambda *a: pytest.fail("worked before the checks"))
    with pytest.raises(error, match=match):
        warp_head.run_warp(tmp_path, **kwargs)
