"""grid_sample_3d: the reference is F.grid_sample, and what is particular to the op.

Reference equivalence on samples, opcheck, compile, gradcheck and the transforms are in
test_op_contract.py; random inputs in test_op_properties.py. Here: the written-out reference
against F.grid_sample itself, every backend against F.grid_sample at sizes the kernels block
and parallelise over, the channel-split backward, the int64 offsets, and bad input.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dgm_fast
from dgm_fast import _extension
from dgm_fast.warp.op import GRID_SAMPLE_3D
from dgm_fast.warp.reference import PADDING_MODES, grid_sample_3d_reference
from helpers import TOL, backend_fixture, make_tensor

backend = backend_fixture(GRID_SAMPLE_3D)
OPTIONS = [(p, a) for p in PADDING_MODES for a in (False, True)]


def _grid(shape, dtype, device, scale=1.3, seed=1):
    """Positions around [-1, 1] and past it (scale > 1), as warps by keypoints make."""
    return make_tensor(shape, dtype, device, scale=scale, seed=seed)


def _grads(fn, x, grid, grad_out):
    x, grid = x.detach().requires_grad_(), grid.detach().requires_grad_()
    out = fn(x, grid)
    return (out, *torch.autograd.grad(out, (x, grid), grad_out, allow_unused=True, materialize_grads=True))


# --- the specification ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("padding_mode,align_corners", OPTIONS)
def test_reference_is_f_grid_sample(dtype, padding_mode, align_corners):
    """The written-out reference is F.grid_sample: values (to the bit: same formula and order),
    and both gradients, on volumes with a singleton axis and grids reaching well outside."""
    for shape, out in [((2, 3, 4, 5, 6), (3, 4, 5)), ((1, 2, 1, 3, 7), (2, 5, 3)), ((3, 1, 1, 1, 1), (2, 2, 2))]:
        x = make_tensor(shape, dtype, seed=0)
        grid = _grid((shape[0], *out, 3), dtype, "cpu", scale=1.6)
        grad_out = make_tensor((shape[0], shape[1], *out), dtype, seed=2)
        expect = _grads(lambda a, g: F.grid_sample(a, g, padding_mode=padding_mode, align_corners=align_corners),
                        x, grid, grad_out)
        got = _grads(lambda a, g: grid_sample_3d_reference(a, g, padding_mode, align_corners), x, grid, grad_out)
        torch.testing.assert_close(got[0], expect[0], atol=0, rtol=0)
        for g, e in zip(got[1:], expect[1:]):
            torch.testing.assert_close(g, e, **TOL[dtype])


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
def test_non_finite_grid_values_sample_as_torch_does(padding_mode):
    """NaN, inf and overflowing positions: the values F.grid_sample's CPU kernel computes (its
    backward disagrees with its own forward there, so only the forward is held to it)."""
    x = make_tensor((1, 2, 3, 4, 5), torch.float32)
    grid = _grid((1, 2, 3, 4, 3), torch.float32, "cpu")
    specials = [float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 3e38, -3e38]
    grid.view(-1)[torch.arange(len(specials)) * 4] = torch.tensor(specials)
    for align_corners in (False, True):
        expect = F.grid_sample(x, grid, padding_mode=padding_mode, align_corners=align_corners)
        torch.testing.assert_close(grid_sample_3d_reference(x, grid, padding_mode, align_corners), expect,
                                   atol=0, rtol=0)
        torch.testing.assert_close(dgm_fast.grid_sample_3d(x, grid, padding_mode=padding_mode,
                                                           align_corners=align_corners), expect, atol=0, rtol=0)


# --- every backend against F.grid_sample ---------------------------------------------------
@pytest.mark.parametrize("padding_mode,align_corners", OPTIONS)
def test_matches_f_grid_sample(backend, padding_mode, align_corners):
    """Forward and both gradients at sizes past one block of output voxels, with N = 1 (the
    backward splits channels between threads), odd channels and a non-contiguous grid."""
    device, _ = backend
    for n, c in ((1, 5), (3, 1)):
        x = make_tensor((n, c, 5, 9, 13), torch.float64, device)
        grid = _grid((n, 4, 11, 6, 3), torch.float64, device, seed=n).transpose(1, 3)
        grad_out = make_tensor((n, c, *grid.shape[1:4]), torch.float64, device, seed=3)
        expect = _grads(lambda a, g: F.grid_sample(a, g, padding_mode=padding_mode, align_corners=align_corners),
                        x, grid, grad_out)
        got = _grads(lambda a, g: dgm_fast.grid_sample_3d(a, g, padding_mode=padding_mode,
                                                          align_corners=align_corners), x, grid, grad_out)
        for g, e in zip(got, expect):
            torch.testing.assert_close(g, e, **TOL[torch.float64])


def test_float32_matches_f_grid_sample(backend):
    """float32 values within an ulp-sized tolerance of F.grid_sample; gradients normwise (the grid's
    are sums over channels with cancellation, whose error is eps * sum |terms|)."""
    device, _ = backend
    x = make_tensor((2, 16, 6, 10, 12), torch.float32, device)
    grid = _grid((2, 5, 7, 9, 3), torch.float32, device)
    grad_out = make_tensor((2, 16, 5, 7, 9), torch.float32, device, seed=3)
    expect = _grads(lambda a, g: F.grid_sample(a, g, align_corners=False), x, grid, grad_out)
    got = _grads(lambda a, g: dgm_fast.grid_sample_3d(a, g), x, grid, grad_out)
    torch.testing.assert_close(got[0], expect[0], **TOL[torch.float32])
    for g, e in zip(got[1:], expect[1:]):
        assert (g - e).norm() <= 1e-6 * e.norm()


@pytest.mark.skipif(_extension._C is None, reason="needs the compiled extension")
def test_cpu_backward_is_deterministic_and_independent_of_channel_split():
    """The channel-split backward (N = 1 on several threads) repeats to the bit and agrees with one
    thread, which does not split."""
    x = make_tensor((1, 6, 4, 8, 8), torch.float64)
    grid = _grid((1, 4, 8, 8, 3), torch.float64, "cpu")
    grad_out = make_tensor((1, 6, 4, 8, 8), torch.float64, seed=3)
    threads = torch.get_num_threads()
    with dgm_fast.use_backend("cpu"):
        try:
            torch.set_num_threads(max(threads, 2))
            runs = [_grads(dgm_fast.grid_sample_3d, x, grid, grad_out) for _ in range(2)]
            torch.set_num_threads(1)
            single = _grads(dgm_fast.grid_sample_3d, x, grid, grad_out)
        finally:
            torch.set_num_threads(threads)
    for a, b, s in zip(*runs, single):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, s, **TOL[torch.float64])


@pytest.mark.skipif(_extension._C is None, reason="needs the compiled extension")
@pytest.mark.parametrize("op", ["grid_sample_3d", "keypoint_warp_3d", "sparse_motion_features"])
def test_avx2_gathers_give_the_scalar_loops_bits(op):
    """The sampler's AVX2 paths (float32 forward and backward: masked gathers, vector position
    gradients) compute the scalar loops' products and sums in their order: the same bits, outputs
    and every gradient, at edges and past them (odd sizes, a partial last group of 8 voxels)."""
    x = make_tensor((2, 5, 5, 7, 9), torch.float32, scale=1.0)
    if op == "grid_sample_3d":
        args = [x, _grid((2, 3, 6, 11, 3), torch.float32, "cpu", scale=1.3)]
        call = [lambda x, g, p=p: dgm_fast.grid_sample_3d(x, g, padding_mode=p) for p in PADDING_MODES]
    else:
        kp = [make_tensor((2, 4, 3), torch.float32, scale=0.6, seed=s) for s in (5, 6)]
        jac = torch.eye(3) + 0.3 * make_tensor((2, 4, 3, 3), torch.float32, seed=7)
        if op == "keypoint_warp_3d":
            args = [x, *kp, make_tensor((2, 5, 5, 7, 9), torch.float32, seed=8), jac]
            call = [lambda f, s, d, m, j: dgm_fast.keypoint_warp_3d(f, s, d, m, jacobian=j, mask_is_logits=True)]
        else:
            args = [x, *kp, jac]
            call = [lambda f, s, d, j: dgm_fast.sparse_motion_features(f, s, d, jacobian=j)]

    def run():
        results = []
        for fn in call:
            leaves = [a.clone().requires_grad_() for a in args]
            out = fn(*leaves)
            grad = make_tensor(tuple(out.shape), torch.float32, seed=9)
            results += [out, *torch.autograd.grad(out, leaves, grad)]
        return results

    with dgm_fast.use_backend("cpu"):
        assert _extension._C.warp_isa() in ("avx2", "portable")
        fast = run()
        _extension._C.set_warp_portable(True)
        try:
            assert _extension._C.warp_isa() == "portable"
            portable = run()
        finally:
            _extension._C.set_warp_portable(False)
    for a, b in zip(fast, portable):
        assert torch.equal(a, b)


@pytest.mark.skipif(_extension._C is None, reason="needs the compiled extension")
def test_offsets_are_int64_past_two_to_the_31():
    """The kernels' offset of the last voxel of a (2, 32, 512, 512, 512) volume (2^33 elements), and of
    one voxel of a single channel past 2^31, computed without allocating them."""
    offset = _extension._C.warp_voxel_offset
    n, c, d, h, w = 2, 32, 512, 512, 512
    assert offset(c, d, h, w, n - 1, c - 1, d - 1, h - 1, w - 1) == n * c * d * h * w - 1
    assert offset(1, 2048, 1024, 1024, 0, 0, 2047, 1023, 1023) == 2048 * 1024 * 1024 - 1


# --- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize("make_args,error,match", [
    (lambda x, g: (x[0], g), ValueError, "^input must be 5-D"),
    (lambda x, g: (x, g[..., :2]), ValueError, "^grid must be 5-D"),
    (lambda x, g: (x, g[:1]), ValueError, "^grid must have input's batch size 2"),
    (lambda x, g: (x.half(), g.half()), TypeError, "^input must have a dtype in"),
    (lambda x, g: (x, g.double()), TypeError, "^grid must have the dtype of input"),
    (lambda x, g: (x[:, :, :0], g), ValueError, "^input must have non-empty spatial dimensions"),
    (lambda x, g: (x.to_sparse(), g), TypeError, "^input must be a dense"),
])
def test_bad_tensors_are_named(make_args, error, match):
    x, grid = make_tensor((2, 3, 4, 5, 6)), make_tensor((2, 2, 3, 4, 3))
    with pytest.raises(error, match=match):
        dgm_fast.grid_sample_3d(*make_args(x, grid))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(padding_mode="circular"), ValueError, "^padding_mode must be one of"),
    (dict(padding_mode=None), TypeError, "^padding_mode must be a str"),
    (dict(align_corners=1), TypeError, "^align_corners must be a bool"),
])
def test_bad_options_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        dgm_fast.grid_sample_3d(make_tensor((2, 3, 4, 5, 6)), make_tensor((2, 2, 3, 4, 3)), **kwargs)
