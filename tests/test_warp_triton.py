"""The Triton warp kernels (kernels/warp.py) against the C++ CPU kernels and the references.

On CPU the kernels run under the Triton interpreter (tests/conftest.py). test_op_contract.py and
test_op_properties.py already hold every backend to the reference on the shared samples; here:
the Triton kernels against the CPU kernels (same formulas and order, so tighter than the
reference's tolerance) over every option, odd and empty sizes, K = 0 and the size-1
specializations, NaN keypoints, programs of a few voxels (multi-block sums and partial blocks),
and the deterministic backward mode (§4.3.3's warps).
"""

from __future__ import annotations

import json
import re

import pytest
import torch

import dgm_fast
from dgm_fast import _extension
from dgm_fast.warp.op import (
    GRID_SAMPLE_3D_BACKWARD,
    KEYPOINT_WARP_3D,
    KEYPOINT_WARP_3D_BACKWARD,
    SPARSE_MOTION_FEATURES,
    SPARSE_MOTION_FEATURES_BACKWARD,
)
from dgm_fast.warp.reference import PADDING_MODES
from helpers import TOL, make_tensor, ptxas_spill_bytes, run_ptx_script

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if KEYPOINT_WARP_3D.availability(torch.device(DEVICE))["triton"] is not None:
    pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from dgm_fast.kernels import warp as triton_warp  # noqa: E402  (after the interpreter check)

HAS_CPU = _extension._C is not None
# the interpreter computes with numpy, which warns on the NaNs and infinities NaN keypoints make
pytestmark = pytest.mark.filterwarnings("ignore:.* encountered in :RuntimeWarning")
DTYPES = [torch.float32, torch.float64]
# Against the CPU kernel, relative to each output's largest magnitude: in float32 the kernels differ
# only by the exponential's rounding (the CPU kernel's own exp_f; its ulps in the softmax weights
# move positions by ulps, which the sampling multiplies by the feature's slope) and the order of the
# sums over voxels (a tree per block here, sequential there)
CLOSE = {torch.float32: 5e-6, torch.float64: 1e-12}


def run(op, args, backend: str, device: str = "cpu") -> tuple[torch.Tensor, ...]:
    """The op's outputs on ``backend``, computed on ``device`` and returned on the CPU."""
    args = [a.to(device).clone() if isinstance(a, torch.Tensor) else a for a in args]
    with dgm_fast.use_backend(backend):
        out = op(*args)
    return tuple(o.cpu() for o in (out if isinstance(out, tuple) else (out,)))


def assert_close(got, expect, dtype):
    """Equal NaN and infinities; finite values within CLOSE of each output's largest finite magnitude."""
    assert len(got) == len(expect)
    for g, e in zip(got, expect):
        assert g.shape == e.shape and g.dtype == e.dtype
        assert torch.equal(g.isnan(), e.isnan()) and torch.equal(g[e.isinf()], e[e.isinf()])
        finite = e.isfinite()
        if finite.any():
            assert (g[finite] - e[finite]).abs().max() <= CLOSE[dtype] * e[finite].abs().max()


def against_cpu_and_reference(op, args, dtype, exact=lambda outputs: ()):
    """Triton against the CPU kernel (CLOSE; the tensors ``exact`` picks from the outputs bit for bit)
    and the reference (TOL); returns Triton's outputs."""
    got = run(op, args, "triton", DEVICE)
    if HAS_CPU:
        cpu = run(op, args, "cpu")
        assert_close(got, cpu, dtype)
        for g, e in zip(exact(got), exact(cpu)):
            assert torch.equal(g, e)
    expect = op.reference(*[a.clone() if isinstance(a, torch.Tensor) else a for a in args])
    for g, e in zip(got, expect if isinstance(expect, tuple) else (expect,)):
        torch.testing.assert_close(g, e, equal_nan=True, **TOL[dtype])
    return got


@pytest.fixture
def small_blocks(monkeypatch):
    """Programs of 8 voxels (and 8 channels in the deterministic gather) under the interpreter: several
    blocks per sample, a partial last block, several partial sums to reduce (GPUs keep their sizes)."""
    monkeypatch.setattr(triton_warp, "INTERPRETER_BLOCK_V", 8)


@pytest.fixture
def deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


# --- keypoint_warp_3d ----------------------------------------------------------------------------
# (N, C, feature volume, K, mask volume): odd sizes, the feature's volume other than the mask's, the
# size-1 specializations (C = K = 1, a one-voxel axis), K = 0, N = 0 and C = 0
KEYPOINT_CASES = [(2, 3, (5, 4, 7), 3, (3, 5, 6)), (1, 1, (1, 3, 2), 1, (2, 2, 3)),
                  (2, 2, (3, 3, 3), 0, (2, 3, 2)), (0, 2, (2, 2, 2), 2, (2, 2, 2)), (2, 0, (3, 3, 3), 2, (2, 3, 2))]


def keypoint_args(n, c, volume, k, mask_volume, dtype, logits, with_jacobian, seed=0):
    feature = make_tensor((n, c, *volume), dtype, seed=seed)
    kp_source = make_tensor((n, k, 3), dtype, scale=0.6, seed=seed + 1)
    kp_driving = make_tensor((n, k, 3), dtype, scale=0.6, seed=seed + 2)
    mask = make_tensor((n, k + 1, *mask_volume), dtype, scale=2.0, seed=seed + 3)
    if not logits:
        mask = torch.softmax(mask, dim=1)
    eye = torch.eye(3, dtype=dtype)
    jacobian = (eye + 0.3 * make_tensor((n, k, 3, 3), dtype, seed=seed + 4) if with_jacobian
                else eye.expand(n, k, 3, 3).contiguous())
    return feature, kp_source, kp_driving, mask, jacobian


def keypoint_grads(feature, mask, dtype, seed=10):
    n, c = feature.shape[:2]
    spatial = tuple(mask.shape[2:])
    return make_tensor((n, c, *spatial), dtype, seed=seed), make_tensor((n, *spatial, 3), dtype, seed=seed + 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding_mode,align_corners", [(p, a) for p in PADDING_MODES for a in (False, True)])
def test_keypoint_warp_matches_cpu_and_reference(dtype, padding_mode, align_corners):
    """Output, deformation and every gradient, with logits and Jacobians or weights and identities,
    deformation returned or not, on every size of KEYPOINT_CASES."""
    for i, case in enumerate(KEYPOINT_CASES):
        logits = i % 2 == 0
        inputs = keypoint_args(*case, dtype, logits, with_jacobian=logits, seed=i)
        for return_deformation in (True, False):
            # without the softmax's exponential the same operations in the same order: the same bits
            against_cpu_and_reference(KEYPOINT_WARP_3D, (*inputs, logits, padding_mode, align_corners,
                                                         return_deformation), dtype,
                                      exact=lambda outputs: () if logits else outputs)
        grads = keypoint_grads(inputs[0], inputs[3], dtype, seed=20 + i)
        against_cpu_and_reference(KEYPOINT_WARP_3D_BACKWARD, (*grads, *inputs, logits, padding_mode, align_corners),
                                  dtype)


def test_keypoint_warp_in_blocks_of_a_few_voxels(small_blocks):
    """Many programs a sample: per-block sums reduced across blocks, masked lanes of a partial block."""
    dtype = torch.float64
    for logits in (True, False):
        inputs = keypoint_args(2, 3, (4, 5, 3), 3, (3, 3, 5), dtype, logits, with_jacobian=True, seed=3)
        against_cpu_and_reference(KEYPOINT_WARP_3D, (*inputs, logits, "border", False, True), dtype)
        grads = keypoint_grads(inputs[0], inputs[3], dtype)
        against_cpu_and_reference(KEYPOINT_WARP_3D_BACKWARD, (*grads, *inputs, logits, "reflection", True), dtype)


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
def test_keypoint_warp_with_a_nan_keypoint(padding_mode):
    """A NaN keypoint makes phi NaN wherever its motion has weight: those voxels read nothing or the
    edge, never outside the volume, and every output and gradient is the reference's (NaN where its
    are)."""
    for logits in (True, False):
        feature, kp_s, kp_d, mask, jac = keypoint_args(2, 2, (3, 4, 5), 2, (3, 2, 4), torch.float64, logits, True)
        kp_d[0, 1, 0] = float("nan")
        kp_s[1, 0, 2] = float("inf")
        inputs = (feature, kp_s, kp_d, mask, jac)
        against_cpu_and_reference(KEYPOINT_WARP_3D, (*inputs, logits, padding_mode, False, True), torch.float64)
        grads = keypoint_grads(feature, mask, torch.float64)
        against_cpu_and_reference(KEYPOINT_WARP_3D_BACKWARD, (*grads, *inputs, logits, padding_mode, False),
                                  torch.float64)


# --- sparse_motion_features ----------------------------------------------------------------------
# (N, C, volume, K): odd sizes, C = K = 1, K = 0, N = 0 and C = 0
MOTION_CASES = [(2, 3, (3, 5, 4), 3), (1, 1, (2, 3, 2), 1), (2, 2, (3, 2, 3), 0), (0, 2, (2, 2, 2), 2),
                (1, 0, (3, 3, 2), 2)]


def motion_args(n, c, volume, k, dtype, with_jacobian, seed=0):
    feature, kp_source, kp_driving, _, jacobian = keypoint_args(n, c, volume, k, (2, 2, 2), dtype, False,
                                                                with_jacobian, seed)
    return feature, kp_source, kp_driving, jacobian


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("variance", [0.01, 0.3])
def test_motion_features_match_cpu_and_reference(dtype, align_corners, variance):
    for i, case in enumerate(MOTION_CASES):
        inputs = motion_args(*case, dtype, with_jacobian=i % 2 == 0, seed=i)
        # the warped copies are the CPU kernel's to the bit (the heatmaps' exponential is not)
        out = against_cpu_and_reference(SPARSE_MOTION_FEATURES, (*inputs, variance, align_corners), dtype,
                                        exact=lambda outputs: [outputs[0][:, :, 1:]])
        grad = make_tensor(tuple(out[0].shape), dtype, seed=30 + i)
        against_cpu_and_reference(SPARSE_MOTION_FEATURES_BACKWARD, (grad, *inputs, variance, align_corners), dtype)


def test_motion_features_in_blocks_of_a_few_voxels(small_blocks):
    dtype = torch.float64
    inputs = motion_args(2, 3, (3, 4, 5), 3, dtype, with_jacobian=True, seed=5)
    out = against_cpu_and_reference(SPARSE_MOTION_FEATURES, (*inputs, 0.05, False), dtype)
    grad = make_tensor(tuple(out[0].shape), dtype, seed=6)
    against_cpu_and_reference(SPARSE_MOTION_FEATURES_BACKWARD, (grad, *inputs, 0.05, True), dtype)


def test_motion_features_with_nan_keypoints():
    """A NaN driving and an infinite source keypoint: their motions read nothing (zeros padding) and the
    heatmap and gradients are the reference's, NaN where its are."""
    feature, kp_s, kp_d, jac = motion_args(2, 2, (3, 4, 3), 2, torch.float64, with_jacobian=True)
    kp_d[0, 1, 0] = float("nan")
    kp_s[1, 0, 2] = float("inf")
    out = against_cpu_and_reference(SPARSE_MOTION_FEATURES, (feature, kp_s, kp_d, jac, 0.1, False), torch.float64)
    grad = make_tensor(tuple(out[0].shape), torch.float64, seed=3)
    against_cpu_and_reference(SPARSE_MOTION_FEATURES_BACKWARD, (grad, feature, kp_s, kp_d, jac, 0.1, False),
                              torch.float64)


# --- the deterministic backward -----------------------------------------------------------------
def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int64 if t.dtype == torch.float64 else torch.int32)


def grid_sample_backward_case(dtype, padding_mode):
    x = make_tensor((2, 10, 2, 3, 4), dtype, seed=1)
    # positions inside, far outside (many voxels to one edge cell under border padding, none under
    # zeros), NaN and infinite
    grid = torch.cat([make_tensor((2, 2, 3, 4, 3), dtype, scale=0.9, seed=2),
                      make_tensor((2, 1, 3, 4, 3), dtype, scale=40.0, seed=3)], dim=1)
    flat = grid.view(-1)
    index = torch.arange(0, flat.numel(), 17)
    flat[index] = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=dtype)[torch.arange(len(index)) % 3]
    grad_out = make_tensor((2, 10, 3, 3, 4), dtype, seed=4)
    return GRID_SAMPLE_3D_BACKWARD, (grad_out, x, grid, padding_mode, True)


def keypoint_backward_case(dtype):
    inputs = keypoint_args(2, 10, (3, 2, 4), 2, (2, 3, 4), dtype, True, True)
    args = (*keypoint_grads(inputs[0], inputs[3], dtype), *inputs, True, "border", False)
    return KEYPOINT_WARP_3D_BACKWARD, args


def motion_backward_case(dtype):
    grad_out = make_tensor((2, 3, 11, 2, 3, 3), dtype, seed=9)
    return SPARSE_MOTION_FEATURES_BACKWARD, (grad_out, *motion_args(2, 10, (2, 3, 3), 2, dtype, True), 0.1, False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [
    lambda dtype: grid_sample_backward_case(dtype, "zeros"),  # entries with no corner inside (the last key)
    lambda dtype: grid_sample_backward_case(dtype, "border"),  # many entries in the edge cells
    keypoint_backward_case,
    motion_backward_case,  # K + 1 views of each sample
], ids=["grid_sample_3d-zeros", "grid_sample_3d-border", "keypoint_warp_3d", "sparse_motion_features"])
def test_deterministic_backward(small_blocks, deterministic, monkeypatch, case, dtype):
    """Under torch.use_deterministic_algorithms(True) the feature gradient is gathered (interpreted, in
    blocks of 8 voxels and 8 of the 10 channels): it repeats to the bit, equals the atomic scatter's to
    rounding and the CPU kernel's; the other gradients are the atomic mode's, bit for bit (one code
    path)."""
    gathers = []
    gather = triton_warp._gather_gradient
    monkeypatch.setattr(triton_warp, "_gather_gradient", lambda *a: gathers.append(gather(*a)))
    op, args = case(dtype)
    first = run(op, args, "triton", DEVICE)
    again = run(op, args, "triton", DEVICE)
    assert len(gathers) == 2
    for a, b in zip(first, again):
        assert torch.equal(bits(a), bits(b))
    torch.use_deterministic_algorithms(False)
    atomic = run(op, args, "triton", DEVICE)
    assert_close(first[:1], atomic[:1], dtype)
    for a, b in zip(first[1:], atomic[1:]):
        assert torch.equal(bits(a), bits(b))
    if HAS_CPU:
        assert_close(first, run(op, args, "cpu"), dtype)


def test_deterministic_backward_of_empty_and_untouched_inputs(deterministic):
    """Nothing sampled (an empty output, or every position outside under zeros padding): a zero
    feature gradient."""
    x = make_tensor((2, 3, 2, 3, 4), torch.float64)
    for grid in (x.new_zeros((2, 0, 2, 2, 3)), x.new_full((2, 2, 2, 2, 3), 5.0)):
        grad_out = make_tensor((2, 3, *grid.shape[1:4]), torch.float64, seed=1)
        grad_input, grad_grid = run(GRID_SAMPLE_3D_BACKWARD, (grad_out, x, grid, "zeros", False), "triton", DEVICE)
        assert torch.equal(grad_input, torch.zeros_like(x)) and torch.equal(grad_grid, torch.zeros_like(grid))


# --- the compiled kernels -------------------------------------------------------------------------
COMPILE_PTX = """
from dgm_fast.kernels import warp

warp._launch = lambda kernel, grid, t, *args, warps, **constexprs: launches.append(
    (mode, kernel, args, dict(constexprs, num_warps=warps, enable_fp_fusion=False)))
def t(*shape):  # meta tensors: GPU block sizes, no data
    return torch.empty(shape, device="meta")
n, c, k, volume = 2, 8, 10, (16, 32, 32)
feature, kp, jac, grid = t(n, c, *volume), t(n, k, 3), t(n, k, 3, 3), t(n, *volume, 3)
mode = "forward"
warp.grid_sample_3d_triton(feature, grid, t(n, c, *volume), 2, False)
warp.keypoint_warp_3d_triton(feature, kp, kp, t(n, k + 1, *volume), jac, t(n, c, *volume), grid, True, 2, False, True)
warp.sparse_motion_features_triton(feature, kp, kp, jac, t(n, k + 1, c + 1, *volume), 0.01, False)
for mode in ("atomic", "deterministic"):
    torch.use_deterministic_algorithms(mode == "deterministic")
    warp.grid_sample_3d_backward_triton(t(n, c, *volume), feature, grid, t(n, c, *volume), grid, 2, False)
    warp.keypoint_warp_3d_backward_triton(t(n, c, *volume), grid, feature, kp, kp, t(n, k + 1, *volume), jac,
                                          feature, kp, kp, t(n, k + 1, *volume), jac, True, 2, False)
    warp.sparse_motion_features_backward_triton(t(n, k + 1, c + 1, *volume), feature, kp, kp, jac, feature, kp, kp,
                                                jac, 0.01, False)
print(json.dumps([(mode, k.fn.__name__, ptx_for_sm90(k, a, kw)) for mode, k, a, kw in launches]))
"""


def test_kernels_compile_for_a_gpu_without_float_atomics_where_deterministic(tmp_path):
    """Every float32 kernel compiles for sm_90 (the interpreter checks less than the compiler) with
    IEEE division, no FMA contraction and (where CUDA's ptxas is here) no register spills; only the
    atomic mode's backward kernels have atomics."""
    compiled = json.loads(run_ptx_script(COMPILE_PTX, tmp_path))
    assert sorted((mode, name) for mode, name, _ in compiled) == sorted(
        [("forward", f"_{op}_kernel") for op in ("grid_sample_3d", "keypoint_warp_3d", "sparse_motion_features")]
        + [(mode, f"_{op}_backward_kernel") for op in ("grid_sample_3d", "keypoint_warp_3d", "sparse_motion_features")
           for mode in ("atomic", "deterministic")] + [("deterministic", "_gather_kernel")] * 3)
    for mode, name, code in compiled:
        assert "div.full.f32" not in code and "div.approx.f32" not in code and "fma.rn.f32" not in code, name
        atomics = re.search(r"\b(atom|red)\.global", code) is not None
        assert atomics == (mode == "atomic"), (mode, name)
        assert ptxas_spill_bytes(code, tmp_path) in (None, 0), (mode, name)  # where CUDA's ptxas is here
