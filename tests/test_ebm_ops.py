"""The MLP energy ops and ``MLPEnergy``: what is particular to the ebm family (§2.4, §3.3).

Reference equivalence on samples, opcheck, compile, gradcheck of one sample and the transforms are
in test_op_contract.py; random inputs in test_op_properties.py; the Triton launchers in
test_ebm_triton.py; divergences and the ODE flow in test_ebm_ode_flow.py. Here, on every backend:
``MLPEnergy.sample`` against ``sample_langevin`` on the same module, ``grad`` against autograd, the
fused Laplacian against ``torch.func.hessian``'s trace, gradchecks of every activation, rows kept
independent, the reference's outputs against what the kernels are given to write, and bad input.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import dgm_fast
from dgm_fast.backend import triton_interpreted
from dgm_fast.ebm import MLPEnergy, mlp_energy_grad, mlp_energy_laplacian, mlp_energy_sample
from dgm_fast.ebm.op import GRAD, LAPLACIAN, SAMPLE
from dgm_fast.ebm.reference import ACTIVATIONS
from helpers import OP_SAMPLES, TOL, backend_fixture, clone_args, make_tensor, significant_strides

DTYPES = (torch.float32, torch.float64)
grad_backend = backend_fixture(GRAD)
laplacian_backend = backend_fixture(LAPLACIAN)
sample_backend = backend_fixture(SAMPLE)


def energy_of(dims, activation="swish", dtype=torch.float64, device="cpu", *, negative_slope=0.2, seed=0):
    """An ``MLPEnergy`` with nn.Linear's initialisation from ``seed``, weights doubled and biases of
    N(0, 0.25): pre-activations of about unit size, where the activations curve (at nn.Linear's own
    scale the Laplacians of these small energies are ~1e-3)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        energy = MLPEnergy(dims, activation, negative_slope)
        with torch.no_grad():
            for layer in energy.layers:
                layer.weight.mul_(2.0)
                layer.bias.normal_(0.0, 0.5)
    return energy.to(device, dtype)


def _x(batch, dim, dtype, device, *, layout="contiguous", scale=1.0, seed=1):
    return make_tensor((batch, dim), dtype, device, layout=layout, scale=scale, seed=seed)


def _autograd_grad(energy, x):
    """``(E(x), dE/dx)`` by plain autograd through ``energy.energy`` (nn.functional activations)."""
    x = x.detach().requires_grad_()
    e = energy.energy(x)
    (g,) = torch.autograd.grad(e.sum(), x)
    return e.detach(), g


# (dims, batch, x layout, x scale, activations): every activation twice, on odd widths, no hidden
# layer, the 2-D toy energy's depth, an odd batch, non-contiguous x, and inputs past softplus's
# linear threshold
CASES = [((3, 7, 5, 1), 13, "contiguous", 1.0, ("swish", "relu")),
         ((2, 1), 5, "transposed", 1.0, ("leaky_relu", "softplus")),
         ((2, 16, 16, 16, 1), 9, "strided", 2.0, ("swish", "leaky_relu")),
         ((4, 11, 1), 6, "contiguous", 30.0, ("softplus", "relu"))]
CASES = [(dims, batch, layout, scale, act) for dims, batch, layout, scale, acts in CASES for act in acts]
CASE_IDS = ["-".join(map(str, c[0])) + f"-{c[4]}" + ("-large" if c[3] > 10 else "") for c in CASES]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_grad_equals_autograd(grad_backend, case, dtype):
    device, _ = grad_backend
    dims, batch, layout, scale, activation = case
    energy = energy_of(dims, activation, dtype, device)
    x = _x(batch, dims[0], dtype, device, layout=layout, scale=scale)
    e, g = energy.energy_and_grad(x)
    expect_e, expect_g = _autograd_grad(energy, x)
    torch.testing.assert_close(e, expect_e, **TOL[dtype])
    torch.testing.assert_close(g, expect_g, **TOL[dtype])
    torch.testing.assert_close(energy.grad(x), expect_g, **TOL[dtype])


def _hessian_trace(energy, x):
    """``tr d^2E/dx^2`` per row by ``torch.func.hessian`` of one row's energy, in float64."""
    energy = copy.deepcopy(energy).to(torch.float64)

    def row_energy(row):
        return energy.energy(row.unsqueeze(0)).squeeze(0)

    hessians = torch.func.vmap(torch.func.hessian(row_energy))(x.detach().to(torch.float64))
    return hessians.diagonal(dim1=-2, dim2=-1).sum(-1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_laplacian_equals_hessian_trace(laplacian_backend, case, dtype):
    """Against the float64 trace of the same (rounded) parameters and inputs: float32 results are then
    within TOL of the exact value, not only of a float32 computation."""
    device, _ = laplacian_backend
    dims, batch, layout, scale, activation = case
    energy = energy_of(dims, activation, dtype, device)
    x = _x(batch, dims[0], dtype, device, layout=layout, scale=scale)
    g, lap = energy.laplacian(x)
    exact = _hessian_trace(energy, x)
    _, expect_g = _autograd_grad(copy.deepcopy(energy).to(torch.float64), x.to(torch.float64))
    torch.testing.assert_close(lap, exact.to(dtype), **TOL[dtype])
    torch.testing.assert_close(g, expect_g.to(dtype), **TOL[dtype])
    if activation in ("swish", "softplus") and len(dims) > 2 and scale < 30:  # curved: the trace is not zero
        assert lap.abs().max() > 1e-2


# (activation, MLPEnergy.sample options): every activation, noise on (its default sqrt(step_size)
# and a given scale) and off, the prior of (3.8), clip, clamp, and seed=None (a seed drawn from
# torch's generator, the same draw in both)
SAMPLE_CASES = [
    ("swish", dict(seed=11)),
    ("leaky_relu", dict(noise_scale=0.0, negative_slope=0.3)),
    ("relu", dict(noise_scale=0.3, prior_weight=1.0, grad_clip=0.5, seed=2**64 - 1)),
    ("softplus", dict(clamp=(-1.0, 1.2), seed=5)),
    ("leaky_relu", dict(prior_weight=1.0, grad_clip=2.0, clamp=(-2.0, 2.0), negative_slope=0.05, seed=None)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation, options", SAMPLE_CASES, ids=[f"{i}-{a}" for i, (a, _) in enumerate(SAMPLE_CASES)])
def test_sample_equals_sample_langevin(sample_backend, activation, options, dtype):
    """``MLPEnergy.sample`` (one fused call) against ``sample_langevin`` on the same module (autograd
    of its forward, then fused steps; the spec, so run with the reference backend), odd batch and widths."""
    device, _ = sample_backend
    options = dict(options)
    energy = energy_of((3, 7, 5, 1), activation, dtype, device, negative_slope=options.pop("negative_slope", 0.2))
    x0 = _x(13, 3, dtype, device, seed=4)
    n_steps, step = 4, 0.1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        got = energy.sample(x0, n_steps, step, **options)
    with dgm_fast.use_backend("reference"), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        expect = dgm_fast.sample_langevin(energy, x0, n_steps, step, **options)
    assert got.shape == x0.shape and got.dtype == dtype and not got.requires_grad
    torch.testing.assert_close(got, expect, **TOL[dtype])
    assert not torch.allclose(got, x0)


def test_sample_noise_depends_on_the_seed(sample_backend):
    device, _ = sample_backend
    energy = energy_of((2, 5, 1), device=device)
    x0 = _x(7, 2, torch.float64, device)
    a, b, c = (energy.sample(x0, 2, 0.1, seed=s) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    flow = [energy.sample(x0, 2, 0.1, 0.0, seed=s) for s in (1, 2)]  # noise-free: no seed matters
    assert torch.equal(*flow)


def test_sample_with_create_graph_trains_through_the_chain(sample_backend):
    """``create_graph=True`` is ``sample_langevin``'s differentiable chain (2.25): the same samples, and
    a loss on them reaches the energy's parameters."""
    device, _ = sample_backend
    energy = energy_of((3, 6, 1), "softplus", device=device)
    x0 = _x(5, 3, torch.float64, device)
    x = energy.sample(x0, 4, 0.1, 0.0, create_graph=True)
    assert x.requires_grad
    torch.testing.assert_close(x.detach(), energy.sample(x0, 4, 0.1, 0.0), **TOL[torch.float64])
    grads = torch.autograd.grad(energy(x).sum(), list(energy.parameters()))
    assert all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_zero_steps_return_a_copy_of_x0(sample_backend):
    device, _ = sample_backend
    energy = energy_of((3, 5, 1), device=device)
    x0 = _x(4, 3, torch.float64, device, layout="transposed")
    before = x0.clone()
    for out in (energy.sample(x0, 0, 0.1, seed=3),
                mlp_energy_sample(x0, *energy._params(), 0, 0.1, seed=3, activation="swish")):
        assert torch.equal(out, before) and not out.requires_grad
        out.add_(1.0)  # the result is the caller's: writing it leaves x0 alone
        assert torch.equal(x0, before)


def test_x0_and_parameters_untouched(sample_backend):
    device, _ = sample_backend
    energy = energy_of((3, 5, 1), device=device)
    x0 = _x(4, 3, torch.float64, device).requires_grad_()
    params = [p.detach().clone() for p in energy.parameters()]
    out = energy.sample(x0, 3, 0.1, seed=3)
    assert not out.requires_grad and x0.grad is None
    assert all(torch.equal(p, q) for p, q in zip(energy.parameters(), params))


def _gradcheck_backends(backend):
    """The gradients are the reference's, recomputed (dgm_fast/ebm/op.py): what a backend adds is its
    forward, which gradcheck evaluates a few hundred times; under the Triton interpreter that takes
    minutes, and test_op_contract.py gradchecks that backend already."""
    device, name = backend
    if name == "triton" and triton_interpreted() and device == "cpu":
        pytest.skip("gradcheck of the interpreted Triton forward: in test_op_contract.py, on one sample")
    return device


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("fn", [mlp_energy_grad, mlp_energy_laplacian], ids=["grad", "laplacian"])
def test_gradcheck_every_activation(grad_backend, fn, activation):
    """Differentiable twice in x, the weights and the biases (the generator loss (2.25) trains through
    the gradient), for every activation; float64, a batch of 2, widths 2 -> 3 -> 2 -> 1."""
    device = _gradcheck_backends(grad_backend)
    energy = energy_of((2, 3, 2, 1), activation, device=device)
    x = _x(2, 2, torch.float64, device)
    leaves = [t.detach().clone().requires_grad_() for t in (x, *energy.parameters())]

    def call(x, *params):
        return fn(x, list(params[0::2]), list(params[1::2]), activation, 0.2)

    assert torch.autograd.gradcheck(call, leaves)
    assert torch.autograd.gradgradcheck(call, leaves)


@pytest.mark.parametrize("op, name", [(mlp_energy_grad, "grad"), (mlp_energy_laplacian, "laplacian")])
def test_rows_are_independent(grad_backend, op, name):
    """A non-finite row changes no other row (a fused kernel that shares work across rows must not
    mix them), and the rows of a batch equal the rows computed one at a time."""
    device, _ = grad_backend
    energy = energy_of((3, 9, 4, 1), "swish", torch.float32, device)
    x = _x(11, 3, torch.float32, device)
    expect = op(x, *energy._params(), "swish", 0.2)
    poisoned = x.clone()
    poisoned[3, 1], poisoned[7, 0] = float("nan"), float("inf")
    got = op(poisoned, *energy._params(), "swish", 0.2)
    keep = torch.ones(11, dtype=torch.bool)
    keep[[3, 7]] = False
    for g, e in zip(got, expect):
        torch.testing.assert_close(g[keep], e[keep], atol=0, rtol=0)
        assert not torch.isfinite(g[3]).all()
    for i in (0, 10):
        for g, e in zip(op(x[i:i + 1], *energy._params(), "swish", 0.2), expect):
            torch.testing.assert_close(g[0], e[i], **TOL[torch.float32])


def test_sample_rows_are_independent(sample_backend):
    device, _ = sample_backend
    energy = energy_of((3, 9, 4, 1), "swish", torch.float32, device)
    x0 = _x(11, 3, torch.float32, device)
    poisoned = x0.clone()
    poisoned[2, 2] = float("nan")
    expect, got = (energy.sample(x, 3, 0.1, 0.0) for x in (x0, poisoned))
    keep = torch.arange(11) != 2
    torch.testing.assert_close(got[keep], expect[keep], atol=0, rtol=0)
    assert torch.isnan(got[2]).any()


@pytest.mark.parametrize("op", [GRAD, LAPLACIAN, SAMPLE], ids=lambda op: op.name)
def test_reference_outputs_are_what_the_kernels_write(op):
    """On every sample the reference's outputs have the layout of the buffers the kernels are given
    (``outputs`` of dgm_fast/ebm/op.py: the contract compares the two on every backend) and alias no
    input (the schema promises fresh tensors: opcheck's test_schema on the reference)."""
    for args in OP_SAMPLES[op.name]("cpu", torch.float64):
        expect = op.reference(*clone_args(args))
        expect = expect if isinstance(expect, tuple) else (expect,)
        for got, want in zip(op.outputs(*args), expect, strict=True):
            assert (got.shape, significant_strides(got)) == (want.shape, significant_strides(want))
        torch.library.opcheck(op._op_backend, (*clone_args(args), "reference"), test_utils=("test_schema",))


def test_module():
    toy = MLPEnergy((2, 256, 256, 256, 256, 1))
    assert toy.dim == 2 and toy.activation == "swish" and len(toy.layers) == 5
    latent = MLPEnergy((64, 200, 200, 1), "leaky_relu")
    assert "dims=(64, 200, 200, 1), activation='leaky_relu'" in repr(latent)
    assert latent.negative_slope == 0.2
    assert dgm_fast.nn.MLPEnergy is MLPEnergy
    x = torch.randn(5, 64)
    torch.testing.assert_close(latent(x), latent.energy(x))
    assert latent(x).shape == (5,)
    e, g = latent.energy_and_grad(torch.empty(0, 64))
    assert e.shape == (0,) and g.shape == (0, 64)


# --- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, error, match", [
    (((3, 5, 2),), ValueError, r"dims must list the input width, the hidden widths and a final 1, got \[3, 5, 2\]"),
    (((3,),), ValueError, "dims must list"),
    (((3, 0, 1),), ValueError, r"dims\[1\] must be >= 1"),
    (("31",), TypeError, "dims must be a sequence of ints"),
    (((3, 2.0, 1),), TypeError, r"dims\[1\] must be an int"),
    (((3, 1), "gelu"), ValueError, "activation must be one of"),
    (((3, 1), "swish", math.nan), ValueError, "negative_slope must not be NaN"),
])
def test_module_rejects(args, error, match):
    with pytest.raises(error, match=match):
        MLPEnergy(*args)


def test_dims_must_end_in_one():
    x, f64 = torch.zeros(4, 3, dtype=torch.float64), dict(dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^weights\[-1\] must have one output \(a scalar energy per sample\), got 2"):
        mlp_energy_grad(x, [torch.zeros(2, 3, **f64)], [torch.zeros(2, **f64)])
    w, b = energy_of((3, 5, 1))._params()
    for fn, extra in ((mlp_energy_laplacian, ()), (mlp_energy_sample, (2, 0.1))):
        with pytest.raises(ValueError, match=r"^weights\[-1\] must have one output .* got 4"):
            fn(x, [w[0], torch.zeros(4, 5, **f64)], [b[0], torch.zeros(4, **f64)], *extra)


@pytest.mark.parametrize("method", ["grad", "energy_and_grad", "laplacian", "sample"])
def test_batch_width_must_match(method):
    energy = energy_of((3, 5, 1))
    x = torch.zeros(4, 2, dtype=torch.float64)
    args = (2, 0.1) if method == "sample" else ()
    name = "x0" if method == "sample" else "x"
    mismatch = rf"^weights\[0\] must have shape \(out, 2\) since {name} has 2 features, got \(5, 3\)"
    with pytest.raises(ValueError, match=mismatch):
        getattr(energy, method)(x, *args)
    with pytest.raises(ValueError, match=rf"^{name} must be a \(batch, dim\) matrix"):
        getattr(energy, method)(torch.zeros(3, dtype=torch.float64), *args)
    with pytest.raises(TypeError, match=rf"^weights\[0\] must have the dtype of {name}"):
        getattr(energy, method)(torch.zeros(4, 3, dtype=torch.float32), *args)


@pytest.mark.parametrize("step_size, error, match", [
    (math.inf, ValueError, "^step_size must be finite"),
    (-math.inf, ValueError, "^step_size must be finite"),
    (math.nan, ValueError, "^step_size must not be NaN"),
    (0.0, ValueError, r"^step_size must be in \(0.0"),
    ("0.1", TypeError, "^step_size must be a real number"),
])
def test_sample_rejects_step_size(step_size, error, match):
    energy = energy_of((3, 5, 1))
    with pytest.raises(error, match=match):
        energy.sample(torch.zeros(4, 3, dtype=torch.float64), 2, step_size)


@pytest.mark.parametrize("n_steps, error", [(-1, ValueError), (2.0, TypeError), (True, TypeError)])
def test_sample_rejects_n_steps(n_steps, error):
    with pytest.raises(error, match="^n_steps must be"):
        energy_of((3, 5, 1)).sample(torch.zeros(4, 3, dtype=torch.float64), n_steps, 0.1)


@pytest.mark.skipif(dgm_fast._extension._C is None, reason="needs the compiled extension")
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_portable_tiles_equal_the_simd_ones(activation):
    """The C++ kernels' portable build (what CPUs without AVX2 + FMA run) against the one this CPU
    picks: both are the reference to rounding, so within float32 rounding of each other."""
    _C = dgm_fast._extension._C
    energy = energy_of((5, 40, 37, 1), activation, torch.float32)
    x = _x(70, 5, torch.float32, "cpu")

    def run():
        with dgm_fast.use_backend("cpu"):
            return [*energy.energy_and_grad(x), *energy.laplacian(x), energy.sample(x, 4, 0.05, seed=2)]

    _C.set_ebm_portable(True)
    try:
        assert _C.ebm_isa() == "portable"
        portable = run()
    finally:
        _C.set_ebm_portable(False)
    torch.testing.assert_close(portable, run(), **TOL[torch.float32])


def test_relu_of_minus_infinity_is_zero(grad_backend):
    """relu(-inf) = 0 (not 0 * -inf = NaN) feeds the next layer a finite value, as torch's relu does;
    the property tests found a C++ kernel that computed relu as a leaky_relu of slope 0, and a Triton
    kernel whose zero-padded units turned an infinite input into NaN (0 * inf in tl.dot)."""
    device, backend = grad_backend
    energy = energy_of((2, 3, 2, 1), "relu", torch.float32)
    x = torch.tensor([[-math.inf, 0.3], [math.inf, -0.2], [0.5, -math.inf]])
    expect = mlp_energy_grad(x, *energy._params(), "relu")
    with dgm_fast.use_backend("reference"):
        ref = mlp_energy_grad(x, *energy._params(), "relu")
    torch.testing.assert_close(expect, ref, equal_nan=True, **TOL[torch.float32])
