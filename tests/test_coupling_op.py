"""affine_coupling: the mathematics of §2.2.3 and what is particular to the op.

Reference equivalence on samples, opcheck, compile, gradcheck and the
transforms are in test_op_contract.py; random inputs in test_op_properties.py.
"""

from __future__ import annotations

import math

import pytest
import torch

import dgm_fast
from dgm_fast.coupling.op import COUPLING
from dgm_fast.coupling.reference import SCALES, affine_coupling_reference, log_scale
from helpers import TOL, make_tensor

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BACKENDS = [(d, b) for d in DEVICES for b, why in COUPLING.availability(torch.device(d)).items() if why is None]
NATIVE = [c for c in BACKENDS if c[1] != "reference"]


@pytest.fixture(params=BACKENDS, ids=lambda c: f"{c[0]}-{c[1]}")
def backend(request):
    device, name = request.param
    with dgm_fast.use_backend(name):
        yield device, name


@pytest.fixture(params=NATIVE, ids=lambda c: f"{c[0]}-{c[1]}")
def native(request):
    device, name = request.param
    with dgm_fast.use_backend(name):
        yield device, name


def _halves(shape, device, dtype=torch.float64, seed=0):
    return (make_tensor(shape, dtype, device, seed=seed + k, scale=sc) for k, sc in enumerate((1.0, 1.5, 1.0)))


@pytest.mark.parametrize("scale", SCALES)
def test_inverse_undoes_forward_and_negates_logdet(backend, scale):
    device, _ = backend
    x2, s, t = _halves((9, 33), device, torch.float32)
    y2, logdet = dgm_fast.affine_coupling(x2, s, t, scale=scale, clamp=1.5)
    back, inv_logdet = dgm_fast.affine_coupling(y2, s, t, scale=scale, clamp=1.5, inverse=True)
    torch.testing.assert_close(back, x2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(inv_logdet, -logdet, atol=0, rtol=0)


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
@pytest.mark.parametrize("scale", SCALES)
def test_logdet_is_log_abs_det_jacobian(backend, scale, inverse):
    """§2.2.3: the Jacobian of the coupling in x2 is diagonal, and logdet is log|det| of it."""
    device, _ = backend
    x2, s, t = _halves((3, 2, 4), device)
    for row in range(3):
        def f(v, row=row):
            return dgm_fast.affine_coupling(v[None], s[row:row + 1], t[row:row + 1], scale=scale, clamp=1.5,
                                            inverse=inverse)[0][0]

        jac = torch.func.jacrev(f)(x2[row]).reshape(8, 8)
        logdet = dgm_fast.affine_coupling(x2, s, t, scale=scale, clamp=1.5, inverse=inverse)[1][row]
        torch.testing.assert_close(logdet, torch.linalg.slogdet(jac).logabsdet, **TOL[torch.float64])


def test_scale_functions_bound_the_log_scale():
    s = torch.linspace(-1e4, 1e4, 20001, dtype=torch.float64)
    for scale, low, high in (("atan", -1.5, 1.5), ("tanh", -1.5, 1.5), ("sigmoid", -math.inf, 0.0)):
        g = log_scale(s, scale, 1.5)
        assert g.min() >= low and g.max() <= high, scale
    torch.testing.assert_close(log_scale(s, "exp", 1.5), s)


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
@pytest.mark.parametrize("scale", SCALES)
def test_float32_over_the_whole_range_of_s(native, scale, inverse):
    """The kernels' exp / atan / tanh / log-sigmoid against the reference over |s| up to 1e4,
    where they saturate, overflow and underflow; rows of one element so logdet is g(s) itself."""
    device, _ = native
    s = torch.cat([torch.linspace(-100, 100, 40001), torch.logspace(-30, 4, 2001), -torch.logspace(-30, 4, 2001),
                   torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan])]).to(device)
    x2, t = torch.full_like(s, 0.75), torch.full_like(s, -0.25)
    got = dgm_fast.affine_coupling(x2, s, t, scale=scale, clamp=3.0, inverse=inverse)
    expect = affine_coupling_reference(x2, s, t, scale, 3.0, inverse)
    for g, e in zip(got, expect):
        torch.testing.assert_close(g, e, equal_nan=True, **TOL[torch.float32])


def test_special_values_propagate_like_the_reference(native):
    device, _ = native
    specials = torch.tensor([math.nan, math.inf, -math.inf, 0.0, 1e30, -1e30, 3.0], device=device)
    x2, s, t = (v.reshape(7, 1, 1).expand(7, 7, 7).reshape(7, 49).permute(p).contiguous()
                for v, p in ((specials, (0, 1)), (specials, (0, 1)), (specials, (0, 1))))
    s = s.reshape(7, 7, 7).transpose(0, 1).reshape(7, 49).contiguous()
    t = t.reshape(7, 7, 7).transpose(0, 2).reshape(7, 49).contiguous()
    for scale in SCALES:
        for inverse in (False, True):
            got = dgm_fast.affine_coupling(x2, s, t, scale=scale, inverse=inverse)
            expect = affine_coupling_reference(x2, s, t, scale, 2.0, inverse)
            for g, e in zip(got, expect):
                torch.testing.assert_close(g, e, equal_nan=True, **TOL[torch.float32])


def test_fused_backward_equals_the_formula_used_for_double_backward(native):
    """Backward runs the fused op; with create_graph it runs the PyTorch formula: they must agree."""
    device, _ = native
    for scale in SCALES:
        for inverse in (False, True):
            x2, s, t = (v.requires_grad_() for v in _halves((5, 17), device, torch.float32, seed=7))
            y2, logdet = dgm_fast.affine_coupling(x2, s, t, scale=scale, inverse=inverse)
            gy, gl = torch.randn_like(y2), torch.randn_like(logdet)
            fused = torch.autograd.grad((y2, logdet), (x2, s, t), (gy, gl), retain_graph=True)
            formula = torch.autograd.grad((y2, logdet), (x2, s, t), (gy, gl), create_graph=True)
            for a, b in zip(fused, formula):
                torch.testing.assert_close(a, b, **TOL[torch.float32])


def test_unused_output_gets_a_zero_gradient(backend):
    device, _ = backend
    x2, s, t = (v.requires_grad_() for v in _halves((4, 6), device))
    _, logdet = dgm_fast.affine_coupling(x2, s, t, scale="tanh")
    logdet.sum().backward()
    for unused in (x2.grad, t.grad):  # the reference's autograd leaves None, the fused backward zeros
        assert unused is None or not unused.any()
    torch.testing.assert_close(s.grad, 1 - torch.tanh(s.detach() / 2) ** 2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(scale="softplus"), ValueError, "^scale must be one of"),
        (dict(scale=None), TypeError, "^scale must be a str"),
        (dict(clamp=0.0), ValueError, "^clamp must be in"),
        (dict(clamp=-1.0), ValueError, "^clamp must be in"),
        (dict(clamp=math.inf), ValueError, "^clamp must be finite"),
        (dict(clamp=math.nan), ValueError, "^clamp must not be NaN"),
        (dict(clamp="2"), TypeError, "^clamp must be a real number"),
        (dict(inverse=1), TypeError, "^inverse must be a bool"),
    ],
)
def test_bad_options_name_the_argument(kwargs, error, match):
    x2 = torch.zeros(2, 3)
    with pytest.raises(error, match=match):
        dgm_fast.affine_coupling(x2, x2, x2, **kwargs)


def test_bad_tensors_name_the_argument():
    x2 = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="^x2 must have a batch dimension"):
        dgm_fast.affine_coupling(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(1.0))
    with pytest.raises(ValueError, match="^s must have the shape of x2"):
        dgm_fast.affine_coupling(x2, torch.zeros(2, 4), x2)
    with pytest.raises(TypeError, match="^t must have the dtype of x2"):
        dgm_fast.affine_coupling(x2, x2, x2.double())
    with pytest.raises(TypeError, match="^x2 must have a dtype in"):
        dgm_fast.affine_coupling(x2.int(), x2, x2)
    with pytest.raises(TypeError, match="^s must be a torch.Tensor"):
        dgm_fast.affine_coupling(x2, [[0.0] * 3] * 2, x2)


def test_sigmoid_scale_gradient_far_out_is_subnormal_not_zero(native):
    """g'(s) = sigmoid(-(s + 2)) at s = 93.5 is about 3e-42 in float32: kept, an infinite upstream
    gradient times it is infinite (torch's answer), where a zero would make NaN."""
    device, _ = native
    s = torch.tensor([[93.5, -93.5]], device=device, requires_grad=True)
    x2 = torch.tensor([[math.inf, 1.0]], device=device)
    y2, _ = dgm_fast.affine_coupling(x2, s, torch.zeros_like(x2), scale="sigmoid")
    (grad_s,) = torch.autograd.grad(y2.sum(), s)
    with dgm_fast.use_backend("reference"):
        (expect,) = torch.autograd.grad(dgm_fast.affine_coupling(x2, s, torch.zeros_like(x2), scale="sigmoid")[0].sum(), s)
    assert grad_s[0, 0] == math.inf
    torch.testing.assert_close(grad_s, expect, atol=0, rtol=1e-5)


@pytest.mark.parametrize("inverse", [False, True])
def test_logdet_of_one_dimensional_input_is_a_new_dense_tensor(backend, inverse):
    """With no non-batch dims logdet is l itself; for "exp" l is s, which may be expanded: every
    backend returns a dense tensor of its own (the property tests found the reference aliasing s)."""
    device, _ = backend
    s = torch.tensor([0.3], device=device).expand(4)
    _, logdet = dgm_fast.affine_coupling(s, s, s, scale="exp", inverse=inverse)
    assert logdet.stride() == (1,) and logdet.untyped_storage().data_ptr() != s.untyped_storage().data_ptr()
    torch.testing.assert_close(logdet, torch.full((4,), -0.3 if inverse else 0.3, device=device))
