"""The face-reenactment model of §4.3.5 (dgm_fast/models/reenactment.py) at tiny widths: shapes, the
mask and occlusion, the fused warps against the same model on the eager chains of FOMM /
face-vid2vid (values and parameter gradients), loss (4.9), training, the identity motion, the
default widths of Tables 4.9-4.10, and bad input."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dgm_fast.models import reenactment
from dgm_fast.models.reenactment import (AppearanceEncoder, DeltaNet, DenseMotionNetwork, Generator, ReenactmentModel,
                                         ResBottleneck)
from dgm_fast.warp.eager import keypoint_warp_chain, motion_features_chain
from dgm_fast.warp.reference import identity_grid

K, N, SIZE = 3, 2, 32
TINY = dict(widths=(8, 16), feature_channels=4, depth=4, res_blocks=1, motion_widths=(4, 8, 16), delta_stem=8,
            delta_stages=((16, 1), (32, 1)))
VOLUME = (4, 16, 16)  # (D, H, W) of f_s for SIZE = 32 and TINY's widths


def _model(dtype=torch.float32, fresh=False, **kwargs) -> ReenactmentModel:
    """A tiny model; unless ``fresh``, the delta net's output layer (zero at the start) perturbed so that
    delta != 0."""
    torch.manual_seed(0)
    model = ReenactmentModel(kwargs.pop("n_keypoints", K), **{**TINY, **kwargs}).to(dtype)
    if not fresh:
        with torch.no_grad():
            model.delta.net[-1].weight.normal_(std=1e-2)
    return model


def _pair(dtype=torch.float32, k=K, seed=1):
    """Smooth source and driving images in [0, 1] (mean about 1/3: a target the model can learn in a few
    steps, unlike noise) and their landmarks q_s, q_d (N, K, 3)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand((2 * N, 3, 4, 4), generator=gen, dtype=torch.float64)
    source, driving = (F.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear") ** 2).to(dtype).chunk(2)
    q_source = (torch.rand((N, k, 3), generator=gen, dtype=torch.float64) * 1.2 - 0.6).to(dtype)
    q_driving = q_source + 0.1 * torch.randn((N, k, 3), generator=gen, dtype=torch.float64).to(dtype)
    return source, driving, q_source, q_driving


def _identity(kp):
    return torch.eye(3, dtype=kp.dtype, device=kp.device).expand(*kp.shape[:2], 3, 3)


def _eager_warp(feature, kp_source, kp_driving, mask, *, jacobian=None, mask_is_logits=False, padding_mode="zeros",
                align_corners=False, return_deformation=False):
    """keypoint_warp_3d's signature on FOMM's chain: every motion materialised, then F.grid_sample."""
    jacobian = _identity(kp_source) if jacobian is None else jacobian
    out, phi = keypoint_warp_chain(feature, kp_source, kp_driving, mask, jacobian, mask_is_logits, padding_mode,
                                   align_corners)
    return (out, phi) if return_deformation else out


def _eager_features(feature, kp_source, kp_driving, *, jacobian=None, variance=0.01, align_corners=False):
    jacobian = _identity(kp_source) if jacobian is None else jacobian
    return motion_features_chain(feature, kp_source, kp_driving, jacobian, variance, align_corners)


@pytest.mark.parametrize("k, compress", [(K, None), (5, 2)])
def test_shapes(k, compress):
    model = _model(n_keypoints=k, compress=compress)
    source, driving, q_s, q_d = _pair(k=k)
    out = model(source, driving, q_s, q_d, return_deformation=True)
    assert out.image.shape == source.shape
    assert out.kp_source.shape == out.delta_driving.shape == (N, k, 3)
    assert out.motion.mask_logits.shape == (N, k + 1, *VOLUME)
    assert out.motion.occlusion.shape == (N, 1, *VOLUME[1:])
    assert out.motion.warped.shape == (N, 4, *VOLUME)
    assert out.motion.deformation.shape == (N, *VOLUME, 3)
    assert model(source, driving, q_s, q_d).motion.deformation is None
    assert ((out.image > 0) & (out.image < 1)).all()


def test_mask_is_a_distribution_and_occlusion_in_the_unit_interval():
    out = _model()(*_pair())
    weights = torch.softmax(out.motion.mask_logits, dim=1)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(N, *VOLUME))
    assert (weights >= 0).all()
    assert ((out.motion.occlusion > 0) & (out.motion.occlusion < 1)).all()


@pytest.mark.parametrize("with_jacobian", [False, True])
def test_fused_warps_match_the_eager_chain(monkeypatch, with_jacobian):
    """The model with the fused ops equals the same model on F.grid_sample chains: every output and
    every parameter's gradient, in float64."""
    fused = _model(torch.float64)
    eager = copy.deepcopy(fused)
    source, driving, q_s, q_d = _pair(torch.float64)
    gen = torch.Generator().manual_seed(5)
    jacobian = torch.eye(3, dtype=torch.float64) + 0.1 * torch.randn((N, K, 3, 3), generator=gen, dtype=torch.float64)
    weights = [torch.randn(shape, generator=gen, dtype=torch.float64) for shape in
               ((N, 3, SIZE, SIZE), (N, *VOLUME, 3), (N, K, 3))]

    def run(model):
        out = model(source, driving, q_s, q_d, jacobian=jacobian if with_jacobian else None, return_deformation=True)
        scalar = sum((w * t).sum() for w, t in zip(weights, (out.image, out.motion.deformation, out.delta_source)))
        scalar.backward()
        return out

    want = run(fused)
    monkeypatch.setattr(reenactment, "keypoint_warp_3d", _eager_warp)
    monkeypatch.setattr(reenactment, "sparse_motion_features", _eager_features)
    got = run(eager)
    tol = dict(rtol=1e-9, atol=1e-11)
    assert want.delta_source.abs().max() > 1e-3  # the delta net takes part
    for a, b in zip((want.image, want.kp_source, want.kp_driving, *want.motion),
                    (got.image, got.kp_source, got.kp_driving, *got.motion)):
        torch.testing.assert_close(a, b, **tol)
    for (name, a), b in zip(fused.named_parameters(), eager.parameters()):
        torch.testing.assert_close(a.grad, b.grad, **tol, msg=lambda m, name=name: f"{name}: {m}")


def test_loss_is_equation_4_9():
    model = _model()
    source, driving, q_s, q_d = _pair()
    loss = model.loss(source, driving, q_s, q_d, delta_weight=0.5)
    out = loss.output
    reconstruction = torch.linalg.vector_norm(driving - out.image, 1) / driving.numel()
    penalty = (torch.linalg.vector_norm(out.delta_source, 1)
               + torch.linalg.vector_norm(out.delta_driving, 1)) / (N * K * 3)
    torch.testing.assert_close(loss.reconstruction, reconstruction)
    torch.testing.assert_close(loss.delta_penalty, penalty)
    torch.testing.assert_close(loss.total, reconstruction + 0.5 * penalty)
    assert penalty > 0
    torch.testing.assert_close(out.kp_source, q_s + out.delta_source)
    torch.testing.assert_close(out.kp_driving, q_d + out.delta_driving)
    plain = model.loss(source, driving, q_s, q_d, delta_weight=0.5, use_delta=False)
    assert plain.delta_penalty == 0 and plain.total == plain.reconstruction
    torch.testing.assert_close(plain.output.kp_driving, q_d)


def test_gradients_reach_every_network():
    model = _model()
    model.loss(*_pair()).total.backward()
    for name in ("delta", "encoder", "motion", "generator"):
        grads = [p.grad for p in getattr(model, name).parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name
    assert model.delta.net[0].weight.grad.abs().sum() > 0  # through the whole delta net


def test_delta_net_starts_at_the_landmarks_and_learns():
    model = _model(fresh=True)
    source, driving, q_s, q_d = _pair()
    loss = model.loss(source, driving, q_s, q_d)
    assert (loss.output.kp_source == q_s).all() and (loss.output.kp_driving == q_d).all()
    loss.total.backward()
    assert model.delta.net[-1].weight.grad.abs().sum() > 0


def test_adam_steps_reduce_the_loss():
    model = _model(fresh=True)
    pair = _pair()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = model.loss(*pair).total
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_identical_pair_with_zero_delta_is_the_identity_warp():
    model = _model(torch.float64, fresh=True)
    source, _, q, _ = _pair(torch.float64)
    out = model(source, source, q, q, return_deformation=True)
    assert (out.delta_source == 0).all() and (out.delta_driving == 0).all()
    grid = identity_grid(VOLUME, torch.float64, "cpu").expand(N, *VOLUME, 3)
    torch.testing.assert_close(out.motion.deformation, grid, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.motion.warped, model.encoder(source), rtol=0, atol=1e-12)


def test_mask_on_the_identity_motion_reproduces_the_feature():
    model = _model(torch.float64)
    source, driving, q_s, q_d = _pair(torch.float64)
    feature = model.encoder(source)
    assert not torch.allclose(model(source, driving, q_s, q_d).motion.warped, feature)  # the keypoints move it
    with torch.no_grad():  # all weight on T_0 (softmax e^-40 elsewhere)
        model.motion.mask.weight.zero_()
        model.motion.mask.bias.copy_(torch.tensor([40.0] + [0.0] * K))
    out = model(source, driving, q_s, q_d, return_deformation=True)
    torch.testing.assert_close(out.motion.warped, feature, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.motion.deformation, identity_grid(VOLUME, torch.float64, "cpu").expand_as(
        out.motion.deformation), rtol=0, atol=1e-12)


def test_default_widths_are_tables_4_9_and_4_10():
    with torch.device("meta"):  # no memory, no initialisation cost
        model = ReenactmentModel(20)

    def convs(module, kind):
        return [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in module.modules() if isinstance(c, kind)]

    assert convs(model.encoder, nn.Conv2d) == [(3, 64, 7), (64, 128, 3), (128, 256, 3), (256, 512, 1)]
    assert convs(model.encoder, nn.Conv3d) == [(32, 32, 3)] * 12
    motion_in = 21 * 33  # (K + 1)(1 + C)
    assert [c[1] for c in convs(model.motion.hourglass, nn.Conv3d)] == [64, 128, 256, 512, 1024, 512, 256, 128, 64, 32]
    assert convs(model.motion.mask, nn.Conv3d) == [(32 + motion_in, 21, 7)]
    assert convs(model.motion.occlusion, nn.Conv2d) == [((32 + motion_in) * 16, 1, 7)]
    assert convs(model.generator, nn.Conv2d) == ([(512, 256, 3), (256, 256, 1)] + [(256, 256, 3)] * 12
                                                 + [(256, 128, 3), (128, 64, 3), (64, 3, 7)])
    blocks = [(b.body[-2].out_channels, b.body[3].stride[0]) for b in model.delta.modules()
              if isinstance(b, ResBottleneck)]
    assert blocks == ([(256, 1)] * 3 + [(512, 2)] + [(512, 1)] * 3 + [(1024, 2)] + [(1024, 1)] * 5 + [(2048, 2)]
                      + [(2048, 1)] * 2)
    assert (model.delta.net[-1].in_features, model.delta.net[-1].out_features) == (2048, 60)
    assert model.scale == 128


@pytest.fixture(scope="module")
def tiny():
    """The model and its inputs (source, driving, q_s, q_d), and a feature volume f_s."""
    return _model(), *_pair(), torch.zeros(N, 4, *VOLUME)


# each call gets (model, source, driving, q_s, q_d, feature)
@pytest.mark.parametrize("call, error, match", [
    (lambda m, s, d, qs, qd, f: m(s[..., :28, :28], d[..., :28, :28], qs, qd), ValueError,
     r"source's height and width must be positive multiples of 8"),
    (lambda m, s, d, qs, qd, f: m(s[:, :2], d[:, :2], qs, qd), ValueError, r"source must have shape \(N, 3, H, W\)"),
    (lambda m, s, d, qs, qd, f: m(s.half(), d, qs, qd), TypeError, "source must have a dtype"),
    (lambda m, s, d, qs, qd, f: m(s.numpy(), d, qs, qd), TypeError, "source must be a torch.Tensor"),
    (lambda m, s, d, qs, qd, f: m(s.double(), d.double(), qs.double(), qd.double()), TypeError,
     "source must have the model's dtype"),
    (lambda m, s, d, qs, qd, f: m(s, d[:1], qs, qd), ValueError, "driving must have the shape of source"),
    (lambda m, s, d, qs, qd, f: m(s, None, qs, qd), ValueError, "driving must be given when use_delta=True"),
    (lambda m, s, d, qs, qd, f: m(s, d, qs[:, :2], qd), ValueError, r"q_source must have shape \(N=2, K=3, 3\)"),
    (lambda m, s, d, qs, qd, f: m(s, d, qs, qd[..., :2]), ValueError, r"q_driving must have shape \(N=2, K=3, 3\)"),
    (lambda m, s, d, qs, qd, f: m(s, d, qs.double(), qd), TypeError, "q_source must have the dtype of source"),
    (lambda m, s, d, qs, qd, f: m(s, d, qs, qd, jacobian=torch.zeros(N, K, 2, 2)), ValueError,
     "jacobian must have shape"),
    (lambda m, s, d, qs, qd, f: m(s, d, qs, qd, use_delta=1), TypeError, "use_delta must be a bool"),
    (lambda m, s, d, qs, qd, f: m.loss(s, None, qs, qd), ValueError, "driving must be given"),
    (lambda m, s, d, qs, qd, f: m.loss(s, d, qs, qd, delta_weight=-1.0), ValueError, "delta_weight must be in"),
    (lambda m, s, d, qs, qd, f: m.motion(f[:, :, :3], qs, qd), ValueError, r"feature must have shape \(N, C=4, D=4"),
    (lambda m, s, d, qs, qd, f: m.motion(f[..., :14, :14], qs, qd), ValueError,
     "feature's height and width must be positive multiples of 4"),
    (lambda m, s, d, qs, qd, f: m.motion(f, qs[:, :1], qd[:, :1]), ValueError, r"kp_source must have shape \(N=2, K=3"),
    (lambda m, s, d, qs, qd, f: m.generator(f, torch.zeros(N, 1, 8, 8)), ValueError, "occlusion must have shape"),
    (lambda m, s, d, qs, qd, f: m.encoder(s[..., :31, :32]), ValueError, "image's height and width"),
    (lambda m, s, d, qs, qd, f: m.delta(s[:, :1]), ValueError, r"image must have shape \(N, 3, H, W\)"),
])
def test_bad_input_names_the_argument(tiny, call, error, match):
    with pytest.raises(error, match=match):
        call(*tiny)


@pytest.mark.parametrize("make, error, match", [
    (lambda: ReenactmentModel(0), ValueError, "n_keypoints must be >= 1"),
    (lambda: ReenactmentModel(K, **{**TINY, "widths": 8}), TypeError, "widths must be a tuple"),
    (lambda: ReenactmentModel(K, **{**TINY, "motion_widths": (4,)}), ValueError, "motion_widths must have at least 2"),
    (lambda: ReenactmentModel(K, **{**TINY, "depth": 1}), ValueError, "depth must be >= 2"),
    (lambda: ReenactmentModel(K, **{**TINY, "compress": 0}), ValueError, "compress must be >= 1"),
    (lambda: ReenactmentModel(K, **{**TINY, "delta_stages": ((16, 1), 32)}), TypeError, "delta_stages must be"),
    (lambda: ReenactmentModel(K, **{**TINY, "delta_stages": ((2, 1),)}), ValueError, "delta_stages width must be"),
    (lambda: ReenactmentModel(K, **{**TINY, "variance": 0.0}), ValueError, "variance must be in"),
    (lambda: ReenactmentModel(K, **{**TINY, "align_corners": 1}), TypeError, "align_corners must be a bool"),
    (lambda: DenseMotionNetwork(K, 4, 4, (4, 8), mask_kernel=4), ValueError, "mask_kernel must be odd"),
    (lambda: AppearanceEncoder(feature_channels=0), ValueError, "feature_channels must be >= 1"),
    (lambda: Generator(res_blocks=-1), ValueError, "res_blocks must be >= 0"),
    (lambda: DeltaNet(K, stem=2.5), TypeError, "stem must be an int"),
])
def test_bad_configuration_names_the_argument(make, error, match):
    with pytest.raises(error, match=match):
        make()
