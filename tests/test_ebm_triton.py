"""The Triton MLP energy kernels (kernels/ebm.py) against their specification, dgm_fast/ebm/reference.py.

On CPU they run under the Triton interpreter (tests/conftest.py). The launchers are called directly,
with outputs poisoned with NaN (test_op_contract.py runs them through the ops on the shared samples).
Here: every activation (and its kink at 0), odd widths (padded to the kernels' tiles), no hidden layer,
an odd batch, several programs, every option of the chain (2.15) / (2.20) / (3.8), float32 and float64,
the chain's noise against the Langevin kernel's, number for number, and the kernels compiled for a GPU.
"""

from __future__ import annotations

import json

import pytest
import torch

from dgm_fast.backend import has_kernel
from dgm_fast.ebm.op import SAMPLE
from dgm_fast.ebm.reference import (
    ACTIVATIONS,
    mlp_energy_grad_reference,
    mlp_energy_laplacian_reference,
    mlp_energy_sample_reference,
)
from dgm_fast.langevin.stream import stream_stride
from dgm_fast.philox import signed_seed
from helpers import TOL, make_tensor, mlp_parameters, ptxas_spill_bytes, run_ptx_script

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if SAMPLE.availability(torch.device(DEVICE))["triton"] is not None:
    pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from dgm_fast.kernels import ebm as triton_ebm  # noqa: E402  (after the interpreter check)
from dgm_fast.kernels import mlp_tiles  # noqa: E402
from dgm_fast.kernels.langevin import langevin_step_triton  # noqa: E402

DTYPES = [torch.float32, torch.float64]
# odd widths: one hidden layer of 33 (padded to 64), two of 7 and 5 (h_1 waits in scratch), none
DIMS = [(3, 7, 5, 1), (2, 33, 1), (5, 1)]
# (dims, activation): every activation on the hidden layers; without one, the activation is unused
CASES = [(dims, act) for dims in DIMS for act in (ACTIVATIONS if len(dims) > 2 else ACTIVATIONS[:1])]
BATCH = 13
SLOPE = 0.1
INF = float("inf")


def nan_like(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


def mlp(dims, dtype, batch=BATCH, scale=2.0, seed=0):
    """x (batch, d) and the layers, on DEVICE."""
    x = make_tensor((batch, dims[0]), dtype, DEVICE, scale=scale, seed=seed)
    weights, biases = mlp_parameters(dims, dtype, DEVICE, seed=seed + 1)
    return x, weights, biases


def grad_triton(x, weights, biases, code):
    energy, grad = nan_like(x.shape[:1], x.dtype), nan_like(x.shape, x.dtype)
    triton_ebm.mlp_energy_grad_triton(x, weights, biases, energy, grad, code, SLOPE)
    return energy, grad


def laplacian_triton(x, weights, biases, code):
    grad, trace = nan_like(x.shape, x.dtype), nan_like(x.shape[:1], x.dtype)
    triton_ebm.mlp_energy_laplacian_triton(x, weights, biases, grad, trace, code, SLOPE)
    return grad, trace


def sample_triton(x0, weights, biases, code, n_steps, step_size=0.1, noise_scale=0.0, prior_weight=0.0,
                  grad_clip=None, clamp=None, seed=0, offset=0):
    out = nan_like(x0.shape, x0.dtype)
    lo, hi = clamp or (-INF, INF)
    triton_ebm.mlp_energy_sample_triton(x0, weights, biases, out, code, SLOPE, n_steps, step_size, noise_scale,
                                        prior_weight, INF if grad_clip is None else grad_clip, lo, hi,
                                        signed_seed(seed), offset)
    return out


def assert_matches(got, expect, dtype):
    for g, e in zip(got, expect, strict=True):
        torch.testing.assert_close(g, e, **TOL[dtype])


def test_kernels_are_found_by_name():
    for kernel in ("mlp_energy_grad", "mlp_energy_laplacian", "mlp_energy_sample"):
        assert has_kernel("ebm", kernel, "triton")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dims, act", CASES, ids=str)
def test_grad_and_laplacian(dims, act, dtype):
    x, weights, biases = mlp(dims, dtype)
    code = ACTIVATIONS.index(act)
    assert_matches(grad_triton(x, weights, biases, code),
                   mlp_energy_grad_reference(x, weights, biases, act, SLOPE), dtype)
    assert_matches(laplacian_triton(x, weights, biases, code),
                   mlp_energy_laplacian_reference(x, weights, biases, act, SLOPE), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", ["leaky_relu", "relu"])
def test_kinks_at_zero(act, dtype):
    """Pre-activations exactly 0 (x = 0, zero first biases): relu' = 0 and leaky_relu' = slope there."""
    x, weights, biases = mlp((3, 7, 5, 1), dtype)
    x[:4] = 0.0
    biases[0].zero_()
    code = ACTIVATIONS.index(act)
    assert_matches(grad_triton(x, weights, biases, code),
                   mlp_energy_grad_reference(x, weights, biases, act, SLOPE), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_large_pre_activations(act, dtype):
    """Pre-activations past softplus's linear threshold (20) and where the sigmoid saturates."""
    x, weights, biases = mlp((2, 33, 1), dtype, scale=30.0)
    assert (x @ weights[0].T + biases[0]).abs().max() > 40
    code = ACTIVATIONS.index(act)
    assert_matches(grad_triton(x, weights, biases, code),
                   mlp_energy_grad_reference(x, weights, biases, act, SLOPE), dtype)
    assert_matches(laplacian_triton(x, weights, biases, code),
                   mlp_energy_laplacian_reference(x, weights, biases, act, SLOPE), dtype)


# Three steps of every option together: float32 chains then still agree to TOL (each step's gradient
# rounds differently from the reference's, and step_size 0.1 keeps the chain's Lipschitz constant near 1).
CHAIN = dict(step_size=0.1, noise_scale=0.3, prior_weight=0.5, grad_clip=0.4, clamp=(-2.5, 2.0),
             seed=2**64 - 7, offset=6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dims, act", CASES, ids=str)
def test_sample(dims, act, dtype):
    x0, weights, biases = mlp(dims, dtype)
    got = sample_triton(x0, weights, biases, ACTIVATIONS.index(act), 3, **CHAIN)
    expect = mlp_energy_sample_reference(x0, weights, biases, act, SLOPE, 3, **CHAIN)
    torch.testing.assert_close(got, expect, **TOL[dtype])


# one option at a time, each active: the flow (2.20), the latent prior term (3.8) with the largest seed
# and an offset past 2^32 counters, a clip and a clamp that bind, no step at all
OPTIONS = {
    "flow": dict(n_steps=5),
    "latent_prior": dict(n_steps=3, noise_scale=0.5, prior_weight=1.0, seed=2**64 - 1, offset=2**34 + 3),
    "clip": dict(n_steps=3, noise_scale=0.2, grad_clip=0.05),
    "clamp": dict(n_steps=3, step_size=0.3, noise_scale=1.0, clamp=(-1.0, 0.75), seed=5),
    "no_step": dict(n_steps=0),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("option", OPTIONS)
def test_sample_options(option, dtype):
    kw = OPTIONS[option]
    x0, weights, biases = mlp((3, 7, 5, 1), dtype)
    got = sample_triton(x0, weights, biases, 0, **kw)
    expect = mlp_energy_sample_reference(x0, weights, biases, "swish", SLOPE, **(dict(step_size=0.1, noise_scale=0.0,
                                         prior_weight=0.0, grad_clip=None, clamp=None, seed=0, offset=0) | kw))
    torch.testing.assert_close(got, expect, **TOL[dtype])
    if option == "clip":
        grad = mlp_energy_grad_reference(x0, weights, biases, "swish", SLOPE)[1]
        assert (grad.abs() > 0.05).sum() > grad.numel() // 2
    if option == "clamp":
        assert (got == -1.0).any() and (got == 0.75).any()


def test_noise_is_the_langevin_kernels():
    """Without hidden layers grad E = w_L exactly: the chain is then langevin_step_triton's steps on
    the stream offsets offset + k * stride, bit for bit (numel 65: stride 68; offset 7: phase 3)."""
    x0, weights, biases = mlp((5, 1), torch.float32)
    kw = dict(step_size=0.2, noise_scale=0.7, prior_weight=0.3, grad_clip=0.5, clamp=(-2.0, 2.0), seed=99, offset=7)
    got = sample_triton(x0, weights, biases, 0, 3, **kw)
    x, grad = x0, weights[-1].expand_as(x0).contiguous()
    for k in range(3):
        out = torch.empty_like(x)
        langevin_step_triton(x, grad, out, kw["step_size"], kw["noise_scale"], kw["prior_weight"], kw["grad_clip"],
                             *kw["clamp"], signed_seed(kw["seed"]), kw["offset"] + k * stream_stride(x.numel()))
        x = out
    assert torch.equal(got, x)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_several_programs(monkeypatch, dtype):
    """37 rows in programs of 16 (a GPU too takes 16 rows a program here): row offsets, a partial last
    program, two hidden layers in each program's scratch (the interpreter runs programs one after
    another, so only a GPU run would show programs sharing scratch)."""
    monkeypatch.setattr(mlp_tiles, "INTERPRETER_MAX_M", 16)
    x, weights, biases = mlp((3, 7, 5, 1), dtype, batch=37)
    assert_matches(grad_triton(x, weights, biases, 3), mlp_energy_grad_reference(x, weights, biases, "softplus", SLOPE),
                   dtype)
    assert_matches(laplacian_triton(x, weights, biases, 3),
                   mlp_energy_laplacian_reference(x, weights, biases, "softplus", SLOPE), dtype)
    torch.testing.assert_close(sample_triton(x, weights, biases, 3, 3, **CHAIN),
                               mlp_energy_sample_reference(x, weights, biases, "softplus", SLOPE, 3, **CHAIN),
                               **TOL[dtype])


def test_empty_batch_launches_nothing(monkeypatch):
    for kernel in ("_grad_kernel", "_laplacian_kernel", "_sample_kernel"):
        monkeypatch.setattr(triton_ebm, kernel, None)  # a launch would raise
    x, weights, biases = mlp((3, 7, 5, 1), torch.float32, batch=0)
    assert grad_triton(x, weights, biases, 0)[1].shape == (0, 3)
    assert laplacian_triton(x, weights, biases, 0)[1].shape == (0,)
    assert sample_triton(x, weights, biases, 0, 3, noise_scale=1.0).shape == (0, 3)


def test_bad_activation_code():
    x, weights, biases = mlp((3, 7, 5, 1), torch.float32)
    with pytest.raises(ValueError, match="activation_code"):
        grad_triton(x, weights, biases, len(ACTIVATIONS))


# Compiled for sm_90 without a GPU (helpers.PTX_PREAMBLE): the interpreter accepts what the compiler
# rejects (non-constexpr globals, loop-carried constexprs). The GPU's block sizes, for 4096 rows.
COMPILE_PTX = """
import types
from dgm_fast.kernels import ebm

record(ebm, "_grad_kernel", "_laplacian_kernel", "_sample_kernel")
torch.cuda.get_device_properties = lambda device: types.SimpleNamespace(multi_processor_count=132)
x = torch.empty(4096, 3, device="meta")  # meta tensors: shapes, no data
weights = [torch.empty(o, i, device="meta") for i, o in ((3, 7), (7, 5), (5, 1))]
biases = [torch.empty(o, device="meta") for o in (7, 5, 1)]
energy, grad = torch.empty_like(x[:, 0]), torch.empty_like(x)
ebm.mlp_energy_grad_triton(x, weights, biases, energy, grad, 0, 0.2)
ebm.mlp_energy_laplacian_triton(x, weights, biases, grad, energy, 3, 0.2)
ebm.mlp_energy_sample_triton(x, weights, biases, grad, 1, 0.2, 10, 0.1, 1.0, 0.5, 1.0, -3.0, 3.0, -5, 7)
print(json.dumps([(k.fn.__name__, ptx_for_sm90(k, a, kw)) for k, a, kw in launches]))
"""


def test_kernels_compile_for_a_gpu(tmp_path):
    """Every kernel compiles for sm_90 (float32, two hidden layers) with IEEE division and its
    staging barriers."""
    compiled = json.loads(run_ptx_script(COMPILE_PTX, tmp_path))
    assert [name for name, _ in compiled] == ["_grad_kernel", "_laplacian_kernel", "_sample_kernel"]
    for name, code in compiled:
        assert "div.full.f32" not in code and "div.approx.f32" not in code, name
        assert "bar.sync" in code, name
        assert ptxas_spill_bytes(code, tmp_path) in (None, 0), name  # where CUDA's ptxas is here
